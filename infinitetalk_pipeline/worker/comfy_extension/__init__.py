"""infinitetalk-worker: a ComfyUI extension (no nodes): what this worker is made of, and its side of the fleet's
dispatch (admission that never overfills the queue, withdrawal for work stealing, draining, health).

`GET /infinitetalk/worker` answers the attention kernels that import here (the render binds the best one, so a graph
never asks a worker for a kernel it lacks), the custom nodes with the commits their install recorded, and the
installed Python distributions. `infinitetalk comfyui install --profile infinitetalk` copies this folder into
custom_nodes/. It runs inside ComfyUI's environment: standard library and aiohttp only.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import execution
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


# --- The fleet's side of dispatch: admission, withdrawal, draining and health, decided here under the queue's lock,
# so that every pipeline process (any number of runs, on any host) sees one truth per worker.

BOOT_ID = uuid.uuid4().hex  # a new id per process: a prompt the pipeline left here is lost if this changed
STARTED_AT = time.time()
# Seconds a drained worker must stay idle before /infinitetalk/live asks for a restart: the run whose render just
# ended is still downloading the output.
DRAIN_SETTLE_SECONDS = float(os.environ.get("INFINITETALK_DRAIN_SETTLE_SECONDS", "10"))

_queue = PromptServer.instance.prompt_queue
_state: dict[str, Any] = {"jobs_done": 0, "draining": None, "idle_since": None}


def _count_task_done(task_done: Callable[..., Any]) -> Callable[..., Any]:
    """Jobs since start: counted where ComfyUI records a finished prompt (its history can be cleared by users).
    A prompt that did not succeed (interrupted, cancelled, failed) leaves only partial files: they go here."""

    @functools.wraps(task_done)
    def counted(item_id: Any, history_result: Any, status: Any, *args: Any, **kwargs: Any) -> Any:
        prompt_id = _queue.currently_running.get(item_id, (None, None))[1]
        result = task_done(item_id, history_result, status, *args, **kwargs)
        _state["jobs_done"] += 1
        if prompt_id and status is not None and getattr(status, "status_str", None) != "success":
            _delete_outputs(str(prompt_id))
        return result

    return counted


# A prompt id that can name a folder of its own and nothing else: the pipeline's are UUIDs. Anyone may choose a prompt
# id (POST /prompt takes one), and it becomes a glob pattern below: `*` would match every render's folder.
_FOLDER_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")


def _prompt_folders(prompt_id: str) -> list[Path]:
    """The folders a prompt of the pipeline writes into: the pipeline makes every `filename_prefix` end in a folder
    named after the prompt id (comfy/fleet.py), at most a few levels under ComfyUI's output and temp folders. None
    for an id that is no plain folder name."""
    if not _FOLDER_NAME.fullmatch(prompt_id):
        return []
    roots = [Path(folder_paths.get_output_directory()), Path(folder_paths.get_temp_directory())]
    return [d for root in roots for depth in range(4) for d in root.glob("*/" * depth + prompt_id) if d.is_dir()]


def _delete_outputs(prompt_id: str) -> int:
    """Remove a prompt's output folders; the bytes freed. Blocking: called off the event loop."""
    freed = 0
    for folder in _prompt_folders(prompt_id):
        freed += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        shutil.rmtree(folder, ignore_errors=True)
    return freed


_queue.task_done = _count_task_done(_queue.task_done)


def _queue_ids() -> tuple[list[str], list[str]]:
    """(running, pending) prompt ids, pending in execution order; call with the queue's lock held."""
    running = [item[1] for item in _queue.currently_running.values()]
    pending = [item[1] for item in sorted(_queue.queue)]
    return running, pending


def _admitted_at() -> dict[str, int | None]:
    """When each queued or running prompt was admitted (ms since the epoch, this worker's clock); call with the
    queue's lock held. Two runs that placed one render on two workers keep the earlier copy (comfy/fleet.py)."""
    items = [*_queue.currently_running.values(), *_queue.queue]
    return {item[1]: item[3].get("create_time") for item in items}


def _state_body() -> dict[str, Any]:
    with _queue.mutex:
        running, pending = _queue_ids()
        admitted_at = _admitted_at()
    return {
        "boot_id": BOOT_ID,
        "pid": os.getpid(),
        "started_at": STARTED_AT,
        "jobs_done": _state["jobs_done"],
        "running": running,
        "pending": pending,
        "admitted_at": admitted_at,
        "draining": _state["draining"],
        "rss_bytes": _rss_bytes(),
        # who restarts this worker once drained: set by `infinitetalk comfyui start`'s supervisor, or by a deployment
        "supervisor": os.environ.get("INFINITETALK_SUPERVISOR"),
    }


def _rss_bytes() -> int | None:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@PromptServer.instance.routes.get("/infinitetalk/state")
async def worker_state(_request: web.Request) -> web.Response:
    return web.json_response(_state_body())


@PromptServer.instance.routes.post("/infinitetalk/admit")
async def admit(request: web.Request) -> web.Response:
    """Queue a prompt only while the worker holds fewer than `max_depth` prompts (running + pending) and is not
    draining. The depth check and the enqueue happen with no await between them and under the queue's lock, so
    concurrent callers can never overfill a worker. Idempotent on `prompt_id`: a prompt already here is admitted."""
    body = await request.json()
    prompt, prompt_id, max_depth = body["prompt"], str(body["prompt_id"]), int(body["max_depth"])
    refusal = _refusal(prompt_id, max_depth)
    if refusal is not None:  # cheap answer before validating the graph
        return web.json_response(refusal, status=409 if not refusal.get("admitted") else 200)
    valid = await execution.validate_prompt(prompt_id, prompt, None)
    if not valid[0]:
        return web.json_response({"error": valid[1], "node_errors": valid[3]}, status=400)
    extra_data = {"client_id": body["client_id"]} if body.get("client_id") else {}
    extra_data["create_time"] = int(time.time() * 1000)
    with _queue.mutex:
        refusal = _refusal(prompt_id, max_depth)
        if refusal is not None:
            return web.json_response(refusal, status=409 if not refusal.get("admitted") else 200)
        number = PromptServer.instance.number
        PromptServer.instance.number += 1
        _queue.put((number, prompt_id, prompt, extra_data, valid[2], {}))
        _state["idle_since"] = None
    return web.json_response({"admitted": True, "prompt_id": prompt_id, "node_errors": valid[3]})


def _refusal(prompt_id: str, max_depth: int) -> dict[str, Any] | None:
    """Why `prompt_id` cannot be admitted now, `{"admitted": True}` if it already is here, None if it can."""
    with _queue.mutex:
        running, pending = _queue_ids()
        if prompt_id in running or prompt_id in pending or prompt_id in _queue.history:
            return {"admitted": True, "prompt_id": prompt_id, "node_errors": {}}
        if _state["draining"]:
            return {"admitted": False, "reason": "draining", "depth": len(running) + len(pending)}
        if len(running) + len(pending) >= max_depth:
            return {"admitted": False, "reason": "full", "depth": len(running) + len(pending)}
    return None


@PromptServer.instance.routes.post("/infinitetalk/withdraw")
async def withdraw(request: web.Request) -> web.Response:
    """Take a pending prompt back (it then never runs here); a running or finished one stays, and says so."""
    prompt_id = str((await request.json())["prompt_id"])
    with _queue.mutex:
        removed = _queue.delete_queue_item(lambda item: item[1] == prompt_id)
        running, _pending = _queue_ids()
        state = "withdrawn" if removed else "running" if prompt_id in running else "done"
        if not removed and state == "done" and prompt_id not in _queue.history:
            state = "unknown"
    return web.json_response({"withdrawn": removed, "state": state})


@PromptServer.instance.routes.post("/infinitetalk/outputs/delete")
async def delete_outputs(request: web.Request) -> web.Response:
    """Delete a finished prompt's files once the pipeline has stored its video: a worker's disk holds only what is
    still to be collected. A prompt still queued or running keeps its files."""
    prompt_id = str((await request.json())["prompt_id"])
    if not _FOLDER_NAME.fullmatch(prompt_id):
        return web.json_response({"error": "bad prompt_id: letters, digits, '-' and '_' only"}, status=400)
    with _queue.mutex:
        running, pending = _queue_ids()
    if prompt_id in running or prompt_id in pending:
        return web.json_response({"deleted": False, "state": "queued or running"}, status=409)
    # Walking and removing a large folder takes a while: on the event loop it would hold up every other request
    # (the fleet's state polls give up after 3 s).
    freed = await asyncio.get_running_loop().run_in_executor(None, _delete_outputs, prompt_id)
    return web.json_response({"deleted": True, "bytes": freed})


@PromptServer.instance.routes.post("/infinitetalk/drain")
async def drain(request: web.Request) -> web.Response:
    """Admit nothing more: the running prompt finishes, pending ones are withdrawn by their owners, and once idle
    the worker asks for a restart through /infinitetalk/live. `{"reason": null}` undoes it."""
    reason = (await request.json()).get("reason")
    with _queue.mutex:
        _state["draining"] = {"reason": str(reason), "since": time.time()} if reason else None
        _state["idle_since"] = None
    return web.json_response(_state_body())


@PromptServer.instance.routes.get("/infinitetalk/live")
async def live(_request: web.Request) -> web.Response:
    """503 once a drained worker has been idle for DRAIN_SETTLE_SECONDS: its supervisor (`infinitetalk comfyui
    start`, or Kubernetes' liveness probe) restarts it then. 200 otherwise."""
    with _queue.mutex:
        running, pending = _queue_ids()
        idle = not running and not pending
        if not (_state["draining"] and idle):
            _state["idle_since"] = None
            return web.json_response({"live": True})
        _state["idle_since"] = _state["idle_since"] or time.monotonic()
        settled = time.monotonic() - _state["idle_since"] >= DRAIN_SETTLE_SECONDS
    if not settled:
        return web.json_response({"live": True, "restart_in": DRAIN_SETTLE_SECONDS})
    return web.json_response({"live": False, "restart": _state["draining"]}, status=503)
