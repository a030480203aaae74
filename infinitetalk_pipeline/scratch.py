"""Scratch folders that a killed process cannot leak.

Each folder lives under one work root, beside a lock file that its owner holds (`flock`) for the folder's lifetime:

    <root>/dub-anna-intro-1f2e3d4c.lock     held by the owner while the folder exists
    <root>/dub-anna-intro-1f2e3d4c/         the scratch folder

The kernel drops a flock when its holder dies, however it dies (SIGKILL, OOM kill), so a lock that can be taken means
a dead owner: exactly, with no pid that could have been reused since. `sweep` removes those folders and never touches
one whose owner is alive, in this process (a flock taken through another open of the file conflicts even within one
process, unlike `lockf`) or another on the machine. The lock file is created before its folder and removed after it,
so a live owner's folder always has its lock; entries no lock file names are left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LOCK_SUFFIX = ".lock"


@dataclass(frozen=True)
class Swept:
    """What a sweep removed: the folders' names and the bytes they held."""

    names: tuple[str, ...]
    size_bytes: int


@contextlib.contextmanager
def scratch_dir(root: Path, prefix: str) -> Iterator[Path]:
    """A new empty folder `<root>/<prefix>-<random>`, held until exit, then removed with its lock."""
    root.mkdir(parents=True, exist_ok=True)
    fd, lock = _new_lock(root, prefix)
    folder = _folder_of(lock)
    try:
        try:
            folder.mkdir()
            yield folder
        except BaseException as exc:
            try:
                _remove(folder, lock)
            except OSError as cleanup:  # the body's failure is the one to report; the next sweep removes the rest
                exc.add_note(f"removing the scratch folder {folder} failed too: {cleanup!r}")
            raise
        _remove(folder, lock)
    finally:
        os.close(fd)  # the lock is released whatever happened: a lock left on disk is then a dead owner's


def sweep(root: Path, log: logging.Logger) -> Swept:
    """Remove every folder under `root` whose owner is dead; one log line when any was removed."""
    names: list[str] = []
    size = 0
    for lock in sorted(root.glob(f"*{LOCK_SUFFIX}")):
        try:
            freed = _reap(lock)
        except OSError as exc:  # someone else's leftovers must not fail the caller's work
            log.warning(f"could not remove the dead scratch folder {_folder_of(lock)}: {exc}")
            continue
        if freed is not None:
            names.append(_folder_of(lock).name)
            size += freed
    if names:
        log.info(
            f"removed {len(names)} scratch folder(s) of dead processes under {root}, {size} bytes: {', '.join(names)}"
        )
    return Swept(tuple(names), size)


def _new_lock(root: Path, prefix: str) -> tuple[int, Path]:
    """A fresh lock file under `root`, held through the returned descriptor."""
    while True:
        lock = root / f"{prefix}-{secrets.token_hex(4)}{LOCK_SUFFIX}"
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        # Between the create and the flock a sweep may take the new lock for a dead owner's and unlink it: then
        # the lock is refused, or taken on an unlinked file; either way the name is given up for a new one.
        with contextlib.suppress(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _names(lock, fd):
                return fd, lock
        os.close(fd)


def _reap(lock: Path) -> int | None:
    """The bytes freed by removing a dead owner's folder and lock; None when the owner lives or the lock is gone."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:  # removed since the listing, by its owner or another sweep
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not _names(lock, fd):  # another sweep removed it between our open and our flock
            return None
        folder = _folder_of(lock)
        size = _size(folder)
        _remove(folder, lock)
        return size
    except BlockingIOError:  # held: the owner is alive
        return None
    finally:
        os.close(fd)


def _names(lock: Path, fd: int) -> bool:
    """Whether `lock` is still the file open as `fd` (not unlinked, nor replaced)."""
    try:
        on_disk = lock.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


def _folder_of(lock: Path) -> Path:
    return lock.with_name(lock.name.removesuffix(LOCK_SUFFIX))


def _size(folder: Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(folder) for f in files)


def _remove(folder: Path, lock: Path) -> None:
    # The folder first and the lock last, so that a removal cut short leaves a lock for the next sweep to find.
    with contextlib.suppress(FileNotFoundError):  # its owner died before making it
        shutil.rmtree(folder)
    lock.unlink()
