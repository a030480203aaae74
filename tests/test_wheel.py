"""The package installed from its wheel, away from the checkout: it carries its templates, worker lock and
constraints, and its commands work from any directory.

The wheel is built from this working tree and installed with its dependencies (from the package index, pinned by
constraints/pipeline.txt) into a fresh venv outside the repository; that install takes about a minute.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from infinitetalk_pipeline.worker.lock import load_lock

ROOT = Path(__file__).resolve().parents[1]
WANVIDEO_OBJECT_INFO = ROOT / "tests" / "data" / "object_info" / "comfyui-0.3.75+wanvideowrapper-1.4.7.json.gz"
DATA = "infinitetalk_pipeline/_data"
# Overrides that would point the installed package back at the checkout, or anywhere else.
PATH_OVERRIDES = ("INFINITETALK_WORKFLOWS_DIR", "INFINITETALK_WORKER_LOCK", "INFINITETALK_HOME", "PYTHONPATH")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
    )
    [built] = dist.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv outside the repository with the wheel (not the checkout) installed; removed afterwards, being
    some 700 MB."""
    venv = tmp_path_factory.mktemp("venv")
    assert not venv.is_relative_to(ROOT)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    install = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)]
    subprocess.run([*install, "-c", str(ROOT / "constraints" / "pipeline.txt")], check=True, capture_output=True)
    yield venv
    shutil.rmtree(venv)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    assert not tmp_path.is_relative_to(ROOT)
    return tmp_path


def run(venv: Path, workdir: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """A command from the venv's bin/, run in `workdir` with no path overrides in the environment."""
    env = {k: v for k, v in os.environ.items() if k not in PATH_OVERRIDES}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [str(venv / "bin" / command[0]), *command[1:]], cwd=workdir, env=env, capture_output=True, text=True
    )


def python(venv: Path, workdir: Path, code: str) -> list[str]:
    result = run(venv, workdir, "python", "-c", code)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_the_wheel_carries_every_template_the_worker_lock_and_the_comfyui_constraints(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "workflows").glob("*/*.json"))
    assert len(templates) == 8
    carried = [*templates, "worker/worker.lock.toml", "constraints/comfyui.txt"]
    assert [f"{DATA}/{path}" for path in carried if f"{DATA}/{path}" not in names] == []


def test_the_wheel_ships_no_test_or_demo_code(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if n.startswith(("tests/", "examples/", "benchmarks/", "scripts/"))] == []
    assert "infinitetalk_pipeline/synth.py" not in names


def test_the_installed_package_is_imported_from_the_venv_not_the_checkout(venv: Path, workdir: Path) -> None:
    [module] = python(venv, workdir, "import infinitetalk_pipeline; print(infinitetalk_pipeline.__file__)")
    assert Path(module).is_relative_to(venv)


def test_the_installed_package_reads_the_templates_lock_and_constraints_it_carries(venv: Path, workdir: Path) -> None:
    code = (
        "from infinitetalk_pipeline.comfy.server import CONSTRAINTS\n"
        "from infinitetalk_pipeline.paths import data_dir\n"
        "from infinitetalk_pipeline.worker.lock import default_lock_path\n"
        "from infinitetalk_pipeline.workflows.templates import templates_dir\n"
        "print(data_dir()); print(templates_dir()); print(default_lock_path()); print(CONSTRAINTS)"
    )
    data, *paths = [Path(p) for p in python(venv, workdir, code)]
    assert data.is_relative_to(venv) and data.name == "_data"
    assert paths == [data / "workflows", data / "worker" / "worker.lock.toml", data / "constraints" / "comfyui.txt"]


def test_the_installed_worker_lock_is_the_repositorys(venv: Path, workdir: Path) -> None:
    code = (
        "from infinitetalk_pipeline.worker.lock import load_lock\n"
        "lock = load_lock()\n"
        "print(lock.sha256, len(lock.models))"
    )
    [line] = python(venv, workdir, code)
    checkout = load_lock(ROOT / "worker" / "worker.lock.toml")
    assert line == f"{checkout.sha256} 9"


def test_state_defaults_to_the_working_directory(venv: Path, workdir: Path) -> None:
    code = (
        "from infinitetalk_pipeline.paths import infinitetalk_home, var_dir\n"
        "print(infinitetalk_home()); print(var_dir())"
    )
    assert python(venv, workdir, code) == [str(workdir / ".infinitetalk"), str(workdir / "var")]


def test_the_infinitetalk_templates_validate_from_the_installed_package(venv: Path, workdir: Path) -> None:
    result = run(
        venv,
        workdir,
        "infinitetalk",
        "workflows",
        "validate",
        "--profile",
        "infinitetalk",
        "--object-info",
        str(WANVIDEO_OBJECT_INFO),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 problems in 4 templates" in result.stdout


def test_the_worker_commands_run_from_the_installed_package(venv: Path, workdir: Path) -> None:
    result = run(venv, workdir, "infinitetalk", "worker", "verify", "--help")
    assert result.returncode == 0, result.stderr


def test_the_code_location_loads_from_the_installed_package(venv: Path, workdir: Path) -> None:
    result = run(venv, workdir, "dagster", "definitions", "validate", "-m", "infinitetalk_pipeline.definitions")
    assert result.returncode == 0, result.stdout + result.stderr
