"""The incremental catalog: a refresh folds in only the renders since the last one, equals a full rebuild of the
same rows, and refreshes at once neither lose a row nor keep one twice (a local root and a real S3 API)."""

from __future__ import annotations

import dataclasses
import io
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from infinitetalk_pipeline.catalog import (
    PENDING_PREFIX,
    TABLE_PREFIX,
    CatalogRow,
    read_catalog,
    rebuild_catalog,
    refresh_catalog,
    table_state,
)
from infinitetalk_pipeline.registry import save_row
from infinitetalk_pipeline.storage import LocalOutputStore, OutputStore, S3OutputStore
from tests.test_catalog import T0, row


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OutputStore]:
    if request.param == "local":
        yield LocalOutputStore(tmp_path / "out")
    else:
        yield S3OutputStore(request.getfixturevalue("s3"), request.getfixturevalue("s3_bucket"), "out")


def render(store: OutputStore, clip_id: str, minute: int, **changes: Any) -> None:
    """What a render leaves behind: its row, as clip_renderer saves it."""
    rendered = row(clip_id, rendered_at=T0 + timedelta(minutes=minute), **changes)
    save_row(store, clip_id, dataclasses.asdict(rendered) | {"fingerprint": f"f-{minute}"})


def clip_ids_per_part(store: OutputStore) -> list[list[str]]:
    return [
        pq.read_table(io.BytesIO(store.get_bytes(p.name) or b""))["clip_id"].to_pylist()
        for p in table_state(store).parts
    ]


def test_incremental_refreshes_equal_a_full_rebuild_of_the_same_rows(store: OutputStore) -> None:
    for i in range(120):
        render(store, f"c{i:04d}", minute=i)
    refresh_catalog(store)
    for i in range(120, 150):
        render(store, f"c{i:04d}", minute=i)
    for i in range(0, 120, 15):  # 8 re-renders
        render(store, f"c{i:04d}", minute=1000 + i, frames=99)
    refresh_catalog(store)
    for i in range(150, 200):
        render(store, f"c{i:04d}", minute=i)
    render(store, "c0003", minute=2000, frames=7)
    render(store, "c0003", minute=2001, frames=8)  # twice between refreshes: the later row wins
    refresh_catalog(store)
    incremental = read_catalog(store)
    rebuild_catalog(store)
    rebuilt = read_catalog(store)
    assert incremental.equals(rebuilt)
    assert len(incremental) == 200 and incremental.set_index("clip_id").loc["c0003", "frames"] == 8
    assert incremental.set_index("clip_id").loc["c0015", "frames"] == 99


def test_a_refresh_reads_and_writes_in_proportion_to_the_new_rows(tmp_path: Path) -> None:
    store = LocalOutputStore(tmp_path / "out")
    for i in range(1_000):
        render(store, f"c{i:05d}", minute=i)
    rebuild_catalog(store)
    for i in range(1_000, 1_020):
        render(store, f"c{i:05d}", minute=i)
    update = refresh_catalog(store)
    assert (update.applied, update.replaced, update.parts_written, update.parts_read) == (20, 0, 1, [])
    assert update.state.rows == 1_020 and len(update.state.parts) == 2


def test_a_re_rendered_clip_replaces_its_row_and_is_in_one_part_only(store: OutputStore) -> None:
    for i in range(100):
        render(store, f"c{i:03d}", minute=i)
    refresh_catalog(store)
    render(store, "c042", minute=500, frames=12)
    update = refresh_catalog(store)
    assert (update.applied, update.replaced, update.state.rows) == (1, 1, 100)
    parts = clip_ids_per_part(store)
    assert sum(ids.count("c042") for ids in parts) == 1
    assert sum(len(ids) for ids in parts) == len({c for ids in parts for c in ids}) == 100
    assert read_catalog(store).set_index("clip_id").loc["c042", "frames"] == 12


def test_folded_pending_rows_are_deleted_and_a_second_refresh_does_nothing(store: OutputStore) -> None:
    for i in range(10):
        render(store, f"c{i}", minute=i)
    refresh_catalog(store)
    assert store.list_names(PENDING_PREFIX) == []
    again = refresh_catalog(store)
    assert (again.applied, again.parts_written, again.state.rows) == (0, 0, 10)


def test_a_store_with_rows_but_no_table_gets_the_full_rebuild(tmp_path: Path) -> None:
    store = LocalOutputStore(tmp_path / "out")
    for i in range(5):
        render(store, f"c{i}", minute=i)
    for name in store.list_names(PENDING_PREFIX):  # rows kept by an older version, which wrote no pending copy
        store.delete(name)
    assert refresh_catalog(store).state.rows == 5


def test_a_part_of_a_refresh_that_died_is_deleted_once_old_and_never_read(tmp_path: Path) -> None:
    store = LocalOutputStore(tmp_path / "out")
    render(store, "a", minute=0)
    refresh_catalog(store)
    stale, fresh = (
        f"{TABLE_PREFIX}part-20200101T000000-dead.parquet",
        f"{TABLE_PREFIX}part-29990101T000000-live.parquet",
    )
    for name in (stale, fresh):
        store.put_bytes(name, store.get_bytes(table_state(store).parts[0].name) or b"")
    render(store, "b", minute=1)
    refresh_catalog(store)
    names = store.list_names(TABLE_PREFIX)
    assert stale not in names and fresh in names
    assert list(read_catalog(store)["clip_id"]) == ["a", "b"]


def test_refreshes_at_once_while_clips_render_lose_no_row_and_keep_none_twice(store: OutputStore) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def refresher() -> None:
        try:
            while not stop.is_set():
                refresh_catalog(store)
        except BaseException as exc:
            errors.append(exc)
            raise

    threads = [threading.Thread(target=refresher) for _ in range(3)]
    for thread in threads:
        thread.start()
    for i in range(80):
        render(store, f"c{i:03d}", minute=i)
        if i % 10 == 0:
            render(store, f"c{i // 2:03d}", minute=1000 + i, frames=i)  # re-renders too
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == []
    refresh_catalog(store)
    parts = clip_ids_per_part(store)
    assert sum(len(ids) for ids in parts) == len({c for ids in parts for c in ids}) == 80
    incremental = read_catalog(store)
    rebuild_catalog(store)
    assert incremental.equals(read_catalog(store))
    assert store.list_names(PENDING_PREFIX) == []


def test_the_rows_of_the_table_are_the_rows_of_the_renders(store: OutputStore) -> None:
    render(store, "a", minute=3, prompt="hello | world")
    refresh_catalog(store)
    (only,) = read_catalog(store).to_dict("records")
    assert CatalogRow.from_dict(only) == row("a", rendered_at=T0 + timedelta(minutes=3), prompt="hello | world")
