"""The video catalog: one Parquet row per rendered clip, stored beside the videos, kept up to date incrementally.

A render saves its row twice (registry.save_row): a pending copy `catalog/pending/<clip_id>@<stamp>.json`, then
`catalog/rows/<clip_id>.json`, the clip's current row. `refresh_catalog` folds only the pending rows into the
table, so a refresh after 1,000 renders reads and writes in proportion to the 1,000, whatever the table's size.

The table is a Parquet dataset under `catalog/video_catalog/`: parts (`part-*.parquet`) and `_table.json`, which
names the committed parts with their row counts and totals. A refresh writes one part of the new rows, rewrites
the parts that held an older row of a re-rendered clip (found by reading only their `clip_id` column), merges
small parts into bigger ones (each part at least twice the next: a table has a few tens of parts at most and a
row is rewritten a logarithmic number of times), then replaces `_table.json` by compare-and-swap (a file lock, or
an S3 conditional PUT). Of two refreshes at once one commits and the other starts over from the new state: no row
is lost and no clip is in two parts of a committed table. Parts a commit replaced are deleted after it; parts of
a refresh that died before committing, an hour later. Read the table with `read_catalog` (or the parts that
`_table.json` names). `rebuild_catalog` makes it again from every clip's current and pending rows: the full
rebuild (a store's first refresh does it; when two first refreshes race, the loser folds on top of the winner).
"""

from __future__ import annotations

import io
import json
import math
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from infinitetalk_pipeline.storage import ObjectMissing, OutputStore

if TYPE_CHECKING:  # pyarrow imports pandas when a table becomes a DataFrame: the CLI starts without it
    import pandas as pd

TABLE_PREFIX = "catalog/video_catalog/"
STATE_NAME = f"{TABLE_PREFIX}_table.json"
ROW_PREFIX = "catalog/rows/"
PENDING_PREFIX = "catalog/pending/"
RECENT_KEPT = 50  # most recent rows kept in the state for the preview (more than shown: re-renders replace some)
ORPHAN_AGE = timedelta(hours=1)  # a part no state names, older than this, is from a refresh that died
COMMIT_ATTEMPTS = 20

CATALOG_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("manifest", pa.string()),
        pa.field("inputs", pa.string()),  # JSON object: media role -> source
        pa.field("workflow", pa.string()),
        pa.field("profile", pa.string()),
        pa.field("prompt", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("frames", pa.int32()),
        pa.field("fps", pa.float64()),
        pa.field("duration_seconds", pa.float64()),
        pa.field("size_bytes", pa.int64()),
        pa.field("sha256", pa.string()),
        pa.field("output_uri", pa.string(), nullable=False),
        pa.field("comfy_prompt_id", pa.string()),
        pa.field("worker", pa.string()),
        pa.field("render_seconds", pa.float64()),
        pa.field("rendered_at", pa.timestamp("us", tz="UTC"), nullable=False),
        # Added by a later version: rows and parts written before it read them as null.
        pa.field("windows", pa.int32()),  # InfiniteTalk windows rendered (summed over the segments)
        pa.field("comfy_execution_seconds", pa.float64()),  # ComfyUI's own execution time (summed likewise)
        pa.field("segments", pa.string()),  # JSON list, one object per segment; null: one prompt rendered the clip
    ],
    metadata={"infinitetalk.catalog_version": "1"},
)
LATER_COLUMNS = ("windows", "comfy_execution_seconds", "segments")
_PREVIEW_COLUMNS = [
    "clip_id",
    "workflow",
    "frames",
    "duration_seconds",
    "size_bytes",
    "rendered_at",
    "output_uri",
]


@dataclass(frozen=True)
class CatalogRow:
    """One rendered clip. `inputs` is JSON object text: media role (image, audio, ...) -> its source."""

    clip_id: str
    manifest: str | None
    inputs: str
    workflow: str
    profile: str
    prompt: str
    width: int
    height: int
    frames: int
    fps: float
    duration_seconds: float
    size_bytes: int
    sha256: str
    output_uri: str
    comfy_prompt_id: str | None
    worker: str | None
    render_seconds: float
    rendered_at: datetime
    windows: int | None = None
    comfy_execution_seconds: float | None = None
    segments: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CatalogRow:
        """A row from `dataclasses.asdict` output that went through JSON: `rendered_at` may be ISO text, and
        keys that are not columns are ignored (callers keep extra bookkeeping beside the row)."""
        missing = [name for name in CATALOG_SCHEMA.names if name not in data and name not in LATER_COLUMNS]
        if missing:
            raise ValueError(f"catalog row of clip {data.get('clip_id')!r} lacks {', '.join(missing)}")
        values = {name: data.get(name) for name in CATALOG_SCHEMA.names}
        for name in LATER_COLUMNS:  # a null read through pandas is NaN
            if isinstance(values[name], float) and math.isnan(values[name]):
                values[name] = None
        if values["windows"] is not None:
            values["windows"] = int(values["windows"])
        if isinstance(values["rendered_at"], str):
            values["rendered_at"] = datetime.fromisoformat(values["rendered_at"])
        if not isinstance(values["inputs"], str):
            values["inputs"] = json.dumps(values["inputs"], sort_keys=True)
        return cls(**values)

    def record(self) -> dict[str, object]:
        """The row as the table stores it."""
        if self.rendered_at.tzinfo is None:
            raise ValueError(f"clip {self.clip_id!r}: rendered_at must carry a time zone")
        return {name: getattr(self, name) for name in CATALOG_SCHEMA.names} | {
            "rendered_at": self.rendered_at.astimezone(UTC)
        }


@dataclass(frozen=True)
class Part:
    name: str
    rows: int
    duration_seconds: float
    size_bytes: int


@dataclass(frozen=True)
class TableState:
    """What `_table.json` holds: the committed parts, the pending rows the last commit folded in (deleted after
    it), and the most recently rendered rows' preview columns."""

    version: int = 0
    parts: tuple[Part, ...] = ()
    consumed: tuple[str, ...] = ()
    recent: tuple[dict[str, Any], ...] = ()

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.parts)

    def to_json(self) -> bytes:
        body = {"version": self.version, "parts": [asdict(p) for p in self.parts], "consumed": list(self.consumed)}
        return json.dumps(body | {"recent": list(self.recent)}, sort_keys=True, default=str).encode()

    @classmethod
    def from_json(cls, data: bytes | None) -> TableState:
        if data is None:
            return cls()
        body = json.loads(data)
        return cls(
            version=body["version"],
            parts=tuple(Part(**p) for p in body["parts"]),
            consumed=tuple(body["consumed"]),
            recent=tuple(body["recent"]),
        )


@dataclass(frozen=True)
class CatalogUpdate:
    """What a refresh did, and the table state it committed."""

    state: TableState
    applied: int = 0  # rows folded in: new clips and re-renders
    replaced: int = 0  # of those, clips whose older row was in the table
    parts_written: int = 0
    parts_read: list[str] = field(default_factory=list)  # parts read whole (rewritten or merged)


def read_catalog(store: OutputStore) -> pd.DataFrame:
    """The catalog as a DataFrame sorted by clip id (empty, with every column, when nothing was rendered yet)."""
    for _ in range(COMMIT_ATTEMPTS):
        state = table_state(store)
        try:
            parts = [_read_part(store, p.name) for p in state.parts]
        except ObjectMissing:  # a newer commit replaced a part since the state was read: read the new state
            continue
        return pa.concat_tables([CATALOG_SCHEMA.empty_table(), *parts]).sort_by("clip_id").to_pandas()
    raise RuntimeError(f"{store.uri_for_name(STATE_NAME)}: the table kept changing while it was read")


def table_state(store: OutputStore) -> TableState:
    return TableState.from_json(store.get_bytes(STATE_NAME))


def refresh_catalog(store: OutputStore) -> CatalogUpdate:
    """Fold the pending rows into the table; a store without a table yet gets the full rebuild (or, when another
    refresh makes the first table meanwhile, the fold on top of it)."""
    rebuild = _rebuild_plan(store)

    def plan(base: TableState) -> _Plan:
        if base.version == 0:  # no table yet (a refresh that loses this race plans again, from the winner's table)
            return rebuild(base)
        listed = store.list_names(PENDING_PREFIX)
        folded = set(base.consumed)
        names = [n for n in listed if n not in folded]
        return _fold(store, base, _read_rows(store, names), tuple(names), [n for n in listed if n in folded])

    return _commit(store, plan)


def rebuild_catalog(store: OutputStore) -> CatalogUpdate:
    """Make the table again from every clip's current row (`catalog/rows/`) and pending row, replacing all parts."""
    return _commit(store, _rebuild_plan(store))


def _rebuild_plan(store: OutputStore) -> Callable[[TableState], _Plan]:
    def plan(base: TableState) -> _Plan:
        # A render saves its pending copy, then its current row: the pending rows are read with the current ones
        # (the latest of each clip wins), so a row whose current copy is not written yet is not missed. The clips
        # the last commit folded in and deleted the pending copies of are kept from its parts for the same reason.
        listed = store.list_names(PENDING_PREFIX)
        rows = _read_rows(store, store.list_names(ROW_PREFIX) + listed)
        found = {row.clip_id for row in rows}
        folded = {n.removeprefix(PENDING_PREFIX).partition("@")[0] for n in base.consumed} - found
        for part in base.parts if folded else ():
            table = _read_part(store, part.name)
            held = table.filter(pc.is_in(table["clip_id"], value_set=pa.array(sorted(folded), pa.string())))
            rows += [CatalogRow.from_dict(record) for record in held.to_pylist()]
        table = _table_of(sorted(rows, key=lambda r: r.rendered_at))
        parts = [_write_part(store, table)] if table.num_rows else []
        state = TableState(base.version + 1, tuple(parts), tuple(listed), _recent([], table))
        update = CatalogUpdate(state, table.num_rows, 0, len(parts))
        return _Plan(update, [p.name for p in base.parts], [p.name for p in parts])

    return plan


def upsert(store: OutputStore, rows: Iterable[CatalogRow]) -> CatalogUpdate:
    """Add rows, replacing any row of the same clip (the last given wins)."""
    given = list(rows)
    return _commit(store, lambda base: _fold(store, base, given, (), []))


def pending_name(clip_id: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    return f"{PENDING_PREFIX}{clip_id}@{stamp}-{uuid.uuid4().hex[:8]}.json"


@dataclass(frozen=True)
class _Plan:
    update: CatalogUpdate  # its state is the base state itself when there is nothing to commit
    replaced_parts: list[str] = field(default_factory=list)  # deleted once the new state is committed
    written: list[str] = field(default_factory=list)  # parts this attempt wrote: deleted if another commits first
    # Pending rows an earlier commit folded in but did not get to delete (it died): deleted now.
    leftovers: list[str] = field(default_factory=list)


def _commit(store: OutputStore, plan_for: Callable[[TableState], _Plan]) -> CatalogUpdate:
    """Plan from the committed state and swap the new state in; when another refresh committed first, plan again."""
    for _ in range(COMMIT_ATTEMPTS):
        base_bytes = store.get_bytes(STATE_NAME)
        base = TableState.from_json(base_bytes)
        try:
            plan = plan_for(base)
        except ObjectMissing:  # a part of `base` was replaced by a commit since: plan again from the new state
            continue
        if plan.update.state is base:  # nothing pending
            store.delete_many(plan.leftovers)
            return plan.update
        new_bytes = plan.update.state.to_json()
        if store.update_many({STATE_NAME: _swap(base_bytes, new_bytes)}):
            store.delete_many([*plan.leftovers, *plan.update.state.consumed, *plan.replaced_parts])
            _delete_orphans(store, plan.update.state)
            return plan.update
        store.delete_many(plan.written)  # another refresh committed first: start over from its state
    raise RuntimeError(f"{store.uri_for_name(STATE_NAME)}: {COMMIT_ATTEMPTS} refreshes at once kept winning")


def _swap(expected: bytes | None, new: bytes) -> Callable[[bytes | None], bytes | None]:
    return lambda current: new if current == expected else None


def _read_rows(store: OutputStore, names: list[str]) -> list[CatalogRow]:
    with ThreadPoolExecutor(max_workers=16) as pool:  # overlapped GETs when the store is S3
        bodies = list(pool.map(store.get_bytes, names))
    rows = [CatalogRow.from_dict(json.loads(body)) for body in bodies if body]
    return sorted(rows, key=lambda r: r.rendered_at)  # a clip rendered twice: its latest row wins


def _fold(
    store: OutputStore, base: TableState, rows: list[CatalogRow], consumed: tuple[str, ...], leftovers: list[str]
) -> _Plan:
    if not rows:
        return _Plan(CatalogUpdate(base), leftovers=leftovers)
    delta = _table_of(rows)
    parts: list[Part] = []
    written: list[str] = []
    replaced_parts: list[str] = []
    read: list[str] = []
    replaced = 0
    for part in base.parts:
        with store.open_ranged(part.name) as handle:  # the clip_id column only, not the whole part
            stale = pc.is_in(pq.read_table(handle, columns=["clip_id"])["clip_id"], value_set=delta["clip_id"])
        if not pc.any(stale).as_py():
            parts.append(part)
            continue
        replaced += pc.sum(stale).as_py()
        kept = _read_part(store, part.name).filter(pc.invert(stale))
        read.append(part.name)
        replaced_parts.append(part.name)
        if kept.num_rows:
            parts.append(_write_part(store, kept))
            written.append(parts[-1].name)
    parts.append(_write_part(store, delta))
    written.append(parts[-1].name)
    while len(parts) >= 2 and parts[-2].rows < 2 * parts[-1].rows:  # keep each part at least twice the next
        older, newer = parts[-2], parts.pop()
        merged = pa.concat_tables([_read_part(store, older.name), _read_part(store, newer.name)]).sort_by("clip_id")
        read += [older.name, newer.name]
        replaced_parts += [n for n in (older.name, newer.name) if n not in written]
        parts[-1] = _write_part(store, merged)
        written.append(parts[-1].name)
    state = TableState(base.version + 1, tuple(parts), consumed, _recent(list(base.recent), delta))
    return _Plan(CatalogUpdate(state, delta.num_rows, replaced, len(written), read), replaced_parts, written, leftovers)


def _table_of(rows: list[CatalogRow]) -> pa.Table:
    latest = {row.clip_id: row.record() for row in rows}
    return pa.Table.from_pylist(list(latest.values()), schema=CATALOG_SCHEMA).sort_by("clip_id")


def _recent(kept: list[dict[str, Any]], delta: pa.Table) -> tuple[dict[str, Any], ...]:
    ids = set(delta["clip_id"].to_pylist())
    fresh = [r | {"rendered_at": r["rendered_at"].isoformat()} for r in delta.select(_PREVIEW_COLUMNS).to_pylist()]
    rows = [r for r in kept if r["clip_id"] not in ids] + fresh
    return tuple(sorted(rows, key=lambda r: r["rendered_at"], reverse=True)[:RECENT_KEPT])


def _write_part(store: OutputStore, table: pa.Table) -> Part:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    name = f"{TABLE_PREFIX}part-{stamp}-{uuid.uuid4().hex[:12]}.parquet"
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    store.put_bytes(name, buffer.getvalue())
    duration = float(pc.sum(table["duration_seconds"]).as_py() or 0.0)
    return Part(name, table.num_rows, duration, int(pc.sum(table["size_bytes"]).as_py() or 0))


def _read_part(store: OutputStore, name: str) -> pa.Table:
    data = store.get_bytes(name)
    if data is None:
        raise ObjectMissing(name)
    table = pq.read_table(io.BytesIO(data))
    for name in LATER_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(
                CATALOG_SCHEMA.field(name), pa.nulls(table.num_rows, CATALOG_SCHEMA.field(name).type)
            )
    return table.select(CATALOG_SCHEMA.names).cast(CATALOG_SCHEMA)


def _delete_orphans(store: OutputStore, state: TableState) -> None:
    named = {p.name for p in state.parts}
    cutoff = (datetime.now(UTC) - ORPHAN_AGE).strftime("%Y%m%dT%H%M%S")
    listed = store.list_names(f"{TABLE_PREFIX}part-")
    store.delete_many(n for n in listed if n not in named and n.removeprefix(f"{TABLE_PREFIX}part-")[:15] < cutoff)


def catalog_summary(state: TableState, preview_rows: int = 10) -> dict[str, int | float | str]:
    """Plain values for a Dagster materialization: row count, totals, and a markdown table of the most
    recently rendered clips (`preview_markdown`: wrap it in `MetadataValue.md` to have it rendered)."""
    recent = list(state.recent[:preview_rows])
    lines = [
        "| " + " | ".join(_PREVIEW_COLUMNS) + " |",
        "|" + "---|" * len(_PREVIEW_COLUMNS),
    ]
    for record in recent:
        record = record | {"rendered_at": datetime.fromisoformat(record["rendered_at"])}  # ISO text in the state
        lines.append("| " + " | ".join(_cell(record[c]) for c in _PREVIEW_COLUMNS) + " |")
    if state.rows > len(recent):
        lines.append(f"\n{len(recent)} most recent of {state.rows} clips.")
    return {
        "rows": state.rows,
        "total_duration_seconds": round(sum(p.duration_seconds for p in state.parts), 3),
        "total_size_bytes": sum(p.size_bytes for p in state.parts),
        "preview_markdown": "\n".join(lines),
    }


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value).replace("|", "\\|").replace("\n", " ")
