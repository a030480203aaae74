"""The catch-up and catalog schedules evaluated against a real Dagster instance."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from datetime import UTC, datetime

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test

from infinitetalk_pipeline.defs import schedules
from infinitetalk_pipeline.defs.schedules import (
    clips_to_catch_up,
    refresh_catalog_schedule,
    render_catchup_schedule,
)

TICK_TIME = datetime(2025, 6, 1, 12, 30, tzinfo=UTC)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def rendered(instance: dg.DagsterInstance, clip_id: str) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization("dubbed_video", partition=clip_id))


def render_run(instance: dg.DagsterInstance, clip_id: str, status: dg.DagsterRunStatus) -> None:
    create_run_for_test(instance, job_name="render_clips", status=status, tags={"dagster/partition": clip_id})


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
        reloaded = importlib.reload(schedules)
        assert reloaded.render_catchup_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
        assert reloaded.refresh_catalog_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
        assert reloaded.render_catchup_schedule.cron_schedule == "*/5 * * * *"
    finally:
        monkeypatch.undo()
        importlib.reload(schedules)
