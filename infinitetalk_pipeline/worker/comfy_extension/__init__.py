"""infinitetalk-worker: a ComfyUI extension (no nodes) that tells the pipeline what this worker is made of.

`GET /infinitetalk/worker` answers the attention kernels that import here (the render binds the best one, so a graph
never asks a worker for a kernel it lacks), the custom nodes with the commits their install recorded, and the
installed Python distributions. `infinitetalk comfyui install --profile infinitetalk` copies this folder into
custom_nodes/. It runs inside ComfyUI's environment: standard library and aiohttp only.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import json
import platform
from pathlib import Path

import folder_paths
from aiohttp import web
from server import PromptServer

NODE_CLASS_MAPPINGS: dict[str, type] = {}
STAMP = ".infinitetalk-node.json"
# attention_mode value of WanVideoModelLoader -> module it imports (None: built into torch)
ATTENTION_MODULES = {"sageattn": "sageattention", "flash_attn_2": "flash_attn", "sdpa": None}


@functools.cache
def attention_modes() -> list[str]:
    modes = []
    for mode, module in ATTENTION_MODULES.items():
        if module is None:
            modes.append(mode)
            continue
        try:
            importlib.import_module(module)
        except Exception:  # any failure (missing, CUDA mismatch) means the loader would raise too
            continue
        modes.append(mode)
    return modes


def custom_nodes() -> dict[str, dict[str, str | None]]:
    found: dict[str, dict[str, str | None]] = {}
    for root in folder_paths.get_folder_paths("custom_nodes"):
        for folder in sorted(Path(root).iterdir()) if Path(root).is_dir() else []:
            if not folder.is_dir() or folder.name.startswith((".", "__")):
                continue
            stamp = folder / STAMP
            try:
                found[folder.name] = json.loads(stamp.read_text())
            except (OSError, ValueError):
                found[folder.name] = {"commit": None, "repository": None}
    return found


def packages() -> dict[str, str]:
    return {
        dist.metadata["Name"].lower().replace("_", "-"): dist.version
        for dist in importlib.metadata.distributions()
        if dist.metadata["Name"]
    }


@PromptServer.instance.routes.get("/infinitetalk/worker")
async def worker_info(_request: web.Request) -> web.Response:
    return web.json_response(
        {
            "extension": 1,
            "attention_modes": attention_modes(),
            "custom_nodes": custom_nodes(),
            "packages": packages(),
            "python": platform.python_version(),
        }
    )
