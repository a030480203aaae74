"""Scratch folders live under one work root, each held by its owner's flock: removed with their lock when their owner
is done, and by a sweep once their owner is dead (SIGKILLed, as an OOM kill or a lost node does); a folder whose owner
lives, in another process or in this one, is never touched. The clip renderer keeps its scratch folder there and sweeps
before each render. Real processes, real locks, real renders on the local ComfyUI."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infinitetalk_pipeline.clip_renderer import WORK_DIR, ClipRenderer
from infinitetalk_pipeline.comfy.fleet import Fleet
from infinitetalk_pipeline.media.sources import MediaFetcher, SourcePolicy
from infinitetalk_pipeline.registry import ClipSpec
from infinitetalk_pipeline.scratch import LOCK_SUFFIX, Swept, scratch_dir, sweep
from infinitetalk_pipeline.spec import parse_request
from infinitetalk_pipeline.storage import LocalOutputStore
from tests.fixtures.media import make_portrait, make_tone

REPO = Path(__file__).resolve().parents[1]
FILE_BYTES = 4096
LOG = logging.getLogger("test_scratch")

# Another process owning a scratch folder with one file in it, until its stdin closes (a clean exit) or it is killed.
OWNER = """
import sys
from pathlib import Path
from infinitetalk_pipeline.scratch import scratch_dir
with scratch_dir(Path(sys.argv[1]), sys.argv[2]) as folder:
    (folder / "render.mp4").write_bytes(bytes(int(sys.argv[3])))
    print(folder, flush=True)
    sys.stdin.read()
"""


@dataclass(frozen=True)
class Owner:
    process: subprocess.Popen[str]
    folder: Path

    def kill(self) -> None:
        """As the OOM killer does: no cleanup of any kind runs."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


@pytest.fixture
def work_root(tmp_path: Path) -> Path:
    return tmp_path / "cache" / WORK_DIR  # where a renderer fetching into tmp_path/cache keeps its scratch folders


@pytest.fixture
def start_owner(work_root: Path) -> Iterator[Callable[[str], Owner]]:
    owners: list[Owner] = []

    def start(prefix: str) -> Owner:
        process = subprocess.Popen(
            [sys.executable, "-c", OWNER, str(work_root), prefix, str(FILE_BYTES)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line, "the owner process died before holding its folder"
        owners.append(Owner(process, Path(line)))
        return owners[-1]

    yield start
    for owner in owners:
        assert owner.process.stdin is not None
        owner.process.stdin.close()
        owner.process.wait(timeout=30)


def test_a_scratch_folder_is_a_new_empty_folder_under_the_root(work_root: Path) -> None:
    with scratch_dir(work_root, "dub-talk") as folder:
        assert folder.parent == work_root
        assert folder.name.startswith("dub-talk-")
        assert list(folder.iterdir()) == []


def test_a_scratch_folder_and_its_lock_are_removed_when_its_owner_is_done(work_root: Path) -> None:
    with scratch_dir(work_root, "dub-talk") as folder:
        (folder / "render.mp4").write_bytes(bytes(FILE_BYTES))
    assert list(work_root.iterdir()) == []


def test_a_scratch_folder_and_its_lock_are_removed_when_its_owner_fails(work_root: Path) -> None:
    with pytest.raises(RuntimeError), scratch_dir(work_root, "dub-talk") as folder:
        (folder / "render.mp4").write_bytes(bytes(FILE_BYTES))
        raise RuntimeError("the render failed")
    assert list(work_root.iterdir()) == []


def _make_unremovable(folder: Path) -> None:
    """Its removal fails: the folder is now a file (rmtree raises NotADirectoryError)."""
    folder.rmdir()
    folder.write_bytes(bytes(FILE_BYTES))


def _free(lock: Path) -> bool:
    """Whether nobody holds `lock`: a sweep would take it for a dead owner's."""
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def test_an_owners_failure_is_the_error_raised_when_removing_its_folder_fails_too(work_root: Path) -> None:
    with pytest.raises(RuntimeError, match="the render failed") as raised, scratch_dir(work_root, "dub-talk") as folder:
        _make_unremovable(folder)
        raise RuntimeError("the render failed")
    assert any(note.startswith(f"removing the scratch folder {folder} failed too") for note in raised.value.__notes__)


def test_a_folder_that_cannot_be_removed_still_has_its_lock_released(work_root: Path) -> None:
    with pytest.raises(NotADirectoryError), scratch_dir(work_root, "dub-talk") as folder:
        _make_unremovable(folder)
    assert _free(folder.with_name(folder.name + LOCK_SUFFIX))  # the next sweep may try again


def test_a_folder_whose_owner_process_lives_survives_a_sweep(
    work_root: Path, start_owner: Callable[[str], Owner]
) -> None:
    owner = start_owner("dub-other-run")
    assert sweep(work_root, LOG) == Swept((), 0)
    assert (owner.folder / "render.mp4").stat().st_size == FILE_BYTES


def test_a_folder_held_by_this_process_survives_a_sweep(work_root: Path) -> None:
    # A run renders several clips in threads of one process: each sweeps while the others hold their folders.
    with scratch_dir(work_root, "dub-lane") as folder:
        (folder / "render.mp4").write_bytes(bytes(FILE_BYTES))
        assert sweep(work_root, LOG) == Swept((), 0)
        assert (folder / "render.mp4").stat().st_size == FILE_BYTES


def test_a_folder_whose_owner_was_killed_is_removed_by_the_next_sweep(
    work_root: Path, start_owner: Callable[[str], Owner]
) -> None:
    owner = start_owner("dub-killed")
    owner.kill()
    assert owner.folder.is_dir()  # nothing cleaned it up

    assert sweep(work_root, LOG) == Swept((owner.folder.name,), FILE_BYTES)
    assert list(work_root.iterdir()) == []


def test_a_sweep_says_in_one_log_line_what_it_removed_and_how_many_bytes(
    work_root: Path, start_owner: Callable[[str], Owner], caplog: pytest.LogCaptureFixture
) -> None:
    killed = [start_owner(f"dub-killed-{i}") for i in range(2)]
    for owner in killed:
        owner.kill()
    names = ", ".join(sorted(owner.folder.name for owner in killed))
    with caplog.at_level(logging.INFO, logger=LOG.name):
        sweep(work_root, LOG)
    assert caplog.messages == [
        f"removed 2 scratch folder(s) of dead processes under {work_root}, {2 * FILE_BYTES} bytes: {names}"
    ]


def test_a_lock_left_by_an_owner_killed_before_it_made_its_folder_is_removed(work_root: Path) -> None:
    work_root.mkdir(parents=True)
    (work_root / "dub-talk-0badf00d.lock").touch()  # created, never held: the owner died right there
    assert sweep(work_root, LOG) == Swept(("dub-talk-0badf00d",), 0)
    assert list(work_root.iterdir()) == []


def test_a_sweep_leaves_alone_what_no_lock_file_names(work_root: Path) -> None:
    (work_root / "notes").mkdir(parents=True)
    (work_root / "notes" / "todo.txt").write_text("not a scratch folder")
    assert sweep(work_root, LOG) == Swept((), 0)
    assert (work_root / "notes" / "todo.txt").exists()


# --- the clip renderer --------------------------------------------------------------------------------------


@pytest.fixture
def renderer(tmp_path: Path, comfy_url: str) -> Iterator[ClipRenderer]:
    make_portrait(tmp_path / "face.png", size=(64, 64))
    make_tone(tmp_path / "tone.wav", 0.4)
    fetcher = MediaFetcher(SourcePolicy(allowed_roots=(tmp_path,)), tmp_path / "cache")
    with Fleet([comfy_url]) as fleet:
        yield ClipRenderer(LocalOutputStore(tmp_path / "out"), fetcher, fleet, "preview")


def render(renderer: ClipRenderer) -> None:
    body = {"image_path": "face.png", "wav_path": "tone.wav", "width": 64, "height": 64}
    spec = ClipSpec("talk", "manifest.csv", 2, parse_request(body, clip_id="talk"))
    assert renderer.render(spec, renderer.measure_timing(spec)).passed


@pytest.mark.comfyui
def test_a_render_leaves_nothing_in_the_work_root(renderer: ClipRenderer) -> None:
    render(renderer)
    assert list(renderer.work_root.iterdir()) == []


@pytest.mark.comfyui
def test_a_render_first_removes_the_folders_a_killed_run_left_and_not_those_a_running_one_holds(
    renderer: ClipRenderer, start_owner: Callable[[str], Owner]
) -> None:
    killed, running = start_owner("dub-killed"), start_owner("dub-running")
    killed.kill()
    render(renderer)
    assert sorted(p.name for p in renderer.work_root.iterdir()) == [running.folder.name, f"{running.folder.name}.lock"]
