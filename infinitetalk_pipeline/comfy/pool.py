"""Choose a ComfyUI worker: the reachable one with the shortest queue."""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from infinitetalk_pipeline.comfy.errors import ComfyUnreachable


class WorkerPool:
    def __init__(self, urls: Sequence[str], *, timeout: float = 3.0) -> None:
        if not urls:
            raise ValueError("WorkerPool needs at least one ComfyUI URL")
        self.urls = [u.rstrip("/") for u in urls]
        self.timeout = timeout

    def queue_length(self, url: str) -> int | None:
        """Running + pending prompts on `url`; None when it does not answer in time."""
        try:
            resp = httpx.get(f"{url}/queue", timeout=self.timeout)
            resp.raise_for_status()
            data = resp.json()
            return len(data["queue_running"]) + len(data["queue_pending"])
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    def pick(self) -> str:
        """The least busy reachable worker (the first listed wins a tie); ComfyUnreachable if none answers."""
        lengths = {url: n for url in self.urls if (n := self.queue_length(url)) is not None}
        if not lengths:
            raise ComfyUnreachable(f"no ComfyUI worker answered: {', '.join(self.urls)}")
        return min(lengths, key=lambda url: lengths[url])
