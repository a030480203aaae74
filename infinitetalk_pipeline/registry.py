"""The clip registry: each registered clip's validated request, kept in the output store.

Dynamic partitions hold only keys, so the request behind a key lives here (`clips/<clip_id>.json`), written when
a manifest registers the clip and read by every per-clip step. One small object per clip means runs of different
clips and manifests never write the same object. Timings (`timing/<clip_id>.json`) and catalog rows
(`catalog/rows/<clip_id>.json`) are kept the same way; `video_catalog` folds the rows into Parquet.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from infinitetalk_pipeline.errors import ClipInputError
from infinitetalk_pipeline.manifest import InvalidRow, ManifestResult
from infinitetalk_pipeline.spec import MEDIA_FIELDS, ClipRequest
from infinitetalk_pipeline.storage import OutputStore
from infinitetalk_pipeline.timing import ClipTiming

SPEC_PREFIX = "clips/"
TIMING_PREFIX = "timing/"
FAILURES_PREFIX = "failures/"  # the latest failure of each clip not rendered since (written by the failure sensor)
ROW_PREFIX = "catalog/rows/"


@dataclass(frozen=True)
class ClipSpec:
    clip_id: str
    manifest: str
    row_number: int
    request: ClipRequest

    def to_json(self) -> bytes:
        body = {
            "clip_id": self.clip_id,
            "manifest": self.manifest,
            "row_number": self.row_number,
            "request": self.request.model_dump(exclude_none=True),
        }
        return json.dumps(body, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ClipSpec:
        body = json.loads(data)
        return cls(
            clip_id=body["clip_id"],
            manifest=body["manifest"],
            row_number=body["row_number"],
            request=ClipRequest.model_validate(body["request"]),
        )


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


def register_manifest(
    store: OutputStore,
    uri: str,
    manifest: ManifestResult,
    existing: set[str],
    *,
    replace_other_manifests: bool = False,
) -> Registration:
    """Keep the request of every valid row of the manifest at `uri`. A clip id already registered (`existing`) by
    another manifest is an invalid row unless `replace_other_manifests`: then this manifest's request replaces it."""
    valid, invalid = manifest.valid, list(manifest.invalid)
    if not replace_other_manifests:
        owners = registered_manifests(store, [row.clip_id for row in valid if row.clip_id in existing])
        taken = {clip_id: owner for clip_id, owner in owners.items() if owner[0] != uri}
        valid = [row for row in valid if row.clip_id not in taken]
        invalid += [
            InvalidRow(
                row.row_number,
                row.clip_id,
                "clip_id",
                f"already registered by {taken[row.clip_id][0]} row {taken[row.clip_id][1]} (rename the clip, or "
                "materialize clip_manifest with replace_other_manifests: true)",
            )
            for row in manifest.valid
            if row.clip_id in taken
        ]
    requests = anchor_local_paths([row.request for row in valid], uri)
    specs = [ClipSpec(row.clip_id, uri, row.row_number, req) for row, req in zip(valid, requests, strict=True)]
    save_specs(store, specs)
    return Registration(specs, invalid, [s.clip_id for s in specs if s.clip_id not in existing])


def save_specs(store: OutputStore, specs: list[ClipSpec]) -> None:
    store.put_many({f"{SPEC_PREFIX}{s.clip_id}.json": s.to_json() for s in specs})


def load_spec(store: OutputStore, clip_id: str) -> ClipSpec:
    data = store.get_bytes(f"{SPEC_PREFIX}{clip_id}.json")
    if data is None:
        raise ClipInputError(clip_id, None, "no registered request: materialize clip_manifest for its manifest")
    return ClipSpec.from_json(data)


def save_row(store: OutputStore, clip_id: str, row: dict[str, Any]) -> None:
    store.put_bytes(f"{ROW_PREFIX}{clip_id}.json", json.dumps(row, sort_keys=True, default=str).encode())


def load_row(store: OutputStore, clip_id: str) -> dict[str, Any] | None:
    data = store.get_bytes(f"{ROW_PREFIX}{clip_id}.json")
    return None if data is None else json.loads(data)


def save_timing(store: OutputStore, clip_id: str, timing: ClipTiming) -> None:
    store.put_bytes(f"{TIMING_PREFIX}{clip_id}.json", json.dumps(asdict(timing)).encode())


def load_timing(store: OutputStore, clip_id: str) -> ClipTiming | None:
    data = store.get_bytes(f"{TIMING_PREFIX}{clip_id}.json")
    if data is None:
        return None
    body = json.loads(data)
    return ClipTiming(**{**body, "audio_seconds": tuple(body["audio_seconds"])})


def registered_manifests(store: OutputStore, clip_ids: list[str]) -> dict[str, tuple[str, int]]:
    """clip id -> (manifest, row) of the requests already registered for these clips."""
    with ThreadPoolExecutor(max_workers=16) as pool:  # overlapped GETs when the store is S3
        blobs = pool.map(lambda clip_id: store.get_bytes(f"{SPEC_PREFIX}{clip_id}.json"), clip_ids)
        owners = {}
        for clip_id, data in zip(clip_ids, blobs, strict=True):
            if data is not None:
                body = json.loads(data)
                owners[clip_id] = (body["manifest"], body["row_number"])
    return owners


def clear_failure(store: OutputStore, clip_id: str) -> None:
    store.delete(f"{FAILURES_PREFIX}{clip_id}.json")
