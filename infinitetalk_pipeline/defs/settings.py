"""Every setting of the code location comes in here, and only here.

Resources take theirs through `EnvVar` (`env_or`), resolved when a run starts, so a deployment changes them without
a code reload. What Dagster needs while the definitions load (sensor and schedule default status, cron strings, the
backfill policy's clips per run, the render job's max runtime) is read once, below. `ENV_VARS` lists every variable
the code location reads; the README's table is checked against it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import dagster as dg

from infinitetalk_pipeline.render import DEFAULT_RENDER_DEADLINE


@dataclass(frozen=True)
class EnvSetting:
    name: str
    default: str
    meaning: str


ENV_VARS = (
    EnvSetting("COMFYUI_URLS", "`http://127.0.0.1:8188`", "comma-separated ComfyUI workers"),
    EnvSetting("INFINITETALK_PROFILE", "`preview`", "`preview` (core nodes, CPU) or `infinitetalk` (GPU workers)"),
    EnvSetting(
        "INFINITETALK_OUTPUT_ROOT",
        "`var/output`",
        "a directory or `s3://bucket/prefix/` for videos, clip specs and the catalog",
    ),
    EnvSetting("INFINITETALK_MANIFEST", "`examples/manifest.csv`", "the manifest `clip_manifest` reads by default"),
    EnvSetting(
        "INFINITETALK_ALLOWED_ROOTS", "the working directory", "`:`-separated directories local inputs may come from"
    ),
    EnvSetting("INFINITETALK_CACHE_DIR", "`var/cache`", "downloaded inputs, stored by content"),
    EnvSetting("INFINITETALK_S3_ENDPOINT_URL", "AWS", "an S3-compatible endpoint"),
    EnvSetting("AWS_REGION", "`us-east-1`", "the S3 region"),
    EnvSetting(
        "INFINITETALK_RENDER_DEADLINE_SECONDS",
        "`10800`",
        "one render's deadline on a worker; the render job's `dagster/max_runtime` derives from it",
    ),
    EnvSetting(
        "INFINITETALK_CLIPS_PER_RUN",
        "`1`",
        "clips per run when a backfill covers a contiguous range (more saves run start-up next to short renders)",
    ),
    EnvSetting(
        "INFINITETALK_MANIFEST_PREFIX", "unset (off)", "`s3://bucket/prefix/` that `manifest_upload_sensor` watches"
    ),
    EnvSetting(
        "INFINITETALK_DROP_PREFIX",
        "unset (off)",
        "`s3://bucket/prefix/` of the drop folders `media_drop_sensor` watches",
    ),
    EnvSetting(
        "INFINITETALK_DROP_QUIET_SECONDS", "`300`", "quiet period that completes a drop folder without `_READY`"
    ),
    EnvSetting("INFINITETALK_SENSORS", "off", "`on`: the sensors start running with the code location"),
    EnvSetting("INFINITETALK_SCHEDULES", "off", "`on`: the schedules start running with the code location"),
    EnvSetting(
        "INFINITETALK_CATCHUP_CRON", "`*/30 * * * *`", "when `render_catchup_schedule` looks for unrendered clips"
    ),
    EnvSetting("INFINITETALK_CATALOG_CRON", "`0 * * * *`", "when `refresh_catalog_schedule` refreshes the catalog"),
)


def env_or(name: str, default: Any) -> Any:
    """An `EnvVar` when the variable is set, else the literal default: resources resolve env vars at run start, so a
    missing one must not break the embedded mode."""
    if not os.environ.get(name):
        return default
    return dg.EnvVar.int(name) if isinstance(default, int) else dg.EnvVar(name)


def _get(name: str, default: str) -> str:
    return os.environ.get(name) or default


SENSORS_ON = _get("INFINITETALK_SENSORS", "off") == "on"
SCHEDULES_ON = _get("INFINITETALK_SCHEDULES", "off") == "on"
CATCHUP_CRON = _get("INFINITETALK_CATCHUP_CRON", "*/30 * * * *")
CATALOG_CRON = _get("INFINITETALK_CATALOG_CRON", "0 * * * *")
CLIPS_PER_RUN = int(_get("INFINITETALK_CLIPS_PER_RUN", "1"))
# The one render deadline. The ComfyUI resource renders within it; a render run covers up to CLIPS_PER_RUN clips
# plus start-up and storing, so its max runtime (enforced by run monitoring) derives from it; dagster.yaml's
# instance-wide max_runtime_seconds must stay above that (tests/test_settings.py checks).
RENDER_DEADLINE_SECONDS = float(_get("INFINITETALK_RENDER_DEADLINE_SECONDS", str(DEFAULT_RENDER_DEADLINE)))
RUN_MARGIN_SECONDS = 1800.0
RENDER_RUN_MAX_RUNTIME_SECONDS = int(CLIPS_PER_RUN * RENDER_DEADLINE_SECONDS + RUN_MARGIN_SECONDS)
