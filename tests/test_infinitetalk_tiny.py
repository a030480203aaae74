"""The four real InfiniteTalk graphs, executed end to end on a CPU ComfyUI with tiny random-weight models.

Through the real bindings (`load_template(...).bind`) and the real client (upload, render, download): proves the
wiring, the 2-window loop, the audio path and the output handling; says nothing of image quality
(tests/tiny_worker/README.md). 64x64, 100 frames (windows 0-81 and 72-153), 4 s of speech.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import pytest

from infinitetalk_pipeline.comfy.client import ComfyClient
from infinitetalk_pipeline.comfy.errors import ComfyExecutionError
from infinitetalk_pipeline.comfy.server import LocalComfyUI
from infinitetalk_pipeline.workflows.templates import Template, load_template
from tests.fixtures.media import decoded_seconds
from tests.fixtures.tiny_worker import (
    peak_rss_mb,
    speaker_masks,
    speech_like,
    tiny_portrait,
    tiny_source_video,
)

pytestmark = pytest.mark.infinitetalk

SIZE = 64
FPS = 25
FRAMES = 100  # two windows: 81, then 72 more
SECONDS = FRAMES / FPS


@pytest.fixture(scope="module")
def tiny_client(tiny_worker: LocalComfyUI) -> Iterator[ComfyClient]:
    # Silence: the longest node (the sampler's first window) reports progress per step, seconds apart.
    with ComfyClient(tiny_worker.url, request_timeout=30, silence_timeout=300, render_deadline=1200) as c:
        yield c


def clip_values(template: Template, client: ComfyClient, folder: Path) -> dict[str, Any]:
    """What the render layer binds for a 64x64, 100-frame clip: uploaded inputs, sizes, frames, audio length."""
    values: dict[str, Any] = {
        "width": SIZE,
        "height": SIZE,
        "frames": FRAMES,
        "audio_seconds": SECONDS,
        "prompt": "A person talking naturally",
        "filename_prefix": f"tiny/{template.name}",
        "audio": client.upload(speech_like(folder / "speech.wav", SECONDS)),
    }
    if "image" in template.bindings:
        values["image"] = client.upload(tiny_portrait(folder / "portrait.png"))
    if "video" in template.bindings:
        values["video"] = client.upload(tiny_source_video(folder / "source.mp4", FRAMES))
    if "audio_2" in template.bindings:
        # Shorter and offset: the second speaker is padded to the bed, and the two tracks differ.
        values["audio_2"] = client.upload(speech_like(folder / "speech_2.wav", 3.0, pitch=240.0, offset=0.1))
        mask, mask_2 = speaker_masks(folder, SIZE, SIZE)
        values["mask"], values["mask_2"] = client.upload(mask), client.upload(mask_2)
    return values


@pytest.mark.parametrize("name", ["I2V_single", "V2V_single", "I2V_multi", "V2V_multi"])
def test_graph_renders_the_clip(
    name: str,
    tiny_worker: LocalComfyUI,
    tiny_client: ComfyClient,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    template = load_template("infinitetalk", name)
    graph = template.bind(clip_values(template, tiny_client, tmp_path))

    t0 = time.perf_counter()
    result = tiny_client.render(graph, template.output_node, tmp_path / "out" / f"{name}.mp4")
    wall = time.perf_counter() - t0
    assert tiny_worker.pid is not None
    rss = peak_rss_mb(tiny_worker.pid)
    record_property("render_seconds", round(wall, 1))
    record_property("comfyui_peak_rss_mb", round(rss))
    print(f"\n{name}: {wall:.1f} s (ComfyUI {result.execution_seconds} s), ComfyUI peak RSS {rss:.0f} MB")

    with av.open(str(result.output_path)) as container:
        video = container.streams.video[0]
        assert (video.width, video.height, video.average_rate) == (SIZE, SIZE, FPS)
        assert sum(1 for _ in container.decode(video)) == FRAMES
        assert len(container.streams.audio) == 1
    assert decoded_seconds(result.output_path) == pytest.approx(SECONDS, abs=1 / FPS)


def _reachable(graph: dict[str, Any], output: str) -> dict[str, Any]:
    """The nodes `output` depends on: what ComfyUI would run (links are `[node id, output index]`)."""
    seen: set[str] = set()
    todo = [output]
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        todo += [v[0] for v in graph[node]["inputs"].values() if isinstance(v, list) and len(v) == 2]
    return {k: v for k, v in graph.items() if k in seen}


def test_multi_without_masks_fails_on_a_fresh_prompt(tiny_client: ComfyClient, tmp_path: Path) -> None:
    """WanVideoWrapper 1.4.7's defect that the graphs' `ref_target_masks` avoid: with two speakers and no masks the
    sampler reads the masks before anything fills in the defaults (it only works when a cache replays a mutated
    embeds object; the tiny worker runs `--cache-none`)."""
    template = load_template("infinitetalk", "I2V_multi")
    graph = template.bind(clip_values(template, tiny_client, tmp_path))
    embeds = next(node for node in graph.values() if node["class_type"] == "MultiTalkWav2VecEmbeds")
    del embeds["inputs"]["ref_target_masks"]
    graph = _reachable(graph, template.output_node)
    mask_nodes = {t.node for name in ("mask", "mask_2") for t in template.bindings[name]}
    assert not mask_nodes & set(graph), "the mask branch should be gone with its only consumer"
    sampler = next(k for k, node in graph.items() if node["class_type"] == "WanVideoSampler")

    with pytest.raises(ComfyExecutionError) as failure:
        tiny_client.render(graph, template.output_node, tmp_path / "out" / "no_masks.mp4")
    assert (failure.value.node_id, failure.value.node_type) == (sampler, "WanVideoSampler")
    assert "'NoneType' object has no attribute 'max'" in failure.value.exception_message
