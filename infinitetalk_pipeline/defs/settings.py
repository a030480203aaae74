"""Every setting of the code location comes in here, and only here.

Each resource field has its variable (`RESOURCE_FIELDS`); resources.py makes it the field's default, an `EnvVar`
resolved when a run or tick starts, so a run config that sets one field keeps the environment's value of the others
and a deployment changes a setting without a code reload. What Dagster needs while the definitions load (sensor and
schedule default status, cron strings, the backfill policy's clips per run, the render job's max runtime) is read
once, below. `ENV_VARS` lists every variable the code location reads; the README's table is checked against it.
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
        "INFINITETALK_COMFYUI_REQUEST_TIMEOUT_SECONDS",
        "`30`",
        "one HTTP request to a ComfyUI worker",
    ),
    EnvSetting(
        "INFINITETALK_COMFYUI_SILENCE_TIMEOUT_SECONDS",
        "`300`",
        "a render with no sign of progress this long, or no worker answering this long, fails",
    ),
    EnvSetting(
        "INFINITETALK_OUTPUT_ROOT",
        "`var/output`",
        "a directory or `s3://bucket/prefix/` for videos, clip specs and the catalog",
    ),
    EnvSetting("INFINITETALK_MANIFEST", "`examples/manifest.csv`", "the manifest `clip_manifest` reads by default"),
    EnvSetting(
        "INFINITETALK_ALLOWED_ROOTS", "the working directory", "`:`-separated directories local inputs may come from"
    ),
    EnvSetting(
        "INFINITETALK_ALLOW_PRIVATE_URLS",
        "`false`",
        "`true`: URL inputs may point at loopback, private and link-local addresses (trusted networks only)",
    ),
    EnvSetting("INFINITETALK_CACHE_DIR", "`var/cache`", "downloaded inputs, stored by content"),
    EnvSetting(
        "INFINITETALK_CACHE_MAX_GB",
        "`50`",
        "the downloaded inputs kept: the least recently used go first beyond this size (0: no limit)",
    ),
    EnvSetting("INFINITETALK_CACHE_MAX_AGE_DAYS", "`30`", "downloaded inputs unused this long are removed (0: kept)"),
    EnvSetting(
        "INFINITETALK_WORKER_MAX_UPLOAD_MB",
        "`100`",
        "must match the workers' `--max-upload-size` (ComfyUI's default: 100): larger portraits and speech are "
        "refused when fetched, naming the clip and field (0: no limit)",
    ),
    EnvSetting("INFINITETALK_S3_ENDPOINT_URL", "AWS", "an S3-compatible endpoint"),
    EnvSetting("AWS_REGION", "`us-east-1`", "the S3 region"),
    EnvSetting(
        "INFINITETALK_S3_MAX_ATTEMPTS",
        "`5`",
        "retries per S3 call after the first attempt (botocore's `retries.max_attempts`: 5 means up to 6 tries)",
    ),
    EnvSetting(
        "INFINITETALK_S3_VERIFY", "`true`", "`false`: S3 TLS certificates are not verified (a self-signed endpoint)"
    ),
    EnvSetting("INFINITETALK_S3_USE_SSL", "`true`", "`false`: plain HTTP to AWS's S3 (an endpoint URL's scheme wins)"),
    EnvSetting("INFINITETALK_S3_UNSIGNED", "`false`", "`true`: anonymous S3 requests (public buckets)"),
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
        "INFINITETALK_QUEUE_DEPTH",
        "`1`",
        "prompts kept waiting in each worker's ComfyUI queue behind the running one, so the GPU never idles",
    ),
    EnvSetting(
        "INFINITETALK_WORKER_FREE_AFTER_JOB",
        "`unload`",
        "after each render: `unload` (models leave VRAM), `free` (also ComfyUI's caches) or `off`",
    ),
    EnvSetting(
        "INFINITETALK_WORKER_MAX_JOBS", "`100`", "drain and restart a worker after this many renders (0: never)"
    ),
    EnvSetting(
        "INFINITETALK_WORKER_MAX_RAM_PERCENT", "`90`", "... or when its RAM is fuller than this after a render (0: off)"
    ),
    EnvSetting("INFINITETALK_WORKER_MAX_VRAM_PERCENT", "`0` (off)", "... or when its VRAM is fuller than this"),
    EnvSetting(
        "INFINITETALK_WORKER_DEAD_AFTER_SECONDS",
        "`60`",
        "a worker silent this long while rendering is presumed dead: the clip moves to another worker (one whose port "
        "refuses connections moves it within seconds)",
    ),
    EnvSetting(
        "INFINITETALK_SEGMENT_SECONDS",
        "`60`",
        "speech longer than this renders as segments of at most this long, cut at pauses, on several workers at once "
        "(0: never split; at most 162)",
    ),
    EnvSetting(
        "INFINITETALK_CROSSFADE_FRAMES",
        "`5`",
        "frames of picture cross-fade across each segment join, rendered as overlap (0: a hard cut; at most 25)",
    ),
    EnvSetting(
        "INFINITETALK_GPU_COSTS",
        "the package's `gpu_costs.toml`",
        "a GPU cost table (TOML: seconds per InfiniteTalk window per GPU class; the shipped file says how) for "
        "`infinitetalk estimate` and `clip_manifest`'s cost estimate",
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
    EnvSetting(
        "INFINITETALK_DEAD_RUN_AFTER_SECONDS",
        "`180`",
        "a render run without a heartbeat this long is failed by `dead_render_run_sensor`, freeing its pool slot",
    ),
)


# Which variable each field of each resource (by resource key) defaults to; resources.py builds the resources from
# this, and a test holds it to the resources' fields. boto3 reads the S3 credentials and profile itself, from its
# usual chain (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE, a role), so they are not here:
# secrets stay out of Dagster's config.
RESOURCE_FIELDS: dict[str, dict[str, str]] = {
    "comfyui": {
        "urls": "COMFYUI_URLS",
        "profile": "INFINITETALK_PROFILE",
        "request_timeout": "INFINITETALK_COMFYUI_REQUEST_TIMEOUT_SECONDS",
        "silence_timeout": "INFINITETALK_COMFYUI_SILENCE_TIMEOUT_SECONDS",
        "render_deadline": "INFINITETALK_RENDER_DEADLINE_SECONDS",
        "queue_depth": "INFINITETALK_QUEUE_DEPTH",
        "dead_after_seconds": "INFINITETALK_WORKER_DEAD_AFTER_SECONDS",
        "free_after_job": "INFINITETALK_WORKER_FREE_AFTER_JOB",
        "max_jobs": "INFINITETALK_WORKER_MAX_JOBS",
        "max_ram_percent": "INFINITETALK_WORKER_MAX_RAM_PERCENT",
        "max_vram_percent": "INFINITETALK_WORKER_MAX_VRAM_PERCENT",
        "segment_seconds": "INFINITETALK_SEGMENT_SECONDS",
        "crossfade_frames": "INFINITETALK_CROSSFADE_FRAMES",
    },
    "storage": {
        "output_root": "INFINITETALK_OUTPUT_ROOT",
        "cache_dir": "INFINITETALK_CACHE_DIR",
        "cache_max_gb": "INFINITETALK_CACHE_MAX_GB",
        "cache_max_age_days": "INFINITETALK_CACHE_MAX_AGE_DAYS",
        "worker_max_upload_mb": "INFINITETALK_WORKER_MAX_UPLOAD_MB",
        "allowed_roots": "INFINITETALK_ALLOWED_ROOTS",
        "allow_private_urls": "INFINITETALK_ALLOW_PRIVATE_URLS",
        "manifest": "INFINITETALK_MANIFEST",
    },
    "s3": {
        "endpoint_url": "INFINITETALK_S3_ENDPOINT_URL",
        "region_name": "AWS_REGION",
        "max_attempts": "INFINITETALK_S3_MAX_ATTEMPTS",
        "verify": "INFINITETALK_S3_VERIFY",
        "use_ssl": "INFINITETALK_S3_USE_SSL",
        "use_unsigned_session": "INFINITETALK_S3_UNSIGNED",
    },
    "watch": {
        "manifest_prefix": "INFINITETALK_MANIFEST_PREFIX",
        "drop_prefix": "INFINITETALK_DROP_PREFIX",
        "drop_quiet_seconds": "INFINITETALK_DROP_QUIET_SECONDS",
    },
}
BOTO3_CHAIN = frozenset({"aws_access_key_id", "aws_secret_access_key", "aws_session_token", "profile_name"})

_BOOLEANS = frozenset({"true", "false", "1", "0"})


def env_or(name: str, default: Any) -> Any:
    """A resource field's default: an `EnvVar` when the variable is set, resolved when a run starts, else the
    embedded default (an `EnvVar` of an unset variable fails the run, and the embedded mode sets none).

    A float is read now: Dagster has no float `EnvVar`, and the only float (the render deadline) must match the
    render job's max runtime, read at load anyway. The value is checked now too, in every process that loads the
    code (run workers included): Dagster would take `no` or `off` as true, and a typo must not switch on a guard's
    bypass (`INFINITETALK_ALLOW_PRIVATE_URLS`).
    """
    value = os.environ.get(name)
    if not value:
        return default
    try:
        if isinstance(default, bool):
            if value.lower() not in _BOOLEANS:
                raise ValueError("not one of true, false, 1, 0")
            return dg.EnvVar(name)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, int):
            int(value)
            return dg.EnvVar.int(name)
    except ValueError as exc:
        raise ValueError(f"{name}={value!r}: {exc}") from None
    return dg.EnvVar(name)


def _get(name: str, default: str) -> str:
    return os.environ.get(name) or default


SENSORS_ON = _get("INFINITETALK_SENSORS", "off") == "on"
SCHEDULES_ON = _get("INFINITETALK_SCHEDULES", "off") == "on"
CATCHUP_CRON = _get("INFINITETALK_CATCHUP_CRON", "*/30 * * * *")
CATALOG_CRON = _get("INFINITETALK_CATALOG_CRON", "0 * * * *")
CLIPS_PER_RUN = int(_get("INFINITETALK_CLIPS_PER_RUN", "1"))
GPU_COSTS = _get("INFINITETALK_GPU_COSTS", "")  # "": the table shipped in the package
DEAD_RUN_AFTER_SECONDS = float(_get("INFINITETALK_DEAD_RUN_AFTER_SECONDS", "180"))
# The one render deadline. The ComfyUI resource renders within it; a render run covers up to CLIPS_PER_RUN clips
# plus start-up and storing, so its max runtime (enforced by run monitoring) derives from it; dagster.yaml's
# instance-wide max_runtime_seconds must stay above that (tests/test_settings.py checks).
RENDER_DEADLINE_SECONDS = float(_get("INFINITETALK_RENDER_DEADLINE_SECONDS", str(DEFAULT_RENDER_DEADLINE)))
RUN_MARGIN_SECONDS = 1800.0
RENDER_RUN_MAX_RUNTIME_SECONDS = int(CLIPS_PER_RUN * RENDER_DEADLINE_SECONDS + RUN_MARGIN_SECONDS)
