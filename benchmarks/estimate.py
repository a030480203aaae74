"""`infinitetalk estimate` on a large manifest: rows per second, and per-clip windows checked against clip_timing.

    .venv/bin/python -m benchmarks.estimate [--rows 10000] [--distinct 300] [--long 4] [--long-every 200]
        [--sample 60] [--cli]

Makes `--distinct` short WAVs (1 to 20 s of tones, 16 kHz) and `--long` long ones (70 to 150 s of espeak-ng speech
with pauses, so they are segmented), then a `--rows` manifest in which every row has its own file name (hard links to
those contents: each row is its own source to fetch, hash and measure, as in a real manifest, without gigabytes
of disk). One row in `--long-every` (200) has long speech, which clip_timing decodes to plan its segments (about
0.1 s each here); one in 50 has two speakers, one in 100 points at a missing file and one in 200 is invalid. The
estimate runs in this process (the core, `estimate_manifest`), or with `--cli` as `infinitetalk estimate` in a child
process (start-up included). A sample of rows is then measured again with `clip_timing` itself and compared:
frames, windows and segments must be equal. Prints the timing; asserts nothing about it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from infinitetalk_pipeline.estimate import Estimate, estimate_manifest
from infinitetalk_pipeline.gpu_costs import load_gpu_table
from infinitetalk_pipeline.media.sources import MediaFetcher, SourcePolicy
from infinitetalk_pipeline.render import clip_timing
from infinitetalk_pipeline.spec import parse_request
from tests.fixtures.synth import make_long_speech, make_portrait, make_tone

COLUMNS = ["clip_id", "input_type", "person_count", "image_path", "wav_path", "wav_path_2", "prompt", "width", "height"]
SIZES = [(832, 480), (480, 832), (640, 640), (1280, 720)]


def make_media(folder: Path, distinct: int, long: int) -> tuple[list[Path], list[Path]]:
    rng = random.Random(14)
    folder.mkdir(parents=True, exist_ok=True)
    short = [
        make_tone(folder / f"short-{i}.wav", seconds=round(rng.uniform(1, 20), 2), freq=rng.uniform(150, 400))
        for i in range(distinct)
    ]
    lengths = [70 + (80 * i) / max(long - 1, 1) for i in range(long)]
    longer = [make_long_speech(folder / f"long-{i}.wav", seconds)[0] for i, seconds in enumerate(lengths)]
    return short, longer


def make_manifest(folder: Path, rows: int, short: list[Path], longer: list[Path], long_every: int = 200) -> Path:
    """Every row gets its own file names: hard links to one of the contents."""
    rng = random.Random(7)
    files = folder / "rows"
    files.mkdir()
    portrait = make_portrait(folder / "portrait.png")
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for i in range(rows):
            content = longer[i % len(longer)] if longer and i % long_every == long_every // 2 else rng.choice(short)
            wav = files / f"voice-{i}.wav"
            os.link(content, wav)
            multi = i % 50 == 25
            if multi:
                os.link(rng.choice(short), files / f"voice-{i}-b.wav")
            width, height = SIZES[i % len(SIZES)]
            row = {
                "clip_id": f"clip-{i:05d}",
                "input_type": "image",
                "person_count": "multi" if multi else "single",
                "image_path": str(portrait),
                "wav_path": str(wav) if i % 100 != 99 else str(files / f"missing-{i}.wav"),
                "wav_path_2": str(files / f"voice-{i}-b.wav") if multi else "",
                "prompt": "a person talking to the camera",
                "width": str(width) if i % 200 != 150 else "16",  # out of range: an invalid row
                "height": str(height),
            }
            writer.writerow(row)
    return manifest


def run_core(manifest: Path, folder: Path) -> tuple[float, float, Estimate]:
    """Wall seconds, CPU seconds of this process, and the estimate."""
    fetcher = MediaFetcher(SourcePolicy(allowed_roots=(folder,)), folder / "cache")
    gpu = load_gpu_table().get()
    started, cpu = time.perf_counter(), time.process_time()
    result = estimate_manifest(str(manifest), fetcher, gpu)
    return time.perf_counter() - started, time.process_time() - cpu, result


def run_cli(manifest: Path, folder: Path) -> tuple[float, dict]:
    out = folder / "estimate.json"
    command = [str(Path(sys.executable).with_name("infinitetalk")), "estimate", str(manifest), "--no-catalog"]
    started = time.perf_counter()
    subprocess.run([*command, "--json", str(out), "--totals-only"], check=True, capture_output=True, text=True)
    return time.perf_counter() - started, json.loads(out.read_text())


def check_sample(manifest: Path, folder: Path, clips: list[dict], sample: int) -> int:
    """Measure `sample` of the estimated clips again with clip_timing (a fresh fetcher); returns the mismatches."""
    fetcher = MediaFetcher(SourcePolicy(allowed_roots=(folder,)), folder / "cache-check")
    with manifest.open(newline="") as f:
        rows = {row["clip_id"]: row for row in csv.DictReader(f)}
    rng = random.Random(3)
    picked = rng.sample(clips, min(sample, len(clips)))
    picked += [c for c in clips if c["segments"] > 1][:5]  # the segmented ones, whatever the sample drew
    wrong = 0
    for clip in picked:
        body = {k: v for k, v in rows[clip["clip_id"]].items() if v}
        timing = clip_timing(parse_request(body), fetcher, clip["clip_id"])
        got = (clip["frames"], clip["windows"], clip["segments"])
        want = (timing.frames, timing.windows, timing.segment_count)
        if got != want:
            wrong += 1
            print(f"  MISMATCH {clip['clip_id']}: estimate {got}, clip_timing {want}")
    print(f"checked {len(picked)} clips against clip_timing (frames, windows, segments): {wrong} mismatches")
    return wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--distinct", type=int, default=300, help="distinct short WAV contents")
    parser.add_argument("--long", type=int, default=4, help="distinct long (segmented) speech contents")
    parser.add_argument("--long-every", type=int, default=200, help="one row in this many has long speech")
    parser.add_argument("--sample", type=int, default=60, help="rows checked against clip_timing")
    parser.add_argument("--cli", action="store_true", help="run `infinitetalk estimate` in a child process")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        short, longer = make_media(folder / "media", args.distinct, args.long)
        manifest = make_manifest(folder, args.rows, short, longer, args.long_every)
        print(
            f"made {args.distinct} short and {args.long} long WAVs and a {args.rows:,}-row manifest of distinct "
            f"file names in {time.perf_counter() - started:.1f} s"
        )
        if args.cli:
            seconds, body = run_cli(manifest, folder)
            clips, totals, not_measured = body["clips"], body["totals"], len(body["not_measured"])
            how = "`infinitetalk estimate` (child process, start-up included)"
        else:
            seconds, cpu, result = run_core(manifest, folder)
            body = result.to_dict()
            clips, totals, not_measured = body["clips"], body["totals"], len(result.unmeasured)
            how = f"estimate_manifest (in process, {cpu:.2f} CPU-seconds)"
        load = os.getloadavg()[0]
        print(
            f"{how}: {args.rows:,} rows in {seconds:.2f} s = {args.rows / seconds:,.0f} rows/s "
            f"(target: 10,000 rows < 10 s); {len(clips):,} clips measured, {not_measured:,} not measured"
        )
        print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f} (other processes share them)")
        print(
            f"totals: {totals['speech_hours']:.2f} speech hours, {totals['frames']:,} frames, {totals['windows']:,} "
            f"windows, {totals['segments']:,} segments, {totals['gpu_hours']:.1f} GPU-hours ({body['source']})"
        )
        check_sample(manifest, folder, clips, args.sample)


if __name__ == "__main__":
    main()
