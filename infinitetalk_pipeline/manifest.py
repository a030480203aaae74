"""Manifests: many clip requests in one CSV or JSONL file, local or on S3, validated row by row.

Formats
    The extension picks the format (`.csv`; `.jsonl`, `.ndjson` or `.json`); with any other extension the
    content decides: a first non-blank character `{` means JSONL, anything else CSV.

    CSV: a header row of request fields (see `spec.ClipRequest`) including `clip_id`. Cells are text;
    numbers and booleans are converted as pydantic's lax mode does (`"512"` -> 512, `"yes"`/`"true"`/`"1"`
    -> True) and blank cells count as absent, so the field's default applies.

    JSONL: one JSON object per line, either flat (`{"clip_id": ..., "image_path": ...}`) or a whole request
    (`{"id": ..., "input": {...}}`). The clip id comes from `clip_id` (top level or inside `input`) or `id`.
    Blank lines are skipped.

Row numbers
    `row_number` is the 1-based line number in the file where the row starts, as an editor shows it. In a
    CSV the header is line 1, so the first data row is 2; a quoted cell spanning lines makes later rows skip
    numbers. In a JSONL file the first line is 1.

Clip ids
    Every row needs one; it is normalised with `spec.normalise_clip_id` (runs of ASCII characters outside
    `[A-Za-z0-9._-]` become `-`: `"intro scene 1"` -> `"intro-scene-1"`; ids starting with `.` or `-`, and ids
    with non-ASCII characters, which would lose letters, are refused). Ids are unique within a manifest, compared
    after normalising and ignoring case (they become file names, and `Intro` and `intro` are one file on
    case-insensitive file systems): every later duplicate is an invalid row naming the first, even when that first
    row is invalid itself.

Errors
    Problems of one row (bad value, bad JSON, bytes that are not UTF-8) become `InvalidRow`s and never stop
    the other rows. A manifest that cannot be read at all (missing file, no header, no `clip_id` column, a
    JSON array instead of JSONL, a CSV separated by `;`, tabs or `|`) raises `ManifestError` naming the manifest.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from infinitetalk_pipeline.errors import ClipInputError, PipelineError
from infinitetalk_pipeline.redact import redact_text
from infinitetalk_pipeline.spec import ClipRequest, normalise_clip_id, parse_request
from infinitetalk_pipeline.storage import parse_s3_uri

ManifestFormat = Literal["csv", "jsonl"]

_EXTENSIONS: dict[str, ManifestFormat] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
_REQUEST_FIELDS = frozenset(ClipRequest.model_fields)
# Top-level keys of a JSONL line in the `{"id": ..., "input": {...}}` form.
_WRAPPER_KEYS = frozenset({"id", "clip_id", "input"})
# Bytes that are not UTF-8 survive decoding as lone surrogates (errors="surrogateescape"), so the rows
# holding them can be reported one by one instead of failing the whole file.
_UNDECODABLE = re.compile("[\udc80-\udcff]")
# base64 media in CSV cells outgrow the csv module's 128 KiB default cell limit.
_MAX_CELL_CHARS = 256 * 1024 * 1024
# Headers written with another delimiter are recognised to explain the refusal, not read: the contract is one format,
# comma-separated CSV, and a guessed delimiter would change how every row is read with nothing in the run log saying so
# (spreadsheets that save `;` by default, where the decimal mark is a comma, also offer "CSV (comma delimited)").
_OTHER_DELIMITERS = {";": "';'", "\t": "tab", "|": "'|'"}


class ManifestError(PipelineError):
    """The manifest as a whole is unusable; the message names it."""


@dataclass(frozen=True)
class ManifestRow:
    row_number: int
    clip_id: str
    request: ClipRequest


@dataclass(frozen=True)
class InvalidRow:
    row_number: int
    clip_id: str | None
    field: str | None
    reason: str

    def __post_init__(self) -> None:
        # Invalid rows become run-log warnings and asset metadata, and their reasons and raw ids quote the row's
        # values: credentials in URLs are masked (the registered requests keep theirs, to be fetched).
        object.__setattr__(self, "reason", redact_text(self.reason))
        if self.clip_id is not None:
            object.__setattr__(self, "clip_id", redact_text(self.clip_id))


@dataclass(frozen=True)
class ManifestResult:
    """A read manifest: its valid requests, its invalid rows, and what identifies this version of the file."""

    source: str
    format: ManifestFormat
    sha256: str
    etag: str | None = None  # S3 only: lets a sensor notice an overwritten manifest without reading it
    valid: list[ManifestRow] = field(default_factory=list)
    invalid: list[InvalidRow] = field(default_factory=list)


def read_manifest(source: str | Path, s3_client: Any = None) -> ManifestResult:
    """Read and validate a manifest from a local path, or from `s3://bucket/key` with a boto3 `s3_client`."""
    name = str(source)
    if name.startswith("s3://"):
        data, etag, name = _read_s3(name, s3_client)
    else:
        path = Path(name).expanduser().resolve()
        name = str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ManifestError(f"manifest {name}: cannot read it: {exc.strerror or exc}") from None
        etag = None
    return parse_manifest(data, name, etag=etag)


def parse_manifest(data: bytes, source: str, etag: str | None = None) -> ManifestResult:
    """Validate a manifest's bytes; `source` names it in errors and picks the format by its extension."""
    fmt = _format_of(source, data)
    result = ManifestResult(source=source, format=fmt, sha256=hashlib.sha256(data).hexdigest(), etag=etag)
    rows = _csv_rows(data, source) if fmt == "csv" else _jsonl_rows(data, source)
    first_row: dict[str, tuple[int, str]] = {}  # casefolded id -> (row, id as first written)
    for row_number, raw_id, body, problem in rows:
        clip_id: str | None = None
        if raw_id is None:
            problem = problem or ClipInputError(None, "clip_id", "clip_id is required")
        else:
            try:
                clip_id = normalise_clip_id(raw_id)
            except ValueError as exc:
                problem = problem or ClipInputError(raw_id, "clip_id", str(exc))
        if clip_id is not None:
            first = first_row.setdefault(clip_id.casefold(), (row_number, clip_id))
            if first[0] != row_number and problem is None:
                reason = f"duplicate clip id: first used on row {first[0]}"
                if first[1] != clip_id:
                    reason += f" as {first[1]!r} (ids are compared normalised, ignoring case)"
                problem = ClipInputError(clip_id, "clip_id", reason)
        if problem is None and clip_id is not None:
            try:
                request = parse_request({**body, "clip_id": clip_id}, clip_id)
            except ClipInputError as exc:
                problem = _with_suggestion(exc, body)
            else:
                result.valid.append(ManifestRow(row_number, clip_id, request))
                continue
        assert problem is not None  # every path without a valid request set one
        result.invalid.append(InvalidRow(row_number, clip_id or raw_id, problem.field, problem.reason))
    return result


# One raw row: (row number, raw clip id, request fields, a problem found before validation).
_RawRow = tuple[int, str | None, dict[str, Any], ClipInputError | None]


def _csv_rows(data: bytes, source: str) -> Iterator[_RawRow]:
    text = data.decode("utf-8-sig", errors="surrogateescape")
    csv.field_size_limit(max(csv.field_size_limit(), _MAX_CELL_CHARS))
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise ManifestError(f"manifest {source}: empty, expected a CSV header row") from None
    except csv.Error as exc:
        raise ManifestError(f"manifest {source}: header row is not valid CSV: {exc}") from None
    if _UNDECODABLE.search("".join(header)):
        raise ManifestError(f"manifest {source}: header row is not UTF-8 text (save the file as UTF-8)")
    # Unnamed columns (a trailing comma) get distinct names so a value typed under them is reported, not lost.
    columns = [c.strip() or f"(unnamed column {i})" for i, c in enumerate(header, start=1)]
    if dupes := sorted({c for c in columns if columns.count(c) > 1}):
        raise ManifestError(f"manifest {source}: header repeats column(s) {', '.join(dupes)}")
    if "clip_id" not in columns:
        raise _no_clip_id_column(source, header, columns)
    id_index = columns.index("clip_id")
    while True:
        row_number = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield row_number, None, {}, ClipInputError(None, None, f"not valid CSV: {exc}")
            continue
        if not any(c.strip() for c in cells):
            continue  # blank line or a row of empty cells (spreadsheets leave them)
        raw_id = cells[id_index].strip() if id_index < len(cells) else ""
        raw_id = raw_id if raw_id and not _UNDECODABLE.search(raw_id) else None
        if len(cells) > len(columns):
            reason = f"{len(cells)} cells but the header has {len(columns)} columns"
            yield row_number, raw_id, {}, ClipInputError(raw_id, None, reason)
        elif _UNDECODABLE.search("".join(cells)):
            bad = [col for col, cell in zip(columns, cells, strict=False) if _UNDECODABLE.search(cell)]
            reason = "not valid UTF-8 text (save the manifest as UTF-8)"
            yield row_number, raw_id, {}, ClipInputError(raw_id, bad[0], reason)
        else:
            # Short rows are fine: spreadsheets drop trailing empty cells. An empty cell is an absent field.
            yield row_number, raw_id, {k: v for k, v in zip(columns, cells, strict=False) if v}, None


def _no_clip_id_column(source: str, header: list[str], columns: list[str]) -> ManifestError:
    """The error for a header without a clip_id column, saying so when the header has one under another delimiter."""
    line = ",".join(header)
    for delimiter, name in _OTHER_DELIMITERS.items():
        if "clip_id" in (cell.strip().strip('"') for cell in line.split(delimiter)):
            return ManifestError(
                f"manifest {source}: the header looks {name}-separated ({line!r}); manifests are comma-separated CSV "
                "(or JSONL): save it as CSV with commas"
            )
    return ManifestError(f"manifest {source}: no clip_id column (header: {', '.join(columns)})")


def _jsonl_rows(data: bytes, source: str) -> Iterator[_RawRow]:
    text = data.decode("utf-8-sig", errors="surrogateescape")
    if text.lstrip().startswith("["):
        raise ManifestError(f"manifest {source}: a JSON array, expected JSON Lines (one request object per line)")
    for row_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if bad := _UNDECODABLE.search(line):
            reason = f"not valid UTF-8 text (column {bad.start() + 1}; save the manifest as UTF-8)"
            yield row_number, None, {}, ClipInputError(None, None, reason)
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            reason = f"not valid JSON: {exc.msg} (column {exc.colno})"
            yield row_number, None, {}, ClipInputError(None, None, reason)
            continue
        yield (row_number, *_jsonl_request(obj))


def _jsonl_request(obj: Any) -> tuple[str | None, dict[str, Any], ClipInputError | None]:
    """Split one JSONL object into (raw clip id, request fields, problem)."""
    if not isinstance(obj, dict):
        return None, {}, ClipInputError(None, None, "a line must be a JSON object")
    if "input" in obj:
        ids = {k: obj[k] for k in ("id", "clip_id") if k in obj}
        body = obj["input"]
        problem = None
        if not isinstance(body, dict):
            problem = ClipInputError(None, "input", "input must be a JSON object")
        elif extra := sorted(set(obj) - _WRAPPER_KEYS):
            reason = f"unknown top-level key(s) {', '.join(extra)}: expected id and input"
            problem = ClipInputError(None, extra[0], reason)
        if problem is not None:
            return _id_text(ids.values()), {}, problem
        body = dict(body)
        if "clip_id" in body:
            ids["input.clip_id"] = body.pop("clip_id")
    else:
        body = dict(obj)
        ids = {k: body.pop(k) for k in ("id", "clip_id") if k in body}
    given = {k: v for k, v in ids.items() if not (v is None or (isinstance(v, str) and not v.strip()))}
    for key, value in given.items():
        if _id_text([value]) is None:
            return None, body, ClipInputError(None, key, f"a clip id must be a string, not {value!r}")
    distinct = {_id_text([v]) for v in given.values()}
    if len(distinct) > 1:
        reason = "clip ids disagree: " + ", ".join(f"{k}={v!r}" for k, v in given.items())
        return None, body, ClipInputError(None, "clip_id", reason)
    return (distinct.pop() if distinct else None), body, None


def _id_text(values: Iterable[Any]) -> str | None:
    """The first usable raw clip id: a non-blank string or an integer (JSON ids are often numbers)."""
    for value in values:
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
    return None


def _with_suggestion(exc: ClipInputError, body: dict[str, Any]) -> ClipInputError:
    """Name the closest real field for each misspelled one (blank cells of unknown columns are not errors)."""
    unknown = [k for k, v in body.items() if k not in _REQUEST_FIELDS and str(v if v is not None else "").strip()]
    hints = [f"{k!r} -> {m[0]!r}?" for k in unknown if (m := difflib.get_close_matches(k, _REQUEST_FIELDS, n=1))]
    return ClipInputError(exc.clip_id, exc.field, f"{exc.reason} ({', '.join(hints)})") if hints else exc


def _format_of(source: str, data: bytes) -> ManifestFormat:
    suffix = Path(source.split("?", 1)[0]).suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    return "jsonl" if data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{") else "csv"


def _read_s3(uri: str, s3_client: Any) -> tuple[bytes, str | None, str]:
    if s3_client is None:
        raise ManifestError(f"manifest {uri}: an s3:// manifest needs an S3 client")
    bucket, key = parse_s3_uri(uri)
    if not key:
        raise ManifestError(f"manifest {uri}: no object key")
    try:
        response = s3_client.get_object(Bucket=bucket, Key=key)
        data = response["Body"].read()
    except ClientError as exc:
        error = exc.response.get("Error", {})
        reason = f"{error.get('Code')} {error.get('Message', '')}".strip()
        raise ManifestError(f"manifest {uri}: cannot read it: {reason}") from None
    except BotoCoreError as exc:
        raise ManifestError(f"manifest {uri}: cannot read it: {exc}") from None
    etag = response.get("ETag")
    return data, etag.strip('"') if etag else None, uri
