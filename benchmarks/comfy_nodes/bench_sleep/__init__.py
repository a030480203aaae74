"""A test-only ComfyUI custom node for benchmarks/fleet.py: holds the worker for a fixed time without using CPU.

`BenchSleep(image, seconds)` sleeps `seconds` (an interrupt ends it, as it ends a sampler) and passes the IMAGE
through unchanged, so a preview graph with it between the frames and the video output still writes a real mp4, and
every prompt occupies its worker for a known time (as a GPU render would, without needing a GPU). It is never
cached: NOT_IDEMPOTENT, and IS_CHANGED always reports a change (NaN compares unequal to itself).

Loaded with `LocalComfyUI(..., extra_custom_nodes=[Path("benchmarks/comfy_nodes/bench_sleep")])`. It runs in
ComfyUI's own environment: standard library only.
"""

from __future__ import annotations

import time
from typing import Any


class BenchSleep:
    CATEGORY = "benchmark"
    DESCRIPTION = "Sleeps `seconds`, then passes the image batch through (holds the worker without CPU)."
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    FUNCTION = "sleep"
    NOT_IDEMPOTENT = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # the name ComfyUI looks up
        return {
            "required": {
                "image": ("IMAGE",),
                "seconds": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 86400.0, "step": 0.01}),
            }
        }

    @classmethod
    def IS_CHANGED(cls, **_inputs: Any) -> float:  # the name ComfyUI looks up
        return float("nan")

    def sleep(self, image: Any, seconds: float) -> tuple[Any]:
        import comfy.model_management  # ComfyUI's own module: importable only inside the server

        # In short slices, like a sampler's steps: an interrupt (POST /interrupt) ends the prompt at once.
        deadline = time.monotonic() + max(0.0, float(seconds))
        while (left := deadline - time.monotonic()) > 0:
            comfy.model_management.throw_exception_if_processing_interrupted()
            time.sleep(min(left, 0.05))
        return (image,)


NODE_CLASS_MAPPINGS = {"BenchSleep": BenchSleep}
NODE_DISPLAY_NAME_MAPPINGS = {"BenchSleep": "Bench sleep (holds the worker)"}
