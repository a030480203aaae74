"""A render run killed mid-render (SIGKILL of its process group, as an OOM kill or a lost node does) leaves its
prompt rendering on the fleet. The dead run is found by its stopped heartbeat, failed, and its pool slot freed; the
next attempt adopts the prompt it left: the clip is rendered exactly once, with one worker or two."""

from __future__ import annotations

import csv
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import httpx
import pytest
from sqlalchemy.exc import OperationalError

from infinitetalk_pipeline.defs.assets import TIMING, VIDEO, clip_manifest, clip_renders
from infinitetalk_pipeline.defs.runs import HEARTBEAT_TAG, fail_dead_runs, heartbeat
from infinitetalk_pipeline.storage import LocalOutputStore
from infinitetalk_pipeline.workflows.templates import WORKFLOWS_DIR_ENV
from tests.fixtures.fleet import finished_prompts, sleeping_fleet, wait_until, write_sleepy_workflows
from tests.fixtures.media import make_portrait, make_tone
from tests.fixtures.pipeline import current_catalog, local_resources

pytestmark = pytest.mark.timeout(600)
REPO = Path(__file__).resolve().parents[1]
RENDER_SECONDS = 8.0
CLIP = "clip-0"

# A run worker of its own: materializes one clip on the instance in DAGSTER_HOME, until the test kills it.
RUN_CHILD = """
import sys
import dagster as dg
from pathlib import Path
from infinitetalk_pipeline.defs.assets import TIMING, VIDEO, clip_manifest, clip_renders
from tests.fixtures.pipeline import local_resources
root, urls, clip = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
dg.materialize(
    [clip_manifest, clip_renders], selection=[TIMING, VIDEO], instance=dg.DagsterInstance.get(),
    resources=local_resources(root, urls), partition_key=clip,
)
"""


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(WORKFLOWS_DIR_ENV, str(write_sleepy_workflows(tmp_path / "workflows", RENDER_SECONDS)))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    make_portrait(tmp_path / "face.png", size=(64, 64))
    make_tone(tmp_path / "tone.wav", 0.4)
    with (tmp_path / "manifest.csv").open("w", newline="") as f:
        csv.writer(f).writerows(
            [["clip_id", "image_path", "wav_path", "width", "height"], [CLIP, "face.png", "tone.wav", 64, 64]]
        )
    return tmp_path


@pytest.fixture(params=[1, 2], ids=["one worker", "two workers"])
def fleet_urls(request: pytest.FixtureRequest, comfy_install: None, tmp_path: Path) -> Iterator[list[str]]:
    with sleeping_fleet(tmp_path / "workers", request.param) as servers:
        yield [s.url for s in servers]


def test_a_killed_run_is_failed_its_slot_freed_and_its_prompt_adopted_by_the_next_attempt(
    workspace: Path, fleet_urls: list[str]
) -> None:
    urls = ",".join(fleet_urls)
    with dg.DagsterInstance.get() as instance:
        instance.event_log_storage.set_concurrency_slots("gpu_render", 3)
        dg.materialize(
            [clip_manifest, clip_renders],
            selection=[clip_manifest],
            instance=instance,
            resources=local_resources(workspace, urls),
        )
        child = subprocess.Popen(
            [sys.executable, "-c", RUN_CHILD, str(workspace), urls, CLIP],
            cwd=REPO,
            env=os.environ.copy(),
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            orphan = _wait_for_a_running_prompt(fleet_urls)
        finally:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()

        [dead] = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        assert HEARTBEAT_TAG in dead.tags
        assert fail_dead_runs(instance, now=time.time()) == []  # its heartbeat is fresh: not dead yet
        assert [r.run_id for r in fail_dead_runs(instance, now=time.time() + 3600)] == [dead.run_id]
        assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
        assert not instance.event_log_storage.get_concurrency_info("gpu_render").claimed_slots

        result = dg.materialize(
            [clip_manifest, clip_renders],
            selection=[TIMING, VIDEO],
            instance=instance,
            resources=local_resources(workspace, urls),
            partition_key=CLIP,
        )
        assert result.success

    catalog = current_catalog(LocalOutputStore(workspace / "out"))
    assert catalog.loc[CLIP, "comfy_prompt_id"] == orphan  # the dead run's prompt, adopted
    rendered = [p for url in fleet_urls for p in finished_prompts(url)]
    assert rendered == [orphan]  # exactly one render in all


def _wait_for_a_running_prompt(urls: list[str]) -> str:
    found: list[str] = []

    def running() -> bool:
        for url in urls:
            found.extend(httpx.get(f"{url}/infinitetalk/state", timeout=5).json()["running"])
        return bool(found)

    wait_until(running, 120, interval=0.2)
    return found[0]


@dg.asset
def quick() -> None:
    """A run to keep a heartbeat for."""


def test_a_heartbeat_whose_write_fails_once_keeps_beating(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with dg.instance_for_test() as instance:
        run = dg.materialize([quick], instance=instance).run_id
        write = instance.add_run_tags
        writes: list[dict[str, str]] = []

        def blip_once(run_id: str, new_tags: dict[str, str]) -> None:
            writes.append(new_tags)
            if len(writes) == 1:  # the run database drops its connection once (a Postgres failover, a restart)
                raise OperationalError("UPDATE runs", {}, Exception("server closed the connection unexpectedly"))
            write(run_id, new_tags)

        monkeypatch.setattr(instance, "add_run_tags", blip_once)
        with caplog.at_level(logging.WARNING), heartbeat(instance, run, every=0.05):
            wait_until(lambda: HEARTBEAT_TAG in instance.get_run_by_id(run).tags, 10)
        assert f"run {run}: could not write its heartbeat" in caplog.text
