"""Install a worker's custom nodes at the locked commits, plus our `infinitetalk_worker` extension.

On a GPU worker the nodes are cloned from their repositories (`git`); where no network reaches GitHub (CI, these
machines) they are extracted from offline archives named `<name>.tar.xz` (the commit's tree, top folder = the
repository's name). Either way each node folder gets a stamp with its repository and commit, which the extension
reports and `infinitetalk worker verify` checks. Re-running is a no-op for nodes already at their commit.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from infinitetalk_pipeline.errors import PipelineError
from infinitetalk_pipeline.worker.lock import NodePin, WorkerLock

STAMP = ".infinitetalk-node.json"  # the extension reads the same name
EXTENSION_NAME = "infinitetalk_worker"
EXTENSION_SOURCE = Path(__file__).resolve().parent / "comfy_extension"

Log = Callable[[str], None]


class NodeInstallError(PipelineError):
    """A custom node could not be installed at its locked commit."""


def read_stamp(folder: Path) -> dict[str, str] | None:
    try:
        return json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return None


def install_nodes(
    lock: WorkerLock, custom_nodes_dir: Path, *, node_sources: Path | None = None, log: Log = print
) -> None:
    """Every locked node into `custom_nodes_dir/<name>` (replaced atomically when its commit changes); nodes an
    earlier lock installed and this one drops are removed (other folders there are not ours and are left alone)."""
    custom_nodes_dir.mkdir(parents=True, exist_ok=True)
    locked = {pin.name for pin in lock.custom_nodes}
    for folder in sorted(custom_nodes_dir.iterdir()):
        if folder.name not in locked and read_stamp(folder) is not None:
            shutil.rmtree(folder)
            log(f"{folder.name} removed (no longer in the lock)")
    for pin in lock.custom_nodes:
        dest = custom_nodes_dir / pin.name
        stamp = read_stamp(dest)
        if stamp and stamp.get("commit") == pin.commit:
            log(f"{pin.name} already at {pin.commit[:10]}")
            continue
        with tempfile.TemporaryDirectory(prefix=f".{pin.name}-", dir=custom_nodes_dir) as tmp:
            staged = Path(tmp) / pin.name
            source = _extract(pin, node_sources, Path(tmp)) if node_sources is not None else _clone(pin, staged)
            (staged / STAMP).write_text(
                json.dumps({"repository": pin.repository, "commit": pin.commit, "source": source})
            )
            if dest.exists():
                shutil.rmtree(dest)
            staged.rename(dest)
        log(f"{pin.name} installed at {pin.commit[:10]} ({source})")
    install_extension(custom_nodes_dir)


def install_extension(custom_nodes_dir: Path) -> None:
    """Our extension, replaced on every install so it always matches the installed package."""
    dest = custom_nodes_dir / EXTENSION_NAME
    with tempfile.TemporaryDirectory(prefix=f".{EXTENSION_NAME}-", dir=custom_nodes_dir) as tmp:
        staged = Path(tmp) / EXTENSION_NAME
        shutil.copytree(EXTENSION_SOURCE, staged, ignore=shutil.ignore_patterns("__pycache__"))
        if dest.exists():
            shutil.rmtree(dest)
        staged.rename(dest)


def _extract(pin: NodePin, node_sources: Path, into: Path) -> str:
    archive = node_sources / f"{pin.name}.tar.xz"
    if not archive.is_file():
        raise NodeInstallError(f"{pin.name}: no offline archive {archive}")
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")  # refuses absolute paths, links out of the tree, devices
    except (tarfile.TarError, OSError) as exc:
        raise NodeInstallError(f"{pin.name}: cannot extract {archive}: {exc}") from exc
    if not (into / pin.name).is_dir():
        raise NodeInstallError(f"{pin.name}: {archive} has no top folder {pin.name}/")
    return f"archive {archive.name}"


def _clone(pin: NodePin, dest: Path) -> str:
    def git(*args: str, cwd: Path | None = None) -> None:
        result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode:
            raise NodeInstallError(f"{pin.name}: git {' '.join(args)} failed: {result.stderr.strip()[-2000:]}")

    git("clone", "--filter=blob:none", "--no-checkout", pin.repository, str(dest))
    git("checkout", "--detach", pin.commit, cwd=dest)
    git("submodule", "update", "--init", "--recursive", cwd=dest)
    return "git"
