"""Schedules: catch up on clips that were never rendered, and keep the catalog current.

Both are STOPPED unless `INFINITETALK_SCHEDULES=on` when the code location loads; their crons come from
`INFINITETALK_CATCHUP_CRON` (default every 30 minutes) and `INFINITETALK_CATALOG_CRON` (default hourly).
`build_schedule_from_partitioned_job` rejects dynamic partitions, hence the hand-written functions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence

import dagster as dg

from infinitetalk_pipeline.defs import settings
from infinitetalk_pipeline.defs.jobs import refresh_catalog_job, render_clips_job
from infinitetalk_pipeline.defs.keys import VIDEO
from infinitetalk_pipeline.defs.partitions import clips

SCHEDULE_STATUS = dg.DefaultScheduleStatus.RUNNING if settings.SCHEDULES_ON else dg.DefaultScheduleStatus.STOPPED
MAX_CATCHUP_RUNS = 100  # per tick: an outage's backlog drains over a few ticks instead of flooding the queue
MAX_ATTEMPTS = 3  # failed runs after which the catch-up leaves a clip alone (the failure sensor reported it)
FAILED_RUN_HISTORY = 10_000  # most recent failed runs (of any job) looked at for MAX_ATTEMPTS
PARTITION_TAG = "dagster/partition"
RANGE_TAGS = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")
VIDEO_CATALOG = dg.AssetKey("video_catalog")


def clips_of_run(tags: Mapping[str, str], registered: Sequence[str]) -> list[str]:
    """The clips a render run covers: its partition, or its range of partitions (a backfill run over several
    clips) in registration order, the order dynamic partitions keep."""
    if key := tags.get(PARTITION_TAG):
        return [key]
    start, end = (tags.get(t) for t in RANGE_TAGS)
    if start is None or end is None:
        return []
    if start in registered and end in registered:
        return list(registered[registered.index(start) : registered.index(end) + 1])
    return sorted({start, end})  # partitions deleted since: the ends are all that is known


UNFINISHED = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def renders_video(instance: dg.DagsterInstance, run: dg.DagsterRun, plans: dict[str, bool] | None = None) -> bool:
    """Whether a run materializes dubbed_video, whatever its job: `render_clips`, the implicit asset job of UI
    backfills and `dagster asset materialize`, or any other job holding the asset.

    A run's asset selection names its assets when it is a subset (a backfill, `--select`); a run of a whole job
    has none (nor checks: checks alone render nothing), and then the job decides: `render_clips` does, another
    job does when its execution plan does.
    `plans` caches those plan look-ups by snapshot id across the runs of one evaluation.
    """
    if run.asset_selection:
        return VIDEO in run.asset_selection
    if run.asset_check_selection:
        return False  # checks but no assets: a run of checks only
    if run.job_name == render_clips_job.name:
        return True
    snapshot_id = run.execution_plan_snapshot_id
    if not snapshot_id:
        return False
    if plans is None or snapshot_id not in plans:
        snapshot = instance.get_execution_plan_snapshot(snapshot_id)
        found = snapshot is not None and VIDEO in snapshot.asset_selection
        if plans is None:
            return found
        plans[snapshot_id] = found
    return plans[snapshot_id]


def render_runs(
    instance: dg.DagsterInstance,
    statuses: Sequence[dg.DagsterRunStatus],
    registered: Sequence[str],
    limit: int | None = None,
) -> Iterator[tuple[dg.DagsterRun, list[str]]]:
    """(run, its clips) for the runs with these statuses that render dubbed_video for at least one clip, of any
    job: the most recent `limit` runs with these statuses are looked at (all of them without a limit)."""
    plans: dict[str, bool] = {}
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=list(statuses)), limit=limit):
        covered = clips_of_run(run.tags, registered)  # first: unpartitioned runs need no plan look-up
        if covered and renders_video(instance, run, plans):
            yield run, covered


def clips_to_catch_up(
    instance: dg.DagsterInstance, limit: int = MAX_CATCHUP_RUNS, max_attempts: int = MAX_ATTEMPTS
) -> tuple[list[str], list[str]]:
    """(clips to render now, clips given up on): registered clips with no dubbed_video materialization and no
    run rendering them queued or in progress, oldest registration first; `limit` bounds the first list.

    Runs of every job count, not only `render_clips`: a UI backfill or `dagster asset materialize` renders
    through the implicit asset job, and its clips are busy while it runs and its failures are attempts.
    """
    done = instance.get_materialized_partitions(VIDEO)
    registered = list(instance.get_dynamic_partitions(clips.name))
    missing = [k for k in registered if k not in done]
    if not missing:
        return [], []
    busy = {clip for _, covered in render_runs(instance, UNFINISHED, registered) for clip in covered}
    failed = Counter(
        clip
        for _, covered in render_runs(instance, [dg.DagsterRunStatus.FAILURE], registered, FAILED_RUN_HISTORY)
        for clip in covered
    )
    todo = [k for k in missing if k not in busy and failed[k] < max_attempts]
    given_up = [k for k in missing if failed[k] >= max_attempts]
    return todo[:limit], given_up


@dg.schedule(
    name="render_catchup_schedule",
    cron_schedule=settings.CATCHUP_CRON,
    job=render_clips_job,
    default_status=SCHEDULE_STATUS,
    description="Renders registered clips that have no dubbed_video yet (after an outage, a lost run).",
)
def render_catchup_schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
    todo, given_up = clips_to_catch_up(context.instance)
    if given_up:
        context.log.warning(
            f"{len(given_up)} clips failed {MAX_ATTEMPTS} times and are left to a manual re-run, e.g. "
            + ", ".join(given_up[:10])
        )
    if not todo:
        return dg.SkipReason("every registered clip is rendered, rendering, or given up on")
    stamp = context.scheduled_execution_time.strftime("%Y%m%dT%H%M")
    context.log.info(f"catching up on {len(todo)} clips")
    return [
        dg.RunRequest(partition_key=k, run_key=f"catchup:{k}:{stamp}", tags={"infinitetalk/catchup": stamp})
        for k in todo
    ]


@dg.schedule(
    name="refresh_catalog_schedule",
    cron_schedule=settings.CATALOG_CRON,
    job=refresh_catalog_job,
    default_status=SCHEDULE_STATUS,
    description="Rebuilds video_catalog when a clip was rendered since the catalog's last materialization.",
)
def refresh_catalog_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    videos = context.instance.fetch_materializations(VIDEO, limit=1).records
    if not videos:
        return dg.SkipReason("no clip rendered yet")
    catalog = context.instance.fetch_materializations(VIDEO_CATALOG, limit=1).records
    if catalog and catalog[0].storage_id > videos[0].storage_id:
        return dg.SkipReason("the catalog already includes the latest render")
    return dg.RunRequest(run_key=f"catalog:{videos[0].storage_id}")
