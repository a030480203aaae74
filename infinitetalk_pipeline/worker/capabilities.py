"""What a worker can run, as its `infinitetalk_worker` extension reports it, turned into graph inputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Best first. sageattn is the fast kernel InfiniteTalk is tuned for, but WanVideoModelLoader raises on a worker where
# the CUDA-only `sageattention` package does not import; sdpa is built into torch and runs everywhere.
ATTENTION_PREFERENCE = ("sageattn", "sdpa")
FALLBACK_ATTENTION = "sdpa"


def attention_mode(worker_info: Mapping[str, Any] | None) -> str:
    """The best attention kernel the worker can import; sdpa for a worker that does not say (no extension)."""
    available = set((worker_info or {}).get("attention_modes") or ())
    return next((mode for mode in ATTENTION_PREFERENCE if mode in available), FALLBACK_ATTENTION)
