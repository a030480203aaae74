"""deploy/worker/Dockerfile: clean under hadolint, and built from worker/worker.lock.toml so the two cannot drift."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

from infinitetalk_pipeline.worker.lock import WorkerLock, load_lock
from tests.fixtures.docker import hadolint, in_build_context

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "worker" / "Dockerfile"
DOCKERIGNORE = DOCKERFILE.with_name("Dockerfile.dockerignore")


@pytest.fixture(scope="module")
def lock() -> WorkerLock:
    return load_lock(ROOT / "worker" / "worker.lock.toml")  # the file the image copies, whatever the environment


@pytest.fixture(scope="module")
def dockerfile() -> str:
    """The Dockerfile with its line continuations joined and whitespace runs collapsed."""
    return " ".join(DOCKERFILE.read_text().replace("\\\n", " ").split())


def _in_build_context(path: str) -> bool:
    return in_build_context(DOCKERIGNORE, path)


def test_the_worker_dockerfile_passes_hadolint() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_comfyui_is_cloned_at_the_locks_ref(dockerfile: str, lock: WorkerLock) -> None:
    assert f"ARG COMFYUI_REF={lock.comfyui.ref} " in dockerfile
    assert f'git clone --depth 1 --branch "$COMFYUI_REF" {lock.comfyui.repository} /opt/ComfyUI' in dockerfile


def test_the_project_is_installed_from_a_wheel_of_the_build_context_not_editable(dockerfile: str) -> None:
    assert "RUN --mount=type=bind,target=/tmp/src python3 -m venv /opt/infinitetalk-venv" in dockerfile
    assert "/opt/infinitetalk-venv/bin/pip wheel --no-deps -w /tmp/wheels /tmp/src" in dockerfile
    assert "/opt/infinitetalk-venv/bin/pip install -c /tmp/src/constraints/pipeline.txt /tmp/wheels/*.whl" in dockerfile
    assert " -e " not in dockerfile and "--editable" not in dockerfile


def test_the_build_context_holds_what_the_wheel_and_the_image_are_made_of() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = [
        *["pyproject.toml", "README.md", *wheel["packages"], *wheel["force-include"]],  # the wheel's sources
        *["constraints/pipeline.txt", "deploy/worker/extra_model_paths.yaml"],  # read while building the image
    ]
    assert [path for path in needed if not _in_build_context(path)] == []
    assert not _in_build_context(".venv") and not _in_build_context(".infinitetalk")
    assert not _in_build_context("infinitetalk_pipeline/__pycache__")


def test_custom_nodes_and_pins_are_installed_from_the_lock_only(dockerfile: str, lock: WorkerLock) -> None:
    assert _in_build_context("worker/worker.lock.toml")  # the image's lock is the checkout's, carried in the wheel
    assert "infinitetalk comfyui install --profile infinitetalk --comfyui-dir /opt/ComfyUI" in dockerfile
    for node in lock.custom_nodes:  # naming one here would be a second pin, free to drift from the lock's
        assert node.repository not in dockerfile and node.commit[:7] not in dockerfile, node.name
    for requirement in lock.requirements:
        if "==" in requirement:
            assert requirement not in dockerfile, requirement


def test_extra_model_paths_map_every_locked_model_folder_under_models(lock: WorkerLock) -> None:
    config = yaml.safe_load((DOCKERFILE.parent / "extra_model_paths.yaml").read_text())
    [paths] = config.values()
    assert paths.pop("base_path") == "/models"
    assert paths == {m.folder: m.folder for m in lock.models}
