"""Render progress as log lines: the one formatter ("45% node 12 (KSampler)") and the throttle that keeps a log
readable (a line per node change and per 10% step, not one per websocket event)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a render, for logs such as "45% node 12 (KSampler)"."""

    kind: str  # "executing", "progress", "executed", "cached"
    node_id: str | None
    node_class: str | None = None
    value: float | None = None
    max: float | None = None

    def __str__(self) -> str:
        where = f"node {self.node_id}" + (f" ({self.node_class})" if self.node_class else "")
        if self.kind == "progress" and self.max:
            return f"{100 * (self.value or 0) / self.max:.0f}% {where}"
        return f"{self.kind} {where}"


class ProgressLines:
    """An `on_progress` callback that passes `emit` one line (`str(event)`) when a new node starts executing and when
    the running node's progress reaches its next 10% step; other events (cached, executed, repeats) say nothing."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self._emit = emit
        self._last: tuple[str | None, int] = (None, -1)  # the node last reported, and its 10% step (-1: none yet)

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind == "progress" and event.max:
            mark = (event.node_id, int(10 * (event.value or 0) / event.max))
        elif event.kind == "executing" and event.node_id != self._last[0]:
            mark = (event.node_id, -1)
        else:
            return
        if mark != self._last:
            self._last = mark
            self._emit(str(event))
