"""`infinitetalk probe FILE...`: what the pipeline would make of each file, one JSON line per file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from infinitetalk_pipeline.media.audio import audio_duration
from infinitetalk_pipeline.media.sniff import MediaError, describe
from infinitetalk_pipeline.media.video import probe_video
from infinitetalk_pipeline.timing import FPS, frames_for, windows


def probe_file(path: Path) -> dict[str, Any]:
    """Kind, format, duration, frames at 25 fps and InfiniteTalk windows; for videos also their own fps, frame
    count, size and rotation. Raises MediaError for unusable files."""
    found = describe(path)
    row: dict[str, Any] = {"path": str(path), "kind": found.kind, "format": found.format}
    if found.kind == "image":
        return row
    if found.kind == "video":
        video = probe_video(path)
        duration = video.duration
        row.update(
            source_fps=round(video.fps, 6),
            source_frames=video.frames,
            width=video.width,
            height=video.height,
            rotation=video.rotation,
        )
    else:
        duration = audio_duration(path)
    frames = frames_for(duration, FPS)
    row.update(duration=round(duration, 6), fps=FPS, frames=frames, windows=windows(frames))
    return row


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
def probe(files: tuple[Path, ...]) -> None:
    """Print, for each FILE, one JSON line: kind, real format, duration, frames at 25 fps and InfiniteTalk
    windows (videos: also their own fps, frame count, size and rotation). Exits 1 if any file is unusable."""
    failed = False
    for path in files:
        try:
            row = probe_file(path)
        except MediaError as exc:
            row, failed = {"path": str(path), "error": str(exc)}, True
        click.echo(json.dumps(row))
    if failed:
        sys.exit(1)
