"""How a run executes its steps: in the run's own process, with the run's heartbeat kept from its first moment.

In process: a render run is one step (`clip_renders`), so the default multiprocess executor only added a second
Python process per run that loads the code location again, about 3 s of CPU per clip next to a render that needs
its queue refilled within one render time (issue 11). Pools, retry policies and run monitoring work the same.

Heartbeat: `dead_render_run_sensor` fails a run whose heartbeat stopped (defs/runs.py). Kept by the executor, it
covers the whole run, so a run killed while its resources start, before any step runs, is found too.
"""

from collections.abc import Iterator

import dagster as dg
from dagster._core.execution.context.system import PlanOrchestrationContext
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.execution.retries import RetryMode

from infinitetalk_pipeline.defs.runs import heartbeat


class HeartbeatExecutor(dg.Executor):
    """Another executor's execution, inside the run's heartbeat."""

    def __init__(self, inner: dg.Executor) -> None:
        self._inner = inner

    @property
    def retries(self) -> RetryMode:
        return self._inner.retries

    def execute(
        self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan
    ) -> Iterator[dg.DagsterEvent]:
        with heartbeat(plan_context.instance, plan_context.run_id):
            yield from self._inner.execute(plan_context, execution_plan)


@dg.executor(
    name="in_process",
    config_schema=dg.in_process_executor.config_schema,
)
def in_process_with_heartbeat(init_context: dg.InitExecutorContext) -> dg.Executor:
    """Dagster's in-process executor (same config), keeping the run's heartbeat."""
    creation = dg.in_process_executor.executor_creation_fn
    assert creation is not None
    return HeartbeatExecutor(creation(init_context))


defs = dg.Definitions(executor=in_process_with_heartbeat)
