"""The ComfyUI fleet as Dagster sees it: `comfyui_workers`, one row per worker (reachable, queue, jobs since start,
RAM/VRAM, draining), materialized on demand and observed by `comfyui_workers_sensor` whenever a worker's status
changes. A drained remote worker is reported here until an operator or Kubernetes restarts it (comfy/fleet.py)."""

import json

import dagster as dg

from infinitetalk_pipeline.comfy.fleet import WorkerHealth, fleet_health
from infinitetalk_pipeline.defs import settings
from infinitetalk_pipeline.defs.resources import ComfyUIResource
from infinitetalk_pipeline.redact import redact_text, redact_url

WORKERS = dg.AssetKey("comfyui_workers")
COLUMNS = (
    "worker",
    "reachable",
    "queue",
    "jobs_since_start",
    "ram",
    "vram",
    "rss_mb",
    "draining",
    "supervisor",
    "comfyui",
    "problem",
)


def _metadata(health: list[WorkerHealth]) -> dict[str, dg.MetadataValue | int]:
    rows = [h.row() for h in health]
    table = dg.MetadataValue.table(
        # every record has every field (Dagster's rule): a worker that does not answer has blanks
        records=[dg.TableRecord({k: "" if v is None else v for k, v in row.items()}) for row in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(name) for name in COLUMNS]),
    )
    return {
        "workers": table,
        "reachable": sum(h.reachable for h in health),
        "draining": sum(bool(h.draining) for h in health),
        "dagster/row_count": len(rows),
    }


def _attention(health: list[WorkerHealth]) -> list[str]:
    """What an operator must act on: workers that do not answer, and drained workers nobody restarts."""
    lines = []
    for h in health:
        if not h.reachable:
            lines.append(redact_text(f"worker {h.url} does not answer (it gets no work): {h.problem}"))
        elif h.draining and not h.supervisor:
            lines.append(redact_text(f"worker {h.url} is drained ({h.draining}): restart it once its queue is empty"))
    return lines


@dg.asset(
    key=WORKERS,
    group_name="fleet",
    description="Health of every ComfyUI worker: reachable, queue depth, jobs since start, RAM/VRAM, draining.",
)
def comfyui_workers(context: dg.AssetExecutionContext, comfyui: ComfyUIResource) -> dg.MaterializeResult:
    health = fleet_health(comfyui.worker_urls())
    for line in _attention(health):
        context.log.warning(line)
    return dg.MaterializeResult(metadata=_metadata(health))


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING if settings.SENSORS_ON else dg.DefaultSensorStatus.STOPPED,
    description="Observes `comfyui_workers` when a worker's status changes (unreachable, draining, back).",
)
def comfyui_workers_sensor(context: dg.SensorEvaluationContext, comfyui: ComfyUIResource) -> dg.SensorResult:
    health = fleet_health(comfyui.worker_urls())
    status = json.dumps([[redact_url(h.url), h.reachable, h.draining] for h in health])  # kept in Dagster's database
    if status == context.cursor:
        return dg.SensorResult(skip_reason="no worker changed status")
    for line in _attention(health):
        context.log.warning(line)
    return dg.SensorResult(asset_events=[dg.AssetObservation(WORKERS, metadata=_metadata(health))], cursor=status)
