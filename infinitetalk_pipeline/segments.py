"""Long speech split at pauses: where a clip's segments start and end.

InfiniteTalk drifts in colour and identity after about a minute of image-to-video, its decoded frames pile up in
the worker's RAM, and one prompt stops at 4,096 frames; rendered as segments of at most `max_seconds`, a long clip
also renders on several workers at once. A boundary lies on a frame boundary in the middle of a pause (a run
of quiet frames, every speaker quiet), else at the quietest frame boundary there is. Among the cuts that allow it,
the plan takes the fewest boundaries outside long pauses (between sentences) and then outside any pause, then the
fewest segments, then the most even lengths.

The voice activity detector is an energy detector over the clip's own 1/25 s frames: a frame is quiet when its
level sits in the lower 30% of the span between the track's noise floor (10th percentile) and its speech level
(90th); a track whose span is under 12 dB (music, a tone, constant noise) has no pauses.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from infinitetalk_pipeline.spec import MAX_FRAMES
from infinitetalk_pipeline.timing import FPS, Segment

QUIET_FRACTION = 0.3
MIN_SPAN_DB = 12.0
SHORTEST_SECONDS = 5
OUTSIDE_PAUSE = 1_000  # any number of cuts in pauses costs less than one cut outside
FALLBACK_BLOCK = FPS  # frames: one quietest boundary per second is a candidate where no pause is near


@dataclass(frozen=True)
class Segmenting:
    """How long speech is split. `max_seconds` 0 turns segmentation off (the clip must then fit one prompt)."""

    max_seconds: float = 60.0
    crossfade_frames: int = 5  # picture cross-fade across each join (rendered as overlap), 0.2 s; 0: a hard cut
    min_pause_seconds: float = 0.2  # quieter runs this long are pauses (shorter ones are gaps between words)

    def __post_init__(self) -> None:
        if self.max_seconds and not 2 <= self.max_seconds <= MAX_FRAMES / FPS - 1:
            raise ValueError(
                f"segment max_seconds must be 0 (off) or between 2 and {MAX_FRAMES / FPS - 1:g} (one prompt renders "
                f"at most {MAX_FRAMES} frames), got {self.max_seconds:g}"
            )
        if not 0 <= self.crossfade_frames <= FPS:
            raise ValueError(f"crossfade_frames must be between 0 and {FPS}, got {self.crossfade_frames}")

    def max_frames(self, fps: int = FPS) -> int:
        return math.floor(self.max_seconds * fps + 1e-6)

    def splits(self, frames: int, fps: int = FPS) -> bool:
        return bool(self.max_seconds) and frames > self.max_frames(fps)


def quiet_frames(levels: np.ndarray) -> np.ndarray:
    """Which frames are quiet (see the module's docstring)."""
    if not len(levels):
        return np.zeros(0, bool)
    floor, speech = np.percentile(levels, [10, 90])
    if speech - floor < MIN_SPAN_DB:
        return np.zeros(len(levels), bool)
    return levels < floor + QUIET_FRACTION * (speech - floor)


def pauses(levels: np.ndarray, min_frames: int) -> list[tuple[int, int]]:
    """Runs of quiet frames [first, end) at least `min_frames` long."""
    quiet = np.concatenate([[False], quiet_frames(levels), [False]])
    edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a >= min_frames]


def plan_segments(levels: np.ndarray, frames: int, segmenting: Segmenting, fps: int = FPS) -> tuple[Segment, ...]:
    """The segments of a clip of `frames` frames whose per-frame levels (dBFS) are `levels`; () when it fits one
    prompt."""
    if not segmenting.splits(frames, fps):
        return ()
    levels = np.pad(levels[:frames], (0, max(0, frames - len(levels))), constant_values=levels.min(initial=0.0))
    limit = segmenting.max_frames(fps)
    min_pause = max(2, round(segmenting.min_pause_seconds * fps))
    # cut position (a frame boundary) -> its cost: 0 in the middle of a long pause (between sentences), 1 of a short
    # one (between words), OUTSIDE_PAUSE elsewhere
    candidates: dict[int, int] = {
        (a + b) // 2: 0 if b - a >= 2 * min_pause else 1 for a, b in pauses(levels, min_pause) if a > 0 and b < frames
    }
    boundary = np.maximum(levels[:-1], levels[1:])  # boundary c sits between frames c-1 and c: as loud as the louder
    for block in range(1, frames, FALLBACK_BLOCK):
        end = min(block + FALLBACK_BLOCK, frames)
        cut = block + int(np.argmin(boundary[block - 1 : end - 1]))
        candidates.setdefault(cut, OUTSIDE_PAUSE)
    points = sorted(candidates.items())
    # A segment of a few frames still costs a whole window and restarts the picture: none shorter than this, where
    # the candidates allow it.
    cuts = _cheapest_cuts(points, frames, limit, min(SHORTEST_SECONDS * fps, limit // 4))
    if cuts is None:
        cuts = _cheapest_cuts(points, frames, limit, 1)
    if cuts is None:  # never: a fallback candidate sits in every block of FALLBACK_BLOCK <= limit frames
        raise ValueError(f"no cut leaves every segment under {limit} frames")
    fade = segmenting.crossfade_frames
    edges = [0, *cuts, frames]
    return tuple(
        Segment(index, start, end, 0 if index == 0 else min(fade, start - edges[index - 1]))
        for index, (start, end) in enumerate(itertools.pairwise(edges))
    )


def _cheapest_cuts(candidates: list[tuple[int, int]], frames: int, limit: int, shortest: int) -> list[int] | None:
    """Cuts from `candidates` ((position, cost) sorted) leaving every segment between `shortest` and `limit` frames:
    the smallest total cost, then the fewest segments, then the smallest sum of squared lengths (the most even).
    None when no such cuts exist."""
    points = [(0, 0), *candidates, (frames, 0)]
    unreachable = (math.inf, math.inf, math.inf)
    best: list[tuple[float, float, float]] = [(0, 0, 0)] + [unreachable] * (len(points) - 1)
    came_from = [0] * len(points)
    first = 0  # the earliest point still within `limit` of point j
    for j in range(1, len(points)):
        position, cost = points[j]
        while position - points[first][0] > limit:
            first += 1
        for i in range(first, j):
            length = position - points[i][0]
            if length < shortest:
                break  # the points after i are nearer still
            total = (best[i][0] + cost, best[i][1] + 1, best[i][2] + length * length)
            if total < best[j]:
                best[j], came_from[j] = total, i
    if best[-1] == unreachable:
        return None
    cuts, j = [], len(points) - 1
    while j:
        j = came_from[j]
        cuts.append(points[j][0])
    return sorted(c for c in cuts if c)
