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
from infinitetalk_pipeline.media.sources import MediaFetcher, SourcePolicy
from infinitetalk_pipeline.storage import OutputStore, output_store_for

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VAR = REPO_ROOT / "var"


def _env_or(name: str, default: str | None) -> Any:
    """An `EnvVar` when the variable is set, else a literal default: resources resolve env vars at run start, so a
    missing one must not break the embedded mode."""
    return dg.EnvVar(name) if os.environ.get(name) else default


class ComfyUIResource(dg.ConfigurableResource):
    """The ComfyUI workers (comma-separated URLs) and the render profile they run."""

    urls: str = "http://127.0.0.1:8188"
    profile: str = "preview"
    request_timeout: float = 30.0
    silence_timeout: float = 300.0
    render_deadline: float = 3 * 3600.0

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


class PipelineStorage(dg.ConfigurableResource):
    """Where outputs, clip specs and the catalog live (`/dir` or `s3://bucket/prefix/`), and where inputs may come
    from."""

    output_root: str = str(DEFAULT_VAR / "output")
    cache_dir: str = str(DEFAULT_VAR / "cache")
    allowed_roots: str = str(REPO_ROOT)  # os.pathsep-separated directories local *_path inputs may come from
    allow_private_urls: bool = False
    manifest: str = str(REPO_ROOT / "examples" / "manifest.csv")  # the default manifest of `clip_manifest`
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
        endpoint_url=_env_or("INFINITETALK_S3_ENDPOINT_URL", None),
        region_name=_env_or("AWS_REGION", "us-east-1"),
    )
    return {
        "comfyui": ComfyUIResource(
            urls=_env_or("COMFYUI_URLS", "http://127.0.0.1:8188"),
            profile=_env_or("INFINITETALK_PROFILE", "preview"),
        ),
        "storage": PipelineStorage(
            output_root=_env_or("INFINITETALK_OUTPUT_ROOT", str(DEFAULT_VAR / "output")),
            cache_dir=_env_or("INFINITETALK_CACHE_DIR", str(DEFAULT_VAR / "cache")),
            allowed_roots=_env_or("INFINITETALK_ALLOWED_ROOTS", str(REPO_ROOT)),
            manifest=_env_or("INFINITETALK_MANIFEST", str(REPO_ROOT / "examples" / "manifest.csv")),
            s3=s3,
        ),
        "s3": s3,
    }


defs = dg.Definitions(resources=build_resources())
