"""The dubbing assets: clip_manifest -> clip_timing -> dubbed_video (per clip) -> video_catalog.

Assets stay thin: the work is in the library (manifest, render, storage, catalog); these functions move data
between resources, Dagster metadata and the run log.
"""

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import av
import dagster as dg
from botocore.exceptions import BotoCoreError, ClientError

from infinitetalk_pipeline.catalog import CatalogRow, catalog_summary, upsert
from infinitetalk_pipeline.comfy.client import ProgressEvent
from infinitetalk_pipeline.comfy.errors import ComfyError
from infinitetalk_pipeline.defs.partitions import clips
from infinitetalk_pipeline.defs.resources import ComfyUIResource, PipelineStorage
from infinitetalk_pipeline.errors import ClipInputError, PipelineError
from infinitetalk_pipeline.manifest import InvalidRow, read_manifest
from infinitetalk_pipeline.media.preview import preview_frame_markdown
from infinitetalk_pipeline.media.sources import FetchedMedia, MediaFetcher
from infinitetalk_pipeline.registry import (
    ROW_PREFIX,
    ClipSpec,
    anchor_local_paths,
    clear_failure,
    load_row,
    load_spec,
    load_timing,
    registered_manifests,
    save_row,
    save_specs,
    save_timing,
)
from infinitetalk_pipeline.render import clip_timing as compute_clip_timing
from infinitetalk_pipeline.render import fetch_media, prepare_clip, render_prepared
from infinitetalk_pipeline.spec import MediaRole
from infinitetalk_pipeline.timing import ClipTiming
from infinitetalk_pipeline.verify import Expectation, check_output, inspect_output
from infinitetalk_pipeline.workflows.templates import Template, load_template

GROUP = "dubbing"
VIDEO_CHECKS = ["frames_match_audio", "has_audio_stream", "size_as_requested", "file_not_empty"]

# Clips per run when a backfill covers a contiguous range: 1 keeps a failure and the run log per clip; more saves
# Dagster's run start-up (seconds) per clip, which matters next to short renders (preview, CPU).
CLIPS_PER_RUN = int(os.environ.get("INFINITETALK_CLIPS_PER_RUN", "1"))
CLIP_BACKFILL = dg.BackfillPolicy.multi_run(max_partitions_per_run=CLIPS_PER_RUN)

# Transient ComfyUI failures (unreachable, interrupted, timed out) are retried with backoff; input and validation
# errors raise Failure(allow_retries=False) so they fail once, with their message.
RENDER_RETRY = dg.RetryPolicy(max_retries=3, delay=15, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


class ClipManifestConfig(dg.Config):
    manifest: str | None = None  # a local path or s3:// URI; default: the storage resource's `manifest`
    # A clip id registered by another manifest is an invalid row unless this is set: then this manifest's request
    # replaces the other one (the next render of the clip uses it).
    replace_other_manifests: bool = False


@dg.asset(
    group_name=GROUP,
    check_specs=[dg.AssetCheckSpec("no_invalid_rows", asset="clip_manifest")],
    description="Reads a manifest, registers one `clips` partition per valid row and keeps each row's request.",
)
def clip_manifest(
    context: dg.AssetExecutionContext, config: ClipManifestConfig, storage: PipelineStorage
) -> dg.MaterializeResult:
    uri = config.manifest or storage.manifest
    store = storage.store()
    result = read_manifest(uri, s3_client=storage.s3_client() if uri.startswith("s3://") else None)
    existing = set(context.instance.get_dynamic_partitions(clips.name))
    valid, invalid = result.valid, list(result.invalid)
    if not config.replace_other_manifests:
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
            for row in result.valid
            if row.clip_id in taken
        ]
    requests = anchor_local_paths([row.request for row in valid], uri)
    specs = [ClipSpec(row.clip_id, uri, row.row_number, req) for row, req in zip(valid, requests, strict=True)]
    save_specs(store, specs)
    new_keys = [s.clip_id for s in specs if s.clip_id not in existing]
    if new_keys:
        context.instance.add_dynamic_partitions(clips.name, new_keys)
    for bad in invalid:
        context.log.warning(f"{uri} row {bad.row_number}: clip {bad.clip_id!r}, field {bad.field!r}: {bad.reason}")
    invalid_table = dg.MetadataValue.md(
        "| row | clip | field | reason |\n|---|---|---|---|\n"
        + "\n".join(f"| {b.row_number} | {b.clip_id} | {b.field} | {b.reason} |" for b in invalid)
    )
    return dg.MaterializeResult(
        metadata={
            "manifest": uri,
            "valid_rows": len(specs),
            "invalid_rows": len(invalid),
            "new_partitions": len(new_keys),
            "invalid": invalid_table,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="no_invalid_rows",
                passed=not invalid,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"invalid_rows": len(invalid), "invalid": invalid_table},
            )
        ],
    )


class ClipFailures:
    """Failures of single clips in a run over several: the other clips go on, and the run fails at its end.

    When one failure may pass on a retry (a ComfyUI worker down, an object store hiccup) the run fails as transient
    and the RetryPolicy retries it (clips already done are skipped); otherwise it fails once. Either way the error
    lists every clip's message.
    """

    def __init__(self, context: dg.AssetExecutionContext) -> None:
        self._context = context
        self._transient = False
        self._messages: list[str] = []

    def add(self, clip_id: str, exc: Exception) -> None:
        if isinstance(exc, ClipInputError):
            message = str(exc)
        elif isinstance(exc, PipelineError):
            message = f"clip {clip_id!r}: {exc}"
        else:  # a bug or an I/O failure below the library: still the clip's failure, not the run's
            message = f"clip {clip_id!r}: {type(exc).__name__}: {exc}"
        self._context.log.error(message)
        self._messages.append(message)
        self._transient |= (isinstance(exc, ComfyError) and exc.transient) or isinstance(
            exc, OSError | BotoCoreError | ClientError
        )

    def raise_if_any(self) -> None:
        if not self._messages:
            return
        summary = "\n".join(self._messages)
        if self._transient:
            raise ComfyError(summary, transient=True)
        raise dg.Failure(description=summary, allow_retries=False)


def _fingerprint(
    spec: ClipSpec, timing: ClipTiming, profile: str, template: Template, media: dict[str, FetchedMedia]
) -> str:
    """What a render depends on: the request, the bytes of every input, the timing, the profile and the workflow
    file. Same fingerprint -> same video, so the render can be skipped."""
    body = json.dumps(
        [
            spec.request.model_dump(exclude_none=True, exclude={"clip_id"}),
            {role: fetched.sha256 for role, fetched in media.items()},
            dataclasses.asdict(timing),
            profile,
            hashlib.sha256(template.path.read_bytes()).hexdigest(),
        ],
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


class ClipRendersConfig(dg.Config):
    force: bool = False  # render even when the inputs, timing, profile and workflow are unchanged


TIMING = dg.AssetKey("clip_timing")
VIDEO = dg.AssetKey("dubbed_video")


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            TIMING,
            partitions_def=clips,
            deps=[clip_manifest],
            skippable=True,
            group_name=GROUP,
            description="Fetches a clip's speech, measures it exactly and derives frames, fps and InfiniteTalk "
            "windows.",
        ),
        dg.AssetSpec(
            VIDEO,
            partitions_def=clips,
            deps=[TIMING],
            skippable=True,
            group_name=GROUP,
            description="Renders the clip on a ComfyUI worker and stores the mp4 atomically; skips clips already "
            "rendered from the same inputs.",
        ),
    ],
    # Partitioned checks are a preview feature of dagster 1.13 (pinned): they give each clip its own results.
    check_specs=[dg.AssetCheckSpec(name, asset=VIDEO, partitions_def=clips) for name in VIDEO_CHECKS],
    can_subset=True,
    pool="gpu_render",
    retry_policy=RENDER_RETRY,
    backfill_policy=CLIP_BACKFILL,
)
def clip_renders(
    context: dg.AssetExecutionContext, config: ClipRendersConfig, comfyui: ComfyUIResource, storage: PipelineStorage
) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """`clip_timing` and `dubbed_video` in one step, clip after clip.

    One step so that a run can cover many clips (a backfill range) and still record each clip's materializations
    and checks as its own: per-partition events, which a downstream step could not wait on if they were two steps.
    A clip that fails is reported and the others go on.
    """
    store = storage.store()
    fetcher = storage.fetcher()  # one per run: media shared by its clips are fetched once
    failures = ClipFailures(context)
    for clip_id in context.partition_keys:
        try:
            spec = load_spec(store, clip_id)
            if TIMING in context.selected_asset_keys:
                timing = compute_clip_timing(spec.request, fetcher, clip_id)
                save_timing(store, clip_id, timing)
                yield _timing_materialization(clip_id, timing)
            else:
                # dubbed_video alone (e.g. `--select dubbed_video`): use the stored timing, or measure it now.
                timing = load_timing(store, clip_id) or compute_clip_timing(spec.request, fetcher, clip_id)
            if VIDEO in context.selected_asset_keys:
                yield from _dub_clip(context, spec, timing, comfyui, storage, fetcher, force=config.force)
        except Exception as exc:  # one clip's failure, whatever it is, must not stop the others
            failures.add(clip_id, exc)
    failures.raise_if_any()


def _timing_materialization(clip_id: str, timing: ClipTiming) -> dg.AssetMaterialization:
    return dg.AssetMaterialization(
        TIMING,
        partition=clip_id,
        metadata={
            "audio_seconds": list(timing.audio_seconds),
            "duration_seconds": timing.duration_seconds,
            "frames": timing.frames,
            "fps": timing.fps,
            "windows": timing.windows,
            "frames_source": timing.frames_source,
        },
    )


def _dub_clip(
    context: dg.AssetExecutionContext,
    spec: ClipSpec,
    timing: ClipTiming,
    comfyui: ComfyUIResource,
    storage: PipelineStorage,
    fetcher: MediaFetcher,
    *,
    force: bool,
) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    store = storage.store()
    clip_id = spec.clip_id
    template = load_template(comfyui.profile, spec.request.workflow_name)
    media = fetch_media(spec.request, fetcher, clip_id)
    fingerprint = _fingerprint(spec, timing, comfyui.profile, template, media)
    previous = load_row(store, clip_id)
    if not force and previous and previous.get("fingerprint") == fingerprint and store.exists(clip_id):
        context.log.info(f"clip {clip_id!r}: unchanged since its render ({previous['output_uri']}); skipping")
        row, skipped = previous, True
    else:
        row, skipped = _render(context, spec, timing, comfyui, storage, fetcher, media, fingerprint), False
    output_uri = row["output_uri"]
    yield dg.AssetMaterialization(
        VIDEO,
        partition=clip_id,
        metadata={
            "skipped": skipped,
            "frames": row["frames"],
            "duration_seconds": row["duration_seconds"],
            "render_seconds": row["render_seconds"],
            "comfy_execution_seconds": row.get("comfy_execution_seconds"),
            "worker": row["worker"],
            "workflow": row["workflow"],
            "profile": row["profile"],
            "output": dg.MetadataValue.url(output_uri) if "://" in output_uri else dg.MetadataValue.path(output_uri),
            "sha256": row["sha256"],
            "preview": dg.MetadataValue.md(row["preview"]),
        },
    )
    for outcome in row["checks"]:
        yield dg.AssetCheckEvaluation(
            asset_key=VIDEO,
            check_name=outcome["name"],
            passed=outcome["passed"],
            partition=clip_id,
            description=outcome["description"],
        )


def _render(
    context: dg.AssetExecutionContext,
    spec: ClipSpec,
    timing: ClipTiming,
    comfyui: ComfyUIResource,
    storage: PipelineStorage,
    fetcher: MediaFetcher,
    media: dict[MediaRole, FetchedMedia],
    fingerprint: str,
) -> dict[str, Any]:
    """Render, check, then store: the video is kept even when a check fails (someone will want to look at it), but
    only a clip whose checks all pass gets a fingerprint, so a failed one is rendered again next time."""
    clip_id = spec.clip_id
    with tempfile.TemporaryDirectory(prefix=f"dub-{clip_id}-") as tmp:
        local = Path(tmp) / f"{clip_id}.mp4"
        prepared = prepare_clip(
            spec.request,
            fetcher,
            Path(tmp) / "work",
            profile=comfyui.profile,  # type: ignore[arg-type]
            clip_id=clip_id,
            timing=timing,
            media=media,
        )
        for warning in prepared.warnings:
            context.log.warning(warning)
        with comfyui.client() as client:
            context.log.info(
                f"clip {clip_id!r}: rendering {prepared.template.name} ({comfyui.profile}) on {client.base_url}: "
                f"{timing.frames} frames, {timing.windows} window(s)"
            )
            started = time.monotonic()
            result = render_prepared(prepared, client, local, on_progress=ProgressLog(context))
            render_seconds = time.monotonic() - started
        want = Expectation(timing.frames, timing.fps, prepared.width, prepared.height, timing.duration_seconds)
        try:
            outcomes = check_output(inspect_output(local), want)
            preview = preview_frame_markdown(local)
        except (av.error.FFmpegError, IndexError) as exc:
            raise PipelineError(f"the rendered file is not a readable video with a video stream: {exc}") from exc
        stored = storage.store().put_video(local, clip_id, metadata={"clip-id": clip_id})

    row = dataclasses.asdict(
        CatalogRow(
            clip_id=clip_id,
            manifest=spec.manifest,
            inputs=json.dumps({r: m.source for r, m in media.items()}, sort_keys=True),
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
    row |= {
        "fingerprint": fingerprint if all(o.passed for o in outcomes) else None,
        "comfy_execution_seconds": result.execution_seconds,
        "checks": [dataclasses.asdict(o) for o in outcomes],
        "preview": preview,
    }
    save_row(storage.store(), clip_id, row)
    if row["fingerprint"]:
        clear_failure(storage.store(), clip_id)
    return row


@dg.asset(
    group_name=GROUP,
    deps=[VIDEO],
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
