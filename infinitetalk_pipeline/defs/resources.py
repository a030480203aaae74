"""Resources: all I/O the assets need, configured through `EnvVar` with working embedded defaults."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import PrivateAttr

from infinitetalk_pipeline.comfy.client import ComfyClient
from infinitetalk_pipeline.comfy.pool import WorkerPool
from infinitetalk_pipeline.defs import settings
from infinitetalk_pipeline.defs.settings import env_or
from infinitetalk_pipeline.media.sources import MediaFetcher, SourcePolicy
from infinitetalk_pipeline.paths import project_dir, var_dir
from infinitetalk_pipeline.storage import OutputStore, output_store_for

# Defaults relative to the working directory the code location loads in (paths.py says why).
DEFAULT_VAR = var_dir()
DEFAULT_MANIFEST = project_dir() / "examples" / "manifest.csv"


class ComfyUIResource(dg.ConfigurableResource):
    """The ComfyUI workers (comma-separated URLs) and the render profile they run."""

    urls: str = "http://127.0.0.1:8188"
    profile: str = "preview"
    request_timeout: float = 30.0
    silence_timeout: float = 300.0
    render_deadline: float = settings.RENDER_DEADLINE_SECONDS

    def worker_urls(self) -> list[str]:
        return [u.strip().rstrip("/") for u in self.urls.split(",") if u.strip()]

    @contextmanager
    def client(self) -> Iterator[ComfyClient]:
        """A client on the least busy reachable worker."""
        url = WorkerPool(self.worker_urls()).pick()
        with ComfyClient(
            url,
            request_timeout=self.request_timeout,
            silence_timeout=self.silence_timeout,
            render_deadline=self.render_deadline,
        ) as client:
            yield client


class S3WatchResource(dg.ConfigurableResource):
    """What the S3 sensors watch: `s3://bucket/prefix/` of uploaded manifests and of drop folders ("" = off)."""

    manifest_prefix: str = ""
    drop_prefix: str = ""
    drop_quiet_seconds: int = 300  # a drop folder without `_READY` is complete once unchanged this long


class PipelineStorage(dg.ConfigurableResource):
    """Where outputs, clip specs and the catalog live (`/dir` or `s3://bucket/prefix/`), and where inputs may come
    from."""

    output_root: str = str(DEFAULT_VAR / "output")
    cache_dir: str = str(DEFAULT_VAR / "cache")
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
        return SourcePolicy(allowed_roots=roots, allow_private_hosts=self.allow_private_urls)

    def fetcher(self) -> MediaFetcher:
        return MediaFetcher(self.policy, cache_dir=Path(self.cache_dir), s3_client=self.s3_client())


def build_resources() -> dict[str, Any]:
    s3 = S3Resource(
        endpoint_url=env_or("INFINITETALK_S3_ENDPOINT_URL", None),
        region_name=env_or("AWS_REGION", "us-east-1"),
    )
    return {
        "comfyui": ComfyUIResource(
            urls=env_or("COMFYUI_URLS", "http://127.0.0.1:8188"),
            profile=env_or("INFINITETALK_PROFILE", "preview"),
        ),
        "storage": PipelineStorage(
            output_root=env_or("INFINITETALK_OUTPUT_ROOT", str(DEFAULT_VAR / "output")),
            cache_dir=env_or("INFINITETALK_CACHE_DIR", str(DEFAULT_VAR / "cache")),
            allowed_roots=env_or("INFINITETALK_ALLOWED_ROOTS", str(project_dir())),
            manifest=env_or("INFINITETALK_MANIFEST", str(DEFAULT_MANIFEST)),
            s3=s3,
        ),
        "s3": s3,
        "watch": S3WatchResource(
            manifest_prefix=env_or("INFINITETALK_MANIFEST_PREFIX", ""),
            drop_prefix=env_or("INFINITETALK_DROP_PREFIX", ""),
            drop_quiet_seconds=env_or("INFINITETALK_DROP_QUIET_SECONDS", 300),
        ),
    }


defs = dg.Definitions(resources=build_resources())
