"""An S3 output root whose bucket does not exist: one clear error naming the root, on moto's real S3 server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from infinitetalk_pipeline.clip_renderer import ClipFailure, ClipRenderer
from infinitetalk_pipeline.comfy.fleet import Fleet
from infinitetalk_pipeline.errors import OutputRootError
from infinitetalk_pipeline.media.sources import MediaFetcher, SourcePolicy
from infinitetalk_pipeline.registry import ClipSpec
from infinitetalk_pipeline.spec import parse_request
from infinitetalk_pipeline.storage import S3OutputStore, output_store_for
from tests.fixtures.media import make_portrait, make_tone, make_video

pytestmark = pytest.mark.s3

MISSING_ROOT = "s3://nope/out/"
MISSING = f"output root {MISSING_ROOT}: bucket 'nope' does not exist (NoSuchBucket)"


@pytest.fixture
def store(s3: Any) -> S3OutputStore:
    """An output root in a bucket the (emptied) server does not have."""
    store = output_store_for("s3://nope/out", s3_client=s3)
    assert isinstance(store, S3OutputStore)
    return store


OPERATIONS: dict[str, Callable[[S3OutputStore, Path], object]] = {
    "put_video": lambda store, tmp: store.put_video(make_video(tmp / "v.mp4", 0.5), "clip-1", {}),
    "put_bytes": lambda store, _: store.put_bytes("clips/a.json", b"{}"),
    "put_many": lambda store, _: store.put_many({"clips/a.json": b"{}", "clips/b.json": b"{}"}),
    "get_bytes": lambda store, _: store.get_bytes("clips/a.json"),
    "list_names": lambda store, _: store.list_names("videos/"),
    "delete": lambda store, _: store.delete("failures/a.json"),
}


@pytest.mark.parametrize("operation", OPERATIONS)
def test_every_read_and_write_of_a_missing_bucket_names_the_output_root(
    store: S3OutputStore, tmp_path: Path, operation: str
) -> None:
    with pytest.raises(OutputRootError) as raised:
        OPERATIONS[operation](store, tmp_path)
    assert str(raised.value) == MISSING


def test_a_clip_rendered_into_a_missing_bucket_fails_once_with_the_output_root_in_its_message(
    store: S3OutputStore, tmp_path: Path
) -> None:
    make_portrait(tmp_path / "face.png")
    make_tone(tmp_path / "tone.wav", 0.4)
    request = parse_request({"image_path": str(tmp_path / "face.png"), "wav_path": str(tmp_path / "tone.wav")}, "talk")
    spec = ClipSpec("talk", str(tmp_path / "manifest.csv"), 2, request)
    fetcher = MediaFetcher(SourcePolicy(allowed_roots=(tmp_path,)), cache_dir=tmp_path / "cache")
    # The worker is never reached (a closed port): the clip's timing is kept in the store before any render.
    with Fleet(["http://127.0.0.1:9"]) as fleet, pytest.raises(OutputRootError) as raised:
        renderer = ClipRenderer(store, fetcher, fleet, "preview")
        renderer.render(spec, renderer.measure_timing(spec))
    failure = ClipFailure.of("talk", raised.value)
    assert failure.message == f"clip 'talk': {MISSING}"
    assert not failure.transient
