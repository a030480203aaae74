"""The clip registry: each registered clip's validated request, kept in the output store.

Dynamic partitions hold only keys, so the request behind a key lives here, written when a manifest (or a sensor)
registers the clip and read by every per-clip step. Requests are kept in `SHARDS` hash shards
(`registry/clips/<shard>.json`, clip id -> request): registering 100,000 clips writes about a thousand objects,
not 100,000; re-registering an unchanged manifest reads them and writes none; and a render reads one shard of about
a hundred requests at Dagster's ceiling of 100,000 partitions. Shards are changed with the store's `update_many`
(a file lock, or S3 conditional PUTs), so two registrations at once never lose each other's clips.

Timings (`timing/<clip_id>.json`) and catalog rows (`catalog/rows/<clip_id>.json`) stay one object per clip: each
is written by its clip's render, so renders never write the same object. `video_catalog` folds the rows into
Parquet (catalog.py).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic_core

from infinitetalk_pipeline.catalog import ROW_PREFIX, pending_name
from infinitetalk_pipeline.errors import ClipInputError
from infinitetalk_pipeline.manifest import InvalidRow, ManifestResult
from infinitetalk_pipeline.spec import MEDIA_FIELDS, ClipRequest
from infinitetalk_pipeline.storage import OutputStore
from infinitetalk_pipeline.timing import ClipTiming

SHARD_PREFIX = "registry/clips/"
SHARDS = 1024
TIMING_PREFIX = "timing/"
FAILURES_PREFIX = "failures/"  # the latest failure of each clip not rendered since (written by the failure sensor)


@dataclass(frozen=True)
class ClipSpec:
    clip_id: str
    manifest: str
    row_number: int
    request: ClipRequest

    def body(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest,
            "row_number": self.row_number,
            "request": self.request.model_dump(mode="json", exclude_none=True),  # JSON's types: compared with kept ones
        }

    @classmethod
    def from_body(cls, clip_id: str, body: dict[str, Any]) -> ClipSpec:
        return cls(clip_id, body["manifest"], body["row_number"], ClipRequest.model_validate(body["request"]))


def anchor_local_paths(requests: list[ClipRequest], manifest_uri: str) -> list[ClipRequest]:
    """Relative `*_path` values in a local manifest mean "beside the manifest": make them absolute once, here."""
    if manifest_uri.startswith(("s3://", "http://", "https://")):
        return requests
    base = Path(manifest_uri).resolve().parent
    return [_anchored(request, base) for request in requests]


def _anchored(request: ClipRequest, base: Path) -> ClipRequest:
    updates = {}
    for fields in MEDIA_FIELDS.values():
        value = getattr(request, fields["path"])
        if value and "://" not in value and not value.startswith("/"):
            updates[fields["path"]] = str(base / value)
    return request.model_copy(update=updates) if updates else request


@dataclass(frozen=True)
class Registration:
    specs: list[ClipSpec]  # kept, one per valid row
    invalid: list[InvalidRow]  # the manifest's invalid rows, and rows whose clip id another manifest owns
    new_keys: list[str]  # clip ids that were not registered before: new partitions
    changed: list[str]  # clip ids whose kept request was written (new, or different from the one kept)


def register_manifest(
    store: OutputStore,
    uri: str,
    manifest: ManifestResult,
    existing: set[str],
    *,
    replace_other_manifests: bool = False,
) -> Registration:
    """Keep the request of every valid row of the manifest at `uri`. A clip id already registered by another
    manifest is an invalid row unless `replace_other_manifests`: then this manifest's request replaces it."""
    requests = anchor_local_paths([row.request for row in manifest.valid], uri)
    specs = [ClipSpec(row.clip_id, uri, row.row_number, req) for row, req in zip(manifest.valid, requests, strict=True)]
    saved = save_specs(store, specs, keep_other_manifests=not replace_other_manifests)
    invalid = list(manifest.invalid) + [
        InvalidRow(
            spec.row_number,
            spec.clip_id,
            "clip_id",
            f"already registered by {saved.taken[spec.clip_id][0]} row {saved.taken[spec.clip_id][1]} (rename the "
            "clip, or materialize clip_manifest with replace_other_manifests: true)",
        )
        for spec in specs
        if spec.clip_id in saved.taken
    ]
    kept = [spec for spec in specs if spec.clip_id not in saved.taken]
    return Registration(kept, invalid, [s.clip_id for s in kept if s.clip_id not in existing], saved.changed)


@dataclass(frozen=True)
class SavedSpecs:
    changed: list[str]  # clip ids whose request was written: new, or different from the one kept
    taken: dict[str, tuple[str, int]]  # clip id -> (manifest, row) of the other manifest that keeps it
    shards_written: int


def shard_of(clip_id: str) -> str:
    return f"{SHARD_PREFIX}{zlib.crc32(clip_id.encode()) % SHARDS:04d}.json"  # crc32: fixed, and fast at 100,000


def save_specs(store: OutputStore, specs: list[ClipSpec], *, keep_other_manifests: bool = False) -> SavedSpecs:
    """Keep these requests, each replacing the clip's kept one; with `keep_other_manifests` a clip kept for
    another manifest is left as it is and reported in `taken`. A shard whose requests are unchanged is not
    written."""
    by_shard: dict[str, dict[str, dict[str, Any]]] = {}
    for spec in specs:
        by_shard.setdefault(shard_of(spec.clip_id), {})[spec.clip_id] = spec.body()
    outcomes: dict[str, tuple[list[str], dict[str, tuple[str, int]]]] = {}

    def merge(shard: str) -> Callable[[bytes | None], bytes | None]:
        def change(current: bytes | None) -> bytes | None:
            kept: dict[str, dict[str, Any]] = pydantic_core.from_json(current) if current else {}
            changed, taken = [], {}
            for clip_id, body in by_shard[shard].items():
                old = kept.get(clip_id)
                if old == body:
                    continue
                if old is not None and keep_other_manifests and old["manifest"] != body["manifest"]:
                    taken[clip_id] = (old["manifest"], old["row_number"])
                    continue
                kept[clip_id] = body
                changed.append(clip_id)
            outcomes[shard] = (changed, taken)  # the last call's, which is the one that counts
            return pydantic_core.to_json(kept) if changed else None

        return change

    written = store.update_many({shard: merge(shard) for shard in by_shard})
    return SavedSpecs(
        changed=sorted(clip_id for changed, _ in outcomes.values() for clip_id in changed),
        taken={clip_id: owner for _, taken in outcomes.values() for clip_id, owner in taken.items()},
        shards_written=len(written),
    )


def load_spec(store: OutputStore, clip_id: str) -> ClipSpec:
    data = store.get_bytes(shard_of(clip_id))
    body = json.loads(data).get(clip_id) if data else None
    if body is None:
        raise ClipInputError(clip_id, None, "no registered request: materialize clip_manifest for its manifest")
    return ClipSpec.from_body(clip_id, body)


def save_row(store: OutputStore, clip_id: str, row: dict[str, Any]) -> None:
    """The clip's current row, and a pending copy that the next catalog refresh folds in (catalog.py). The copy
    goes first: a render killed in between leaves a row the catalog will get, never a row it cannot see."""
    data = json.dumps(row, sort_keys=True, default=str).encode()
    store.put_bytes(pending_name(clip_id), data)
    store.put_bytes(f"{ROW_PREFIX}{clip_id}.json", data)


def load_row(store: OutputStore, clip_id: str) -> dict[str, Any] | None:
    data = store.get_bytes(f"{ROW_PREFIX}{clip_id}.json")
    return None if data is None else json.loads(data)


def save_timing(store: OutputStore, clip_id: str, timing: ClipTiming) -> None:
    store.put_bytes(f"{TIMING_PREFIX}{clip_id}.json", json.dumps(timing.to_dict()).encode())


def load_timing(store: OutputStore, clip_id: str) -> ClipTiming | None:
    data = store.get_bytes(f"{TIMING_PREFIX}{clip_id}.json")
    if data is None:
        return None
    return ClipTiming.from_dict(json.loads(data))


def clear_failure(store: OutputStore, clip_id: str) -> None:
    store.delete(f"{FAILURES_PREFIX}{clip_id}.json")
