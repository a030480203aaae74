"""V2V sources: probed, then conformed to 25 fps and the clip's exact frame count, upright, H.264, no
audio."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from infinitetalk_pipeline.media.video import MediaError, conform_video, fit_order, probe_video
from tests.fixtures.media import make_portrait, make_rotated_video, make_video

W, H = 320, 240


def bar_positions(path: Path) -> list[int]:
    """The left edge of make_video's moving bar in every frame."""
    with av.open(str(path)) as container:
        return [int(np.argmax(f.to_ndarray(format="rgb24")[H // 2, :, 0] > 128)) for f in container.decode(video=0)]


def expected_bar(source_index: int, source_frames: int) -> int:
    return int(source_index / max(source_frames - 1, 1) * (W - 20))


def assert_shows(path: Path, source_indices: list[int], source_frames: int) -> None:
    got = bar_positions(path)
    want = [expected_bar(i, source_frames) for i in source_indices]
    assert len(got) == len(want)
    assert max(abs(g - w) for g, w in zip(got, want, strict=True)) <= 3  # H.264 blurs the edge a little


def test_probe_reads_rate_frames_duration_and_size(tmp_path: Path) -> None:
    info = probe_video(make_video(tmp_path / "v.mp4", 2.0, fps=30))
    assert (info.fps, info.frames, info.duration, info.width, info.height, info.rotation) == (
        30,
        60,
        2.0,
        W,
        H,
        0,
    )


def test_probe_counts_frames_when_the_container_does_not_say(tmp_path: Path) -> None:
    src = make_video(tmp_path / "v.mp4", 1.0, fps=25)
    mkv = tmp_path / "v.mkv"
    with av.open(str(src)) as inp, av.open(str(mkv), "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    assert probe_video(mkv).frames == 25


def test_probe_reports_rotation_and_the_upright_size(tmp_path: Path) -> None:
    rotated = make_rotated_video(tmp_path / "r.mp4", make_video(tmp_path / "v.mp4", 0.4), 90)
    info = probe_video(rotated)
    assert (info.rotation, info.width, info.height) == (90, H, W)


def test_probe_refuses_an_image(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="expected a video, got a png image"):
        probe_video(make_portrait(tmp_path / "p.png"))


def test_conformed_video_has_exactly_the_frames_asked_at_25_fps(tmp_path: Path) -> None:
    out = conform_video(make_video(tmp_path / "v.mp4", 2.0, fps=30), tmp_path / "out.mp4", 37)
    info = probe_video(out)
    assert (info.frames, info.fps) == (37, 25)


def test_a_30_fps_source_is_retimed_by_timestamp(tmp_path: Path) -> None:
    out = conform_video(make_video(tmp_path / "v.mp4", 2.0, fps=30), tmp_path / "out.mp4", 50)
    # Output frame j is at j/25 s: the source frame on screen then is floor(j * 30 / 25).
    assert_shows(out, [j * 30 // 25 for j in range(50)], 60)


def test_a_longer_source_is_trimmed(tmp_path: Path) -> None:
    out = conform_video(make_video(tmp_path / "v.mp4", 2.0), tmp_path / "out.mp4", 20)
    assert_shows(out, list(range(20)), 50)


def test_loop_starts_the_source_over(tmp_path: Path) -> None:
    out = conform_video(make_video(tmp_path / "v.mp4", 0.4), tmp_path / "out.mp4", 25, fit="loop")
    assert_shows(out, [i % 10 for i in range(25)], 10)


def test_pingpong_plays_the_source_back_and_forth(tmp_path: Path) -> None:
    out = conform_video(make_video(tmp_path / "v.mp4", 0.4), tmp_path / "out.mp4", 25, fit="pingpong")
    forth_and_back = [*range(10), *range(8, 0, -1)]
    assert_shows(out, [forth_and_back[i % 18] for i in range(25)], 10)


def test_freeze_holds_the_last_frame(tmp_path: Path) -> None:
    out = conform_video(make_video(tmp_path / "v.mp4", 0.4), tmp_path / "out.mp4", 16, fit="freeze")
    assert_shows(out, [min(i, 9) for i in range(16)], 10)


def test_pingpong_is_the_default(tmp_path: Path) -> None:
    out = conform_video(make_video(tmp_path / "v.mp4", 0.4), tmp_path / "out.mp4", 12)
    assert_shows(out, [*range(10), 8, 7], 10)


@pytest.mark.parametrize(
    ("available", "fit", "order"),
    [
        (4, "pingpong", [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2]),
        (4, "loop", [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2]),
        (4, "freeze", [0, 1, 2, 3, 3, 3, 3, 3, 3, 3, 3]),
        (1, "pingpong", [0] * 11),
    ],
)
def test_fit_order(available: int, fit: str, order: list[int]) -> None:
    assert [fit_order(i, available, fit) for i in range(11)] == order  # type: ignore[arg-type]


def test_rotated_sources_come_out_upright(tmp_path: Path) -> None:
    src = tmp_path / "marker.mp4"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        frame = np.zeros((H, W, 3), np.uint8)
        frame[:60, :80] = 255  # a marker in the top-left corner of the stored picture
        for _ in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    rotated = make_rotated_video(tmp_path / "rotated.mp4", src, 90)
    out_path = conform_video(rotated, tmp_path / "out.mp4", 3)
    with av.open(str(out_path)) as container:
        first = next(container.decode(video=0))
        assert first.rotation == 0
        picture = first.to_ndarray(format="rgb24")
    assert picture.shape[:2] == (W, H)
    ys, xs = np.nonzero(picture[..., 0] > 128)
    # 90 degrees counterclockwise, as FFmpeg's autorotate shows it: the marker is now bottom-left.
    assert (ys.min(), xs.max()) == pytest.approx((W - 80, 59), abs=4)


def test_the_conformed_file_is_h264_without_audio(tmp_path: Path) -> None:
    src = make_video(tmp_path / "v.mp4", 0.4, audio_seconds=0.4)
    with av.open(str(conform_video(src, tmp_path / "out.mp4", 10))) as container:
        assert [s.type for s in container.streams] == ["video"]
        assert container.streams.video[0].codec_context.name == "h264"


def test_no_partial_file_is_left_when_conforming_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(make_video(tmp_path / "v.mp4", 0.4).read_bytes()[:2000])
    with pytest.raises(MediaError):
        conform_video(bad, tmp_path / "out.mp4", 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mp4", "v.mp4"]
