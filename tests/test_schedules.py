"""The catch-up and catalog schedules evaluated against a real Dagster instance."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test
from dagster_aws.s3 import S3Resource

from infinitetalk_pipeline.defs import schedules, settings
from infinitetalk_pipeline.defs.assets import clip_manifest, clip_renders, video_catalog
from infinitetalk_pipeline.defs.jobs import render_clips_job
from infinitetalk_pipeline.defs.resources import ComfyUIResource, PipelineStorage
from infinitetalk_pipeline.defs.schedules import (
    clips_to_catch_up,
    refresh_catalog_schedule,
    render_catchup_schedule,
)

TICK_TIME = datetime(2025, 6, 1, 12, 30, tzinfo=UTC)
VIDEO = dg.AssetKey("dubbed_video")
TIMING = dg.AssetKey("clip_timing")


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def rendered(instance: dg.DagsterInstance, clip_id: str) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization("dubbed_video", partition=clip_id))


def render_run(instance: dg.DagsterInstance, clip_id: str, status: dg.DagsterRunStatus) -> None:
    create_run_for_test(instance, job_name="render_clips", status=status, tags={"dagster/partition": clip_id})


def asset_job_run(
    instance: dg.DagsterInstance,
    tags: dict[str, str],
    status: dg.DagsterRunStatus,
    selection: frozenset[dg.AssetKey] = frozenset({VIDEO}),
) -> None:
    """A run of the implicit asset job, as a UI backfill or `dagster asset materialize --select` creates."""
    create_run_for_test(instance, job_name="__ASSET_JOB", status=status, tags=tags, asset_selection=selection)


def evaluate(schedule: dg.ScheduleDefinition, instance: dg.DagsterInstance) -> object:
    return schedule(dg.build_schedule_context(instance=instance, scheduled_execution_time=TICK_TIME))


def test_catchup_requests_only_clips_without_a_render(instance: dg.DagsterInstance) -> None:
    instance.add_dynamic_partitions("clips", ["done", "queued", "running", "hopeless", "retry", "new1", "new2"])
    rendered(instance, "done")
    render_run(instance, "queued", dg.DagsterRunStatus.NOT_STARTED)
    render_run(instance, "running", dg.DagsterRunStatus.STARTED)
    for _ in range(3):
        render_run(instance, "hopeless", dg.DagsterRunStatus.FAILURE)
    render_run(instance, "retry", dg.DagsterRunStatus.FAILURE)  # one failure (an outage): tried again
    render_run(instance, "done", dg.DagsterRunStatus.FAILURE)  # failed once, then rendered

    requests = evaluate(render_catchup_schedule, instance)
    assert isinstance(requests, list)
    assert [r.partition_key for r in requests] == ["retry", "new1", "new2"]
    assert [r.run_key for r in requests] == [f"catchup:{k}:20250601T1230" for k in ["retry", "new1", "new2"]]

    todo, given_up = clips_to_catch_up(instance, limit=2)
    assert todo == ["retry", "new1"] and given_up == ["hopeless"]


def test_catchup_skips_when_everything_is_rendered(instance: dg.DagsterInstance) -> None:
    assert isinstance(evaluate(render_catchup_schedule, instance), dg.SkipReason)
    instance.add_dynamic_partitions("clips", ["a"])
    rendered(instance, "a")
    assert isinstance(evaluate(render_catchup_schedule, instance), dg.SkipReason)


def test_catalog_refreshes_only_after_new_renders(instance: dg.DagsterInstance) -> None:
    assert isinstance(evaluate(refresh_catalog_schedule, instance), dg.SkipReason)
    instance.add_dynamic_partitions("clips", ["a", "b"])
    rendered(instance, "a")
    first = evaluate(refresh_catalog_schedule, instance)
    assert isinstance(first, dg.RunRequest)
    instance.report_runless_asset_event(dg.AssetMaterialization("video_catalog"))
    assert isinstance(evaluate(refresh_catalog_schedule, instance), dg.SkipReason)
    rendered(instance, "b")
    second = evaluate(refresh_catalog_schedule, instance)
    assert isinstance(second, dg.RunRequest) and second.run_key != first.run_key


def test_schedules_are_off_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    assert render_catchup_schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert refresh_catalog_schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    monkeypatch.setenv("INFINITETALK_SCHEDULES", "on")
    monkeypatch.setenv("INFINITETALK_CATCHUP_CRON", "*/5 * * * *")
    try:
        importlib.reload(settings)  # read while the definitions load, in that one module
        reloaded = importlib.reload(schedules)
        assert reloaded.render_catchup_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
        assert reloaded.refresh_catalog_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
        assert reloaded.render_catchup_schedule.cron_schedule == "*/5 * * * *"
    finally:
        monkeypatch.undo()
        importlib.reload(settings)
        importlib.reload(schedules)


def test_catchup_sees_runs_of_the_implicit_asset_job(instance: dg.DagsterInstance) -> None:
    # UI backfills and `dagster asset materialize` render through __ASSET_JOB, not render_clips: their clips are
    # busy while they run and their failures count as attempts.
    instance.add_dynamic_partitions("clips", ["a", "b", "c", "d", "e", "f", "g", "h"])
    asset_job_run(instance, {"dagster/partition": "a"}, dg.DagsterRunStatus.NOT_STARTED)
    backfill = {"dagster/asset_partition_range_start": "b", "dagster/asset_partition_range_end": "c"}
    asset_job_run(instance, {**backfill, "dagster/backfill": "bf1"}, dg.DagsterRunStatus.STARTED)
    for _ in range(3):
        asset_job_run(instance, {"dagster/partition": "d"}, dg.DagsterRunStatus.FAILURE, frozenset({TIMING, VIDEO}))
    asset_job_run(instance, {"dagster/partition": "e"}, dg.DagsterRunStatus.STARTED, frozenset({TIMING}))
    asset_job_run(instance, {"dagster/partition": "e"}, dg.DagsterRunStatus.FAILURE, frozenset({TIMING}))
    asset_job_run(instance, {"dagster/partition": "e"}, dg.DagsterRunStatus.FAILURE, frozenset({TIMING}))
    asset_job_run(instance, {"dagster/partition": "e"}, dg.DagsterRunStatus.FAILURE, frozenset({TIMING}))
    checks_only = dg.AssetCheckKey(VIDEO, "file_not_empty")
    create_run_for_test(  # re-running a check renders nothing
        instance,
        job_name="render_clips",
        status=dg.DagsterRunStatus.STARTED,
        tags={"dagster/partition": "h"},
        asset_selection=frozenset(),
        asset_check_selection=frozenset({checks_only}),
    )
    render_run(instance, "g", dg.DagsterRunStatus.FAILURE)  # render_clips and backfill failures add up
    render_run(instance, "g", dg.DagsterRunStatus.FAILURE)
    asset_job_run(instance, {"dagster/partition": "g"}, dg.DagsterRunStatus.FAILURE)

    todo, given_up = clips_to_catch_up(instance)
    # e: only clip_timing runs (not renders); h: a check run only; f: nothing yet
    assert todo == ["e", "f", "h"]
    assert given_up == ["d", "g"]
    requests = evaluate(render_catchup_schedule, instance)
    assert isinstance(requests, list) and [r.partition_key for r in requests] == ["e", "f", "h"]


def test_failed_materializations_outside_render_clips_are_attempts(
    instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    """Real failed runs (clips with no registered request fail fast) of the implicit asset job, over one clip and
    over a range, and of an ad-hoc job holding the asset (`dg.materialize`, no asset selection on the run)."""
    instance.add_dynamic_partitions("clips", ["ghost", "ghost2", "ghost3", "fresh"])
    storage = PipelineStorage(output_root=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), s3=S3Resource())
    resources = {"storage": storage, "comfyui": ComfyUIResource()}
    defs = dg.Definitions(
        assets=[clip_manifest, clip_renders, video_catalog], jobs=[render_clips_job], resources=resources
    )
    asset_job = defs.resolve_implicit_global_asset_job_def()
    results = [
        asset_job.execute_in_process(
            instance=instance, asset_selection=[VIDEO], partition_key="ghost", raise_on_error=False
        ),
        asset_job.execute_in_process(
            instance=instance,
            asset_selection=[TIMING, VIDEO],
            tags={"dagster/asset_partition_range_start": "ghost", "dagster/asset_partition_range_end": "ghost3"},
            raise_on_error=False,
        ),
        dg.materialize(
            [clip_renders],
            selection=[VIDEO],
            partition_key="ghost",
            instance=instance,
            resources=resources,
            raise_on_error=False,
        ),
    ]
    assert [r.success for r in results] == [False, False, False]
    assert {r.dagster_run.job_name for r in results} == {"__ASSET_JOB", "__ephemeral_asset_job__"}

    todo, given_up = clips_to_catch_up(instance)
    assert given_up == ["ghost"]  # three failed attempts, none of them a render_clips run
    assert todo == ["ghost2", "ghost3", "fresh"]  # one failed attempt each (the range), or none
    todo, given_up = clips_to_catch_up(instance, max_attempts=1)
    assert todo == ["fresh"] and given_up == ["ghost", "ghost2", "ghost3"]
