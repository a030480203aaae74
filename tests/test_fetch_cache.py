"""The fetch cache stays bounded: blobs unused too long go, the least recently used go first beyond the size limit,
recently used files are never removed, and eviction runs at most once per interval among the processes sharing the
cache (issue 12, item 6)."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from infinitetalk_pipeline.defs.resources import build_resources
from infinitetalk_pipeline.media.sources import CacheLimits, MediaFetcher, SourcePolicy
from infinitetalk_pipeline.spec import MediaRef
from tests.fixtures.http_files import FileServer
from tests.fixtures.media import make_portrait

DAY = 86400.0
POLICY = SourcePolicy(allow_private_hosts=True)  # the test's file server is on 127.0.0.1


def limited(cache: Path, **limits: Any) -> MediaFetcher:
    """A fetcher that evicts under `limits` each time it stores a download."""
    return MediaFetcher(POLICY, cache, cache_limits=CacheLimits(every_seconds=0, **limits))


def portrait(tmp_path: Path, colour: str) -> MediaRef:
    """A distinct portrait per colour, as a base64 field: each is stored as its own blob."""
    data = make_portrait(tmp_path / f"{colour.lstrip('#')}.png", colour=colour).read_bytes()
    return MediaRef(role="image", field="image_base64", kind="base64", value=base64.b64encode(data).decode())


def portrait_url(http_files: FileServer, tmp_path: Path) -> MediaRef:
    url = http_files.put("face.png", make_portrait(tmp_path / "served.png").read_bytes())
    return MediaRef(role="image", field="image_url", kind="url", value=url)


def last_used(path: Path, days_ago: float) -> None:
    then = time.time() - days_ago * DAY
    os.utime(path, (then, then))


def test_blobs_unused_longer_than_the_max_age_are_evicted(tmp_path: Path) -> None:
    fetcher = limited(tmp_path / "cache", max_age_seconds=30 * DAY)
    old = fetcher.fetch(portrait(tmp_path, "#ff0000")).path
    kept = fetcher.fetch(portrait(tmp_path, "#00ff00")).path
    last_used(old, 31)
    last_used(kept, 29)
    new = fetcher.fetch(portrait(tmp_path, "#0000ff")).path  # storing a download runs the eviction
    assert (old.exists(), kept.exists(), new.exists()) == (False, True, True)


def test_the_least_recently_used_blobs_go_first_beyond_the_size_limit(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    filler = MediaFetcher(POLICY, cache)
    a, b, c = (filler.fetch(portrait(tmp_path, colour)).path for colour in ("#ff0000", "#00ff00", "#0000ff"))
    for path, days_ago in ((a, 3), (b, 1), (c, 2)):
        last_used(path, days_ago)
    new = portrait(tmp_path, "#ffff00")
    room = b.stat().st_size + len(base64.b64decode(new.value))  # b and the new one fit, c does not
    limited(cache, max_bytes=room).fetch(new)
    assert (a.exists(), b.exists(), c.exists()) == (False, True, False)


def test_a_remembered_source_used_again_counts_as_used(http_files: FileServer, tmp_path: Path) -> None:
    fetcher = limited(tmp_path / "cache", max_age_seconds=30 * DAY)
    face = portrait_url(http_files, tmp_path)
    blob = fetcher.fetch(face).path
    last_used(blob, 40)
    fetcher.fetch(face)  # remembered: not downloaded again, but used
    fetcher.fetch(portrait(tmp_path, "#ff0000"))
    assert blob.exists()
    assert len(http_files.requests) == 1


def test_files_used_in_the_last_hours_are_never_evicted(tmp_path: Path) -> None:
    """A fetched input may wait for its upload while a worker finishes other clips: neither age nor size removes
    it meanwhile."""
    fetcher = limited(tmp_path / "cache", max_bytes=1, max_age_seconds=3600, keep_recent_seconds=6 * 3600)
    waiting = fetcher.fetch(portrait(tmp_path, "#ff0000")).path
    last_used(waiting, 5 / 24)
    new = fetcher.fetch(portrait(tmp_path, "#00ff00")).path
    assert (waiting.exists(), new.exists()) == (True, True)


def test_a_partial_download_left_by_a_killed_process_is_removed(tmp_path: Path) -> None:
    fetcher = limited(tmp_path / "cache")
    abandoned = fetcher.cache_dir / "tmp" / "killed.part"
    in_progress = fetcher.cache_dir / "tmp" / "running.part"
    abandoned.write_bytes(b"half a download")
    in_progress.write_bytes(b"a download")
    last_used(abandoned, 1)
    fetcher.fetch(portrait(tmp_path, "#ff0000"))
    assert (abandoned.exists(), in_progress.exists()) == (False, True)


def test_index_entries_unused_longer_than_the_max_age_are_evicted(http_files: FileServer, tmp_path: Path) -> None:
    fetcher = limited(tmp_path / "cache", max_age_seconds=30 * DAY)
    fetcher.fetch(portrait_url(http_files, tmp_path))
    (entry,) = (fetcher.cache_dir / "sources").iterdir()
    last_used(entry, 31)
    fetcher.fetch(portrait(tmp_path, "#ff0000"))
    assert not entry.exists()


def test_eviction_runs_at_most_once_per_interval_among_processes(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    limits = CacheLimits(max_age_seconds=30 * DAY, every_seconds=3600)
    stale = MediaFetcher(POLICY, cache).fetch(portrait(tmp_path, "#ff0000")).path
    last_used(stale, 40)
    MediaFetcher(POLICY, cache, cache_limits=limits).fetch(portrait(tmp_path, "#00ff00"))
    assert not stale.exists()  # the first store in the interval evicts
    stale = MediaFetcher(POLICY, cache).fetch(portrait(tmp_path, "#0000ff")).path
    last_used(stale, 40)
    MediaFetcher(POLICY, cache, cache_limits=limits).fetch(portrait(tmp_path, "#ffff00"))  # another process
    assert stale.exists()


def test_a_remembered_file_evicted_by_another_process_is_fetched_again(http_files: FileServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    fetcher = MediaFetcher(POLICY, cache)
    face = portrait_url(http_files, tmp_path)
    blob = fetcher.fetch(face).path
    last_used(blob, 40)
    limited(cache, max_age_seconds=30 * DAY).fetch(portrait(tmp_path, "#ff0000"))
    assert not blob.exists()
    assert fetcher.fetch(face).path.is_file()
    assert len(http_files.requests) == 2


def test_the_storage_resource_takes_the_cache_and_upload_limits_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFINITETALK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("INFINITETALK_CACHE_MAX_GB", "2")
    monkeypatch.setenv("INFINITETALK_CACHE_MAX_AGE_DAYS", "7")
    monkeypatch.setenv("INFINITETALK_WORKER_MAX_UPLOAD_MB", "200")
    resources = build_resources()
    with dg.build_resources({k: v for k, v in resources.items() if k != "s3"}) as resolved:  # as a run does
        fetcher = resolved.storage.fetcher()
    assert fetcher.cache_limits == CacheLimits(max_bytes=2 << 30, max_age_seconds=7 * DAY)
    assert fetcher.policy.max_upload_bytes == 200 << 20
