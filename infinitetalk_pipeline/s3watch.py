"""Watching S3 prefixes cheaply: incremental listing, overwrite detection, and drop folders (no Dagster here).

Incremental listing (`poll`, `ListCursor`)
    `list_objects_v2(Prefix, StartAfter=after)` returns only keys sorted after the frontier `after`, so a tick
    costs what is new, not what exists (a full listing of 100,000 keys is 100 requests; the frontier is one).
    Each tick lists at most `Budget.max_keys` keys after the frontier and returns at most `Budget.max_items`
    objects the caller wants; the frontier stops at the last object returned, so the rest comes next tick.
    Keys ending in "/" (folder markers some servers leave) are skipped.

Overwrites and late keys behind the frontier (dagster#22892)
    A key cursor never sees an object overwritten in place, nor a new key that sorts before the frontier.
    Each tick therefore also re-lists one page (`Budget.rescan_keys`) of the range already passed, moving
    round it lap by lap. An object in that page counts as changed when
      - its key is tracked (`EtagTracker`: ETags of the `max_tracked` most recent items) and its ETag
        differs, or
      - it is not tracked and its LastModified is later than the start of the previous lap (minus a small
        margin): it may have been modified since it was last examined. Lap times are read from the
        server's `Date` header, the clock LastModified comes from, so the sensor host's clock plays no part.
    Trade-off: the cursor stays small (a few keys, two times and at most `max_tracked` 16-character ETag
    digests) at the price of latency: an overwrite is noticed within one lap, ceil(keys behind the frontier /
    rescan_keys) ticks, and an untracked item modified shortly before its last examination may be reported
    once more (harmless where run keys and registered partitions make a second look a no-op). Name new keys
    so they sort after the old ones (e.g. `manifests/2025-06-01-batch.csv`): they then arrive through the
    frontier at the next tick.

Drop folders (`classify`, `drop_row`, `is_complete`)
    `<drop prefix><clip_id>/` holds one visual (a portrait .png/.jpg/.jpeg/.webp or a video
    .mp4/.mov/.webm), one or two audio files (.wav/.mp3/.m4a/.flac/.ogg/.opus; two make a multi-person clip,
    sorted by file name: the first is speaker 1) and optionally `clip.json` (ClipRequest settings such as
    prompt, width, height, multi_audio_type; no media fields, no clip_id). Complete when the media are there
    AND either a `_READY` object exists in the folder or the folder's listing has not changed for a quiet
    period. `_READY` is exact; the quiet period is a fallback for uploaders that cannot write a marker (a
    second audio file arriving later than the quiet period would be missed: the clip is registered single).
    Other files are ignored.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import PurePosixPath
from typing import Any, Literal

from botocore.utils import parse_timestamp

from infinitetalk_pipeline.errors import ClipInputError
from infinitetalk_pipeline.spec import MEDIA_FIELDS, parse_request

MANIFEST_SUFFIXES = (".csv", ".jsonl")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".webm"})
AUDIO_SUFFIXES = frozenset({".wav", ".mp3", ".m4a", ".flac", ".ogg", ".opus"})
SETTINGS_NAME = "clip.json"
READY_MARKER = "_READY"
MAX_FOLDER_OBJECTS = 1_000  # a drop folder holding more is refused (one listing request reads it)
MASK_STEMS = ("mask_1", "mask_2")  # speaker masks of a two-speaker folder, images named by speaker
# Settings a clip.json may not give: the folder itself decides the media and the clip id.
_FOLDER_OWNED = frozenset({"clip_id", "input_type", *(f for fields in MEDIA_FIELDS.values() for f in fields.values())})


@dataclass(frozen=True)
class S3Object:
    key: str
    etag: str
    last_modified: float  # epoch seconds
    size: int

    @classmethod
    def from_listing(cls, item: dict[str, Any]) -> S3Object:
        return cls(item["Key"], item["ETag"].strip('"'), item["LastModified"].timestamp(), int(item["Size"]))


@dataclass(frozen=True)
class Budget:
    """What one tick may do: bounded so a tick stays far inside the sensor's 60 s evaluation timeout."""

    max_keys: int = 10_000  # keys listed after the frontier
    page_size: int = 1_000  # S3 returns at most 1,000 per request anyway
    max_items: int = 200  # wanted objects returned (new + changed)
    rescan_keys: int = 1_000  # keys re-listed behind the frontier (one request)
    margin_seconds: float = 5.0  # LastModified and Date are whole seconds; a little more for multi-node servers


@dataclass
class ListCursor:
    after: str = ""  # frontier: every key <= after has been listed once
    scan: str = ""  # re-scan position in (prefix, after]; "" = start of a lap
    # Server time (epoch) when the current re-scan lap started, and when the previous one did: objects
    # modified after `since` may not have been examined in their current version. None until first listed.
    lap_started: float | None = None
    since: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, body: dict[str, Any] | None) -> ListCursor:
        return cls(**body) if body else cls()


@dataclass
class Poll:
    new: list[S3Object]  # wanted objects after the old frontier, in key order
    changed: list[S3Object]  # wanted objects from the re-scan page (behind the old frontier)
    cursor: ListCursor
    listed: int = 0  # keys returned by S3 this tick
    requests: int = 0


def _parse_timestamp(value: Any) -> datetime:
    """botocore's timestamp parser, but the ISO 8601 UTC form of listings (`2025-06-01T12:00:00.000Z`) is read by
    the standard library: botocore hands every one to dateutil, ~50 us each, 0.1 s of a tick listing 2,000 keys."""
    if isinstance(value, str) and value.endswith("Z"):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass  # some other form ending in Z: botocore's parser decides
    return parse_timestamp(value)


def with_fast_timestamps(client: Any) -> Any:
    """`client` (boto3 S3) parsing listing timestamps with `_parse_timestamp`. The parser factory is not public
    API: should botocore move it, the client keeps its own parser (slower, same results)."""
    factory = getattr(getattr(client, "_endpoint", None), "_response_parser_factory", None)
    if factory is not None:
        factory.set_parser_defaults(timestamp_parser=_parse_timestamp)
    return client


def _server_time(page: dict[str, Any]) -> float:
    date = page.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    return parsedate_to_datetime(date).timestamp() if date else time.time()


def _pages(client: Any, bucket: str, prefix: str, start_after: str, limit: int, page_size: int) -> Iterator[dict]:
    """ListObjectsV2 pages after `start_after`, `limit` keys at most; StartAfter serves as continuation."""
    remaining = limit
    while remaining > 0:
        args: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": min(page_size, remaining)}
        if start_after:
            args["StartAfter"] = start_after
        page = client.list_objects_v2(**args)
        contents = page.get("Contents", [])
        yield page
        if not contents or not page.get("IsTruncated"):
            return
        remaining -= len(contents)
        start_after = contents[-1]["Key"]


def poll(
    client: Any,
    bucket: str,
    prefix: str,
    cursor: ListCursor,
    budget: Budget,
    want_new: Callable[[S3Object], bool],
    want_changed: Callable[[S3Object, float], bool],
) -> Poll:
    """One tick of listing: one re-scan page behind the frontier, then new keys after it, within `budget`.

    `want_changed(obj, threshold)` gets the LastModified threshold of the current lap (see module docstring).
    """
    result = Poll(new=[], changed=[], cursor=ListCursor(**cursor.to_dict()))
    out = result.cursor
    if cursor.after and cursor.since is not None:
        _rescan(client, bucket, prefix, cursor, budget, want_changed, result)
    room = budget.max_items - len(result.changed)
    if room <= 0:
        return result
    for page in _pages(client, bucket, prefix, cursor.after, budget.max_keys, budget.page_size):
        if out.since is None:
            # First listing of a fresh cursor: whatever it lists, it sees in its current version.
            out.since = out.lap_started = _server_time(page)
        result.requests += 1
        contents = page.get("Contents", [])
        result.listed += len(contents)
        for item in contents:
            obj = S3Object.from_listing(item)
            out.after = obj.key
            if not obj.key.endswith("/") and want_new(obj):
                result.new.append(obj)
                if len(result.new) == room:
                    return result  # the frontier stops here; the rest of the page comes next tick
    return result


def _rescan(
    client: Any,
    bucket: str,
    prefix: str,
    cursor: ListCursor,
    budget: Budget,
    want_changed: Callable[[S3Object, float], bool],
    result: Poll,
) -> None:
    out = result.cursor
    assert cursor.since is not None  # the caller checked
    threshold = cursor.since - budget.margin_seconds
    page = next(_pages(client, bucket, prefix, cursor.scan, budget.rescan_keys, budget.rescan_keys))
    result.requests += 1
    contents = page.get("Contents", [])
    result.listed += len(contents)
    for item in contents:
        obj = S3Object.from_listing(item)
        if obj.key > cursor.after:
            break  # past the frontier: the frontier listing covers it
        out.scan = obj.key
        if not obj.key.endswith("/") and want_changed(obj, threshold):
            result.changed.append(obj)
            if len(result.changed) == budget.max_items:
                return  # the lap resumes after this key next tick
    else:
        if page.get("IsTruncated") and contents and contents[-1]["Key"] < cursor.after:
            return  # the lap goes on from `out.scan` next tick
    out.scan, out.since, out.lap_started = "", cursor.lap_started, _server_time(page)


class EtagTracker:
    """ETag digests of the most recently seen items, least recently changed evicted first (bounded cursor)."""

    def __init__(self, digests: dict[str, str] | None = None, max_tracked: int = 200) -> None:
        self.digests = dict(digests or {})
        self.max_tracked = max_tracked

    @staticmethod
    def digest(etag: str) -> str:
        # 64 bits: the cursor keeps 16 characters per item whatever the ETag's form (plain MD5 or multipart).
        return hashlib.blake2b(etag.encode(), digest_size=8).hexdigest()

    def is_current(self, key: str, etag: str) -> bool:
        return self.digests.get(key) == self.digest(etag)

    def changed(self, obj: S3Object, threshold: float) -> bool:
        if obj.key in self.digests:
            return not self.is_current(obj.key, obj.etag)
        return obj.last_modified > threshold

    def record(self, key: str, etag: str) -> None:
        self.digests.pop(key, None)
        self.digests[key] = self.digest(etag)
        while len(self.digests) > self.max_tracked:
            del self.digests[next(iter(self.digests))]


def is_manifest_key(key: str, prefix: str) -> bool:
    """A manifest under the watched prefix; path parts starting with `_` (e.g. `_archive/`) are ignored."""
    rest = key[len(prefix) :]
    return key.lower().endswith(MANIFEST_SUFFIXES) and not any(p.startswith("_") for p in rest.split("/"))


def fingerprint(payload: dict[str, Any]) -> str:
    """A short stable digest of a clip's request: run keys built on it make a re-evaluation a no-op."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# --- drop folders -------------------------------------------------------------------------------------------


def folder_of(key: str, prefix: str) -> str | None:
    """The drop folder name of a key inside `<prefix><folder>/`, or None (top-level files, `_`-folders)."""
    folder, sep, _ = key[len(prefix) :].partition("/")
    return folder if sep and folder and not folder.startswith("_") else None


@dataclass
class FolderContents:
    visual: S3Object | None = None
    visual_kind: Literal["image", "video"] | None = None
    audio: list[S3Object] = field(default_factory=list)
    masks: dict[str, S3Object] = field(default_factory=dict)  # stem in MASK_STEMS -> image
    settings: S3Object | None = None
    ready: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def has_media(self) -> bool:
        return self.visual is not None and bool(self.audio) and not self.problems


def classify(objects: list[S3Object], folder_prefix: str) -> FolderContents:
    """Sort a folder's objects into the convention's roles; ambiguities become `problems`."""
    found = FolderContents()
    visuals: list[tuple[S3Object, Literal["image", "video"]]] = []
    for obj in sorted(objects, key=lambda o: o.key):
        name = obj.key[len(folder_prefix) :]
        suffix = PurePosixPath(name).suffix.lower()
        if "/" in name or obj.key.endswith("/"):
            continue  # sub-folders are not part of the convention
        if name == READY_MARKER:
            found.ready = True
        elif name == SETTINGS_NAME:
            found.settings = obj
        elif suffix in IMAGE_SUFFIXES and (stem := PurePosixPath(name).stem.lower()) in MASK_STEMS:
            if stem in found.masks:
                found.problems.append(f"two {stem} images")
            found.masks[stem] = obj
        elif suffix in IMAGE_SUFFIXES:
            visuals.append((obj, "image"))
        elif suffix in VIDEO_SUFFIXES:
            visuals.append((obj, "video"))
        elif suffix in AUDIO_SUFFIXES:
            found.audio.append(obj)
    if len(visuals) > 1:
        found.problems.append(f"{len(visuals)} portraits/videos, expected one")
    elif visuals:
        found.visual, found.visual_kind = visuals[0]
    if len(found.audio) > 2:
        found.problems.append(f"{len(found.audio)} audio files, expected one or two")
    return found


def signature(objects: list[S3Object]) -> str:
    """Changes whenever an object is added, removed or overwritten; folder markers (keys ending in "/", which
    listings through `poll` skip) do not count."""
    listed = sorted((o for o in objects if not o.key.endswith("/")), key=lambda o: o.key)
    body = "\n".join(f"{o.key}\t{o.etag}\t{o.size}" for o in listed)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def is_complete(contents: FolderContents, unchanged_for: float, quiet_seconds: float) -> bool:
    return contents.has_media and (contents.ready or unchanged_for >= quiet_seconds)


def drop_row(bucket: str, clip_id: str, contents: FolderContents, settings: dict[str, Any]) -> dict[str, Any]:
    """The manifest row for a complete folder, validated as a ClipRequest (raises ClipInputError)."""
    if owned := sorted(_FOLDER_OWNED & set(settings)):
        raise ClipInputError(clip_id, owned[0], f"{SETTINGS_NAME} may not set {', '.join(owned)}: the folder does")
    assert contents.visual is not None and contents.visual_kind is not None  # has_media was checked
    uri = f"s3://{bucket}/"
    row: dict[str, Any] = {
        **settings,
        "clip_id": clip_id,
        "input_type": contents.visual_kind,
        f"{contents.visual_kind}_path": uri + contents.visual.key,
        "wav_path": uri + contents.audio[0].key,
        "person_count": "multi" if len(contents.audio) == 2 else settings.get("person_count", "single"),
    }
    if len(contents.audio) == 2:
        row["wav_path_2"] = uri + contents.audio[1].key
    for stem, mask_field in zip(MASK_STEMS, ("mask_path", "mask_path_2"), strict=True):
        if stem in contents.masks:
            row[mask_field] = uri + contents.masks[stem].key
    parse_request(row, clip_id)
    return row


def parse_settings(data: bytes, clip_id: str) -> dict[str, Any]:
    try:
        settings = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ClipInputError(clip_id, None, f"{SETTINGS_NAME} is not valid JSON: {exc}") from None
    if not isinstance(settings, dict):
        raise ClipInputError(clip_id, None, f"{SETTINGS_NAME} must be a JSON object")
    return settings


def list_folder(
    client: Any, bucket: str, folder_prefix: str, max_keys: int = MAX_FOLDER_OBJECTS
) -> tuple[list[S3Object], bool]:
    """A drop folder's objects (one request) and whether it holds more than `max_keys` (refused)."""
    page = client.list_objects_v2(Bucket=bucket, Prefix=folder_prefix, MaxKeys=max_keys)
    objects = [S3Object.from_listing(item) for item in page.get("Contents", [])]
    return objects, bool(page.get("IsTruncated"))
