"""The Dagster UI and the backfill daemon with 100,000 `clips` partitions (issue 13).

    .venv/bin/python benchmarks/scale_ui.py [--partitions 100000] [--backfill 10000] [--screenshots DIR]
        [--daemon-timeout 300] [--contiguous] [--clips-per-run K] [--storage sqlite|postgres] [--json PATH] [--keep]

On a fresh DAGSTER_HOME (the repo's dagster.yaml, or deploy/dagster.postgres.yaml on a throwaway PostgreSQL with
--storage postgres; `max_concurrent_runs: 0` so the queue launches nothing: no ComfyUI runs and nothing renders),
it registers --partitions `clips` keys (`clip-000000`, ...), starts `dagster-webserver` and `dagster-daemon run`
on 127.0.0.1, then:

1. Chromium (headless, Debian's, driven by Playwright) opens the partitions page of `dubbed_video`. `page_s`: from
   navigation start (the page's `performance.timeOrigin`) until it shows the partition count ("100,000 Partitions
   Selected"), the four status counts that come with the partitions' health (Failed, Materialized, Materializing,
   Missing; together at least the partition count) and partition rows. A dynamic partitions page draws no range
   bar: those counts and each row's status dot are its health. Loaded again in the same browser (scripts cached):
   `page_warm_s`; after the backfill below: `page_after_backfill_s`. `page_slowest_graphql`: the three slowest
   GraphQL operations of the first load.
2. `launchPartitionBackfill` (what the UI's dialog sends: partitionNames + assetSelection clip_timing and
   dubbed_video) over --backfill keys, every k-th clip (k = partitions // backfill; --contiguous: the first ones):
   `mutation_s`. Then the backfill's runs are counted (GraphQL) until every targeted clip is requested or
   --daemon-timeout passes: `daemon_first_run_s`, `daemon_all_requested_s` (-1: not within the timeout), `runs`,
   `clips_requested` (as the daemon records it, every 25 runs), `runs_per_s`, and the CPU seconds of the daemon
   and of the webserver (with their code servers) meanwhile. --clips-per-run sets INFINITETALK_CLIPS_PER_RUN.
3. In this process, Dagster's own chunking (`build_run_requests_with_backfill_policies`, what the daemon calls) on
   the same keys with the multi-asset's backfill policy replaced (`with_attributes`): how many runs each policy
   makes for the non-contiguous keys and for as many contiguous ones (`runs_<policy>_<every|contiguous>`).

Everything started (webserver, daemon, code servers, Chromium, PostgreSQL) is stopped at the end; the temporary
folder is removed unless a step failed or --keep (then it is named).

Measured on a 2-core machine shared with other work (load 3-6), 100,000 partitions: the page is ready in 4-6 s
(PartitionHealthQuery: 1.4 MB, 2-2.5 s), the mutation for 10,000 keys takes 0.7-1.6 s, and the daemon makes ONE RUN
PER CLIP for every 10th clip whatever the policy (10,000 runs: Dagster runs cover one key or one contiguous range),
at 0.6-1.8 runs/s (0.3-0.5 daemon CPU-s each; PostgreSQL no faster): 1.5-4.5 hours to queue them. 10,000
contiguous clips at 25 per run are 400 runs, queued at about 6 clips/s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, urlparse

import dagster as dg
import yaml
from dagster._core.definitions.assets.graph.asset_graph import AssetGraph
from dagster._core.definitions.automation_tick_evaluation_context import build_run_requests_with_backfill_policies
from dagster._core.definitions.events import AssetKeyPartitionKey
from dagster._core.definitions.partitions.context import partition_loading_context
from dagster._core.instance.types import CachingDynamicPartitionsLoader
from dagster_shared.utils.cached_method import cached_method
from playwright.sync_api import Browser, Page, Request, sync_playwright

from benchmarks.fleet import RENDER_ASSETS, BenchError, GraphQL, launch_backfill, pipeline_env, serve
from infinitetalk_pipeline.comfy.server import free_port
from infinitetalk_pipeline.defs.assets import CLIP_BACKFILL, clip_manifest, clip_renders
from infinitetalk_pipeline.defs.partitions import clips
from tests.fixtures.processes import descendants

REPO = Path(__file__).resolve().parents[1]
ASSET = "dubbed_video"
CHROMIUM = "chromium"  # Debian's package (scripts/setup.sh); Playwright's own browser download is not used
PAGE_TIMEOUT_S = 300.0
POLL_S = 5.0

RUN_COUNT = """
query($filter: RunsFilter) { runsOrError(filter: $filter) {
  __typename ... on Runs { count } ... on Error { message }
} }
"""
LAST_RUN = """
query($filter: RunsFilter) { runsOrError(filter: $filter, limit: 1) {
  __typename ... on Runs { results { runId status creationTime tags { key value } } } ... on Error { message }
} }
"""
BACKFILL_PROGRESS = """
query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename ... on Error { message }
  ... on PartitionBackfill { status error { message } assetBackfillData { assetBackfillStatuses {
    __typename ... on AssetPartitionsStatusCounts {
      numPartitionsTargeted numPartitionsInProgress numPartitionsMaterialized numPartitionsFailed
    }
  } } }
} }
"""

# Resolves to performance.now() (ms since navigation start) once the partitions page shows the partition count,
# the status counts that come with the partitions' health, and partition rows; false until then.
PAGE_READY_JS = """
(n) => {
  const text = document.body ? document.body.innerText : "";
  const count = text.match(/([\\d,]+) Partitions? Selected/);
  if (!count || Number(count[1].replace(/,/g, "")) !== n) return false;
  const states = [...text.matchAll(/(?:Failed|Materialized|Materializing|Missing) \\((\\d+)\\)/g)];
  if (states.length < 4 || states.reduce((sum, m) => sum + Number(m[1]), 0) < n) return false;
  if (!document.querySelector('[data-tooltip^="clip-"]')) return false;
  return performance.now();
}
"""
PAGE_COUNT_JS = """
(n) => {
  const count = (document.body ? document.body.innerText : "").match(/([\\d,]+) Partitions? Selected/);
  return count && Number(count[1].replace(/,/g, "")) === n ? performance.now() : false;
}
"""


def log(message: str) -> None:
    print(f"[scale_ui {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def clip_keys(count: int) -> list[str]:
    return [f"clip-{i:06d}" for i in range(count)]


# ---------------------------------------------------------------------------------------------------- instance


@contextlib.contextmanager
def postgres_database() -> Iterator[dict[str, str]]:
    """A throwaway PostgreSQL on 127.0.0.1 (tests/fixtures/postgres.py's server); yields the DAGSTER_PG_* variables
    deploy/dagster.postgres.yaml reads, also set in this process meanwhile (its instance reads them here)."""
    from tests.fixtures.postgres import _Server, find_server_binaries  # imports pytest: only when asked for

    server = _Server(find_server_binaries())
    try:
        server.start()
        pg_env = server.create_database("dagster_scale_ui").dagster_env()
        with mock.patch.dict(os.environ, pg_env):
            yield pg_env
    finally:
        server.stop()


def prepare(root: Path, partitions: int, pg_env: dict[str, str] | None = None) -> tuple[dict[str, str], float]:
    """A DAGSTER_HOME under `root` holding `partitions` clips, on SQLite (the repo's dagster.yaml) or, given
    `pg_env`, PostgreSQL (deploy/dagster.postgres.yaml); (the webserver's and daemon's env, seconds taken to
    register the clips)."""
    home = root / "dagster_home"
    home.mkdir(parents=True)
    config = yaml.safe_load((REPO / ("deploy/dagster.postgres.yaml" if pg_env else "dagster.yaml")).read_text())
    # 0: the queue launches nothing, so backfill runs are created and stay QUEUED (no ComfyUI here to render).
    config["concurrency"]["runs"]["max_concurrent_runs"] = 0
    config["nux"] = {"enabled": False}  # the first-visit newsletter dialog would cover the screenshot
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    manifest = root / "inputs" / "manifest.csv"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("clip_id,image_path,wav_path\n")
    # A port nothing listens on: no run gets to render anyway.
    env = pipeline_env(home, root, [f"http://127.0.0.1:{free_port()}"], manifest, REPO / "workflows") | (pg_env or {})
    with dg.DagsterInstance.from_config(str(home)) as instance:
        started = time.monotonic()
        instance.add_dynamic_partitions(clips.name, clip_keys(partitions))
        seconds = time.monotonic() - started
    log(f"registered {partitions} clips partitions in {seconds:.1f} s ({home})")
    return env, seconds


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (code servers)."""
    total = 0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / 100  # clock ticks: 100 per second on Linux


# ---------------------------------------------------------------------------------------------------- the page


def graphql_timings(requests: list[Request]) -> list[tuple[str, float, int]]:
    """(operation, seconds, response bytes) of the UI's GraphQL requests, slowest first."""
    out = []
    for request in requests:
        url = urlparse(request.url)
        if not url.path.endswith("/graphql"):
            continue
        timing = request.timing
        op = parse_qs(url.query).get("op", ["?"])[0]
        with contextlib.suppress(Exception):  # a request the page dropped has no sizes
            size = request.sizes()["responseBodySize"]
            out.append((op, max(timing["responseEnd"], 0.0) / 1000, size))
    return sorted(out, key=lambda t: -t[1])


def load_partitions_page(
    browser: Browser, url: str, partitions: int, screenshot: Path | None
) -> tuple[float, float, list[tuple[str, float, int]]]:
    """(seconds until the partition count shows, seconds until the page is ready, GraphQL timings) from navigation
    start, in a new tab."""
    page: Page = browser.new_page(viewport={"width": 1600, "height": 1000})
    requests: list[Request] = []
    page.on("requestfinished", lambda request: requests.append(request))  # Playwright wraps plain functions only
    try:
        page.goto(f"{url}/assets/{ASSET}?view=partitions", wait_until="commit")
        timeout_ms = PAGE_TIMEOUT_S * 1000
        count_ms = page.wait_for_function(PAGE_COUNT_JS, arg=partitions, timeout=timeout_ms).json_value()
        ready_ms = page.wait_for_function(PAGE_READY_JS, arg=partitions, timeout=timeout_ms).json_value()
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
        return count_ms / 1000, ready_ms / 1000, graphql_timings(requests)
    finally:
        page.close()


# ---------------------------------------------------------------------------------------------------- backfill


def _runs(gql: GraphQL, query: str, backfill_id: str) -> dict[str, Any]:
    result = gql(query, filter={"tags": [{"key": "dagster/backfill", "value": backfill_id}]})["runsOrError"]
    if result["__typename"] != "Runs":
        raise BenchError(f"runsOrError: {json.dumps(result)[:2000]}")
    return result


def backfill_progress(gql: GraphQL, backfill_id: str) -> tuple[str, int, int, str]:
    """(status, partitions requested so far, partitions targeted, the daemon's error), the least over the assets:
    the daemon records what it requested every 25 runs (DAGSTER_ASSET_BACKFILL_RUN_CHUNK_SIZE)."""
    backfill = gql(BACKFILL_PROGRESS, id=backfill_id)["partitionBackfillOrError"]
    if backfill["__typename"] != "PartitionBackfill":
        raise BenchError(f"partitionBackfillOrError: {json.dumps(backfill)[:2000]}")
    counts = [s for s in backfill["assetBackfillData"]["assetBackfillStatuses"] if "numPartitionsTargeted" in s]
    if not counts:
        raise BenchError(f"backfill {backfill_id} has no partitioned assets: {json.dumps(backfill)[:2000]}")
    requested = min(
        s["numPartitionsInProgress"] + s["numPartitionsMaterialized"] + s["numPartitionsFailed"] for s in counts
    )
    targeted = min(s["numPartitionsTargeted"] for s in counts)
    return backfill["status"], requested, targeted, (backfill.get("error") or {}).get("message", "")


def follow_backfill(
    gql: GraphQL, backfill_id: str, launched: float, timeout: float, cpu: Callable[[], dict[str, float]]
) -> dict[str, float | int | str]:
    """Counts the backfill's runs until all its partitions are requested, it ends, or `timeout` passes."""
    cpu_before = cpu()
    first_run_s, all_requested_s, last_report = -1.0, -1.0, 0.0
    while True:
        status, requested, targeted, error = backfill_progress(gql, backfill_id)
        runs = _runs(gql, RUN_COUNT, backfill_id)["count"]
        elapsed = time.monotonic() - launched
        if runs and first_run_s < 0:
            first_run_s = elapsed
        if requested >= targeted or status != "REQUESTED":
            all_requested_s = elapsed if requested >= targeted else -1.0
            break
        if elapsed - last_report >= 30:
            log(f"backfill {backfill_id} {status}: {runs} runs, {requested}/{targeted} clips at {elapsed:.0f} s")
            last_report = elapsed
        if elapsed > timeout:
            break
        time.sleep(POLL_S)
    elapsed = time.monotonic() - launched
    cpu_after = cpu()
    last = _runs(gql, LAST_RUN, backfill_id)["results"]
    tags = {t["key"]: t["value"] for t in last[0]["tags"]} if last else {}
    shown = {k: v for k, v in tags.items() if k.startswith("dagster/") and "partition" in k}
    return {
        "daemon_first_run_s": round(first_run_s, 1),
        "daemon_all_requested_s": round(all_requested_s, 1),
        "daemon_followed_s": round(elapsed, 1),
        "runs": runs,
        "clips_requested": requested,
        "runs_per_s": round(runs / max(elapsed - max(first_run_s, 0.0), 1e-9), 2) if runs else 0.0,
        "backfill_status": status,
        "backfill_error": error.strip().splitlines()[-1] if error.strip() else "",
        "daemon_cpu_s": round(cpu_after["daemon"] - cpu_before["daemon"], 1),
        "webserver_cpu_s": round(cpu_after["webserver"] - cpu_before["webserver"], 1),
        "run_partition_tags": json.dumps(shown, sort_keys=True),
    }


# ---------------------------------------------------------------------------------------------------- policies


class LoadedKeys(CachingDynamicPartitionsLoader):
    """Answers key lookups from one load of the keys, as the daemon's CachingInstanceQueryer does once it has them
    (the base class asks the database once per key: about 3 ms each here, which the daemon does not pay)."""

    def has_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> bool:
        return partition_key in self._key_set(partitions_def_name)

    @cached_method
    def _key_set(self, partitions_def_name: str) -> frozenset[str]:
        return frozenset(self.get_dynamic_partitions(partitions_def_name))


def policy_runs(home: Path, selections: dict[str, list[str]]) -> dict[str, float | int]:
    """How many runs Dagster's backfill chunking makes for each selection under each policy, with the multi-asset's
    policy replaced in this process only, and how long building them took."""
    policies = {
        "current": CLIP_BACKFILL,
        "multi25": dg.BackfillPolicy.multi_run(max_partitions_per_run=25),
        "single": dg.BackfillPolicy.single_run(),
    }
    out: dict[str, float | int] = {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for name, policy in policies.items():
            graph = AssetGraph.from_assets([clip_manifest, clip_renders.with_attributes(backfill_policy=policy)])
            for selection, keys in selections.items():
                store = LoadedKeys(instance)
                partitions = {AssetKeyPartitionKey(dg.AssetKey(a), k) for a in RENDER_ASSETS for k in keys}
                started = time.monotonic()
                with partition_loading_context(dynamic_partitions_store=store):
                    requests = build_run_requests_with_backfill_policies(partitions, graph, store)
                out[f"runs_{name}_{selection}"] = len(requests)
                out[f"chunking_{name}_{selection}_s"] = round(time.monotonic() - started, 2)
    return out


# ---------------------------------------------------------------------------------------------------- all of it


def measure_ui(
    partitions: int = 100_000,
    backfill: int = 10_000,
    screenshots: Path | None = None,
    daemon_timeout: float = 300.0,
    keep: bool = False,
    contiguous: bool = False,
    clips_per_run: int | None = None,
    storage: str = "sqlite",
) -> dict[str, float | int | str]:
    """Measures the partitions page, the backfill mutation and the daemon (module docstring); raises BenchError
    when a step fails, with the temporary folder (logs) kept and named.

    `contiguous` backfills the first `backfill` clips instead of every k-th; `clips_per_run` sets
    INFINITETALK_CLIPS_PER_RUN (the multi-asset's max_partitions_per_run) for the webserver and daemon; `storage`
    "postgres" puts the instance on a throwaway PostgreSQL (deploy/dagster.postgres.yaml) instead of SQLite."""
    if storage not in ("sqlite", "postgres"):
        raise ValueError(f"storage must be sqlite or postgres, not {storage!r}")
    step = 1 if contiguous else partitions // max(backfill, 1)
    if backfill < 1 or (not contiguous and step < 2) or backfill > partitions:
        raise ValueError("--backfill must be at least 1 and, unless contiguous, at most half of --partitions")
    keys = clip_keys(partitions)[::step][:backfill]
    root = Path(tempfile.mkdtemp(prefix="scale-ui-"))
    ok = False
    try:
        with ExitStack() as stack:
            pg_env = stack.enter_context(postgres_database()) if storage == "postgres" else None
            result = _measure(root, partitions, keys, step, screenshots, daemon_timeout, clips_per_run, pg_env)
        ok = True
        return result
    finally:
        if ok and not keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            log(f"logs kept in {root}")


def _measure(
    root: Path,
    partitions: int,
    keys: list[str],
    step: int,
    screenshots: Path | None,
    daemon_timeout: float,
    clips_per_run: int | None,
    pg_env: dict[str, str] | None,
) -> dict[str, float | int | str]:
    all_keys = clip_keys(partitions)
    env, register_s = prepare(root, partitions, pg_env)
    if clips_per_run:
        env["INFINITETALK_CLIPS_PER_RUN"] = str(clips_per_run)
    daemon_policy = dg.BackfillPolicy.multi_run(clips_per_run) if clips_per_run else CLIP_BACKFILL
    result: dict[str, float | int | str] = {
        "partitions": partitions,
        "backfill": len(keys),
        "backfill_every": step,
        "daemon_policy": repr(daemon_policy),
        "storage": "postgres" if pg_env else "sqlite",
        "register_s": round(register_s, 2),
    }
    log("counting the runs each backfill policy makes (in this process)")
    home = Path(env["DAGSTER_HOME"])
    scattered = all_keys[:: max(partitions // len(keys), 2)][: len(keys)]  # what the default (non-contiguous) sends
    result |= policy_runs(home, {"every": scattered, "contiguous": all_keys[: len(keys)]})
    # The mutation checks 10,000 keys against the instance: a longer GraphQL timeout than the fleet benchmark's.
    with serve(root, env, http_timeout=600) as (url, gql, pids), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which(CHROMIUM) or "/usr/bin/chromium")

        def shot(name: str) -> Path | None:
            return screenshots / name if screenshots else None

        count_s, page_s, ops = load_partitions_page(browser, url, partitions, shot("partitions_page.png"))
        slowest = "; ".join(f"{op} {s:.2f} s {size / 1e3:.0f} kB" for op, s, size in ops[:3])
        log(f"partitions page: count after {count_s:.1f} s, ready after {page_s:.1f} s; slowest: {slowest}")
        _, warm_s, _ = load_partitions_page(browser, url, partitions, None)
        result |= {
            "page_count_s": round(count_s, 2),
            "page_s": round(page_s, 2),
            "page_warm_s": round(warm_s, 2),
            "page_slowest_graphql": slowest,
            "page_graphql_requests": len(ops),
        }

        started = time.monotonic()
        backfill_id = launch_backfill(gql, keys)
        result["mutation_s"] = round(time.monotonic() - started, 2)
        log(f"backfill {backfill_id} of {len(keys)} clips (every {step}) launched in {result['mutation_s']} s")

        def cpu() -> dict[str, float]:
            return {name: cpu_seconds(pid) for name, pid in pids.items()}

        result |= follow_backfill(gql, backfill_id, started, daemon_timeout, cpu)
        log(f"backfill: {result['runs']} runs after {result['daemon_followed_s']} s ({result['backfill_status']})")

        _, after_s, _ = load_partitions_page(browser, url, partitions, shot("partitions_page_after_backfill.png"))
        result["page_after_backfill_s"] = round(after_s, 2)
        browser.close()
    return result


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partitions", type=int, default=100_000, help="clips partitions registered")
    parser.add_argument("--backfill", type=int, default=10_000, help="non-contiguous partitions backfilled")
    parser.add_argument("--screenshots", type=Path, help="a folder for the partitions page screenshots")
    parser.add_argument("--daemon-timeout", type=float, default=300.0, help="seconds to follow the daemon")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary DAGSTER_HOME and logs")
    parser.add_argument("--contiguous", action="store_true", help="backfill the first --backfill clips instead")
    parser.add_argument("--clips-per-run", type=int, help="INFINITETALK_CLIPS_PER_RUN for the webserver and daemon")
    parser.add_argument("--storage", choices=["sqlite", "postgres"], default="sqlite", help="the instance's storage")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)  # a kill cleans up like Ctrl-C
    try:
        result = measure_ui(
            args.partitions,
            args.backfill,
            args.screenshots,
            args.daemon_timeout,
            args.keep,
            args.contiguous,
            args.clips_per_run,
            args.storage,
        )
    except (BenchError, ValueError) as exc:
        print(f"scale_ui benchmark failed: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("scale_ui benchmark interrupted", file=sys.stderr)
        sys.exit(1)
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
