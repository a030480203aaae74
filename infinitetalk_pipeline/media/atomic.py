"""Media files written whole or not at all."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import av.error

from infinitetalk_pipeline.media.sniff import MediaError


@contextmanager
def atomic_output(dest: Path, what: str) -> Iterator[Path]:
    """A temporary path beside `dest`, renamed to `dest` when the block ends without error and removed otherwise: a
    half-written file never sits under the final name. FFmpeg's errors become MediaError("cannot <what>: ...")."""
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        yield tmp
        tmp.replace(dest)
    except av.error.FFmpegError as exc:
        raise MediaError(f"cannot {what}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
