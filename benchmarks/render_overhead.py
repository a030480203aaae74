"""How much a render costs the client beyond ComfyUI's own work, and how much memory a big download takes.

    python benchmarks/render_overhead.py [--comfyui-url URL --output-dir DIR] [--renders N] [--download-mb M]

Without --comfyui-url it starts a local ComfyUI (`--cache none`) in a temporary directory. The download test
needs the server's output directory (known when it starts the server, else --output-dir).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from infinitetalk_pipeline.comfy.client import ComfyClient
from infinitetalk_pipeline.comfy.server import LocalComfyUI, install
from infinitetalk_pipeline.workflows.templates import load_template

RSS_LIMIT_MB = 150.0
# Runs in a fresh interpreter so ru_maxrss measures only the client and its download.
DOWNLOAD_CHILD = """
import json, resource, sys
from pathlib import Path
from infinitetalk_pipeline.comfy.client import ComfyClient
url, name, dest = sys.argv[1:4]
with ComfyClient(url, request_timeout=120) as client:
    client.download({"filename": name, "subfolder": "", "type": "output"}, Path(dest))
print(json.dumps({"ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_inputs(folder: Path, i: int, seconds: float) -> tuple[Path, Path]:
    """A different portrait and tone per render: neither the upload nor ComfyUI's cache can short-circuit."""
    image = folder / f"face_{i}.png"
    Image.new("RGB", (480, 640), (40 + 7 * i, 90, 160 - 3 * i)).save(image)
    audio = folder / f"tone_{i}.wav"
    t = np.arange(round(seconds * 16000)) / 16000
    sf.write(audio, 0.3 * np.sin(2 * np.pi * (200 + 10 * i) * t), 16000, subtype="PCM_16")
    return image, audio


def bench_renders(url: str, work: Path, renders: int, seconds: float, size: int) -> None:
    rows = []
    template = load_template("preview", "I2V_single")  # what the pipeline's preview profile renders
    with ComfyClient(url, request_timeout=30, silence_timeout=120, render_deadline=600) as client:
        for i in range(renders):
            image, audio = make_inputs(work, i, seconds)
            started = time.perf_counter()
            frames = round(seconds * 25)
            graph = template.bind(
                {
                    "image": client.upload(image),
                    "audio": client.upload(audio),
                    "width": size,
                    "height": size,
                    "frames": frames,
                    "audio_seconds": frames / 25,
                    "filename_prefix": f"bench/{i}",
                }
            )
            result = client.render(graph, template.output_node, work / f"out_{i}.mp4")
            wall = time.perf_counter() - started
            result.output_path.unlink()
            rows.append((result, wall))
    execution = sum(r.execution_seconds or 0.0 for r, _ in rows)
    client_side = sum(r.upload_seconds + r.submit_seconds + r.download_seconds for r, _ in rows)
    wall = sum(w for _, w in rows)
    print(f"{renders} renders of {seconds:g} s at {size}x{size}, 25 fps (execution = ComfyUI's own time)")
    for name, value in [
        ("upload", sum(r.upload_seconds for r, _ in rows)),
        ("submit", sum(r.submit_seconds for r, _ in rows)),
        ("wait", sum(r.wait_seconds for r, _ in rows)),
        ("download", sum(r.download_seconds for r, _ in rows)),
        ("execution", execution),
        ("wall", wall),
    ]:
        print(f"  {name:<10} total {value:7.3f} s   mean {1000 * value / renders:8.1f} ms")
    print(f"  median execution per render: {statistics.median(r.execution_seconds or 0 for r, _ in rows):.3f} s")
    print(f"  client overhead (upload+submit+download) / execution: {client_side / execution:.3f}")
    print(f"  (wall - execution) / execution:                        {(wall - execution) / execution:.3f}")


def bench_download_rss(url: str, output_dir: Path, work: Path, megabytes: int) -> None:
    name = f"rss_bench_{int(time.time())}.bin"
    big = output_dir / name
    with big.open("wb") as f:  # real bytes, not a sparse file, so the server reads what it sends
        block = np.random.default_rng(0).bytes(1 << 20)
        for _ in range(megabytes):
            f.write(block)
    dest = work / name
    try:
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", DOWNLOAD_CHILD, url, name, str(dest)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        seconds = time.perf_counter() - started
        peak = json.loads(out.strip().splitlines()[-1])["ru_maxrss_mb"]
        assert dest.stat().st_size == megabytes << 20
    finally:
        big.unlink(missing_ok=True)
        dest.unlink(missing_ok=True)
    verdict = "OK" if peak < RSS_LIMIT_MB else "OVER LIMIT"
    print(f"download of {megabytes} MB through /view: {seconds:.2f} s, {megabytes / seconds:.0f} MB/s")
    print(f"  client peak RSS (ru_maxrss): {peak:.1f} MB (limit {RSS_LIMIT_MB:.0f} MB): {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui-url")
    parser.add_argument("--output-dir", type=Path, help="the server's output directory (with --comfyui-url)")
    parser.add_argument("--renders", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=2.0, help="clip length of each preview render")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--download-mb", type=int, default=500)
    args = parser.parse_args()
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="render_overhead_")))
        url, output_dir = args.comfyui_url, args.output_dir
        if url is None:
            install(log=lambda _line: None)
            server = stack.enter_context(LocalComfyUI(work / "comfyui", cache="none"))
            url, output_dir = server.url, server.workdir / "output"
        bench_renders(url, work, args.renders, args.seconds, args.size)
        if output_dir is None:
            print("download benchmark skipped: pass --output-dir with --comfyui-url")
        else:
            bench_download_rss(url, output_dir, work, args.download_mb)


if __name__ == "__main__":
    main()
