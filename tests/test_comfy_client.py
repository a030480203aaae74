"""ComfyClient against a real local ComfyUI: renders, progress, and every failure as its typed error."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path

import av
import httpx
import pytest

from infinitetalk_pipeline.comfy.client import ComfyClient, ProgressEvent, execution_seconds
from infinitetalk_pipeline.comfy.errors import (
    ComfyExecutionError,
    ComfyInterrupted,
    ComfyUnreachable,
    ComfyValidationError,
    ComfyWorkerLost,
)
from infinitetalk_pipeline.comfy.server import LocalComfyUI
from infinitetalk_pipeline.digest import file_sha256
from tests.fixtures.comfy import i2v_graph, slow_graph, throwaway_comfyui, unresponsive
from tests.fixtures.media import make_portrait, make_tone

pytestmark = pytest.mark.comfyui


@pytest.fixture
def inputs(comfy_client: ComfyClient, media_dir: Path) -> tuple[str, str]:
    """A portrait and a 1 s tone, uploaded: the values for LoadImage / LoadAudio."""
    image = comfy_client.upload(make_portrait(media_dir / "face.png"))
    audio = comfy_client.upload(make_tone(media_dir / "tone.wav", 1.0, rate=16000))
    return image, audio


def _wait_until_running(client: ComfyClient, prompt_id: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while prompt_id not in client.queue()[0]:
        assert time.monotonic() < deadline, "prompt never started"
        time.sleep(0.1)


def test_render_downloads_the_mp4_of_the_named_output_node(
    comfy_client: ComfyClient, inputs: tuple[str, str], tmp_path: Path
) -> None:
    image, audio = inputs
    dest = tmp_path / "out" / "clip.mp4"
    result = comfy_client.render(i2v_graph(image, audio, size=(128, 96), frames=25), "6", dest)

    assert result.output_path == dest
    assert sorted(p.name for p in dest.parent.iterdir()) == ["clip.mp4"]  # no temporary file left behind
    with av.open(str(dest)) as container:
        video = container.streams.video[0]
        assert (video.width, video.height) == (128, 96)
        assert video.average_rate == 25
        assert sum(1 for _ in container.decode(video)) == 25
    with av.open(str(dest)) as container:
        samples = sum(f.samples for f in container.decode(audio=0))
        assert samples / container.streams.audio[0].rate == pytest.approx(1.0, abs=0.04)
    assert result.execution_seconds is not None and result.execution_seconds > 0
    assert result.upload_seconds > 0  # the two uploads of the `inputs` fixture


def test_render_picks_the_named_output_node_not_the_first_video(
    comfy_client: ComfyClient, inputs: tuple[str, str], tmp_path: Path
) -> None:
    image, audio = inputs
    graph = i2v_graph(image, audio, size=(128, 128), frames=5)
    graph["7"] = {"class_type": "ImageScale", "inputs": {**graph["3"]["inputs"], "width": 64, "height": 48}}
    graph["8"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["7", 0], "amount": 5}}
    graph["9"] = {"class_type": "CreateVideo", "inputs": {"images": ["8", 0], "fps": 25.0}}
    graph["10"] = {
        "class_type": "SaveVideo",
        "inputs": {"video": ["9", 0], "filename_prefix": "video/small", "format": "mp4", "codec": "h264"},
    }
    result = comfy_client.render(graph, "10", tmp_path / "small.mp4")
    with av.open(str(result.output_path)) as container:
        assert (container.streams.video[0].width, container.streams.video[0].height) == (64, 48)


def test_progress_events_name_node_and_class(
    comfy_client: ComfyClient, inputs: tuple[str, str], tmp_path: Path
) -> None:
    graph = i2v_graph(*inputs, frames=5)
    events: list[ProgressEvent] = []
    comfy_client.render(graph, "6", tmp_path / "p.mp4", on_progress=events.append)

    executing = [(e.node_id, e.node_class) for e in events if e.kind == "executing"]
    assert ("5", "CreateVideo") in executing
    assert ("6", "SaveVideo") in executing
    assert sorted(executing) == sorted((nid, node["class_type"]) for nid, node in graph.items())  # each node once


def test_upload_names_files_by_content_so_reuploads_are_harmless(comfy_client: ComfyClient, media_dir: Path) -> None:
    source = make_tone(media_dir / "a.wav", 0.5)
    first = comfy_client.upload(source)
    again = comfy_client.upload(make_tone(media_dir / "b.wav", 0.5))
    other = comfy_client.upload(make_tone(media_dir / "c.wav", 0.5, freq=440.0))

    assert first == again
    assert first == f"infinitetalk/{file_sha256(source)[:32]}.wav"
    assert other != first


def test_reupload_leaves_the_identical_file_on_the_server_untouched(
    comfy_client: ComfyClient, comfy_server: LocalComfyUI, media_dir: Path
) -> None:
    src = make_portrait(media_dir / "shared.png", colour="#a0b0c0")
    name = comfy_client.upload(src)
    stored = comfy_server.workdir / "input" / name
    before = stored.stat()

    assert comfy_client.upload(src) == name  # a prompt may be reading it: no rewrite in place

    after = stored.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)


def test_upload_beside_a_different_file_of_the_same_name_uses_the_name_comfyui_answers(
    comfy_client: ComfyClient, comfy_server: LocalComfyUI, media_dir: Path
) -> None:
    src = make_tone(media_dir / "leftover.wav", 0.3, freq=330.0)
    name = comfy_client.upload(src)
    stored = comfy_server.workdir / "input" / name
    stored.write_bytes(stored.read_bytes()[:100])  # e.g. a truncated leftover under our content-hash name

    renamed = comfy_client.upload(src)

    assert renamed == f"{name.removesuffix('.wav')} (1).wav"
    assert (comfy_server.workdir / "input" / renamed).read_bytes() == src.read_bytes()
    assert stored.stat().st_size == 100  # left alone


def test_unknown_node_class_is_a_validation_error_naming_it(comfy_client: ComfyClient, inputs: tuple[str, str]) -> None:
    graph = i2v_graph(*inputs)
    graph["7"] = {"class_type": "NoSuchNodeClass", "inputs": {}}
    with pytest.raises(ComfyValidationError, match="NoSuchNodeClass") as info:
        comfy_client.submit(graph)
    assert info.value.transient is False


def test_out_of_range_value_is_a_validation_error_with_node_and_message(
    comfy_client: ComfyClient, inputs: tuple[str, str]
) -> None:
    graph = i2v_graph(*inputs)
    graph["4"]["inputs"]["amount"] = 99999
    with pytest.raises(ComfyValidationError) as info:
        comfy_client.submit(graph)
    assert "4" in info.value.node_errors
    assert "node 4 (RepeatImageBatch): Value 99999 bigger than max of 4096: amount" in str(info.value)


def test_a_200_answer_with_node_errors_is_still_a_validation_error(
    comfy_client: ComfyClient, inputs: tuple[str, str]
) -> None:
    graph = i2v_graph(*inputs)
    graph["5"]["inputs"]["fps"] = 500.0  # only output 6 depends on it: ComfyUI answers 200 and runs output 7
    graph["7"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "still"}}
    with pytest.raises(ComfyValidationError, match=r"node 5 \(CreateVideo\): Value 500.0 bigger than max"):
        comfy_client.submit(graph)


def test_the_outputs_queued_by_a_200_answer_with_node_errors_do_not_run(
    comfy_client: ComfyClient, inputs: tuple[str, str]
) -> None:
    blocker = comfy_client.submit(slow_graph(inputs[0], tag="blocker"))  # keeps our prompt pending, not running
    graph = i2v_graph(*inputs)
    graph["5"]["inputs"]["fps"] = 500.0  # only output 6 depends on it: ComfyUI answers 200 and queues output 7
    graph["7"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "still"}}
    prompt_id = str(uuid.uuid4())
    try:
        with pytest.raises(ComfyValidationError):
            comfy_client.submit(graph, prompt_id)
        running, pending = comfy_client.queue()
    finally:
        comfy_client.cancel(blocker)
    assert prompt_id not in [*running, *pending]


def test_corrupt_audio_is_an_execution_error_with_node_class_and_message(
    comfy_client: ComfyClient, inputs: tuple[str, str], media_dir: Path, tmp_path: Path
) -> None:
    broken = media_dir / "broken.wav"
    broken.write_bytes(b"RIFF not really a wave file" * 10)
    graph = i2v_graph(inputs[0], comfy_client.upload(broken))
    with pytest.raises(ComfyExecutionError) as info:
        comfy_client.render(graph, "6", tmp_path / "never.mp4")
    err = info.value
    assert (err.node_id, err.node_type) == ("2", "LoadAudio")
    assert "Invalid data found when processing input" in err.exception_message
    assert err.traceback and err.transient is False
    assert not (tmp_path / "never.mp4").exists()


def test_interrupt_from_another_thread_raises_comfy_interrupted(
    comfy_client: ComfyClient, comfy_url: str, inputs: tuple[str, str]
) -> None:
    prompt_id = comfy_client.submit(slow_graph(inputs[0], tag="interrupted"))

    def interrupt() -> None:
        with ComfyClient(comfy_url) as other:
            _wait_until_running(other, prompt_id)
            other.cancel(prompt_id)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(ComfyInterrupted) as info:
        comfy_client.wait(prompt_id)
    assert info.value.transient is True


def test_cancel_removes_a_pending_prompt_from_the_queue(comfy_client: ComfyClient, inputs: tuple[str, str]) -> None:
    running = comfy_client.submit(slow_graph(inputs[0], tag="first"))
    pending = comfy_client.submit(slow_graph(inputs[0], tag="second"))
    try:
        assert pending in comfy_client.queue()[1]
        comfy_client.cancel(pending)
        assert pending not in [*comfy_client.queue()[0], *comfy_client.queue()[1]]
        with pytest.raises(ComfyInterrupted, match="left the queue"):
            comfy_client.wait(pending)
    finally:
        comfy_client.cancel(running)
    assert comfy_client.history(pending) is None


def test_keyboard_interrupt_during_render_cancels_the_prompt(
    comfy_client: ComfyClient, comfy_url: str, inputs: tuple[str, str], tmp_path: Path
) -> None:
    def stop_at_first_node(event: ProgressEvent) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        comfy_client.render(slow_graph(inputs[0], tag="ctrl_c"), "out", tmp_path / "x.png", stop_at_first_node)

    deadline = time.monotonic() + 60
    while any(comfy_client.queue()):
        assert time.monotonic() < deadline, "the cancelled prompt kept running"
        time.sleep(0.2)
    last = next(iter(httpx.get(f"{comfy_url}/history", params={"max_items": 1}, timeout=10).json().values()))
    assert [m[0] for m in last["status"]["messages"]][-1] == "execution_interrupted"


@pytest.mark.timeout(120)  # far below both deadlines: only the closed port can end the wait
def test_a_server_killed_mid_render_is_lost_once_its_port_refuses(media_dir: Path, tmp_path: Path) -> None:
    with (
        throwaway_comfyui(tmp_path / "doomed") as server,
        ComfyClient(server.url, silence_timeout=600, render_deadline=900, poll_interval=0.2) as client,
    ):
        prompt_id = client.submit(slow_graph(client.upload(make_portrait(media_dir / "face.png"))))
        _wait_until_running(client, prompt_id)
        os.killpg(server.pid or 0, signal.SIGKILL)
        with pytest.raises(ComfyWorkerLost, match="port refused") as info:
            client.wait(prompt_id)
    assert info.value.transient is True


def test_a_server_frozen_past_the_silence_deadline_is_unreachable_not_lost(
    comfy_server: LocalComfyUI, inputs: tuple[str, str]
) -> None:
    client = ComfyClient(comfy_server.url, request_timeout=0.5, silence_timeout=2, poll_interval=0.2)
    with client:
        prompt_id = client.submit(slow_graph(inputs[0], blurs=3, tag="frozen"))
        _wait_until_running(client, prompt_id)
        try:
            with unresponsive(comfy_server, 4.0), pytest.raises(ComfyUnreachable, match="does not answer") as info:
                client.wait(prompt_id)
        finally:
            client.cancel(prompt_id)
    assert not isinstance(info.value, ComfyWorkerLost)  # its connections time out: it may be alive, so not "gone"


def test_wait_rides_out_a_server_that_stops_answering_for_a_while(
    comfy_server: LocalComfyUI, inputs: tuple[str, str]
) -> None:
    client = ComfyClient(comfy_server.url, request_timeout=0.5, silence_timeout=60, poll_interval=0.2)
    with client:
        prompt_id = client.submit(slow_graph(inputs[0], blurs=3, tag="blip"))
        _wait_until_running(client, prompt_id)
        with unresponsive(comfy_server, 4.0):  # longer than all retries of one GET (0.5 s x 3 + 1.5 s backoff)
            entry = client.wait(prompt_id)
    assert entry["status"]["status_str"] == "success"
    assert (execution_seconds(entry) or 0) > 4.0  # the outage fell within the render


def test_cancel_retries_through_an_outage_longer_than_one_request(
    comfy_server: LocalComfyUI, inputs: tuple[str, str]
) -> None:
    client = ComfyClient(comfy_server.url, request_timeout=1, silence_timeout=60, poll_interval=0.2)
    with client:
        prompt_id = client.submit(slow_graph(inputs[0], tag="cancel_blip"))
        _wait_until_running(client, prompt_id)
        with unresponsive(comfy_server, 2.0):
            client.cancel(prompt_id)  # first attempt times out after 1 s; a retry gets through
        with pytest.raises(ComfyInterrupted):
            client.wait(prompt_id)


def test_a_lost_prompt_answer_adopts_the_queued_prompt_instead_of_rendering_twice(
    comfy_server: LocalComfyUI, inputs: tuple[str, str]
) -> None:
    prefix = f"video/adopt_{uuid.uuid4().hex[:8]}"
    prompt_id = str(uuid.uuid4())
    client = ComfyClient(comfy_server.url, request_timeout=3, silence_timeout=60, poll_interval=0.2)
    with client:
        started = time.monotonic()
        # The POST times out at 3 s; the server, back at 4 s, queues it late: adopted within the 3 s grace period.
        with unresponsive(comfy_server, 4.0):
            assert client.submit(i2v_graph(*inputs, frames=5, prefix=prefix), prompt_id) == prompt_id
        assert time.monotonic() - started > client.request_timeout  # the answer really was lost
        entry = client.wait(prompt_id)
    assert entry["status"]["status_str"] == "success"
    assert len(list((comfy_server.workdir / "output").glob(f"{prefix}*"))) == 1


def test_a_prompt_not_seen_after_a_lost_answer_is_cancelled_before_the_error(
    comfy_server: LocalComfyUI, inputs: tuple[str, str]
) -> None:
    prompt_id = str(uuid.uuid4())
    client = ComfyClient(comfy_server.url, request_timeout=1, silence_timeout=60)
    with client:
        blocker = client.submit(slow_graph(inputs[0], tag="blocker"))  # keeps the late prompt pending, not running
        got_prompt = comfy_server.log_path.read_text().count("got prompt")
        try:
            # POST times out at 1 s, the grace period ends at 2 s with no answer, the cancel starts; the server, back
            # at 2.5 s, queues the late POST first and then serves the cancel: the prompt must never run.
            with unresponsive(comfy_server, 2.5), pytest.raises(ComfyUnreachable, match="cancelled"):
                client.submit(slow_graph(inputs[0], tag="orphan"), prompt_id)
            pending = client.queue()[1]
        finally:
            client.cancel(blocker)
        deadline = time.monotonic() + 60
        while any(client.queue()):
            assert time.monotonic() < deadline, "the queue never drained"
            time.sleep(0.2)
        entry = client.history(prompt_id)
    assert comfy_server.log_path.read_text().count("got prompt") == got_prompt + 1  # the late POST did land
    assert prompt_id not in pending
    assert entry is None  # removed while pending: it never ran
