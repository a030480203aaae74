"""Time to read and validate a large manifest (target: 10,000 rows well under 5 s).

    python benchmarks/manifest_scale.py [--rows 10000] [--repeat 3]

Writes a CSV and a JSONL manifest of the four workflow kinds (1% invalid rows) to a temporary directory and
prints the best of `--repeat` timings of `read_manifest` for each.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

from infinitetalk_pipeline.manifest import read_manifest

COLUMNS = [
    "clip_id",
    "input_type",
    "person_count",
    "image_path",
    "video_path",
    "wav_path",
    "wav_path_2",
    "prompt",
]
COLUMNS += ["width", "height", "network_volume"]


def make_rows(n: int) -> list[dict[str, str]]:
    rows = []
    for i in range(n):
        kind = ("image", "video")[i % 2]
        multi = i % 4 >= 2
        row = dict.fromkeys(COLUMNS, "")
        row |= {
            "clip_id": f"clip-{i:05d}",
            "input_type": kind,
            "person_count": "multi" if multi else "single",
            f"{kind}_path": f"/data/media/{kind}-{i}.{'png' if kind == 'image' else 'mp4'}",
            "wav_path": f"/data/media/voice-{i}.wav",
            "wav_path_2": f"/data/media/voice-{i}-b.wav" if multi else "",
            "prompt": "A person talking naturally, studio light",
            "width": "640",
            "height": "640",
            "network_volume": "false",
        }
        if i % 100 == 99:
            row["width"] = "16"  # out of range: 1% invalid rows exercise the error path too
        rows.append(row)
    return rows


def best_time(path: Path, repeat: int) -> tuple[float, int, int]:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = read_manifest(path)
        best = min(best, time.perf_counter() - start)
    return best, len(result.valid), len(result.invalid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = make_rows(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        csv_path, jsonl_path = Path(tmp, "manifest.csv"), Path(tmp, "manifest.jsonl")
        with csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        jsonl_path.write_text("".join(json.dumps({k: v for k, v in r.items() if v}) + "\n" for r in rows))
        for path in (csv_path, jsonl_path):
            seconds, valid, invalid = best_time(path, args.repeat)
            size_kib = path.stat().st_size / 1024
            print(
                f"{path.suffix[1:]:5} {args.rows:,} rows ({size_kib:,.0f} KiB): "
                f"read+validate {seconds:.3f} s "
                f"({args.rows / seconds:,.0f} rows/s), {valid:,} valid, {invalid:,} invalid"
            )


if __name__ == "__main__":
    main()
