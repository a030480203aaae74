"""The worker extension deletes a render's files by its prompt id and nothing else: an id that is no plain folder name
(a glob pattern, a path) deletes nothing, whether it comes with a delete request or belongs to a prompt that failed;
and a large deletion does not hold up the worker's other answers. Against the local ComfyUI."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from infinitetalk_pipeline.comfy.client import ComfyClient
from infinitetalk_pipeline.comfy.rest import ComfyRest
from infinitetalk_pipeline.comfy.server import LocalComfyUI
from tests.fixtures.comfy import slow_graph
from tests.fixtures.fleet import wait_until
from tests.fixtures.synth import make_portrait

pytestmark = pytest.mark.comfyui


def _render_files(server: LocalComfyUI, prompt_id: str, count: int = 1) -> Path:
    """A finished render's folder as the fleet lays it out (`<output>/<prefix>/<prompt_id>/`), holding `count` files
    of one byte each."""
    folder = Path(server.workdir) / "output" / f"outputs-{uuid.uuid4().hex[:8]}" / prompt_id
    folder.mkdir(parents=True)
    for i in range(count):
        (folder / f"frame_{i:05}.png").write_bytes(b"x")
    return folder


def _delete(server: LocalComfyUI, prompt_id: str) -> httpx.Response:
    return httpx.post(f"{server.url}/infinitetalk/outputs/delete", json={"prompt_id": prompt_id}, timeout=60)


@pytest.mark.parametrize(
    "prompt_id", ["*", "*-*", "[0-9a-f]*", "????????-????-????-????-????????????", "..", "../output", "a/b", "a\\b", ""]
)
def test_a_delete_request_for_an_id_that_is_no_plain_folder_name_is_refused_and_deletes_nothing(
    comfy_server: LocalComfyUI, prompt_id: str
) -> None:
    other = _render_files(comfy_server, str(uuid.uuid4()))
    assert _delete(comfy_server, prompt_id).status_code == 400
    assert other.is_dir() and list(other.iterdir())


def test_a_delete_request_removes_its_prompts_folder_and_no_other(comfy_server: LocalComfyUI) -> None:
    mine, other = _render_files(comfy_server, str(uuid.uuid4()), 3), _render_files(comfy_server, str(uuid.uuid4()))
    with ComfyRest(comfy_server.url) as rest:
        assert rest.delete_outputs(mine.name) == 3
    assert not mine.exists() and other.is_dir()


def test_a_failed_prompt_whose_id_is_a_glob_pattern_deletes_no_other_renders_files(
    comfy_server: LocalComfyUI, tmp_path: Path
) -> None:
    other = _render_files(comfy_server, str(uuid.uuid4()))
    with ComfyClient(comfy_server.url) as client:
        # Anyone may choose a prompt id (POST /prompt takes one); the extension deletes a failed prompt's files.
        client.submit(slow_graph(client.upload(make_portrait(tmp_path / "face.png"))), prompt_id="*")
        wait_until(lambda: "*" in client.queue()[0], 60)
        client.rest.interrupt("*")
        wait_until(lambda: client.history("*") is not None, 60)
    assert other.is_dir() and list(other.iterdir())


def test_the_worker_answers_its_state_while_it_deletes_a_large_folder(comfy_server: LocalComfyUI) -> None:
    big = _render_files(comfy_server, str(uuid.uuid4()), 60_000)
    answers: list[float] = []
    deleting = threading.Thread(target=_delete, args=(comfy_server, big.name))
    started = time.monotonic()
    deleting.start()
    with httpx.Client(base_url=comfy_server.url, timeout=30) as http:
        while deleting.is_alive():
            asked = time.monotonic()
            http.get("/infinitetalk/state").raise_for_status()
            answers.append(time.monotonic() - asked)
    took = time.monotonic() - started
    deleting.join()
    assert not big.exists()
    assert took > 1.0, f"the deletion took {took:.2f}s: too quick to tell"
    assert max(answers) < 0.5, f"a state request waited {max(answers):.2f}s during a {took:.2f}s deletion"
