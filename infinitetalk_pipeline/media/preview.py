"""A small still of a rendered video, for Dagster metadata (inline, so it shows with no file server)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import av


def preview_frame_markdown(video: Path, max_side: int = 256) -> str:
    """Markdown with the middle frame as an inline JPEG."""
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        middle = (stream.frames or 1) // 2
        image = None
        for index, frame in enumerate(container.decode(stream)):
            image = frame.to_image()
            if index >= middle:
                break
    if image is None:
        return "(no frames)"
    image.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=80)
    return f"![{video.name}](data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()})"
