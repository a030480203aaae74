"""How busy the pipeline keeps a fleet of N ComfyUI workers, without GPUs (issue 11, item 5).

    python benchmarks/fleet.py [--workers 1,2,4] [--clips 40] [--seconds 20] [--json PATH] [--max-concurrent-runs K]

Starts max(N) local ComfyUI servers (preview profile, CPU) that also load a test-only node,
`benchmarks/comfy_nodes/bench_sleep` (`BenchSleep`: sleeps `--seconds` T without using CPU and passes the frames
through). The pipeline renders through its normal path, from a temporary `INFINITETALK_WORKFLOWS_DIR`: a copy of
`workflows/` whose `preview/I2V_single` graph holds BenchSleep(T) between the frames and the video, so every clip
(a 128x128 portrait, 1 s of tone) holds its worker for T seconds and still writes a real mp4.

Then, for each N in ascending order, as a user does from the UI: a fresh DAGSTER_HOME (the repo's dagster.yaml
with `max_concurrent_runs` = --max-concurrent-runs, default 3N+2; `gpu_render` pool = 3N), `dagster-webserver`
and `dagster-daemon run` on `workspace.yaml` with COMFYUI_URLS = the first N workers; `clip_manifest` materialized
over GraphQL (`launchRun`) for a manifest of 2M rows; then ONE backfill (`launchPartitionBackfill`) of
`clip_timing` + `dubbed_video` over every other partition: M = --clips non-contiguous keys. It polls the backfill
and its runs until all end and fails loudly if one failed.

It prints one row per N, from the workers' ComfyUI histories (execution_start/execution_success) and Dagster's
run records:
- util: fleet utilization, sum of render times / (N x span from the first start to the last success);
- gap p50/p95: per worker, start of prompt k+1 minus end of prompt k, over all gaps;
- ovh/clip: Dagster overhead per clip, (backfill wall time from the mutation to the last run's end x N - sum of
  render times) / M; run ovh p50: median of (run end - run start - its clip's render time);
- scaling: (M / wall at N) / (N x M / wall at 1), when N=1 ran;
- once: every clip rendered exactly once (prompts over all histories == clips, every clip's video exists, no
  clip outside the backfill rendered). The exit status is 1 when a check fails.
The target of the dispatch rewrite: util >= 0.95 and gap p50 < 1 s at N=4, 40 clips, T=20.
--json PATH also writes the rows (with every render) as JSON. Logs stay in the temporary folder when a round fails.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import yaml

from infinitetalk_pipeline.comfy.server import LocalComfyUI, free_port, install
from infinitetalk_pipeline.defs.settings import ENV_VARS
from infinitetalk_pipeline.workflows.templates import WORKFLOWS_DIR_ENV
from tests.fixtures.fleet import SLEEP_NODES, sleeping_fleet, write_sleepy_workflows
from tests.fixtures.processes import spawn, stop_tree, tail
from tests.fixtures.synth import make_portrait, make_tone

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the project venv's bin: dagster, dagster-webserver, dagster-daemon
SIZE = 128
AUDIO_SECONDS = 1.0
POOL = "gpu_render"
RENDER_ASSETS = ("clip_timing", "dubbed_video")
RUN_DONE = {"SUCCESS", "FAILURE", "CANCELED"}
BACKFILL_DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
BACKFILL_OK = {"COMPLETED", "COMPLETED_SUCCESS"}

WORKSPACE_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus
    locationOrLoadError { __typename ... on PythonError { message }
      ... on RepositoryLocation { repositories { name } } }
} } } }
"""
LAUNCH_RUN = """
mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on Error { message }
  ... on RunConfigValidationInvalid { errors { message } }
} }
"""
LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message }
  ... on PartitionKeysNotFoundError { partitionKeys }
} }
"""
BACKFILL_STATUS = """
query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename ... on PartitionBackfill { status } ... on Error { message }
} }
"""
RUNS = """
query($filter: RunsFilter) { runsOrError(filter: $filter) {
  __typename ... on Runs { results { runId status startTime endTime tags { key value } } } ... on Error { message }
} }
"""
RUN_FAILURES = """
query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { eventConnection { events {
  __typename ... on ExecutionStepFailureEvent { stepKey error { message } } ... on RunFailureEvent { message }
} } } } }
"""


class BenchError(RuntimeError):
    """The benchmark could not measure: a process died, a run failed, a request was refused."""


def log(message: str) -> None:
    print(f"[fleet {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------- inputs


def write_media(media: Path) -> tuple[Path, list[Path]]:
    media.mkdir(parents=True)
    portrait = make_portrait(media / "face.png", size=(SIZE, SIZE))
    tones = [make_tone(media / f"tone{i}.wav", AUDIO_SECONDS, freq=200 + 30 * i) for i in range(4)]
    return portrait, tones


def clip_ids(rows: int) -> list[str]:
    return [f"clip-{i:04d}" for i in range(rows)]


def write_manifest(path: Path, portrait: Path, tones: list[Path], ids: list[str]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "image_path", "wav_path", "width", "height", "prompt"])
        for i, clip in enumerate(ids):
            w.writerow([clip, portrait, tones[i % len(tones)], SIZE, SIZE, "a person talking"])


def write_instance(home: Path, max_concurrent_runs: int) -> None:
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    config.setdefault("concurrency", {}).setdefault("runs", {})["max_concurrent_runs"] = max_concurrent_runs
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def pipeline_env(home: Path, root: Path, urls: list[str], manifest: Path, workflows: Path) -> dict[str, str]:
    """The environment of the webserver and daemon (and so of the code servers and runs they start): the settings
    the code location reads, nothing inherited from the caller's own deployment."""
    ours = {s.name for s in ENV_VARS} | {WORKFLOWS_DIR_ENV}
    env = {k: v for k, v in os.environ.items() if k not in ours and k != "DAGSTER_HOME"}
    return env | {
        "DAGSTER_HOME": str(home),
        "COMFYUI_URLS": ",".join(urls),
        "INFINITETALK_PROFILE": "preview",
        "INFINITETALK_OUTPUT_ROOT": str(root / "output"),
        "INFINITETALK_MANIFEST": str(manifest),
        "INFINITETALK_ALLOWED_ROOTS": str(manifest.parents[1]),
        "INFINITETALK_CACHE_DIR": str(root / "cache"),
        WORKFLOWS_DIR_ENV: str(workflows),
    }


# ---------------------------------------------------------------------------------------------------- ComfyUI


def start_workers(stack: ExitStack, base: Path, count: int) -> list[LocalComfyUI]:
    install(log=lambda _line: None)
    servers = stack.enter_context(sleeping_fleet(base, count))
    for server in servers:
        info = httpx.get(f"{server.url}/object_info/BenchSleep", timeout=30).json()
        if "BenchSleep" not in info:
            raise BenchError(f"{server.url} did not load {SLEEP_NODES}:\n{tail(server.log_path)}")
    return servers


def clear_history(url: str) -> None:
    httpx.post(f"{url}/history", json={"clear": True}, timeout=30).raise_for_status()


@dataclass(frozen=True)
class Prompt:
    worker: str
    prompt_id: str
    clip: str
    start: float  # epoch seconds (ComfyUI's ms timestamps)
    end: float | None  # None: it did not succeed

    @property
    def seconds(self) -> float:
        return 0.0 if self.end is None else self.end - self.start


def history_prompts(url: str, max_items: int) -> list[Prompt]:
    entries: dict[str, Any] = httpx.get(f"{url}/history", params={"max_items": max_items}, timeout=60).json()
    prompts = []
    for prompt_id, entry in entries.items():
        stamps = {event: data.get("timestamp") for event, data in entry.get("status", {}).get("messages", [])}
        graph = entry["prompt"][2]
        prefixes = [n["inputs"]["filename_prefix"] for n in graph.values() if "filename_prefix" in n.get("inputs", {})]
        clip = str(prefixes[0]).rsplit("/", 1)[-1] if prefixes else "?"
        start, end = stamps.get("execution_start"), stamps.get("execution_success")
        if start is None:
            continue
        prompts.append(Prompt(url, prompt_id, clip, start / 1000, None if end is None else end / 1000))
    return prompts


# ---------------------------------------------------------------------------------------------------- Dagster


class GraphQL:
    def __init__(self, url: str, watch: Callable[[], None], timeout: float = 60) -> None:
        self.url = url
        self.watch = watch  # raises when the webserver or daemon has died
        self.http = httpx.Client(timeout=timeout)

    def __call__(self, query: str, **variables: Any) -> dict[str, Any]:
        self.watch()
        response = self.http.post(self.url, json={"query": query, "variables": variables})
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise BenchError(f"GraphQL errors: {json.dumps(body['errors'])[:2000]}")
        return body["data"]


@contextlib.contextmanager
def serve(root: Path, env: dict[str, str], http_timeout: float = 60) -> Iterator[tuple[str, GraphQL, dict[str, int]]]:
    """`dagster-webserver` and `dagster-daemon run` on 127.0.0.1, the code location loaded; (UI URL, GraphQL
    client, pids). Both stop (with their code servers) on exit; logs go to root/webserver.log and root/daemon.log."""
    with ExitStack() as stack:
        port = free_port()
        logs = {"webserver": root / "webserver.log", "daemon": root / "daemon.log"}
        webserver = spawn(
            [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            env,
            logs["webserver"],
        )
        stack.callback(stop_tree, webserver)
        daemon = spawn([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], env, logs["daemon"])
        stack.callback(stop_tree, daemon)  # runs first: the daemon stops submitting before the webserver goes
        procs = {"webserver": webserver, "daemon": daemon}

        def watch() -> None:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise BenchError(f"dagster {name} exited with {proc.returncode}:\n{tail(logs[name])}")

        gql = GraphQL(f"http://127.0.0.1:{port}/graphql", watch, http_timeout)
        stack.callback(gql.http.close)
        wait_loaded(gql)
        yield f"http://127.0.0.1:{port}", gql, {name: proc.pid for name, proc in procs.items()}


def _ok(result: dict[str, Any], typename: str, what: str) -> dict[str, Any]:
    if result["__typename"] != typename:
        raise BenchError(f"{what}: {json.dumps(result)[:2000]}")
    return result


def wait_loaded(gql: GraphQL, timeout: float = 300.0) -> tuple[str, str]:
    """(location name, repository name) once the webserver has loaded the code location."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            workspace = gql(WORKSPACE_QUERY)["workspaceOrError"]
            [entry] = workspace["locationEntries"]
            if entry["loadStatus"] == "LOADED":
                location = _ok(entry["locationOrLoadError"], "RepositoryLocation", "code location")
                return entry["name"], location["repositories"][0]["name"]
        time.sleep(1)
    raise BenchError(f"the webserver did not load the code location within {timeout:.0f} s")


def runs_with(gql: GraphQL, tags: dict[str, str] | None = None, run_ids: list[str] | None = None) -> list[dict]:
    run_filter: dict[str, Any] = {}
    if tags:
        run_filter["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
    if run_ids:
        run_filter["runIds"] = run_ids
    return _ok(gql(RUNS, filter=run_filter)["runsOrError"], "Runs", "runsOrError")["results"]


def failure_messages(gql: GraphQL, run_id: str) -> list[str]:
    run = gql(RUN_FAILURES, id=run_id)["runOrError"]
    events = run.get("eventConnection", {}).get("events", [])
    out = [f"{e['stepKey']}: {e['error']['message']}" for e in events if e["__typename"] == "ExecutionStepFailureEvent"]
    return out + [e["message"] for e in events if e["__typename"] == "RunFailureEvent"]


def register_clips(gql: GraphQL, location: str, repository: str, timeout: float = 900.0) -> None:
    """Materialize clip_manifest through the run queue, as the UI's Materialize button does."""
    params = {
        "selector": {
            "repositoryLocationName": location,
            "repositoryName": repository,
            "jobName": "__ASSET_JOB",
            "assetSelection": [{"path": ["clip_manifest"]}],
        },
        "runConfigData": {},
    }
    launched = _ok(gql(LAUNCH_RUN, params=params)["launchRun"], "LaunchRunSuccess", "launchRun clip_manifest")
    run_id = launched["run"]["runId"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        [run] = runs_with(gql, run_ids=[run_id])
        if run["status"] in RUN_DONE:
            if run["status"] != "SUCCESS":
                raise BenchError(f"clip_manifest run {run_id} {run['status']}: {failure_messages(gql, run_id)}")
            return
        time.sleep(1)
    raise BenchError(f"clip_manifest run {run_id} did not end within {timeout:.0f} s")


def launch_backfill(gql: GraphQL, keys: list[str]) -> str:
    params = {"partitionNames": keys, "assetSelection": [{"path": [a]} for a in RENDER_ASSETS]}
    result = gql(LAUNCH_BACKFILL, params=params)["launchPartitionBackfill"]
    return _ok(result, "LaunchBackfillSuccess", "launchPartitionBackfill")["backfillId"]


def wait_backfill(gql: GraphQL, backfill_id: str, clips: int, timeout: float) -> tuple[str, list[dict]]:
    """Polls until the backfill and every run it launched have ended; (backfill status, its runs)."""
    deadline, last_report = time.monotonic() + timeout, 0.0
    while True:
        backfill = gql(BACKFILL_STATUS, id=backfill_id)["partitionBackfillOrError"]
        status = _ok(backfill, "PartitionBackfill", "partitionBackfillOrError")["status"]
        runs = runs_with(gql, tags={"dagster/backfill": backfill_id})
        if status in BACKFILL_DONE and all(r["status"] in RUN_DONE for r in runs):
            return status, runs
        if time.monotonic() - last_report > 30:
            counts = Counter(r["status"] for r in runs)
            log(f"backfill {backfill_id} {status}: {len(runs)} runs for {clips} clips {dict(sorted(counts.items()))}")
            last_report = time.monotonic()
        if time.monotonic() > deadline:
            raise BenchError(f"backfill {backfill_id} did not end within {timeout:.0f} s (status {status})")
        time.sleep(2)


def run_clip(run: dict) -> str | None:
    tags = {t["key"]: t["value"] for t in run["tags"]}
    start, end = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    return tags.get("dagster/partition") or (start if start == end else None)


# ---------------------------------------------------------------------------------------------------- metrics


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class RoundResult:
    workers: int
    clips: int
    seconds: float
    runs: int
    wall_s: float
    render_s_sum: float
    render_s_median: float | None
    utilization: float | None
    gap_median_s: float | None
    gap_p95_s: float | None
    dagster_overhead_per_clip_s: float
    run_overhead_median_s: float | None
    exactly_once: bool
    problems: list[str]
    scaling_efficiency: float | None = None
    renders: list[dict[str, Any]] = field(default_factory=list)


def measure(
    n: int,
    seconds: float,
    keys: list[str],
    all_ids: list[str],
    prompts: list[Prompt],
    runs: list[dict],
    launched_at: float,
    videos: Path,
) -> RoundResult:
    done = [p for p in prompts if p.end is not None]
    render_sum = sum(p.seconds for p in done)
    span = (max(p.end for p in done if p.end) - min(p.start for p in done)) if done else 0.0
    gaps: list[float] = []
    for worker in {p.worker for p in done}:
        mine = sorted((p for p in done if p.worker == worker), key=lambda p: p.start)
        gaps += [b.start - a.end for a, b in pairwise(mine) if a.end is not None]
    wall = max(r["endTime"] for r in runs) - launched_at
    per_clip: Counter[str] = Counter()
    render_of: dict[str, float] = {}
    for p in prompts:
        per_clip[p.clip] += 1
        render_of[p.clip] = render_of.get(p.clip, 0.0) + p.seconds
    run_overheads = [
        r["endTime"] - r["startTime"] - render_of.get(clip, 0.0)
        for r in runs
        if (clip := run_clip(r)) is not None and r["startTime"] and r["endTime"]
    ]
    problems = []
    if len(prompts) != len(keys):
        problems.append(f"{len(prompts)} prompts in the workers' histories for {len(keys)} clips")
    if failed := [p for p in prompts if p.end is None]:
        problems.append(f"{len(failed)} prompts did not succeed: {[p.prompt_id for p in failed][:5]}")
    if twice := sorted(c for c, k in per_clip.items() if k > 1):
        problems.append(f"rendered more than once: {twice[:10]}")
    if never := sorted(set(keys) - set(per_clip)):
        problems.append(f"never rendered: {never[:10]}")
    if extra := sorted(set(per_clip) - set(keys)):
        problems.append(f"rendered outside the backfill: {extra[:10]}")
    if missing := [k for k in keys if not (videos / f"{k}.mp4").is_file()]:
        problems.append(f"no video for {missing[:10]}")
    if stray := [k for k in sorted(set(all_ids) - set(keys)) if (videos / f"{k}.mp4").exists()]:
        problems.append(f"videos of partitions outside the backfill: {stray[:10]}")
    return RoundResult(
        workers=n,
        clips=len(keys),
        seconds=seconds,
        runs=len(runs),
        wall_s=wall,
        render_s_sum=render_sum,
        render_s_median=statistics.median([p.seconds for p in done]) if done else None,
        utilization=render_sum / (n * span) if span > 0 else None,
        gap_median_s=statistics.median(gaps) if gaps else None,
        gap_p95_s=percentile(gaps, 0.95),
        dagster_overhead_per_clip_s=(wall * n - render_sum) / len(keys),
        run_overhead_median_s=statistics.median(run_overheads) if run_overheads else None,
        exactly_once=not problems,
        problems=problems,
        renders=[asdict(p) for p in sorted(prompts, key=lambda p: p.start)],
    )


# ---------------------------------------------------------------------------------------------------- a round


def run_round(
    n: int,
    servers: list[LocalComfyUI],
    base: Path,
    workflows: Path,
    media: tuple[Path, list[Path]],
    clips: int,
    seconds: float,
    max_concurrent_runs: int | None,
) -> RoundResult:
    root = base / f"n{n}"
    home = root / "dagster_home"
    write_instance(home, max_concurrent_runs or 3 * n + 2)
    all_ids = clip_ids(2 * clips)
    keys = all_ids[::2]  # every other partition: M non-contiguous keys
    manifest = root / "manifest.csv"
    write_manifest(manifest, *media, all_ids)
    urls = [s.url for s in servers[:n]]
    env = pipeline_env(home, root, urls, manifest, workflows)
    pool = subprocess.run(
        [str(BIN / "dagster"), "instance", "concurrency", "set", POOL, str(3 * n)],
        env=env,
        capture_output=True,
        text=True,
    )
    if pool.returncode:
        raise BenchError(f"dagster instance concurrency set {POOL} {3 * n} failed:\n{pool.stdout}{pool.stderr}")
    for url in urls:
        clear_history(url)
    with serve(root, env) as (url, gql, _):
        location, repository = wait_loaded(gql)
        log(f"N={n}: webserver on {url} loaded {location}; materializing clip_manifest ({2 * clips} rows)")
        register_clips(gql, location, repository)
        launched_at = time.time()
        backfill_id = launch_backfill(gql, keys)
        log(f"N={n}: backfill {backfill_id} over {len(keys)} non-contiguous clips on {n} worker(s)")
        timeout = 1800 + 2 * clips * (seconds + 60)
        status, runs = wait_backfill(gql, backfill_id, len(keys), timeout)
        failed = [r for r in runs if r["status"] != "SUCCESS"]
        if failed or status not in BACKFILL_OK:
            details = [
                f"{r['runId']} ({run_clip(r)}) {r['status']}: {failure_messages(gql, r['runId'])}" for r in failed
            ]
            raise BenchError(f"backfill {backfill_id} {status}; {len(failed)} run(s) failed:\n" + "\n".join(details))
    prompts = [p for url in urls for p in history_prompts(url, max_items=10 * clips + 100)]
    return measure(n, seconds, keys, all_ids, prompts, runs, launched_at, root / "output" / "videos")


# ---------------------------------------------------------------------------------------------------- output


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


HEADER = (
    f"{'N':>3} {'clips':>5} {'runs':>4} {'T s':>5} {'wall s':>8} {'util':>5} {'gap p50':>8} {'gap p95':>8} "
    f"{'ovh/clip':>9} {'run ovh p50':>11} {'scaling':>7}  once"
)


def row(r: RoundResult) -> str:
    return (
        f"{r.workers:>3} {r.clips:>5} {r.runs:>4} {r.seconds:>5g} {r.wall_s:>8.1f} {_fmt(r.utilization, '5.2f')} "
        f"{_fmt(r.gap_median_s, '8.2f')} {_fmt(r.gap_p95_s, '8.2f')} {r.dagster_overhead_per_clip_s:>9.2f} "
        f"{_fmt(r.run_overhead_median_s, '11.2f')} {_fmt(r.scaling_efficiency, '7.2f')}  "
        + ("yes" if r.exactly_once else "NO: " + "; ".join(r.problems))
    )


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,4", help="comma-separated fleet sizes N (default 1,2,4)")
    parser.add_argument("--clips", type=int, default=40, help="clips M per backfill (default 40)")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds T each prompt holds its worker")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--max-concurrent-runs", type=int, help="the instance's run limit (default 3N+2)")
    args = parser.parse_args()
    sizes = sorted({int(n) for n in args.workers.split(",") if n.strip()})
    if not sizes or sizes[0] < 1 or args.clips < 1 or args.seconds < 0:
        parser.error("--workers needs sizes >= 1, --clips >= 1, --seconds >= 0")
    signal.signal(signal.SIGTERM, _interrupt)  # a kill cleans up like Ctrl-C

    base = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    results: list[RoundResult] = []
    ok = False
    try:
        with ExitStack() as stack:
            workflows = base / "workflows"
            write_sleepy_workflows(workflows, args.seconds)
            media = write_media(base / "media")
            log(f"starting {sizes[-1]} ComfyUI worker(s) with BenchSleep ({base})")
            servers = start_workers(stack, base, sizes[-1])
            print(HEADER, flush=True)
            for n in sizes:
                result = run_round(
                    n, servers, base, workflows, media, args.clips, args.seconds, args.max_concurrent_runs
                )
                if results and results[0].workers == 1:
                    result.scaling_efficiency = results[0].wall_s / (n * result.wall_s)
                elif n == 1:
                    result.scaling_efficiency = 1.0
                results.append(result)
                print(row(result), flush=True)
        ok = True
    except BenchError as exc:
        print(f"fleet benchmark failed: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("fleet benchmark interrupted", file=sys.stderr)
    finally:
        if args.json and results:
            payload = {"clips": args.clips, "seconds": args.seconds, "rounds": [asdict(r) for r in results]}
            args.json.write_text(json.dumps(payload, indent=2))
        if ok:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"logs kept in {base}", file=sys.stderr)
    sys.exit(0 if ok and all(r.exactly_once for r in results) else 1)


if __name__ == "__main__":
    main()
