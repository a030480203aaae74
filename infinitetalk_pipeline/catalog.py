"""The video catalog: one Parquet row per rendered clip, stored beside the videos (`storage.CATALOG_NAME`).

`upsert` is a read-modify-write of one object: run it from a single writer at a time (the `video_catalog`
asset), not from concurrent renders, or one writer's rows can be lost. Each write itself is atomic, so a
reader sees the old table or the new one, never a mix.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from infinitetalk_pipeline.registry import ROW_PREFIX
from infinitetalk_pipeline.storage import CATALOG_NAME, OutputStore

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
    ],
    metadata={"infinitetalk.catalog_version": "1"},
)
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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CatalogRow:
        """A row from `dataclasses.asdict` output that went through JSON: `rendered_at` may be ISO text, and
        keys that are not columns are ignored (callers keep extra bookkeeping beside the row)."""
        missing = [name for name in CATALOG_SCHEMA.names if name not in data]
        if missing:
            raise ValueError(f"catalog row of clip {data.get('clip_id')!r} lacks {', '.join(missing)}")
        values = {name: data[name] for name in CATALOG_SCHEMA.names}
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


def refresh_catalog(store: OutputStore) -> pd.DataFrame:
    """Fold every clip's kept render record (`catalog/rows/<clip_id>.json`) into the Parquet table; returns it."""
    bodies = [json.loads(store.get_bytes(name) or b"{}") for name in store.list_names(ROW_PREFIX)]
    return upsert(store, [CatalogRow.from_dict(body) for body in bodies if body])


def upsert(store: OutputStore, rows: Iterable[CatalogRow]) -> pd.DataFrame:
    """Add rows, replacing any existing row of the same clip (the last given wins); returns the new table."""
    latest = {row.clip_id: row.record() for row in rows}
    existing = _read_table(store)
    keep = pc.invert(pc.is_in(existing["clip_id"], value_set=pa.array(list(latest), pa.string())))
    new = pa.Table.from_pylist(list(latest.values()), schema=CATALOG_SCHEMA)
    table = pa.concat_tables([existing.filter(keep), new]).sort_by("clip_id")
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    store.put_bytes(CATALOG_NAME, buffer.getvalue())
    return table.to_pandas()


def read_catalog(store: OutputStore) -> pd.DataFrame:
    """The catalog as a DataFrame (empty, with every column, when nothing was rendered yet)."""
    return _read_table(store).to_pandas()


def _read_table(store: OutputStore) -> pa.Table:
    data = store.get_bytes(CATALOG_NAME)
    if data is None:
        return CATALOG_SCHEMA.empty_table()
    table = pq.read_table(io.BytesIO(data))
    # Conform older files to today's schema: missing columns become nulls, unknown ones are dropped.
    columns = [
        table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in CATALOG_SCHEMA
    ]
    return pa.Table.from_arrays(columns, schema=CATALOG_SCHEMA)


def catalog_summary(catalog: pd.DataFrame, preview_rows: int = 10) -> dict[str, int | float | str]:
    """Plain values for a Dagster materialization: row count, totals, and a markdown table of the most
    recently rendered clips (`preview_markdown`: wrap it in `MetadataValue.md` to have it rendered)."""
    recent = catalog.sort_values("rendered_at", ascending=False).head(preview_rows)
    lines = [
        "| " + " | ".join(_PREVIEW_COLUMNS) + " |",
        "|" + "---|" * len(_PREVIEW_COLUMNS),
    ]
    for record in recent[_PREVIEW_COLUMNS].to_dict("records"):
        lines.append("| " + " | ".join(_cell(record[c]) for c in _PREVIEW_COLUMNS) + " |")
    if len(catalog) > len(recent):
        lines.append(f"\n{len(recent)} most recent of {len(catalog)} clips.")
    return {
        "rows": len(catalog),
        "total_duration_seconds": round(float(catalog["duration_seconds"].sum()), 3),
        "total_size_bytes": int(catalog["size_bytes"].sum()),
        "preview_markdown": "\n".join(lines),
    }


def _cell(value: object) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value).replace("|", "\\|").replace("\n", " ")
