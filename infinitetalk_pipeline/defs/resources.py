"""Resources: all I/O the assets need. Each field defaults to its environment variable (settings.RESOURCE_FIELDS), an
`EnvVar` resolved when a run starts, or to the embedded default written here when the variable is unset."""

from __future__ import annotations

import logging
import os
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar, cast, get_args

import dagster as dg
import pydantic
from dagster_aws.s3 import S3Resource
from pydantic import PrivateAttr, field_validator
from pydantic.fields import FieldInfo

from infinitetalk_pipeline.comfy.fleet import Fleet, FreeMode, HealthPolicy, comfyui_urls
from infinitetalk_pipeline.defs import settings
from infinitetalk_pipeline.defs.settings import RESOURCE_FIELDS, env_or
from infinitetalk_pipeline.media.sources import COMFYUI_MAX_UPLOAD_MB, CacheLimits, MediaFetcher, SourcePolicy
from infinitetalk_pipeline.paths import project_dir, var_dir
from infinitetalk_pipeline.segments import Segmenting
from infinitetalk_pipeline.storage import OutputStore, output_store_for

# Defaults relative to the working directory the code location loads in (paths.py says why).
DEFAULT_VAR = var_dir()
DEFAULT_MANIFEST = project_dir() / "examples" / "manifest.csv"
MB = 1 << 20  # as ComfyUI's --max-upload-size counts
GB = 1 << 30
DAY = 86400


class ComfyUIResource(dg.ConfigurableResource):
    """The ComfyUI workers (comma-separated URLs), the render profile they run, and how the fleet is driven
    (comfy/fleet.py): prompts waiting per worker beyond the running one, and the health policy."""

    urls: str = "http://127.0.0.1:8188"
    profile: str = "preview"
    # Whole seconds: an int takes an `EnvVar` resolved at run start, a float cannot (Dagster has no float source).
    request_timeout: int = 30
    silence_timeout: int = 300
    render_deadline: float = settings.RENDER_DEADLINE_SECONDS
    queue_depth: int = 1
    dead_after_seconds: int = 60
    free_after_job: str = "unload"  # a FreeMode; a str because a Literal takes no `EnvVar` (the validator checks it)
    max_jobs: int = 100
    max_ram_percent: int = 90
    max_vram_percent: int = 0
    segment_seconds: int = 60  # speech longer than this renders as segments cut at pauses (0: never split)
    crossfade_frames: int = 5  # the picture's cross-fade across each segment join (0: a hard cut)

    @field_validator("free_after_job")
    @classmethod
    def _a_free_mode(cls, value: str) -> str:
        if value not in get_args(FreeMode):
            raise ValueError(f"free_after_job must be one of {', '.join(get_args(FreeMode))}, not {value!r}")
        return value

    @pydantic.model_validator(mode="after")
    def _segmenting_valid(self) -> ComfyUIResource:
        # Refused when the resource is built, not when a long clip meets it; an `EnvVar` is checked once resolved.
        if type(self.segment_seconds) is int and type(self.crossfade_frames) is int:
            self.segmenting()
        return self

    def worker_urls(self) -> list[str]:
        return comfyui_urls(self.urls)

    def segmenting(self) -> Segmenting:
        return Segmenting(max_seconds=self.segment_seconds, crossfade_frames=self.crossfade_frames)

    def lanes(self) -> int:
        """Clips a run carries at once: enough to keep every worker rendering with its queue full, plus one
        preparing."""
        return len(self.worker_urls()) * (self.queue_depth + 1) + 1

    def fleet(self, log: logging.Logger | None = None) -> Fleet:
        return Fleet(
            self.worker_urls(),
            queue_depth=self.queue_depth,
            request_timeout=self.request_timeout,
            silence_timeout=self.silence_timeout,
            render_deadline=self.render_deadline,
            dead_after=self.dead_after_seconds,
            policy=HealthPolicy(
                free_after_job=cast(FreeMode, self.free_after_job),
                max_jobs=self.max_jobs,
                max_ram_fraction=self.max_ram_percent / 100,
                max_vram_fraction=self.max_vram_percent / 100,
            ),
            log=log,
        )


class S3WatchResource(dg.ConfigurableResource):
    """What the S3 sensors watch: `s3://bucket/prefix/` of uploaded manifests and of drop folders ("" = off)."""

    manifest_prefix: str = ""
    drop_prefix: str = ""
    drop_quiet_seconds: int = 300  # a drop folder without `_READY` is complete once unchanged this long


class PipelineStorage(dg.ConfigurableResource):
    """Where outputs, clip specs and the catalog live (`/dir` or `s3://bucket/prefix/`), where inputs may come
    from, how much of them the fetch cache keeps, and how large an input the workers take."""

    output_root: str = str(DEFAULT_VAR / "output")
    cache_dir: str = str(DEFAULT_VAR / "cache")
    cache_max_gb: int = 50  # downloaded inputs kept, least recently used evicted first (0: no limit)
    cache_max_age_days: int = 30  # downloaded inputs unused this long are evicted (0: kept)
    # The workers' --max-upload-size: a portrait or speech track larger than this is refused at fetch time.
    worker_max_upload_mb: int = COMFYUI_MAX_UPLOAD_MB
    allowed_roots: str = str(project_dir())  # os.pathsep-separated directories local *_path inputs may come from
    allow_private_urls: bool = False
    manifest: str = str(DEFAULT_MANIFEST)  # the default manifest of `clip_manifest`
    s3: S3Resource

    _store: OutputStore | None = PrivateAttr(default=None)

    def s3_client(self) -> Any:
        return self.s3.get_client()

    def store(self) -> OutputStore:
        if self._store is None:
            needs_s3 = self.output_root.startswith("s3://")
            self._store = output_store_for(self.output_root, s3_client=self.s3_client() if needs_s3 else None)
        return self._store

    @cached_property
    def policy(self) -> SourcePolicy:
        roots = tuple(Path(p) for p in self.allowed_roots.split(os.pathsep) if p)
        return SourcePolicy(
            allowed_roots=roots,
            allow_private_hosts=self.allow_private_urls,
            max_upload_bytes=self.worker_max_upload_mb * MB,
        )

    def fetcher(self) -> MediaFetcher:
        limits = CacheLimits(max_bytes=self.cache_max_gb * GB, max_age_seconds=self.cache_max_age_days * DAY)
        return MediaFetcher(
            self.policy, cache_dir=Path(self.cache_dir), s3_client=self.s3_client(), cache_limits=limits
        )


R = TypeVar("R", bound=dg.ConfigurableResource)


def from_environment(cls: type[R], key: str) -> type[R]:
    """`cls` with each field's default taken from its environment variable (settings.RESOURCE_FIELDS[key]).

    Defaults, not constructor values: Dagster makes constructor values one default for the resource's whole config,
    which a run config setting any field replaces, so the other fields fell back to the embedded defaults. A field's
    own default (an `EnvVar` default becomes `{"env": NAME}` in the schema) survives a run config that sets others,
    and is still resolved when the run starts. The subclass is made per call, so what is set when the definitions
    load decides (a test's monkeypatched environment included); the class written here keeps its embedded defaults.
    """
    fields: dict[str, Any] = {
        name: (info.annotation, FieldInfo.merge_field_infos(info, default=env_or(variable, info.default)))
        for name, variable in RESOURCE_FIELDS[key].items()
        for info in [cls.model_fields[name]]
    }
    return cast("type[R]", pydantic.create_model(cls.__name__, __base__=cls, __module__=cls.__module__, **fields))


def build_resources() -> dict[str, Any]:
    # One S3 resource, also nested in storage. A run config for `s3` does not reach storage's copy: Dagster cannot
    # share a nested S3Resource with the top-level key (the run sees the key as a boto3 client).
    s3 = from_environment(S3Resource, "s3")()
    return {
        "comfyui": from_environment(ComfyUIResource, "comfyui")(),
        "storage": from_environment(PipelineStorage, "storage")(s3=s3),
        "s3": s3,
        "watch": from_environment(S3WatchResource, "watch")(),
    }


defs = dg.Definitions(resources=build_resources())
