"""Cost before launch (issue 14): `infinitetalk estimate MANIFEST` and `clip_manifest`'s metadata give each clip's
speech seconds, frames, windows, segments and GPU-minutes, from the GPU table or the catalog's measured renders."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner
from dagster_aws.s3 import S3Resource

from infinitetalk_pipeline.catalog import CatalogRow, upsert
from infinitetalk_pipeline.cli import main
from infinitetalk_pipeline.defs.assets import clip_manifest
from infinitetalk_pipeline.defs.resources import ComfyUIResource, PipelineStorage
from infinitetalk_pipeline.estimate import estimate_manifest, estimate_specs
from infinitetalk_pipeline.gpu_costs import EstimateError, GpuCost, load_gpu_table, rate_for
from infinitetalk_pipeline.media.sources import MediaFetcher, SourcePolicy
from infinitetalk_pipeline.registry import ClipSpec
from infinitetalk_pipeline.render import clip_timing
from infinitetalk_pipeline.segments import Segmenting
from infinitetalk_pipeline.spec import parse_request
from infinitetalk_pipeline.storage import LocalOutputStore
from tests.fixtures.http_files import FileServer
from tests.fixtures.synth import make_long_speech, make_tone

RTX4090 = GpuCost("rtx4090", 80.0, 832, 480)
COLUMNS = ["clip_id", "input_type", "person_count", "image_path", "wav_path", "wav_path_2", "width", "height"]


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    make_tone(folder / "five.wav", 5.0)
    make_tone(folder / "eight.wav", 8.0, freq=330)  # 200 frames: 3 windows
    make_tone(folder / "three.wav", 3.0, freq=440)
    make_long_speech(folder / "lecture.wav", 70.0)  # over the 60 s threshold: two segments
    (folder / "portrait.png").write_bytes(b"")  # never fetched by an estimate
    return folder


def fetcher_for(folder: Path) -> MediaFetcher:
    return MediaFetcher(SourcePolicy(allowed_roots=(folder,)), folder / ".cache")


def spec(media: Path, clip_id: str, wav: str, row: int = 2, **fields: object) -> ClipSpec:
    body = {"input_type": "image", "image_path": str(media / "portrait.png"), "wav_path": str(media / wav), **fields}
    return ClipSpec(clip_id, "manifest.csv", row, parse_request(body, clip_id))


def write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def row(clip_id: str, wav: str, width: int = 832, height: int = 480, **fields: str) -> dict[str, str]:
    base = {"input_type": "image", "person_count": "single", "image_path": "portrait.png", "wav_path": wav}
    return {"clip_id": clip_id, **base, "width": str(width), "height": str(height), **fields}


@pytest.mark.parametrize(
    ("clip_id", "wav", "fields"),
    [
        ("short", "five.wav", {}),
        ("lecture", "lecture.wav", {}),
        ("duo-para", "eight.wav", {"person_count": "multi", "wav_path_2": "three.wav"}),
        ("duo-add", "eight.wav", {"person_count": "multi", "wav_path_2": "three.wav", "multi_audio_type": "add"}),
    ],
)
def test_each_clip_has_the_frames_windows_and_segments_clip_timing_gives(
    media: Path, clip_id: str, wav: str, fields: dict[str, str]
) -> None:
    if "wav_path_2" in fields:
        fields = {**fields, "wav_path_2": str(media / fields["wav_path_2"])}
    clip = spec(media, clip_id, wav, **fields)
    [got] = estimate_specs([clip], fetcher_for(media), RTX4090).clips
    timing = clip_timing(clip.request, fetcher_for(media), clip_id)
    assert (got.frames, got.windows, got.segments) == (timing.frames, timing.windows, timing.segment_count)
    assert got.speech_seconds == timing.duration_seconds
    if clip_id == "lecture":
        assert got.segments == 2 and got.windows == sum(s.windows for s in timing.segments)
    if clip_id == "duo-add":  # one after the other: 8 s + 3 s
        assert got.speech_seconds == pytest.approx(11.0)


def test_the_segment_settings_are_the_callers(media: Path) -> None:
    clip = spec(media, "lecture", "lecture.wav")
    [one_prompt] = estimate_specs([clip], fetcher_for(media), RTX4090, segmenting=Segmenting(max_seconds=0)).clips
    [thirds] = estimate_specs([clip], fetcher_for(media), RTX4090, segmenting=Segmenting(max_seconds=30)).clips
    assert one_prompt.segments == 1 and one_prompt.frames == 1750
    assert thirds.segments == 3


def test_gpu_minutes_are_windows_times_the_tables_seconds_per_window(media: Path) -> None:
    """The seed figure: RTX 4090, 832x480, 4-step LoRA, 80 s per 81-frame window."""
    table = load_gpu_table()
    assert table.default == "rtx4090"
    assert table.get() == GpuCost("rtx4090", 80.0, 832, 480, table.get().note)
    estimate = estimate_specs(
        [spec(media, "eight", "eight.wav", width=832, height=480)], fetcher_for(media), table.get()
    )
    [clip] = estimate.clips
    assert (clip.frames, clip.windows) == (200, 3)
    assert clip.gpu_minutes == pytest.approx(4.0)  # 3 x 80 s
    assert clip.source == "table: rtx4090" == estimate.rate.source


def test_gpu_time_scales_with_the_pixel_count(media: Path) -> None:
    clips = [
        spec(media, "big", "eight.wav", width=1664, height=960),  # 4x the pixels
        spec(media, "small", "eight.wav", width=416, height=240),  # 1/4
        spec(media, "odd", "eight.wav", width=830, height=478),  # rendered at 832x480, as render.round_size says
    ]
    estimate = estimate_specs(clips, fetcher_for(media), RTX4090)
    assert [c.gpu_minutes for c in estimate.clips] == pytest.approx([16.0, 1.0, 4.0])
    assert "pixel count relative to 832x480 (an assumption)" in estimate.assumption


def test_measured_renders_in_the_catalog_replace_the_table(media: Path, tmp_path: Path) -> None:
    store = LocalOutputStore(tmp_path / "out")
    upsert(
        store,
        [
            rendered("a", "gpu-1", windows=4, seconds=160.0),  # 40 s per window
            # segmented: 30 s per window on gpu-2 (both segments), at 4x the pixels -> 7.5 s at 832x480
            rendered(
                "b",
                None,
                windows=6,
                seconds=180.0,
                size=(1664, 960),
                segments=[
                    {"index": 0, "worker": "gpu-2", "windows": 4, "execution_seconds": 120.0},
                    {"index": 1, "worker": "gpu-2", "windows": 2, "execution_seconds": 60.0},
                ],
            ),
            rendered("c", "gpu-1", windows=4, seconds=4000.0, profile="preview"),  # not a GPU figure
            rendered("d", "gpu-1", windows=None, seconds=None),  # rendered before windows were recorded
        ],
    )
    rate = rate_for(RTX4090, store)
    assert rate.source == "measured: 2 renders on 2 workers"
    assert {w.worker: w.seconds_per_window for w in rate.workers} == {"gpu-1": 40.0, "gpu-2": 7.5}
    # A free worker takes the next prompt: gpu-2 renders 40/7.5 times as many windows as gpu-1. Harmonic mean.
    assert rate.seconds_per_window == pytest.approx(2 / (1 / 40 + 1 / 7.5))
    eight = spec(media, "eight", "eight.wav", width=832, height=480)
    [clip] = estimate_specs([eight], fetcher_for(media), RTX4090, rate).clips
    assert clip.gpu_minutes == pytest.approx(3 * rate.seconds_per_window / 60)
    assert clip.source == "measured: 2 renders on 2 workers"


def test_an_empty_or_missing_catalog_leaves_the_table(tmp_path: Path) -> None:
    assert rate_for(RTX4090, LocalOutputStore(tmp_path / "nothing-here")).source == "table: rtx4090"


def test_rows_that_cannot_be_measured_are_listed_not_fatal(media: Path) -> None:
    (media / "not-audio.wav").write_text("this is text, not a WAV")
    manifest = write_manifest(
        media / "manifest.csv",
        [
            row("fine", "eight.wav"),
            row("missing", "nowhere.wav"),
            row("garbled", "not-audio.wav"),
            row("too-small", "five.wav", width=16),
        ],
    )
    estimate = estimate_manifest(str(manifest), fetcher_for(media), RTX4090)
    assert [c.clip_id for c in estimate.clips] == ["fine"]
    listed = {u.clip_id: u for u in estimate.unmeasured}
    assert [u.row_number for u in estimate.unmeasured] == [3, 4, 5]
    assert listed["missing"].field == "wav_path" and "no such file" in listed["missing"].reason
    assert listed["garbled"].field == "wav_path" and "unrecognised file format" in listed["garbled"].reason
    assert listed["too-small"].field == "width"
    totals = estimate.totals
    assert (totals.clips, totals.windows, totals.gpu_minutes) == (1, 3, pytest.approx(4.0))


def test_clips_sharing_their_speech_are_measured_once(media: Path) -> None:
    fetched: list[str] = []

    class Counting(MediaFetcher):
        def fetch(self, ref, clip_id=None):  # type: ignore[no-untyped-def]
            fetched.append(ref.value)
            return super().fetch(ref, clip_id)

    clips = [spec(media, f"clip-{i}", "five.wav", row=i + 2, width=640 + 16 * i) for i in range(20)]
    estimate = estimate_specs(clips, Counting(SourcePolicy(allowed_roots=(media,)), media / ".cache"), RTX4090)
    assert len(estimate.clips) == 20 and fetched == [str(media / "five.wav")]


def test_speech_on_urls_is_fetched_once_per_url(media: Path, http_files: FileServer) -> None:
    """URLs are fetched by a thread pool (they are waited on); a URL shared by clips is fetched once."""
    urls = [
        http_files.put(f"voice-{i}.wav", (media / wav).read_bytes()) for i, wav in enumerate(["five.wav", "eight.wav"])
    ]
    clips = [
        ClipSpec(f"web-{i}", "m.csv", i + 2, parse_request({"image_path": "/p.png", "wav_url": urls[i % 2]}))
        for i in range(6)
    ]
    fetcher = MediaFetcher(SourcePolicy(allow_private_hosts=True), media / ".cache-web")
    estimate = estimate_specs(clips, fetcher, RTX4090)
    assert [c.frames for c in estimate.clips] == [125, 200] * 3
    assert sorted(r.path for r in http_files.requests) == ["/voice-0.wav", "/voice-1.wav"]


def test_the_gpu_table_is_checked_with_clear_errors(tmp_path: Path) -> None:
    def table(text: str) -> Path:
        path = tmp_path / "costs.toml"
        path.write_text(text)
        return path

    good = "[gpu.l40s]\nseconds_per_window = 50.0\nwidth = 832\nheight = 480\n"
    assert load_gpu_table(table(f'default = "l40s"\n{good}')).get().seconds_per_window == 50.0
    with pytest.raises(EstimateError, match=r"default must name one of its entries \(l40s\), got 'h100'"):
        load_gpu_table(table(f'default = "h100"\n{good}'))
    with pytest.raises(EstimateError, match=r"\[gpu.l40s\]: seconds_per_window must be a positive number, got -5"):
        load_gpu_table(table('default = "l40s"\n[gpu.l40s]\nseconds_per_window = -5\nwidth = 832\nheight = 480\n'))
    with pytest.raises(EstimateError, match=r"\[gpu.l40s\]: unknown key\(s\) sec_per_window"):
        load_gpu_table(table('default = "l40s"\n[gpu.l40s]\nsec_per_window = 5\nwidth = 832\nheight = 480\n'))
    with pytest.raises(EstimateError, match="not valid TOML"):
        load_gpu_table(table("default = \n"))
    with pytest.raises(EstimateError, match=r"unknown GPU class 'h100'; known in .*: l40s"):
        load_gpu_table(table(f'default = "l40s"\n{good}')).get("h100")


def test_the_table_comes_from_the_environment_when_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text('default = "a10"\n[gpu.a10]\nseconds_per_window = 200.0\nwidth = 832\nheight = 480\n')
    monkeypatch.setenv("INFINITETALK_GPU_COSTS", str(path))
    assert load_gpu_table().get().name == "a10"


def test_the_cli_prints_each_clip_and_the_totals(media: Path, tmp_path: Path) -> None:
    manifest = write_manifest(
        media / "cli.csv", [row("eight", "eight.wav"), row("lecture", "lecture.wav"), row("gone", "gone.wav")]
    )
    out = tmp_path / "estimate.json"
    result = CliRunner().invoke(main, ["estimate", str(manifest), "--catalog", "", "--json", str(out)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "eight" in text and "lecture" in text
    assert "row 4, clip 'gone', field 'wav_path': no such file" in text
    assert "clips:        2" in text
    assert "segments:     3" in text  # 1 + 2
    assert "GPU class:    rtx4090" in text and "table: rtx4090 (80.0 s per 81-frame window at 832x480)" in text
    assert "(an assumption)" in text
    body = json.loads(out.read_text())
    assert body["totals"]["clips"] == 2 and body["source"] == "table: rtx4090"
    assert [c["clip_id"] for c in body["clips"]] == ["eight", "lecture"]
    assert body["not_measured"][0]["clip_id"] == "gone"
    # --totals-only: no per-clip table
    quiet = CliRunner().invoke(main, ["estimate", str(manifest), "--catalog", "", "--totals-only"])
    assert "eight" not in quiet.output and "clips:        2" in quiet.output


def test_the_cli_uses_the_catalogs_measurements(media: Path, tmp_path: Path) -> None:
    upsert(LocalOutputStore(tmp_path / "out"), [rendered("a", "gpu-1", windows=4, seconds=160.0)])
    manifest = write_manifest(media / "measured.csv", [row("eight", "eight.wav")])
    result = CliRunner().invoke(main, ["estimate", str(manifest), "--catalog", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "measured: 1 render on 1 worker (40.0 s per 81-frame window at 832x480" in result.output
    assert "GPU:          0.03 GPU-hours (2.0 GPU-minutes)" in result.output
    table_only = CliRunner().invoke(
        main, ["estimate", str(manifest), "--catalog", str(tmp_path / "out"), "--no-catalog"]
    )
    assert "GPU:          0.07 GPU-hours (4.0 GPU-minutes)" in table_only.output


def test_an_unknown_gpu_is_a_clear_error(media: Path) -> None:
    manifest = write_manifest(media / "gpu.csv", [row("eight", "eight.wav")])
    result = CliRunner().invoke(main, ["estimate", str(manifest), "--gpu", "h100"])
    assert result.exit_code == 2
    assert "unknown GPU class 'h100'; known in" in result.output and "rtx4090" in result.output
    assert "Traceback" not in result.output


def test_an_unreadable_manifest_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["estimate", str(tmp_path / "nope.csv"), "--catalog", ""])
    assert result.exit_code == 1
    assert "error: manifest" in result.output and "cannot read it" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_clip_manifest_estimates_what_the_registration_changed(media: Path, tmp_path: Path) -> None:
    manifest = write_manifest(media / "registered.csv", [row("eight", "eight.wav"), row("absent", "absent.wav")])
    storage = PipelineStorage(
        output_root=str(tmp_path / "out"),
        cache_dir=str(tmp_path / "cache"),
        allowed_roots=str(media),
        manifest=str(manifest),
        s3=S3Resource(region_name="us-east-1"),
    )
    with dg.instance_for_test() as instance:
        first = materialized_metadata(instance, storage)
        again = materialized_metadata(instance, storage)
    assert first["estimate_clips"] == 1 and first["estimate_windows"] == 3
    assert first["estimate_gpu_minutes"] == pytest.approx(4.0)
    assert first["estimate_gpu"] == "rtx4090" and first["estimate_source"] == "table: rtx4090"
    assert first["estimate_not_measured"] == 1
    assert "| eight | 8.00 | 200 | 3 | 1 | 832x480 | 4.00 |" in first["estimate_table"]
    assert "clip 'absent', field 'wav_path': no such file" in first["estimate_table"]
    # nothing changed: nothing to render, nothing measured
    assert again["estimate_clips"] == 0 and again["estimate_gpu_minutes"] == 0


def materialized_metadata(instance: dg.DagsterInstance, storage: PipelineStorage) -> dict[str, object]:
    result = dg.materialize(
        [clip_manifest], instance=instance, resources={"storage": storage, "comfyui": ComfyUIResource()}
    )
    assert result.success
    metadata = result.asset_materializations_for_node("clip_manifest")[0].metadata
    return {key: value.value for key, value in metadata.items()}


def rendered(
    clip_id: str,
    worker: str | None,
    *,
    windows: int | None,
    seconds: float | None,
    size: tuple[int, int] = (832, 480),
    profile: str = "infinitetalk",
    segments: list[dict[str, object]] | None = None,
) -> CatalogRow:
    return CatalogRow(
        clip_id=clip_id,
        manifest="m.csv",
        inputs="{}",
        workflow="I2V_single",
        profile=profile,
        prompt="",
        width=size[0],
        height=size[1],
        frames=300,
        fps=25.0,
        duration_seconds=12.0,
        size_bytes=1,
        sha256="0" * 64,
        output_uri=f"/out/videos/{clip_id}.mp4",
        comfy_prompt_id="p",
        worker=worker,
        render_seconds=1.0,
        rendered_at=datetime.now(UTC),
        windows=windows,
        comfy_execution_seconds=seconds,
        segments=json.dumps(segments) if segments is not None else None,
    )
