"""The dubbing assets: clip_manifest -> clip_timing -> dubbed_video (per clip) -> video_catalog.

Assets stay thin: the work is in the library (registry, clip_renderer, catalog); these functions call it through
the resources and turn its results into materializations, check results and run-log lines.
"""

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed

import dagster as dg

from infinitetalk_pipeline.catalog import (
    CATALOG_SCHEMA,
    TABLE_PREFIX,
    catalog_summary,
    rebuild_catalog,
    refresh_catalog,
)
from infinitetalk_pipeline.clip_renderer import ClipFailure, ClipRenderer, RenderRecord
from infinitetalk_pipeline.comfy.progress import ProgressLines
from infinitetalk_pipeline.defs import settings
from infinitetalk_pipeline.defs.keys import FAILED_CLIPS, TIMING, VIDEO
from infinitetalk_pipeline.defs.partitions import clips
from infinitetalk_pipeline.defs.resources import ComfyUIResource, PipelineStorage
from infinitetalk_pipeline.defs.runs import heartbeat
from infinitetalk_pipeline.errors import PipelineError
from infinitetalk_pipeline.estimate import registration_metadata
from infinitetalk_pipeline.manifest import read_manifest
from infinitetalk_pipeline.redact import redact_text
from infinitetalk_pipeline.registry import load_spec, register_manifest
from infinitetalk_pipeline.timing import ClipTiming
from infinitetalk_pipeline.verify import CHECK_NAMES

GROUP = "dubbing"
INVALID_ROWS_LOGGED = 50

# Clips per run when a backfill covers a contiguous range: 1 keeps a failure and the run log per clip; more saves
# Dagster's run start-up (seconds) per clip, which matters next to short renders (preview, CPU).
CLIP_BACKFILL = dg.BackfillPolicy.multi_run(max_partitions_per_run=settings.CLIPS_PER_RUN)

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
    context: dg.AssetExecutionContext, config: ClipManifestConfig, storage: PipelineStorage, comfyui: ComfyUIResource
) -> dg.MaterializeResult:
    uri = config.manifest or storage.manifest
    existing = set(context.instance.get_dynamic_partitions(clips.name))
    try:
        manifest = read_manifest(uri, s3_client=storage.s3_client() if uri.startswith("s3://") else None)
        registered = register_manifest(
            storage.store(), uri, manifest, existing, replace_other_manifests=config.replace_other_manifests
        )
    except PipelineError as exc:  # an unreadable manifest or output root: its message, not a stack trace
        raise dg.Failure(description=redact_text(str(exc)), allow_retries=False) from exc
    specs, invalid, new_keys = registered.specs, registered.invalid, registered.new_keys
    if new_keys:
        context.instance.add_dynamic_partitions(clips.name, new_keys)
    for bad in invalid[:INVALID_ROWS_LOGGED]:
        context.log.warning(f"{uri} row {bad.row_number}: clip {bad.clip_id!r}, field {bad.field!r}: {bad.reason}")
    if len(invalid) > INVALID_ROWS_LOGGED:  # each log line is an event-log write: a bad 100,000-row file stays fast
        context.log.warning(f"{uri}: {len(invalid) - INVALID_ROWS_LOGGED} more invalid rows in the `invalid` metadata")
    invalid_table = dg.MetadataValue.md(
        "| row | clip | field | reason |\n|---|---|---|---|\n"
        + "\n".join(f"| {b.row_number} | {b.clip_id} | {b.field} | {b.reason} |" for b in invalid)
    )
    # What a backfill of the new and changed clips will cost (an unchanged registration measures nothing).
    estimate = registration_metadata(
        storage.store(),
        specs,
        registered.changed,
        storage.fetcher,
        segmenting=comfyui.segmenting(),
        table_path=settings.GPU_COSTS,
    )
    if "estimate_error" in estimate:  # an unusable GPU table: said, and the registration stands
        context.log.warning(f"{uri}: no cost estimate: {estimate['estimate_error']}")
    estimate_table = dg.MetadataValue.md(str(estimate.pop("estimate_table", "")))
    return dg.MaterializeResult(
        metadata={
            "manifest": uri,
            "valid_rows": len(specs),
            "invalid_rows": len(invalid),
            "new_partitions": len(new_keys),
            "requests_written": len(registered.changed),  # new or changed; an unchanged manifest writes none
            "invalid": invalid_table,
            **estimate,
            "estimate_table": estimate_table,
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

    The run's Failure carries every failed clip as metadata (`failed_clips`: clip id -> its ClipFailure), which the
    failure sensor reads; a run whose failures may pass on a retry (a worker down, an object store hiccup) lets the
    RetryPolicy retry it (clips already done are skipped), otherwise it fails once.
    """

    def __init__(self, context: dg.AssetExecutionContext) -> None:
        self._context = context
        self._failures: list[ClipFailure] = []

    def add(self, clip_id: str, exc: Exception) -> None:
        failure = ClipFailure.of(clip_id, exc)
        self._context.log.error(failure.message)
        self._failures.append(failure)

    def raise_if_any(self) -> None:
        if not self._failures:
            return
        raise dg.Failure(
            description="\n".join(f.message for f in self._failures),
            metadata={FAILED_CLIPS: dg.MetadataValue.json({f.clip_id: f.to_dict() for f in self._failures})},
            allow_retries=any(f.transient for f in self._failures),
        )


class ClipRendersConfig(dg.Config):
    force: bool = False  # render even when the inputs, timing, profile and workflow are unchanged


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
    check_specs=[dg.AssetCheckSpec(name, asset=VIDEO, partitions_def=clips) for name in CHECK_NAMES],
    can_subset=True,
    pool="gpu_render",
    retry_policy=RENDER_RETRY,
    backfill_policy=CLIP_BACKFILL,
)
def clip_renders(
    context: dg.AssetExecutionContext, config: ClipRendersConfig, comfyui: ComfyUIResource, storage: PipelineStorage
) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """`clip_timing` and `dubbed_video` in one step, several clips at once.

    One step so that a run can cover many clips (a backfill range) and still record each clip's materializations
    and checks as its own: per-partition events, which a downstream step could not wait on if they were two steps.
    The clips go through lanes (threads), as many as keep every worker rendering with its queue full: one clip
    renders while the next is fetched, conformed and uploaded. A clip that fails is reported and the others go on.
    """
    store = storage.store()
    keys = context.partition_keys
    failures = ClipFailures(context)
    # one fetcher per run: media shared by its clips are fetched once
    # The heartbeat tells dead_render_run_sensor this run's process is alive (defs/runs.py).
    with heartbeat(context.instance, context.run.run_id), comfyui.fleet(log=context.log) as fleet:
        renderer = ClipRenderer(
            store, storage.fetcher(), fleet, comfyui.profile, log=context.log, segmenting=comfyui.segmenting()
        )

        def clip_events(clip_id: str) -> list[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
            spec = load_spec(store, clip_id)
            events: list[dg.AssetMaterialization | dg.AssetCheckEvaluation] = []
            if TIMING in context.selected_asset_keys:
                timing = renderer.measure_timing(spec)
                events.append(_timing_materialization(clip_id, timing))
            else:  # dubbed_video alone (e.g. `--select dubbed_video`): the kept timing, or a measurement now
                timing = renderer.timing(spec)
            if VIDEO in context.selected_asset_keys:
                progress = ProgressLines(lambda line: context.log.info(f"{clip_id}: {line}"))
                record = renderer.render(spec, timing, force=config.force, on_progress=progress)
                events.extend(_video_events(record))
            return events

        with ThreadPoolExecutor(max_workers=min(len(keys), comfyui.lanes()), thread_name_prefix="clip") as lanes:
            futures = {lanes.submit(clip_events, clip_id): clip_id for clip_id in keys}
            for future in as_completed(futures):
                try:
                    yield from future.result()
                except Exception as exc:  # one clip's failure, whatever it is, must not stop the others
                    failures.add(futures[future], exc)
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
            "segments": timing.segment_count,
            **({"segment_boundaries": _boundaries_table(timing)} if timing.segments else {}),
        },
    )


def _boundaries_table(timing: ClipTiming) -> dg.MetadataValue:
    rows = "\n".join(
        f"| {s.index + 1} | {s.start_frame / timing.fps:.2f} | {s.end_frame / timing.fps:.2f} | {s.frames} | "
        f"{s.windows} |"
        for s in timing.segments
    )
    return dg.MetadataValue.md(
        f"| segment | from s | to s | frames rendered | windows |\n|---|---|---|---|---|\n{rows}"
    )


def _video_events(record: RenderRecord) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    row = record.row
    output = row.output_uri
    yield dg.AssetMaterialization(
        VIDEO,
        partition=row.clip_id,
        metadata={
            "skipped": record.skipped,
            "frames": row.frames,
            "duration_seconds": row.duration_seconds,
            "render_seconds": row.render_seconds,
            "comfy_execution_seconds": record.comfy_execution_seconds,
            "worker": row.worker,
            "workflow": row.workflow,
            "profile": row.profile,
            "output": dg.MetadataValue.url(output) if "://" in output else dg.MetadataValue.path(output),
            "sha256": row.sha256,
            "preview": dg.MetadataValue.md(record.preview),
            **_segments_metadata(row.segments),
        },
    )
    for outcome in record.checks:
        yield dg.AssetCheckEvaluation(
            asset_key=VIDEO,
            check_name=outcome.name,
            passed=outcome.passed,
            partition=row.clip_id,
            description=outcome.description,
        )


def _segments_metadata(segments: str | None) -> dict[str, int | dg.MetadataValue]:
    """A segmented clip's segments: where each was rendered."""
    if segments is None:
        return {"segments": 1}
    listed = json.loads(segments)
    rows = "\n".join(
        f"| {s['index'] + 1} | {s['start_seconds']:.2f} | {s['end_seconds']:.2f} | {s['worker']} | {s['prompt_id']} |"
        for s in listed
    )
    table = f"| segment | from s | to s | worker | prompt |\n|---|---|---|---|---|\n{rows}"
    return {"segments": len(listed), "segment_renders": dg.MetadataValue.md(table)}


CATALOG_TABLE_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn(f.name, str(f.type), constraints=dg.TableColumnConstraints(nullable=f.nullable))
        for f in CATALOG_SCHEMA
    ]
)


class VideoCatalogConfig(dg.Config):
    # Make the table again from every clip's current row instead of folding in only the renders since the last
    # refresh: reads every row, so keep it for repairs (a store restored from a backup, say).
    rebuild: bool = False


@dg.asset(
    group_name=GROUP,
    deps=[VIDEO],
    description="Every rendered clip, one row each, as a Parquet dataset beside the videos; each refresh folds in "
    "only the renders since the last one, and re-renders replace their row.",
)
def video_catalog(
    context: dg.AssetExecutionContext, config: VideoCatalogConfig, storage: PipelineStorage
) -> dg.MaterializeResult:
    store = storage.store()
    update = rebuild_catalog(store) if config.rebuild else refresh_catalog(store)
    summary = catalog_summary(update.state)
    where = store.uri_for_name(TABLE_PREFIX.rstrip("/")) + "/"
    context.log.info(
        f"catalog: {update.state.rows} clips at {where} ({update.applied} rows folded in, {update.replaced} of them "
        f"re-renders; {len(update.state.parts)} parts)"
    )
    return dg.MaterializeResult(
        metadata={
            "catalog": where,
            "rows_folded_in": update.applied,
            "rows_replaced": update.replaced,
            "parts": len(update.state.parts),
            "parts_written": update.parts_written,
            "dagster/row_count": update.state.rows,
            "dagster/column_schema": CATALOG_TABLE_SCHEMA,
            **summary,
        }
    )
