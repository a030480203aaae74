"""The video catalog: one Parquet row per clip, replaced on re-render, stable schema, beside the videos."""

from __future__ import annotations

import dataclasses
import io
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infinitetalk_pipeline.catalog import (
    CATALOG_SCHEMA,
    STATE_NAME,
    CatalogRow,
    catalog_summary,
    read_catalog,
    table_state,
    upsert,
)
from infinitetalk_pipeline.storage import LocalOutputStore, OutputStore, S3OutputStore

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def row(clip_id: str, **changes: Any) -> CatalogRow:
    base = CatalogRow(
        clip_id=clip_id,
        manifest="/data/manifest.csv",
        inputs=json.dumps({"image": "/data/a.png", "audio": "/data/a.wav"}),
        workflow="I2V_single",
        profile="preview",
        prompt="A person talking naturally",
        width=512,
        height=512,
        frames=50,
        fps=25.0,
        duration_seconds=2.0,
        size_bytes=1000,
        sha256="ab" * 32,
        output_uri=f"/out/videos/{clip_id}.mp4",
        comfy_prompt_id="5f0c-prompt",
        worker="http://127.0.0.1:8188",
        render_seconds=1.5,
        rendered_at=T0,
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
def store(tmp_path: Path) -> LocalOutputStore:
    return LocalOutputStore(tmp_path / "out")


def upserted(store: OutputStore, rows: list[CatalogRow]) -> pd.DataFrame:
    upsert(store, rows)
    return read_catalog(store)


def test_upsert_into_an_empty_store_writes_one_row_per_clip(store: LocalOutputStore) -> None:
    table = upserted(store, [row("b"), row("a")])
    assert list(table["clip_id"]) == ["a", "b"]
    assert store.get_bytes(STATE_NAME) is not None


def test_upsert_replaces_the_row_of_a_re_rendered_clip(store: LocalOutputStore) -> None:
    upsert(store, [row("a"), row("b")])
    table = upserted(store, [row("a", frames=75, rendered_at=T0 + timedelta(hours=1))])
    assert list(table["clip_id"]) == ["a", "b"]
    assert table.set_index("clip_id").loc["a", "frames"] == 75


def test_upsert_never_keeps_two_rows_for_one_clip_given_twice(store: LocalOutputStore) -> None:
    table = upserted(store, [row("a", frames=1), row("a", frames=2)])
    assert (len(table), table["frames"].iloc[0]) == (1, 2)


def test_catalog_survives_a_re_read(store: LocalOutputStore) -> None:
    written = upserted(store, [row("a"), row("b", prompt="hello | world")])
    again = read_catalog(LocalOutputStore(store.root))
    assert again.equals(written)
    assert again["rendered_at"].iloc[0] == T0


def test_parts_have_the_explicit_schema(store: LocalOutputStore) -> None:
    update = upsert(store, [row("a")])
    on_disk = pq.read_table(io.BytesIO(store.get_bytes(update.state.parts[0].name) or b""))
    assert on_disk.schema.equals(CATALOG_SCHEMA)


def test_schema_columns_are_the_documented_ones() -> None:
    assert CATALOG_SCHEMA.names == [
        "clip_id",
        "manifest",
        "inputs",
        "workflow",
        "profile",
        "prompt",
        "width",
        "height",
        "frames",
        "fps",
        "duration_seconds",
        "size_bytes",
        "sha256",
        "output_uri",
        "comfy_prompt_id",
        "worker",
        "render_seconds",
        "rendered_at",
        "windows",
        "comfy_execution_seconds",
        "segments",
    ]
    assert CATALOG_SCHEMA.field("rendered_at").type == pa.timestamp("us", tz="UTC")


def test_reading_an_absent_catalog_gives_an_empty_table_with_every_column(store: LocalOutputStore) -> None:
    empty = read_catalog(store)
    assert (len(empty), list(empty.columns)) == (0, CATALOG_SCHEMA.names)


def test_inputs_are_stored_as_a_json_object(store: LocalOutputStore) -> None:
    table = upserted(store, [row("a")])
    assert json.loads(table["inputs"].iloc[0]) == {"audio": "/data/a.wav", "image": "/data/a.png"}


def test_rendered_at_is_stored_in_utc(store: LocalOutputStore) -> None:
    paris = timezone(timedelta(hours=1))
    table = upserted(store, [row("a", rendered_at=datetime(2025, 1, 2, 4, 4, 5, tzinfo=paris))])
    assert table["rendered_at"].iloc[0] == T0
    assert str(table["rendered_at"].dt.tz) == "UTC"


def test_rendered_at_without_a_time_zone_is_refused(store: LocalOutputStore) -> None:
    with pytest.raises(ValueError, match="time zone"):
        upsert(store, [row("a", rendered_at=datetime(2025, 1, 2))])


def test_a_row_survives_asdict_and_json_as_callers_keep_it(store: LocalOutputStore) -> None:
    saved = json.loads(json.dumps(dataclasses.asdict(row("a")) | {"fingerprint": "f1"}, default=str))
    assert CatalogRow.from_dict(saved) == row("a")


def test_a_row_missing_a_column_is_refused_naming_the_clip() -> None:
    saved = dataclasses.asdict(row("a"))
    del saved["frames"]
    with pytest.raises(ValueError, match="'a' lacks frames"):
        CatalogRow.from_dict(saved)


def test_summary_counts_rows_and_totals(store: LocalOutputStore) -> None:
    update = upsert(store, [row("a", duration_seconds=2.0), row("b", duration_seconds=3.5, size_bytes=500)])
    summary = catalog_summary(update.state)
    assert (summary["rows"], summary["total_duration_seconds"], summary["total_size_bytes"]) == (2, 5.5, 1500)


def test_summary_preview_is_a_markdown_table_of_the_most_recent_clips(store: LocalOutputStore) -> None:
    rows = [row(f"c{i}", rendered_at=T0 + timedelta(minutes=i), workflow="I2V|single") for i in range(5)]
    summary = catalog_summary(upsert(store, rows).state, preview_rows=2)
    lines = str(summary["preview_markdown"]).splitlines()
    assert lines[0].startswith("| clip_id | workflow |")
    assert [line.split(" | ")[0] for line in lines[2:4]] == ["| c4", "| c3"]
    assert "I2V\\|single" in lines[2]
    assert lines[-1] == "2 most recent of 5 clips."


def test_summary_of_an_empty_catalog(store: LocalOutputStore) -> None:
    summary = catalog_summary(table_state(store))
    assert (summary["rows"], summary["total_duration_seconds"], summary["total_size_bytes"]) == (0, 0.0, 0)


@pytest.mark.s3
def test_catalog_lives_beside_the_videos_on_s3(s3: Any, s3_bucket: str) -> None:
    store = S3OutputStore(s3, s3_bucket, "run-1")
    upsert(store, [row("a"), row("b")])
    upsert(store, [row("a", frames=99)])
    s3.head_object(Bucket=s3_bucket, Key="run-1/catalog/video_catalog/_table.json")
    table = read_catalog(store)
    assert (list(table["clip_id"]), list(table["frames"])) == (["a", "b"], [99, 50])
