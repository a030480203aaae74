"""Installing a worker's custom nodes at the locked commits: from git, or from the offline archives CI uses."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from infinitetalk_pipeline.worker.install import EXTENSION_NAME, NodeInstallError, install_nodes, read_stamp
from infinitetalk_pipeline.worker.lock import NodePin, WorkerLock, load_lock
from tests.fixtures.tiny_worker import NODE_SOURCES


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def node_repo(tmp_path: Path) -> tuple[Path, str, str]:
    """A local repository with two commits: (path, first commit, second commit)."""
    repo = tmp_path / "ComfyUI-Example"
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    (repo / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\nVERSION = 1\n")
    git("add", ".", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one", cwd=repo)
    first = git("rev-parse", "HEAD", cwd=repo)
    (repo / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\nVERSION = 2\n")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "two", cwd=repo)
    return repo, first, git("rev-parse", "HEAD", cwd=repo)


def lock_with(pin: NodePin) -> WorkerLock:
    return replace(load_lock(), custom_nodes=(pin,))


def test_git_install_checks_out_the_locked_commit_not_the_branch_head(
    node_repo: tuple[Path, str, str], tmp_path: Path
) -> None:
    repo, first, _second = node_repo
    pin = NodePin(name="ComfyUI-Example", repository=str(repo), commit=first, why="test")
    install_nodes(lock_with(pin), tmp_path / "custom_nodes", log=lambda _line: None)
    installed = tmp_path / "custom_nodes" / "ComfyUI-Example"
    assert "VERSION = 1" in (installed / "__init__.py").read_text()
    assert read_stamp(installed) == {"repository": str(repo), "commit": first, "source": "git"}
    assert (tmp_path / "custom_nodes" / EXTENSION_NAME / "__init__.py").is_file()


def test_a_changed_commit_replaces_the_node_and_an_unchanged_one_is_kept(
    node_repo: tuple[Path, str, str], tmp_path: Path
) -> None:
    repo, first, second = node_repo
    target = tmp_path / "custom_nodes"
    lines: list[str] = []
    pin = NodePin(name="ComfyUI-Example", repository=str(repo), commit=first, why="test")
    install_nodes(lock_with(pin), target, log=lines.append)
    install_nodes(lock_with(pin), target, log=lines.append)
    install_nodes(lock_with(replace(pin, commit=second)), target, log=lines.append)
    assert [line.split()[1] for line in lines] == ["installed", "already", "installed"]
    assert "VERSION = 2" in (target / "ComfyUI-Example" / "__init__.py").read_text()
    assert [p.name for p in target.iterdir() if p.name.startswith(".")] == []  # no staging folder left behind


def test_an_unknown_commit_fails_naming_the_node(node_repo: tuple[Path, str, str], tmp_path: Path) -> None:
    repo, _first, _second = node_repo
    pin = NodePin(name="ComfyUI-Example", repository=str(repo), commit="0" * 40, why="test")
    with pytest.raises(NodeInstallError, match="ComfyUI-Example: git checkout"):
        install_nodes(lock_with(pin), tmp_path / "custom_nodes", log=lambda _line: None)
    assert not (tmp_path / "custom_nodes" / "ComfyUI-Example").exists()


@pytest.mark.skipif(not NODE_SOURCES.is_dir(), reason="the offline node archives are in ../shared/vendor")
def test_offline_archives_install_every_locked_node_with_its_commit(tmp_path: Path) -> None:
    lock = load_lock()
    install_nodes(lock, tmp_path / "custom_nodes", node_sources=NODE_SOURCES, log=lambda _line: None)
    for pin in lock.custom_nodes:
        folder = tmp_path / "custom_nodes" / pin.name
        assert (folder / "__init__.py").is_file(), pin.name
        stamp = json.loads((folder / ".infinitetalk-node.json").read_text())
        assert (stamp["commit"], stamp["source"]) == (pin.commit, f"archive {pin.name}.tar.xz")


def test_a_missing_archive_fails_naming_the_node(tmp_path: Path) -> None:
    pin = NodePin(name="ComfyUI-Nowhere", repository="https://example.invalid/x", commit="1" * 40, why="test")
    with pytest.raises(NodeInstallError, match="ComfyUI-Nowhere: no offline archive"):
        install_nodes(lock_with(pin), tmp_path / "custom_nodes", node_sources=tmp_path, log=lambda _line: None)


def test_a_node_the_lock_drops_is_removed_and_foreign_folders_are_kept(
    node_repo: tuple[Path, str, str], tmp_path: Path
) -> None:
    repo, first, _second = node_repo
    target = tmp_path / "custom_nodes"
    (target / "someone-elses-node").mkdir(parents=True)
    install_nodes(lock_with(NodePin("ComfyUI-Example", str(repo), first, "test")), target, log=lambda _line: None)
    install_nodes(replace(load_lock(), custom_nodes=()), target, log=lambda _line: None)
    assert sorted(p.name for p in target.iterdir()) == [EXTENSION_NAME, "someone-elses-node"]
