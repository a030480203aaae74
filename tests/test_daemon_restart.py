"""The Dagster daemon stopped and started again in the middle of a backfill: the backfill completes, and every clip
is rendered exactly once.

A deployment on 127.0.0.1 as a user runs it: two ComfyUI workers whose renders hold them RENDER_SECONDS without
CPU (BenchSleep), the repository's dagster.yaml, `dagster-webserver` and `dagster-daemon run -w workspace.yaml`.
The clips are registered, a backfill of clip_timing + dubbed_video over every other clip is launched as the UI does
(GraphQL `launchPartitionBackfill`), and once a run has succeeded while another renders, the daemon is stopped and
a new one started. The daemon launches runs with the DefaultRunLauncher through a code server it spawned
(`dagster api grpc --heartbeat`, in the daemon's process group): every run worker is a child of that server. So:

- SIGTERM to the daemon (`kill PID`): it finishes the launches in progress, asks its code server to shut down and
  exits within seconds. The server waits for its runs, which finish as if nothing happened (runs that were
  STARTING start there), then exits. The new daemon starts a code server of its own, launches the queued runs and
  completes the backfill.
- SIGKILL of the daemon alone (not tested here, measured): the runs in flight finish in the orphaned code server,
  which shuts down once they are done (it misses the daemon's heartbeat for 20 s). A run the daemon was launching
  at that moment stays STARTING until run monitoring fails it (`start_timeout_seconds`, 90 s in dagster.yaml), and run
  retries launch it again.
- SIGKILL of the daemon's process group (a lost machine or container, a cgroup killed whole): the code server and
  the runs die with it, and Dagster cannot tell (the default launcher has no worker health check). A STARTED run
  is failed by dead_render_run_sensor once its heartbeat (kept by the run's executor from its first
  moment, defs/executor.py) is DEAD_RUN_AFTER_SECONDS old (the sensor looks every
  30 s), a STARTING one by run monitoring; run retries launch both again, and each new attempt adopts the prompt
  its dead run left on the fleet.

The instance is the repository's dagster.yaml with run monitoring's start timeout and poll interval shortened, and
DEAD_RUN_AFTER_SECONDS above the heartbeat's 30 s period (a live run is never failed), so the test ends in minutes.
Afterwards the workers' ComfyUI histories, the stored videos and the catalog agree: one successful prompt per clip,
the one the catalog records, and the catalog's sha256 is the stored file's.
"""

from __future__ import annotations

import csv
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest
import yaml

from infinitetalk_pipeline.comfy.server import free_port
from infinitetalk_pipeline.defs.assets import clip_manifest, clip_renders
from infinitetalk_pipeline.defs.settings import ENV_VARS
from infinitetalk_pipeline.storage import LocalOutputStore
from infinitetalk_pipeline.workflows.templates import WORKFLOWS_DIR_ENV
from tests.fixtures.fleet import finished_prompts, sleeping_fleet, write_sleepy_workflows
from tests.fixtures.pipeline import current_catalog, local_resources
from tests.fixtures.processes import REPO, spawn, stop_tree, tail
from tests.fixtures.synth import make_portrait, make_tone

pytestmark = [pytest.mark.comfyui, pytest.mark.timeout(600)]

BIN = Path(sys.executable).parent  # the venv's dagster-webserver and dagster-daemon
WORKERS = 2
RENDER_SECONDS = 5.0
REGISTERED = [f"clip-{i:02d}" for i in range(16)]
BACKFILLED = REGISTERED[1::2]  # eight partitions, none next to another
DEAD_RUN_AFTER_SECONDS = 45  # more than the heartbeat's 30 s period, with room for a slow tag write
# A run killed while STARTING is failed this long after its launch (Dagster's default: 180 s, checked every 60 s).
START_TIMEOUT_SECONDS = 60
MONITORING_INTERVAL_SECONDS = 5
GPU_SLOTS = 3 * WORKERS  # the README's sizing: three render steps in flight per worker
BACKFILL_TAG = "dagster/backfill"
RUN_DONE = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
BACKFILL_DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}

WORKSPACE = """
{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""
LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message }
} }
"""
BACKFILL_STATUS = """
query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename ... on PartitionBackfill { status } ... on Error { message }
} }
"""


def _write_inputs(root: Path) -> None:
    """A portrait, four tones and a manifest that registers every clip of REGISTERED."""
    make_portrait(root / "face.png", size=(128, 128))
    for i in range(4):
        make_tone(root / f"tone-{i}.wav", 1.0, freq=200.0 + 30 * i)
    with (root / "manifest.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clip_id", "image_path", "wav_path", "width", "height"])
        for i, clip in enumerate(REGISTERED):
            writer.writerow([clip, "face.png", f"tone-{i % 4}.wav", 128, 128])


def _write_instance(home: Path) -> None:
    """The repository's dagster.yaml, with run monitoring shortened so that a run that died STARTING is retried in
    a minute."""
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    config["run_monitoring"] |= {
        "start_timeout_seconds": START_TIMEOUT_SECONDS,
        "poll_interval_seconds": MONITORING_INTERVAL_SECONDS,
    }
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def _clip(run: dg.DagsterRun) -> str:
    """The clip a backfill run renders (one per run: its partition range starts and ends there)."""
    start, end = run.tags["dagster/asset_partition_range_start"], run.tags["dagster/asset_partition_range_end"]
    assert start == end, run.tags
    return start


def _environment(root: Path, home: Path, urls: list[str], workflows: Path) -> dict[str, str]:
    """What the webserver and daemon (and so their code servers and runs) see: this deployment's settings, none
    of the caller's."""
    ours = {s.name for s in ENV_VARS} | {WORKFLOWS_DIR_ENV, "DAGSTER_HOME"}
    return {k: v for k, v in os.environ.items() if k not in ours} | {
        "DAGSTER_HOME": str(home),
        "COMFYUI_URLS": ",".join(urls),
        "INFINITETALK_PROFILE": "preview",
        "INFINITETALK_MANIFEST": str(root / "manifest.csv"),
        "INFINITETALK_OUTPUT_ROOT": str(root / "out"),
        "INFINITETALK_CACHE_DIR": str(root / "cache"),
        "INFINITETALK_ALLOWED_ROOTS": str(root),
        "INFINITETALK_DEAD_RUN_AFTER_SECONDS": str(DEAD_RUN_AFTER_SECONDS),
        WORKFLOWS_DIR_ENV: str(workflows),
    }


@dataclass
class Deployment:
    """The instance (read in this process), the webserver's GraphQL endpoint and the daemons started so far."""

    root: Path
    env: dict[str, str]
    instance: dg.DagsterInstance
    urls: list[str]
    graphql: str
    stack: ExitStack
    daemons: list[subprocess.Popen[bytes]]

    @property
    def daemon(self) -> subprocess.Popen[bytes]:
        return self.daemons[-1]

    def start_daemon(self) -> None:
        log = self.root / f"daemon-{len(self.daemons) + 1}.log"
        daemon = spawn([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], self.env, log)
        # Stops the orphans of a stopped daemon too: its process group outlives it.
        self.stack.callback(stop_tree, daemon)
        self.daemons.append(daemon)

    def query(self, query: str, **variables: Any) -> dict[str, Any]:
        body = httpx.post(self.graphql, json={"query": query, "variables": variables}, timeout=60).json()
        assert not body.get("errors"), body["errors"]
        return body["data"]

    def backfill_runs(self, backfill_id: str) -> list[dg.DagsterRun]:
        return list(self.instance.get_runs(filters=dg.RunsFilter(tags={BACKFILL_TAG: backfill_id})))

    def wait(self, done: Callable[[], bool], seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while not done():
            assert self.daemon.poll() is None, f"dagster-daemon exited:\n{self.logs()}"
            assert time.monotonic() < deadline, f"{what}: not within {seconds:.0f} s\n{self.logs()}"
            time.sleep(1)

    def logs(self) -> str:
        runs = {
            r.run_id[:8]: (r.tags.get("dagster/asset_partition_range_start"), r.status.value)
            for r in self.instance.get_runs()
        }
        daemon_logs = "\n".join(tail(p, 60) for p in sorted(self.root.glob("daemon-*.log")))
        return f"runs: {runs}\n{daemon_logs}"


@pytest.fixture
def deployment(comfy_install: None, tmp_path: Path) -> Iterator[Deployment]:
    """The clips registered (clip_manifest materialized on the instance), the webserver up with the code location
    loaded, and a first daemon started."""
    root = tmp_path
    _write_inputs(root)
    home = root / "dagster_home"
    _write_instance(home)
    workflows = write_sleepy_workflows(root / "workflows", RENDER_SECONDS)
    with ExitStack() as stack:
        urls = [s.url for s in stack.enter_context(sleeping_fleet(root / "workers", WORKERS))]
        instance = stack.enter_context(dg.DagsterInstance.from_config(str(home)))
        instance.event_log_storage.set_concurrency_slots("gpu_render", GPU_SLOTS)
        registered = dg.materialize(
            [clip_manifest, clip_renders],
            selection=[clip_manifest],
            instance=instance,
            resources=local_resources(root, ",".join(urls)),
        )
        assert registered.success
        env = _environment(root, home, urls, workflows)
        port = free_port()
        webserver = spawn(
            [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            env,
            root / "webserver.log",
        )
        stack.callback(stop_tree, webserver)
        deployment = Deployment(root, env, instance, urls, f"http://127.0.0.1:{port}/graphql", stack, [])
        deployment.start_daemon()
        deployment.wait(lambda: _loaded(deployment, webserver), 180, "the webserver loads the code location")
        yield deployment


def _loaded(deployment: Deployment, webserver: subprocess.Popen[bytes]) -> bool:
    assert webserver.poll() is None, tail(deployment.root / "webserver.log")
    try:
        [entry] = deployment.query(WORKSPACE)["workspaceOrError"]["locationEntries"]
    except httpx.HTTPError:
        return False
    if entry["loadStatus"] != "LOADED":
        return False
    assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry
    return True


def _launch_backfill(deployment: Deployment, partitions: list[str]) -> str:
    params = {"partitionNames": partitions, "assetSelection": [{"path": ["clip_timing"]}, {"path": ["dubbed_video"]}]}
    result = deployment.query(LAUNCH_BACKFILL, params=params)["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", result
    return result["backfillId"]


def _one_done_and_one_rendering(deployment: Deployment, backfill_id: str) -> bool:
    done = any(r.is_success for r in deployment.backfill_runs(backfill_id))
    return done and any(httpx.get(f"{url}/queue", timeout=10).json()["queue_running"] for url in deployment.urls)


def _backfill_over(deployment: Deployment, backfill_id: str) -> bool:
    status = deployment.query(BACKFILL_STATUS, id=backfill_id)["partitionBackfillOrError"]["status"]
    return status in BACKFILL_DONE and all(r.status in RUN_DONE for r in deployment.backfill_runs(backfill_id))


def terminate_the_daemon(daemon: subprocess.Popen[bytes]) -> None:
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=60)


def kill_the_daemon_and_its_runs(daemon: subprocess.Popen[bytes]) -> None:
    os.killpg(daemon.pid, signal.SIGKILL)  # the daemon, its code server and every run worker
    daemon.wait(timeout=30)


def _successful_prompts(urls: list[str]) -> dict[str, list[str]]:
    """Clip id -> the prompts that rendered it, over every worker's history (the clip is the last part of the
    graph's output filename prefix)."""
    rendered: dict[str, list[str]] = {}
    for url in urls:
        for prompt_id, entry in finished_prompts(url).items():
            graph = entry["prompt"][2]
            [prefix] = [n["inputs"]["filename_prefix"] for n in graph.values() if "filename_prefix" in n["inputs"]]
            rendered.setdefault(prefix.rsplit("/", 1)[-1], []).append(prompt_id)
    return rendered


@pytest.mark.parametrize(
    "stop_daemon",
    [
        pytest.param(terminate_the_daemon, id="SIGTERM to the daemon"),
        pytest.param(kill_the_daemon_and_its_runs, id="SIGKILL of the daemon, its code server and runs"),
    ],
)
def test_a_backfill_survives_a_daemon_restart_and_renders_each_clip_once(
    deployment: Deployment, stop_daemon: Callable[[subprocess.Popen[bytes]], None]
) -> None:
    backfill_id = _launch_backfill(deployment, BACKFILLED)
    deployment.wait(lambda: _one_done_and_one_rendering(deployment, backfill_id), 180, "a run done, one rendering")
    stop_daemon(deployment.daemon)
    deployment.start_daemon()
    deployment.wait(lambda: _backfill_over(deployment, backfill_id), 240, "the backfill ends")

    status = deployment.query(BACKFILL_STATUS, id=backfill_id)["partitionBackfillOrError"]["status"]
    assert status == "COMPLETED_SUCCESS", deployment.logs()
    succeeded = [_clip(r) for r in deployment.backfill_runs(backfill_id) if r.is_success]
    assert set(succeeded) == set(BACKFILLED)  # whatever died on the way was run again
    store = LocalOutputStore(deployment.root / "out")
    catalog = current_catalog(store)
    assert sorted(catalog.index) == BACKFILLED
    for clip in BACKFILLED:
        video = store.path_for(clip)
        assert catalog.loc[clip, "output_uri"] == str(video)
        assert catalog.loc[clip, "sha256"] == hashlib.sha256(video.read_bytes()).hexdigest(), clip
    # Each clip rendered once over both workers, by the prompt the catalog records.
    assert _successful_prompts(deployment.urls) == {clip: [catalog.loc[clip, "comfy_prompt_id"]] for clip in BACKFILLED}
