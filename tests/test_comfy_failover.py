"""A worker whose port refuses connections is gone, so its render moves to another worker at once; a worker that
accepts connections but does not answer (frozen, or cut off) keeps its render until the deadlines say otherwise.
Against real local ComfyUI workers whose renders sleep (no CPU); every deadline is set far beyond the test's
own timeout, so only the refusal can explain a render that moves."""

from __future__ import annotations

import logging
import os
import signal
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from infinitetalk_pipeline.comfy.client import ComfyClient, RenderResult
from infinitetalk_pipeline.comfy.errors import ComfyRefused, ComfyUnreachable
from infinitetalk_pipeline.comfy.fleet import Fleet, Lineage
from infinitetalk_pipeline.comfy.rest import ComfyRest
from infinitetalk_pipeline.comfy.server import LocalComfyUI, free_port
from tests.fixtures.comfy import unresponsive
from tests.fixtures.fleet import finished_prompts, sleep_graph, sleeping_worker, wait_until
from tests.fixtures.synth import make_portrait

pytestmark = [pytest.mark.comfyui, pytest.mark.timeout(300)]
NEVER = 600.0  # a silence timeout and dead-worker deadline no test here lives to reach


@pytest.fixture(scope="module")
def survivor(comfy_install: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalComfyUI]:
    with sleeping_worker(tmp_path_factory.mktemp("survivor")) as server:
        yield server


@pytest.fixture(scope="module")
def portrait(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_portrait(tmp_path_factory.mktemp("media") / "face.png", size=(32, 32))


def _state(url: str) -> dict:
    return httpx.get(f"{url}/infinitetalk/state", timeout=10).json()


def _running_alone(url: str) -> bool:
    state = _state(url)
    return len(state["running"]) == 1 and not state["pending"]


def _fill(url: str, portrait: Path, seconds: float) -> None:
    """Two prompts from someone else: the worker is full (one rendering, one waiting), so the fleet goes elsewhere."""
    with ComfyClient(url) as client:
        graph = sleep_graph(client.upload(portrait), seconds, prefix="other")
        client.submit(graph)
        client.submit(graph)


def _render(fleet: Fleet, portrait: Path, seconds: float, lineage: Lineage, dest: Path) -> RenderResult:
    def graph_for(client: ComfyClient) -> dict:
        return sleep_graph(client.upload(portrait), seconds, prefix=f"failover-{uuid.uuid4().hex[:8]}")

    return fleet.render(graph_for, "3", dest / f"{uuid.uuid4().hex}.png", label="test", lineage=lineage)


def test_a_closed_port_is_a_refusal() -> None:
    with ComfyRest(f"http://127.0.0.1:{free_port()}") as rest, pytest.raises(ComfyRefused):
        rest.queue(attempts=1)


def test_a_frozen_server_times_out_and_is_no_refusal(survivor: LocalComfyUI) -> None:
    rest = ComfyRest(survivor.url, timeout=0.5)
    with rest, unresponsive(survivor, 2.0), pytest.raises(ComfyUnreachable) as info:
        rest.queue(attempts=1)
    assert not isinstance(info.value, ComfyRefused)


def test_a_render_whose_worker_is_killed_moves_without_waiting_for_any_deadline(
    survivor: LocalComfyUI, portrait: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lineage = Lineage(f"clip-{uuid.uuid4().hex}:fingerprint")
    with sleeping_worker(tmp_path / "doomed") as doomed:
        _fill(survivor.url, portrait, 3)  # so the render goes to `doomed`
        fleet = Fleet([doomed.url, survivor.url], poll_interval=0.2, silence_timeout=NEVER, dead_after=NEVER)
        with fleet, ThreadPoolExecutor(max_workers=1) as pool, caplog.at_level(logging.INFO):
            future = pool.submit(_render, fleet, portrait, 10, lineage, tmp_path)
            wait_until(lambda: _running_alone(doomed.url), 60)
            assert doomed.pid
            os.killpg(doomed.pid, signal.SIGKILL)  # its port is closed from now on
            result = future.result(timeout=120)
    assert (result.worker_url, result.prompt_id) == (survivor.url, lineage.prompt_id(1))  # the second attempt
    assert result.prompt_id in finished_prompts(survivor.url)
    [moved] = [r.getMessage() for r in caplog.records if "rendering it on another worker" in r.getMessage()]
    assert "port refused" in moved and doomed.url in moved


def test_a_frozen_worker_keeps_its_render(
    survivor: LocalComfyUI, portrait: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lineage = Lineage(f"clip-{uuid.uuid4().hex}:fingerprint")
    # Polls time out after 1 s: an 8 s freeze fails several of them, over longer than refusals need to count.
    fleet = Fleet([survivor.url], poll_interval=0.2, request_timeout=1, silence_timeout=NEVER, dead_after=NEVER)
    with fleet, ThreadPoolExecutor(max_workers=1) as pool, caplog.at_level(logging.INFO):
        future = pool.submit(_render, fleet, portrait, 12, lineage, tmp_path)
        wait_until(lambda: lineage.prompt_id(0) in _state(survivor.url)["running"], 60)
        with unresponsive(survivor, 8.0):  # resumed while the render still sleeps
            result = future.result(timeout=120)
    assert (result.worker_url, result.prompt_id) == (survivor.url, lineage.prompt_id(0))  # the first attempt
    assert "rendering it on another worker" not in caplog.text
