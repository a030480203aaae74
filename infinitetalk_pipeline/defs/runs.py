"""Dead render runs: a render step keeps a heartbeat (a run tag), and `dead_render_run_sensor` fails the runs whose
heartbeat stopped, so their `gpu_render` slots come back in minutes rather than at the instance's 6 h cap.

The default run launcher cannot see a run worker that was killed (an OOM kill, a lost machine): the run stays
STARTED and keeps its pool slot. The render step writes `infinitetalk/heartbeat` every HEARTBEAT_SECONDS; the sensor
fails a STARTED run whose heartbeat is older than INFINITETALK_DEAD_RUN_AFTER_SECONDS and frees its slots. The
instance's run retries (dagster.yaml `run_retries`) launch it again, and the new attempt adopts the prompt the dead
one left on the fleet (comfy/fleet.py, `Lineage`): queued, running or finished, the clip is rendered once.
"""

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from infinitetalk_pipeline.defs import settings

HEARTBEAT_TAG = "infinitetalk/heartbeat"
HEARTBEAT_SECONDS = 30.0
log = logging.getLogger(__name__)


_beating: set[str] = set()  # runs whose heartbeat this process keeps
_beating_lock = threading.Lock()


@contextmanager
def heartbeat(instance: dg.DagsterInstance, run_id: str, every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """Keep the run's heartbeat tag fresh while the block runs. Nested blocks of one run add nothing: the executor
    keeps it for a launched run (defs/executor.py), the render step for a run that `dg.materialize` executes."""
    with _beating_lock:
        nested = run_id in _beating
        _beating.add(run_id)
    if nested:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                instance.add_run_tags(run_id, {HEARTBEAT_TAG: str(round(time.time()))})
            except Exception:  # a database blip: a heartbeat that stopped here would get the live run failed
                log.warning(f"run {run_id}: could not write its heartbeat; trying again in {every:g}s", exc_info=True)
            if stop.wait(every):
                return

    thread = threading.Thread(target=beat, name="run-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        with _beating_lock:
            _beating.discard(run_id)


def fail_dead_runs(instance: dg.DagsterInstance, now: float, dead_after: float | None = None) -> list[dg.DagsterRun]:
    """Fail every STARTED run whose heartbeat is older than `dead_after` seconds at `now`, and free its pool
    slots; returns them."""
    dead_after = settings.DEAD_RUN_AFTER_SECONDS if dead_after is None else dead_after
    if dead_after <= HEARTBEAT_SECONDS:
        raise ValueError(
            f"INFINITETALK_DEAD_RUN_AFTER_SECONDS={dead_after:g} would fail live runs: it must exceed the heartbeat's "
            f"period, {HEARTBEAT_SECONDS:g} s"
        )
    records = instance.get_run_records(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    dead = []
    for record in records:
        run = record.dagster_run
        if HEARTBEAT_TAG not in run.tags:
            continue
        # A retry starts with its parent's tags, a stale heartbeat included: its own start counts as a beat.
        last_sign = max(float(run.tags[HEARTBEAT_TAG]), record.start_time or 0.0)
        if now - last_sign <= dead_after:
            continue
        instance.report_run_failed(
            run,
            message=f"no heartbeat for {now - last_sign:.0f}s: the run's process is gone (killed, or its machine lost)",
        )
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        dead.append(run)
    return dead


@dg.sensor(
    minimum_interval_seconds=30,  # one query for STARTED runs: cheap, and a dead run's slot comes back sooner
    default_status=dg.DefaultSensorStatus.RUNNING,  # a safety net: on in every deployment
    description="Fails render runs whose process is gone (their heartbeat stopped) and frees their gpu_render "
    "slots; run retries then launch them again, adopting what they left on the fleet.",
)
def dead_render_run_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    dead = fail_dead_runs(context.instance, time.time())
    for run in dead:
        context.log.warning(f"run {run.run_id}: no heartbeat; failed, its pool slots freed")
    return dg.SkipReason(f"failed {len(dead)} dead run(s)" if dead else "no dead run")
