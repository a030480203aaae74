"""`worker/worker.lock.toml`: ComfyUI version, custom-node commits, Python pins and model files of a GPU worker."""

from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from infinitetalk_pipeline.errors import PipelineError
from infinitetalk_pipeline.paths import data_dir

LOCK_ENV = "INFINITETALK_WORKER_LOCK"


class LockError(PipelineError):
    """The lock file is missing or malformed."""


@dataclass(frozen=True)
class ComfyUIPin:
    version: str
    repository: str
    ref: str
    pypi: str


@dataclass(frozen=True)
class NodePin:
    name: str  # the folder under custom_nodes/ (the repository's name)
    repository: str
    commit: str
    why: str


@dataclass(frozen=True)
class ModelPin:
    file: str
    folder: str  # ComfyUI's model folder name: diffusion_models, loras, vae, ...
    url: str
    size: int | None = None  # None: not yet measured on the real file (verify reports it UNPINNED)
    sha256: str | None = None

    @property
    def relpath(self) -> str:
        return f"{self.folder}/{self.file}"


@dataclass(frozen=True)
class WorkerLock:
    path: Path
    comfyui: ComfyUIPin
    custom_nodes: tuple[NodePin, ...]
    requirements: tuple[str, ...]
    models: tuple[ModelPin, ...]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def model(self, file: str) -> ModelPin | None:
        return next((m for m in self.models if m.file == file), None)


def default_lock_path() -> Path:
    """`$INFINITETALK_WORKER_LOCK`, else the `worker/worker.lock.toml` the package carries (the repository's in a
    checkout)."""
    override = os.environ.get(LOCK_ENV)
    if override:
        return Path(override)
    return data_dir() / "worker" / "worker.lock.toml"


def load_lock(path: Path | None = None) -> WorkerLock:
    path = path or default_lock_path()
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise LockError(f"cannot read the worker lock {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise LockError(f"{path}: {exc}") from exc
    try:
        if doc.get("schema") != 1:
            raise LockError(f"{path}: schema {doc.get('schema')!r} is not 1")
        python = doc.get("python", {})
        return WorkerLock(
            path=path,
            comfyui=ComfyUIPin(**doc["comfyui"]),
            custom_nodes=tuple(NodePin(**n) for n in doc.get("custom_nodes", [])),
            requirements=tuple(python.get("requirements", [])),
            models=tuple(ModelPin(**m) for m in doc.get("models", [])),
        )
    except (KeyError, TypeError) as exc:
        raise LockError(f"{path}: malformed entry ({exc})") from exc
