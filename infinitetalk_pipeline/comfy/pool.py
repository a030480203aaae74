"""Choose a ComfyUI worker: the reachable one with the shortest queue."""

from __future__ import annotations

from collections.abc import Sequence

from infinitetalk_pipeline.comfy.errors import ComfyError, ComfyUnreachable
from infinitetalk_pipeline.comfy.rest import ComfyRest


class WorkerPool:
    def __init__(self, urls: Sequence[str], *, timeout: float = 3.0) -> None:
        if not urls:
            raise ValueError("WorkerPool needs at least one ComfyUI URL")
        self.urls = [u.rstrip("/") for u in urls]
        self.timeout = timeout

    def queue_length(self, url: str) -> int | None:
        """Running + pending prompts on `url`; None when it does not answer in time."""
        try:
            with ComfyRest(url, timeout=self.timeout) as rest:
                running, pending = rest.queue(attempts=1)  # a worker that does not answer at once is passed over
        except ComfyError:
            return None
        return len(running) + len(pending)

    def pick(self) -> str:
        """The least busy reachable worker (the first listed wins a tie); ComfyUnreachable if none answers."""
        lengths = {url: n for url in self.urls if (n := self.queue_length(url)) is not None}
        if not lengths:
            raise ComfyUnreachable(f"no ComfyUI worker answered: {', '.join(self.urls)}")
        return min(lengths, key=lambda url: lengths[url])
