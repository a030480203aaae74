"""Audio duration in bulk: our probe vs one `ffprobe` process per file vs a full decode, on mixed formats.

Run from the repository root: `python -m benchmarks.audio_probe [--files 2000] [--sample 150]`.
Needs espeak-ng and ffmpeg (ffprobe) on PATH.

Encoding 2,000 files would take longer than probing them, so a few spoken sentences are encoded into every
format (AUDIO_ENCODINGS: WAV variants, MP3 with and without headers, M4A, ADTS AAC, FLAC, Vorbis, Opus) and
the files are copies of those originals under new names. The truth for every copy is the full decode of its
original. Our probe runs on all files; ffprobe and the full decode are timed on an evenly spread sample and
their rate extrapolated (said in the output). Everything runs in one process, one file at a time.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from infinitetalk_pipeline.media.audio import audio_duration
from tests.fixtures.media import AUDIO_ENCODINGS, decoded_seconds, encode_audio, make_speech

SENTENCES = [
    "Hello.",
    "The quick brown fox jumps over the lazy dog.",
    "Dubbing needs the video to end exactly when the speech does.",
    "One, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve.",
    "A longer paragraph of speech keeps going for a while, so that the files are not all short, "
    "and the formats whose headers guess the length from the first frame have room to be wrong.",
]


def make_files(workdir: Path, count: int) -> tuple[list[Path], dict[Path, Path]]:
    """`count` files cycling through every (sentence, encoding) original; returns them and file ->
    original."""
    originals = []
    for i, text in enumerate(SENTENCES):
        speech = make_speech(workdir / f"speech{i}.wav", text)
        for encoding, (suffix, _) in AUDIO_ENCODINGS.items():
            originals.append(encode_audio(speech, workdir / f"orig{i}_{encoding}{suffix}", encoding))
    files, origin = [], {}
    for n in range(count):
        src = originals[n % len(originals)]
        dest = workdir / "files" / f"{n:05d}{src.suffix}"
        dest.parent.mkdir(exist_ok=True)
        shutil.copyfile(src, dest)
        files.append(dest)
        origin[dest] = src
    return files, origin


def ffprobe_seconds(path: Path) -> float:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--sample", type=int, default=150, help="files timed with ffprobe and with a full decode")
    args = parser.parse_args()
    if shutil.which("ffprobe") is None:
        raise SystemExit("ffprobe is not installed (apt package ffmpeg)")

    with tempfile.TemporaryDirectory(prefix="audio-probe-") as tmp:
        workdir = Path(tmp)
        t0 = time.perf_counter()
        files, origin = make_files(workdir, args.files)
        originals = sorted(set(origin.values()))
        print(
            f"generated {len(files)} files from {len(originals)} encoded originals in {time.perf_counter() - t0:.1f} s"
        )

        truth = {o: decoded_seconds(o) for o in originals}

        t0 = time.perf_counter()
        ours = {f: audio_duration(f) for f in files}
        ours_rate = len(files) / (time.perf_counter() - t0)

        step = max(1, len(files) // args.sample)
        sample = files[::step][: args.sample]
        t0 = time.perf_counter()
        probed = {f: ffprobe_seconds(f) for f in sample}
        ffprobe_rate = len(sample) / (time.perf_counter() - t0)

        t0 = time.perf_counter()
        for f in sample:
            decoded_seconds(f)
        decode_rate = len(sample) / (time.perf_counter() - t0)

        ours_err = {f: abs(ours[f] - truth[origin[f]]) for f in files}
        worst = max(ours_err, key=ours_err.__getitem__)
        ffprobe_err = {f: abs(probed[f] - truth[origin[f]]) for f in sample}
        ffprobe_wrong = sum(e > 0.04 for e in ffprobe_err.values())

        print(f"our probe          {ours_rate:8.0f} files/s   all {len(files)} files")
        print(f"ffprobe per file   {ffprobe_rate:8.1f} files/s   {len(sample)}-file sample, extrapolated")
        print(f"full decode        {decode_rate:8.1f} files/s   {len(sample)}-file sample, extrapolated")
        print(f"speed-up vs ffprobe: {ours_rate / ffprobe_rate:.0f}x; vs full decode: {ours_rate / decode_rate:.0f}x")
        print(
            f"our max error vs full decode: {ours_err[worst] * 1000:.2f} ms ({origin[worst].name}); "
            f"files off by more than 40 ms: {sum(e > 0.04 for e in ours_err.values())}"
        )
        print(
            f"ffprobe max error vs full decode: {max(ffprobe_err.values()) * 1000:.1f} ms; "
            f"off by more than 40 ms: {ffprobe_wrong} of {len(sample)}"
        )
        per_format: dict[str, float] = {}
        for f, err in ours_err.items():
            key = origin[f].name.split("_", 1)[1]
            per_format[key] = max(per_format.get(key, 0.0), err)
        print(
            "our max error per encoding (ms): "
            + ", ".join(f"{k} {v * 1000:.2f}" for k, v in sorted(per_format.items()))
        )


if __name__ == "__main__":
    main()
