"""The dubbing assets: clip_manifest -> clip_timing -> dubbed_video (per clip) -> video_catalog.

Assets stay thin: the work is in the library (manifest, render, storage, catalog); these functions move data
between resources, Dagster metadata and the run log.
"""

import dataclasses
import hashlib
import json
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg

from infinitetalk_pipeline.catalog import CatalogRow, catalog_summary, upsert
from infinitetalk_pipeline.comfy.client import ProgressEvent
from infinitetalk_pipeline.comfy.errors import ComfyError
from infinitetalk_pipeline.defs.partitions import clips
from infinitetalk_pipeline.defs.resources import ComfyUIResource, PipelineStorage
from infinitetalk_pipeline.errors import ClipInputError, PipelineError
from infinitetalk_pipeline.manifest import read_manifest
from infinitetalk_pipeline.media.preview import preview_frame_markdown
from infinitetalk_pipeline.registry import (
    ROW_PREFIX,
    ClipSpec,
    anchor_local_paths,
    load_row,
    load_spec,
    save_row,
    save_specs,
)
from infinitetalk_pipeline.render import clip_timing as compute_clip_timing
from infinitetalk_pipeline.render import prepare_clip, render_prepared
from infinitetalk_pipeline.timing import ClipTiming
from infinitetalk_pipeline.verify import Expectation, check_output, inspect_output

GROUP = "dubbing"
VIDEO_CHECKS = ["frames_match_audio", "has_audio_stream", "size_as_requested", "file_not_empty"]

# Transient ComfyUI failures (unreachable, interrupted, timed out) are retried with backoff; input and validation
# errors raise Failure(allow_retries=False) so they fail once, with their message.
RENDER_RETRY = dg.RetryPolicy(max_retries=3, delay=15, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


class ClipManifestConfig(dg.Config):
    manifest: str | None = None  # a local path or s3:// URI; default: the storage resource's `manifest`


def _no_retry(exc: PipelineError) -> dg.Failure:
    return dg.Failure(description=str(exc), allow_retries=False)


@dg.asset(
    group_name=GROUP,
    check_specs=[dg.AssetCheckSpec("no_invalid_rows", asset="clip_manifest")],
    description="Reads a manifest, registers one `clips` partition per valid row and keeps each row's request.",
)
def clip_manifest(
    context: dg.AssetExecutionContext, config: ClipManifestConfig, storage: PipelineStorage
) -> dg.MaterializeResult:
    uri = config.manifest or storage.manifest
    result = read_manifest(uri, s3_client=storage.s3_client() if uri.startswith("s3://") else None)
    specs = [
        ClipSpec(row.clip_id, uri, row.row_number, anchor_local_paths(row.request, uri)) for row in result.valid
    ]
    save_specs(storage.store(), specs)
    existing = set(context.instance.get_dynamic_partitions(clips.name))
    new_keys = [s.clip_id for s in specs if s.clip_id not in existing]
    if new_keys:
        context.instance.add_dynamic_partitions(clips.name, new_keys)
    for bad in result.invalid:
        context.log.warning(f"{uri} row {bad.row_number}: clip {bad.clip_id!r}, field {bad.field!r}: {bad.reason}")
    invalid_table = dg.MetadataValue.md(
        "| row | clip | field | reason |\n|---|---|---|---|\n"
        + "\n".join(f"| {b.row_number} | {b.clip_id} | {b.field} | {b.reason} |" for b in result.invalid)
    )
    return dg.MaterializeResult(
        metadata={
            "manifest": uri,
            "valid_rows": len(result.valid),
            "invalid_rows": len(result.invalid),
            "new_partitions": len(new_keys),
            "invalid": invalid_table,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="no_invalid_rows",
                passed=not result.invalid,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"invalid_rows": len(result.invalid), "invalid": invalid_table},
            )
        ],
    )


@dg.asset(
    group_name=GROUP,
    partitions_def=clips,
    deps=[clip_manifest],
    description="Fetches a clip's speech, measures it exactly and derives frames, fps and InfiniteTalk windows.",
)
def clip_timing(context: dg.AssetExecutionContext, storage: PipelineStorage) -> dg.Output[dict[str, Any]]:
    clip_id = context.partition_key
    try:
        spec = load_spec(storage.store(), clip_id)
        timing = compute_clip_timing(spec.request, storage.fetcher(), clip_id)
    except PipelineError as exc:
        raise _no_retry(exc) from exc
    return dg.Output(
        dataclasses.asdict(timing),
        metadata={
            "audio_seconds": list(timing.audio_seconds),
            "duration_seconds": timing.duration_seconds,
            "frames": timing.frames,
            "fps": timing.fps,
            "windows": timing.windows,
            "frames_source": timing.frames_source,
        },
    )


def _fingerprint(spec: ClipSpec, timing: ClipTiming, profile: str) -> str:
    """What a render depends on: the request, its timing and the profile. Same fingerprint -> same video."""
    body = json.dumps(
        [spec.request.model_dump(exclude_none=True, exclude={"clip_id"}), dataclasses.asdict(timing), profile],
        sort_keys=True,
    )
    return hashlib.sha256(body.encode()).hexdigest()


class ProgressLog:
    """Turns websocket progress into run-log lines: one per node change and per 10% step, not per event."""

    def __init__(self, context: dg.AssetExecutionContext) -> None:
        self._context = context
        self._last: tuple[str | None, int] = (None, -1)

    def __call__(self, event: ProgressEvent) -> None:
        node = f"{event.node_id} ({event.node_class})" if event.node_class else f"{event.node_id}"
        if event.kind == "progress" and event.max:
            step = int(10 * event.value / event.max)
            if (event.node_id, step) != self._last:
                self._last = (event.node_id, step)
                self._context.log.info(f"{100 * event.value / event.max:.0f}% node {node}")
        elif event.kind == "executing" and event.node_id != self._last[0]:
            self._last = (event.node_id, -1)
            self._context.log.info(f"executing node {node}")


@dg.asset(
    group_name=GROUP,
    partitions_def=clips,
    pool="gpu_render",
    retry_policy=RENDER_RETRY,
    check_specs=[dg.AssetCheckSpec(name, asset="dubbed_video") for name in VIDEO_CHECKS],
    description="Renders the clip on a ComfyUI worker and stores the mp4 atomically; skips clips already rendered "
    "from the same inputs.",
)
def dubbed_video(
    context: dg.AssetExecutionContext,
    clip_timing: dict[str, Any],
    comfyui: ComfyUIResource,
    storage: PipelineStorage,
) -> Iterator[dg.Output[dict[str, Any]] | dg.AssetCheckResult]:
    clip_id = context.partition_key
    store = storage.store()
    timing = ClipTiming(**{**clip_timing, "audio_seconds": tuple(clip_timing["audio_seconds"])})
    try:
        spec = load_spec(store, clip_id)
    except ClipInputError as exc:
        raise _no_retry(exc) from exc
    fingerprint = _fingerprint(spec, timing, comfyui.profile)
    previous = load_row(store, clip_id)

    with tempfile.TemporaryDirectory(prefix=f"dub-{clip_id}-") as tmp:
        local = Path(tmp) / f"{clip_id}.mp4"
        stored = store.exists(clip_id)
        if previous and previous.get("fingerprint") == fingerprint and stored is not None:
            context.log.info(f"clip {clip_id!r}: already rendered from the same inputs at {stored.uri}; skipping")
            store.download(stored.uri, local)
            row, skipped = previous, True
        else:
            row, skipped = _render(context, spec, timing, comfyui, storage, local, fingerprint), False
        prepared_size = (row["width"], row["height"])
        facts = inspect_output(local)
        outcomes = check_output(
            facts,
            Expectation(timing.frames, timing.fps, *prepared_size, speech_seconds=timing.duration_seconds),
        )
        preview = preview_frame_markdown(local)

    yield dg.Output(
        row,
        metadata={
            "skipped": skipped,
            "frames": row["frames"],
            "duration_seconds": row["duration_seconds"],
            "render_seconds": row["render_seconds"],
            "worker": row["worker"],
            "workflow": row["workflow"],
            "profile": row["profile"],
            "output": dg.MetadataValue.url(row["output_uri"]) if "://" in row["output_uri"]
            else dg.MetadataValue.path(row["output_uri"]),
            "sha256": row["sha256"],
            "preview": dg.MetadataValue.md(preview),
        },
    )
    for outcome in outcomes:
        yield dg.AssetCheckResult(check_name=outcome.name, passed=outcome.passed, description=outcome.description)


def _render(
    context: dg.AssetExecutionContext,
    spec: ClipSpec,
    timing: ClipTiming,
    comfyui: ComfyUIResource,
    storage: PipelineStorage,
    local: Path,
    fingerprint: str,
) -> dict[str, Any]:
    clip_id = spec.clip_id
    try:
        prepared = prepare_clip(
            spec.request,
            storage.fetcher(),
            local.parent / "work",
            profile=comfyui.profile,  # type: ignore[arg-type]
            clip_id=clip_id,
            timing=timing,
        )
        for warning in prepared.warnings:
            context.log.warning(warning)
        with comfyui.client() as client:
            context.log.info(f"clip {clip_id!r}: rendering {prepared.template.name} ({comfyui.profile}) on "
                             f"{client.base_url}: {timing.frames} frames, {timing.windows} window(s)")
            started = time.monotonic()
            result = render_prepared(prepared, client, local, on_progress=ProgressLog(context))
            render_seconds = time.monotonic() - started
    except ComfyError as exc:
        if exc.transient:
            raise  # RetryPolicy takes it from here
        raise _no_retry(exc) from exc
    except PipelineError as exc:
        raise _no_retry(exc) from exc

    stored = storage.store().put_video(local, clip_id, metadata={"clip-id": clip_id, "fingerprint": fingerprint})
    row = dataclasses.asdict(
        CatalogRow(
            clip_id=clip_id,
            manifest=spec.manifest,
            inputs=json.dumps({r: m.source for r, m in prepared.media.items()}, sort_keys=True),
            workflow=prepared.template.name,
            profile=comfyui.profile,
            prompt=spec.request.prompt,
            width=prepared.width,
            height=prepared.height,
            frames=timing.frames,
            fps=float(timing.fps),
            duration_seconds=timing.frames / timing.fps,
            size_bytes=stored.size_bytes,
            sha256=stored.sha256,
            output_uri=stored.uri,
            comfy_prompt_id=result.prompt_id,
            worker=result.worker_url,
            render_seconds=round(render_seconds, 3),
            rendered_at=datetime.now(UTC),
        )
    )
    row["fingerprint"] = fingerprint
    save_row(storage.store(), clip_id, row)
    return row


@dg.asset(
    group_name=GROUP,
    deps=[dubbed_video],
    description="Every rendered clip, one row each, as Parquet beside the videos; re-renders replace their row.",
)
def video_catalog(context: dg.AssetExecutionContext, storage: PipelineStorage) -> dg.MaterializeResult:
    store = storage.store()
    rows = [json.loads(store.get_bytes(name) or b"{}") for name in store.list_names(ROW_PREFIX)]
    catalog_rows = [CatalogRow.from_dict(r) for r in rows if r]
    table = upsert(store, catalog_rows)
    summary = catalog_summary(table)
    context.log.info(f"catalog: {len(table)} clips at {store.uri_for_name('catalog/video_catalog.parquet')}")
    return dg.MaterializeResult(
        metadata={
            "rows": len(table),
            "catalog": store.uri_for_name("catalog/video_catalog.parquet"),
            "dagster/row_count": len(table),
            **summary,
        }
    )
