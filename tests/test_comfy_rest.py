"""The REST layer against a real local ComfyUI: GETs retried, POSTs sent once, every failure a typed error."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from infinitetalk_pipeline.comfy.errors import (
    ComfyConnectFailed,
    ComfyHTTPError,
    ComfyOutputMissing,
    ComfyUnreachable,
)
from infinitetalk_pipeline.comfy.rest import GET_ATTEMPTS, ComfyRest, json_object
from infinitetalk_pipeline.comfy.server import LocalComfyUI, free_port
from tests.fixtures.comfy import unresponsive

pytestmark = pytest.mark.comfyui

# ComfyUI fails on int() of this: a real 500 answer, and one log line per request that reaches it.
FAILING_GET = ("/history", {"max_items": "not a number"})
SERVER_ERROR_LOG = "Error handling request"


def logged(server: LocalComfyUI, text: str, *, at_least: int = 0, timeout: float = 10.0) -> int:
    """How often the server's log says `text`, once it says it at least `at_least` times (or `timeout` passed)."""
    deadline = time.monotonic() + timeout
    while (count := server.log_path.read_text().count(text)) < at_least and time.monotonic() < deadline:
        time.sleep(0.1)
    return count


def test_a_get_is_retried_after_a_transport_error(comfy_server: LocalComfyUI) -> None:
    with ComfyRest(comfy_server.url, timeout=0.5) as rest:
        started = time.monotonic()
        with unresponsive(comfy_server, 0.8):  # the first try times out at 0.5 s, the second (at 1 s) is answered
            stats = rest.system_stats()
    assert time.monotonic() - started > rest.timeout
    assert stats["system"]["comfyui_version"]


def test_a_get_answered_with_a_5xx_is_retried_then_unreachable(comfy_server: LocalComfyUI) -> None:
    path, params = FAILING_GET
    before = logged(comfy_server, SERVER_ERROR_LOG)
    with ComfyRest(comfy_server.url) as rest, pytest.raises(ComfyUnreachable, match="HTTP 500"):
        rest.request("GET", path, json_object, params=params)
    assert logged(comfy_server, SERVER_ERROR_LOG) == before + GET_ATTEMPTS


def test_a_post_answered_with_a_5xx_is_sent_once(comfy_server: LocalComfyUI) -> None:
    before = logged(comfy_server, "got prompt")
    with ComfyRest(comfy_server.url) as rest, pytest.raises(ComfyUnreachable, match="HTTP 500"):
        rest.request("POST", "/prompt", json_object, content=b"not json", attempts=GET_ATTEMPTS)
    assert logged(comfy_server, "got prompt") == before + 1


def test_a_post_whose_answer_is_lost_is_not_sent_again(comfy_server: LocalComfyUI) -> None:
    graph = {"1": {"class_type": "NoSuchNodeClass", "inputs": {}}}  # refused on arrival: nothing will run
    before = logged(comfy_server, "got prompt")
    # The answer is lost at 0.5 s; a second try would be sent at 1 s and answered (400) when the server is back.
    rest = ComfyRest(comfy_server.url, timeout=0.5)
    with rest, unresponsive(comfy_server, 1.5), pytest.raises(ComfyUnreachable) as info:
        rest.queue_prompt(graph, client_id="rest-test", prompt_id=str(uuid.uuid4()))
    assert not isinstance(info.value, ComfyConnectFailed)  # it was sent, and the server does get it, late
    assert logged(comfy_server, "got prompt", at_least=before + 1) == before + 1


def test_a_refused_connection_is_connect_failed_because_nothing_was_sent() -> None:
    with ComfyRest(f"http://127.0.0.1:{free_port()}") as rest, pytest.raises(ComfyConnectFailed) as info:
        rest.queue_prompt({}, client_id="rest-test", prompt_id=str(uuid.uuid4()))
    assert info.value.transient is True


def test_a_4xx_answer_is_an_http_error_with_its_status(comfy_server: LocalComfyUI) -> None:
    with ComfyRest(comfy_server.url) as rest, pytest.raises(ComfyHTTPError) as info:
        rest.request("GET", "/no/such/route", json_object)
    assert (info.value.status_code, info.value.transient) == (404, False)


def test_downloading_a_file_the_server_lacks_is_output_missing_and_leaves_no_file(
    comfy_server: LocalComfyUI, tmp_path: Path
) -> None:
    with ComfyRest(comfy_server.url) as rest, pytest.raises(ComfyOutputMissing):
        rest.download({"filename": f"{uuid.uuid4().hex}.mp4"}, tmp_path / "out" / "clip.mp4")
    assert list((tmp_path / "out").iterdir()) == []
