"""The pipeline on a deployment's instance: deploy/dagster.postgres.yaml on a real PostgreSQL, the code location
served over gRPC, and `dagster-daemon` launching four render runs at once from the run queue.

The renders go the way a deployment's do: a backfill (`dagster job backfill`) queues a run per clip, the daemon
dequeues them within the run and pool limits and launches them through the code server, and run workers store the
videos and record their events in PostgreSQL. The manifest and the catalog are materialized in this process, on the
same instance, as the other pipeline tests do.
"""

from __future__ import annotations

import csv
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

from infinitetalk_pipeline.comfy.server import free_port
from infinitetalk_pipeline.defs.assets import clip_manifest, clip_renders, video_catalog
from infinitetalk_pipeline.defs.keys import VIDEO
from infinitetalk_pipeline.verify import inspect_output
from tests.fixtures.pipeline import local_resources
from tests.fixtures.postgres import PostgresDatabase
from tests.fixtures.synth import make_portrait, make_tone

pytestmark = pytest.mark.comfyui

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOCATION = "infinitetalk_pipeline"  # workspace.yaml's name: runs record it, the daemon finds the server by it
CLIPS = {"pg-a": 0.4, "pg-b": 0.5, "pg-c": 0.6, "pg-d": 0.7}  # clip id -> seconds of audio
# Twice the runs: the coordinator counts a just-launched run's render step both as the run's and as a pending
# step, so a pool exactly as large as the runs would hold the last one back for a tick.
GPU_SLOTS = 2 * len(CLIPS)
ASSETS = [clip_manifest, clip_renders, video_catalog]
TERMINAL = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


@dataclass(frozen=True)
class Deployment:
    instance: dg.DagsterInstance
    render_runs: list[dg.RunRecord]


def _write_inputs(root: Path) -> None:
    make_portrait(root / "face.png", size=(160, 160))
    with (root / "manifest.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clip_id", "image_path", "wav_path", "width", "height"])
        for i, (clip, seconds) in enumerate(CLIPS.items()):
            make_tone(root / f"{clip}.wav", seconds, freq=200.0 + 40 * i)
            writer.writerow([clip, "face.png", f"{clip}.wav", "128", "128"])


def _environment(root: Path, home: Path, postgres: PostgresDatabase, comfy_url: str) -> dict[str, str]:
    """What a deployment sets where Dagster runs: the instance's database and the code location's settings."""
    return {
        "DAGSTER_HOME": str(home),
        **postgres.dagster_env(),
        "COMFYUI_URLS": comfy_url,
        "INFINITETALK_PROFILE": "preview",
        "INFINITETALK_MANIFEST": str(root / "manifest.csv"),
        "INFINITETALK_OUTPUT_ROOT": str(root / "out"),
        "INFINITETALK_CACHE_DIR": str(root / "cache"),
        "INFINITETALK_ALLOWED_ROOTS": str(root),
    }


def _workspace(root: Path, port: int) -> Path:
    path = root / "workspace.yaml"
    path.write_text(
        f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {port}\n      location_name: {LOCATION}\n"
    )
    return path


def _start(stack: ExitStack, log: Path, *command: str) -> subprocess.Popen[bytes]:
    """A long-running Dagster process with this process's environment, stopped when the stack closes."""
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)

    def stop() -> None:
        proc.terminate()
        proc.wait(timeout=60)

    stack.callback(stop)
    return proc


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on port {port} after {seconds} s:\n{log.read_text()[-3000:]}")


def _backfill(workspace: Path, job: str, partitions: list[str]) -> None:
    """`dagster job backfill`: queues one run per partition (the daemon launches them)."""
    command = ["job", "backfill", "-w", str(workspace), "-j", job, "--partitions", ",".join(partitions), "--noprompt"]
    done = subprocess.run(
        [str(BIN / "dagster"), *command],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _wait_for_runs(
    instance: dg.DagsterInstance, job: str, count: int, daemon: subprocess.Popen[bytes], log: Path, seconds: float
) -> list[dg.RunRecord]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert daemon.poll() is None, "dagster-daemon exited:\n" + log.read_text()[-3000:]
        records = instance.get_run_records(dg.RunsFilter(job_name=job))
        if len(records) == count and all(r.dagster_run.status in TERMINAL for r in records):
            return records
        time.sleep(0.5)
    statuses = {r.dagster_run.run_id: r.dagster_run.status for r in instance.get_run_records()}
    raise AssertionError(f"{job}: runs not done after {seconds} s: {statuses}\n{log.read_text()[-3000:]}")


def _event_times(instance: dg.DagsterInstance, record: dg.RunRecord, kind: dg.DagsterEventType) -> list[float]:
    return [entry.timestamp for entry in instance.all_logs(record.dagster_run.run_id, of_type=kind)]


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresDatabase, comfy_url: str
) -> Iterator[Deployment]:
    """Registers the manifest, renders its four clips in four runs the daemon launches together, then refreshes
    the catalog; once for the module."""
    root = tmp_path_factory.mktemp("postgres-deployment")
    _write_inputs(root)
    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "deploy" / "dagster.postgres.yaml").read_text())
    resources = local_resources(root, comfy_url)
    port = free_port()
    workspace = _workspace(root, port)
    with pytest.MonkeyPatch.context() as env, ExitStack() as stack:
        for name, value in _environment(root, home, postgres, comfy_url).items():
            env.setenv(name, value)
        # Its first use creates the schema: here, before the processes below would race to create it.
        instance = stack.enter_context(dg.DagsterInstance.get())
        instance.event_log_storage.set_concurrency_slots("gpu_render", GPU_SLOTS)
        server_log, daemon_log = root / "code_server.log", root / "daemon.log"
        server = _start(
            stack, server_log, str(BIN / "dagster"), "api", "grpc", "-m", "infinitetalk_pipeline.definitions",
            "-h", "127.0.0.1", "-p", str(port), "--location-name", LOCATION,
        )  # fmt: skip
        dg.materialize(ASSETS, selection=[clip_manifest], instance=instance, resources=resources)
        _wait_for_port(port, server, server_log)
        daemon = _start(stack, daemon_log, str(BIN / "dagster-daemon"), "run", "-w", str(workspace))
        _backfill(workspace, "render_clips", list(CLIPS))
        renders = _wait_for_runs(instance, "render_clips", len(CLIPS), daemon, daemon_log, seconds=120)
        dg.materialize(ASSETS, selection=[video_catalog], instance=instance, resources=resources)
        yield Deployment(instance, renders)


def test_the_instance_keeps_runs_and_events_in_postgres(deployment: Deployment) -> None:
    assert isinstance(deployment.instance.run_storage, PostgresRunStorage)
    assert isinstance(deployment.instance.event_log_storage, PostgresEventLogStorage)


def test_each_clip_renders_in_its_own_successful_run(deployment: Deployment) -> None:
    runs = [r.dagster_run for r in deployment.render_runs]
    assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(CLIPS)
    assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}


def test_each_run_waits_in_the_queue_until_the_daemon_launches_it(deployment: Deployment) -> None:
    for record in deployment.render_runs:
        [queued] = _event_times(deployment.instance, record, dg.DagsterEventType.RUN_ENQUEUED)
        [launched] = _event_times(deployment.instance, record, dg.DagsterEventType.RUN_STARTING)
        assert queued < launched


def test_the_daemon_launches_all_four_runs_before_any_ends(deployment: Deployment) -> None:
    launched = [
        _event_times(deployment.instance, r, dg.DagsterEventType.RUN_STARTING)[0] for r in deployment.render_runs
    ]
    ended = [r.end_time for r in deployment.render_runs if r.end_time is not None]
    assert len(ended) == len(CLIPS)
    assert max(launched) < min(ended)


def test_the_daemons_heartbeat_into_postgres(deployment: Deployment) -> None:
    assert {"QUEUED_RUN_COORDINATOR", "MONITORING"} <= set(deployment.instance.get_daemon_heartbeats())


def test_each_clip_has_its_dubbed_video_in_the_event_log(deployment: Deployment) -> None:
    assert deployment.instance.get_materialized_partitions(VIDEO) == set(CLIPS)


def test_each_recorded_video_is_stored_with_the_frames_its_audio_needs(deployment: Deployment) -> None:
    for clip, seconds in CLIPS.items():
        [record] = deployment.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=VIDEO, asset_partitions=[clip]), limit=1
        ).records
        facts = inspect_output(Path(record.asset_materialization.metadata["output"].value))
        assert facts.frames == pytest.approx(seconds * 25, abs=1), clip


def test_the_catalog_refreshed_afterwards_has_a_row_per_clip(deployment: Deployment) -> None:
    [record] = deployment.instance.fetch_materializations(video_catalog.key, limit=1).records
    assert record.asset_materialization.metadata["rows"].value == len(CLIPS)
