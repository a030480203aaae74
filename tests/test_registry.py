"""The clip registry: requests kept in hash shards, re-registration that writes only what changed, and writers
that run at once without losing each other's clips (a local root and a real S3 API)."""

from __future__ import annotations

import csv
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from infinitetalk_pipeline.errors import ClipInputError
from infinitetalk_pipeline.manifest import read_manifest
from infinitetalk_pipeline.registry import SHARD_PREFIX, load_spec, register_manifest, shard_of
from infinitetalk_pipeline.storage import LocalOutputStore, OutputStore, S3OutputStore


def write_manifest(path: Path, clip_ids: list[str], prompt: dict[str, str] | None = None) -> Path:
    prompt = prompt or {}
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clip_id", "image_path", "wav_path", "prompt"])
        for clip_id in clip_ids:
            writer.writerow([clip_id, "face.png", "voice.wav", prompt.get(clip_id, "a person talking")])
    return path


def register(store: OutputStore, path: Path, **options: Any):
    return register_manifest(store, str(path), read_manifest(path), set(), **options)


def shard_stamps(store: LocalOutputStore) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (store.root / SHARD_PREFIX).iterdir()}


def test_a_registered_request_is_read_back_by_its_clip(tmp_path: Path) -> None:
    store = LocalOutputStore(tmp_path / "out")
    register(store, write_manifest(tmp_path / "m.csv", ["anna", "ben"], {"ben": "ben speaks"}))
    spec = load_spec(store, "ben")
    assert (spec.manifest, spec.row_number, spec.request.prompt) == (str(tmp_path / "m.csv"), 3, "ben speaks")
    assert spec.request.image_path == str(tmp_path / "face.png")  # anchored beside the manifest


def test_a_hundred_thousand_clips_are_kept_in_a_bounded_number_of_objects(tmp_path: Path) -> None:
    assert len({shard_of(f"clip-{i:06d}") for i in range(100_000)}) <= 1024


def test_re_registering_an_unchanged_manifest_writes_nothing(tmp_path: Path) -> None:
    store = LocalOutputStore(tmp_path / "out")
    manifest = write_manifest(tmp_path / "m.csv", [f"clip-{i}" for i in range(50)])
    assert len(register(store, manifest).changed) == 50
    before = shard_stamps(store)
    again = register(store, manifest)
    assert again.changed == [] and len(again.specs) == 50
    assert shard_stamps(store) == before


def test_a_changed_row_is_picked_up_and_unchanged_rows_are_not_rewritten(tmp_path: Path) -> None:
    store = LocalOutputStore(tmp_path / "out")
    clip_ids = [f"clip-{i}" for i in range(50)]
    register(store, write_manifest(tmp_path / "m.csv", clip_ids))
    before = shard_stamps(store)
    again = register(store, write_manifest(tmp_path / "m.csv", clip_ids, {"clip-7": "now smiling"}))
    assert again.changed == ["clip-7"]
    assert load_spec(store, "clip-7").request.prompt == "now smiling"
    changed_shard = shard_of("clip-7").rpartition("/")[2]
    after = shard_stamps(store)
    assert after[changed_shard] != before[changed_shard]
    assert {k: v for k, v in after.items() if k != changed_shard} == {
        k: v for k, v in before.items() if k != changed_shard
    }
    assert all(load_spec(store, c).request.prompt == "a person talking" for c in clip_ids if c != "clip-7")


def test_a_clip_of_another_manifest_is_kept_unless_replacing(tmp_path: Path) -> None:
    store = LocalOutputStore(tmp_path / "out")
    first = register(store, write_manifest(tmp_path / "first.csv", ["anna", "ben"]))
    second = register(store, write_manifest(tmp_path / "second.csv", ["ben", "cleo"], {"ben": "other ben"}))
    assert [row.clip_id for row in second.invalid] == ["ben"]
    assert (
        "already registered by" in second.invalid[0].reason and str(tmp_path / "first.csv") in second.invalid[0].reason
    )
    assert [s.clip_id for s in second.specs] == ["cleo"] and len(first.specs) == 2
    assert load_spec(store, "ben").request.prompt == "a person talking"
    replaced = register(store, tmp_path / "second.csv", replace_other_manifests=True)
    assert replaced.invalid == [] and load_spec(store, "ben").request.prompt == "other ben"


def concurrent_registrations(store: OutputStore, tmp_path: Path) -> None:
    # Three manifests of 600 clips each, registered at once: about 300 of the shards are written by two or three.
    manifests = [write_manifest(tmp_path / f"m{n}.csv", [f"m{n}-clip-{i}" for i in range(600)]) for n in range(3)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda path: register(store, path), manifests))
    assert all(len(r.changed) == 600 for r in results)
    kept = {}
    for name in store.list_names(SHARD_PREFIX):
        kept.update(json.loads(store.get_bytes(name) or b"{}"))
    assert len(kept) == 1_800
    assert all(body["manifest"].endswith(f"{clip_id.partition('-')[0]}.csv") for clip_id, body in kept.items())


def test_registrations_at_once_lose_no_clip_on_a_local_root(tmp_path: Path) -> None:
    concurrent_registrations(LocalOutputStore(tmp_path / "out"), tmp_path)


def test_registrations_at_once_lose_no_clip_on_s3(s3: Any, s3_bucket: str, tmp_path: Path) -> None:
    concurrent_registrations(S3OutputStore(s3, s3_bucket, "out"), tmp_path)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_clip_never_registered_names_the_clip_and_what_to_do(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if where == "local":
        store: OutputStore = LocalOutputStore(tmp_path / "out")
    else:
        store = S3OutputStore(request.getfixturevalue("s3"), request.getfixturevalue("s3_bucket"), "out")
    register(store, write_manifest(tmp_path / "m.csv", ["anna"]))
    with pytest.raises(ClipInputError, match=r"nobody.*materialize clip_manifest"):
        load_spec(store, "nobody")
