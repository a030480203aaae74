"""A Dagster run over many clips on a fleet of three real workers, one of which is killed mid-run: every clip is
rendered exactly once, and the dead worker gets work again only once it answers."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import httpx
import pytest

from infinitetalk_pipeline.defs.assets import TIMING, VIDEO, clip_manifest, clip_renders
from infinitetalk_pipeline.defs.resources import ComfyUIResource
from infinitetalk_pipeline.storage import LocalOutputStore
from infinitetalk_pipeline.workflows.templates import WORKFLOWS_DIR_ENV
from tests.fixtures.fleet import finished_prompts, sleeping_fleet, sleeping_worker, wait_until, write_sleepy_workflows
from tests.fixtures.media import make_portrait, make_tone
from tests.fixtures.pipeline import current_catalog, local_resources

pytestmark = pytest.mark.timeout(600)
REPO = Path(__file__).resolve().parents[1]
RENDER_SECONDS = 4.0


@pytest.fixture
def sleepy_workflows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WORKFLOWS_DIR_ENV, str(write_sleepy_workflows(tmp_path / "workflows", RENDER_SECONDS)))


def _manifest(root: Path, ids: list[str]) -> None:
    make_portrait(root / "face.png", size=(64, 64))
    make_tone(root / "tone.wav", 0.4)
    with (root / "manifest.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "image_path", "wav_path", "width", "height"])
        w.writerows([clip, "face.png", "tone.wav", "64", "64"] for clip in ids)


def _resources(root: Path, urls: list[str]) -> dict[str, object]:
    resources = local_resources(root, ",".join(urls))
    resources["comfyui"] = ComfyUIResource(urls=",".join(urls), profile="preview", dead_after_seconds=3)
    return resources


def _render_range(instance: dg.DagsterInstance, resources: dict[str, object], first: str, last: str) -> None:
    result = dg.materialize(
        [clip_manifest, clip_renders],
        selection=[TIMING, VIDEO],
        instance=instance,
        resources=resources,
        tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
        raise_on_error=False,
    )
    assert result.success, [e.message for e in result.all_events if e.is_failure]


@pytest.fixture
def three_workers(comfy_install: None, tmp_path: Path) -> Iterator[list]:
    with sleeping_fleet(tmp_path / "workers", 3) as servers:
        yield servers


def test_killing_a_worker_mid_run_loses_no_clip_and_renders_none_twice(
    three_workers: list, sleepy_workflows: None, tmp_path: Path
) -> None:
    doomed, *survivors = three_workers
    urls = [s.url for s in three_workers]
    first_ids = [f"clip-{i}" for i in range(6)]
    later_ids = [f"later-{i}" for i in range(3)]
    _manifest(tmp_path, first_ids + later_ids)
    resources = _resources(tmp_path, urls)
    with dg.instance_for_test() as instance:
        dg.materialize([clip_manifest, clip_renders], selection=[clip_manifest], instance=instance, resources=resources)
        run = threading.Thread(target=_render_range, args=(instance, resources, "clip-0", "clip-5"))
        run.start()
        wait_until(lambda: _running(doomed.url), 120)
        assert doomed.pid
        os.killpg(doomed.pid, signal.SIGKILL)
        run.join(timeout=300)
        assert not run.is_alive()
        assert instance.get_materialized_partitions(VIDEO) >= set(first_ids)

        catalog = current_catalog(LocalOutputStore(tmp_path / "out"))
        rendered = set().union(*(finished_prompts(s.url) for s in survivors))
        assert set(catalog.loc[first_ids, "worker"]) <= {s.url for s in survivors}
        assert set(catalog.loc[first_ids, "comfy_prompt_id"]) == rendered  # each clip rendered once, none lost

        restarted = sleeping_worker(Path(doomed.workdir), port=doomed.port)
        with restarted:  # it answers again: the next clips spread over all three idle workers
            _render_range(instance, resources, "later-0", "later-2")
            catalog = current_catalog(LocalOutputStore(tmp_path / "out"))
            assert set(catalog.loc[later_ids, "worker"]) == set(urls)
            assert set(finished_prompts(restarted.url)) <= set(catalog.loc[later_ids, "comfy_prompt_id"])


def _running(url: str) -> bool:
    try:
        return bool(httpx.get(f"{url}/infinitetalk/state", timeout=5).json()["running"])
    except httpx.HTTPError:
        return False


@pytest.fixture
def two_workers(comfy_install: None, tmp_path: Path) -> Iterator[list]:
    with sleeping_fleet(tmp_path / "workers", 2) as servers:
        yield servers


# One run of a clip in a process of its own (Dagster's in-process execution is not safe in two threads at once: it
# reconfigures logging), on the instance in DAGSTER_HOME.
RUN_CLIP = """
import sys
import dagster as dg
from pathlib import Path
from infinitetalk_pipeline.defs.assets import TIMING, VIDEO, clip_manifest, clip_renders
from infinitetalk_pipeline.defs.resources import ComfyUIResource
from tests.fixtures.pipeline import local_resources
root, urls, clip = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
resources = local_resources(root, urls)
resources["comfyui"] = ComfyUIResource(urls=urls, profile="preview")
result = dg.materialize(
    [clip_manifest, clip_renders], selection=[TIMING, VIDEO], instance=dg.DagsterInstance.get(),
    resources=resources, partition_key=clip, raise_on_error=False,
)
sys.exit(0 if result.success else 1)
"""


def test_two_concurrent_runs_of_one_clip_render_it_once(
    two_workers: list, sleepy_workflows: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    urls = ",".join(s.url for s in two_workers)
    _manifest(tmp_path, ["clip-0"])
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    with dg.DagsterInstance.get() as instance:
        instance.event_log_storage.set_concurrency_slots("gpu_render", 2)  # the pool lets both steps render
        resources = _resources(tmp_path, urls.split(","))
        dg.materialize([clip_manifest, clip_renders], selection=[clip_manifest], instance=instance, resources=resources)
        runs = [
            subprocess.Popen([sys.executable, "-c", RUN_CLIP, str(tmp_path), urls, "clip-0"], cwd=REPO, env=os.environ)
            for _ in range(2)
        ]
        assert [run.wait(timeout=300) for run in runs] == [0, 0]
        renders = [r for r in instance.get_runs() if r.tags.get("dagster/partition") == "clip-0"]
        steps = [_step_window(instance, r.run_id) for r in renders]
        assert len(steps) == 2 and max(s[0] for s in steps) < min(s[1] for s in steps)  # they rendered at once

    catalog = current_catalog(LocalOutputStore(tmp_path / "out"))
    rendered = set().union(*(finished_prompts(s.url) for s in two_workers))
    assert rendered == {catalog.loc["clip-0", "comfy_prompt_id"]}  # one prompt, the one the catalog holds


def _step_window(instance: dg.DagsterInstance, run_id: str) -> tuple[float, float]:
    """When the run's render step started and ended (epoch seconds)."""
    start, success = dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS
    stamps = {e.dagster_event.event_type: e.timestamp for e in instance.all_logs(run_id) if e.dagster_event}
    return stamps[start], stamps[success]
