"""Check a running worker against `worker.lock.toml`: what `infinitetalk worker verify` prints.

Every row is one thing the InfiniteTalk graphs need from the worker: the ComfyUI version, each locked custom node at
its commit (as our extension reports it), each node class the graphs use, each Python pin, each model file (listed by
the worker's loaders and, with a models folder, its size and sha256), and the attention kernel the render will bind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from infinitetalk_pipeline.comfy.rest import ComfyRest
from infinitetalk_pipeline.worker.capabilities import attention_mode
from infinitetalk_pipeline.worker.lock import WorkerLock
from infinitetalk_pipeline.worker.models import check_model
from infinitetalk_pipeline.workflows.templates import list_templates
from infinitetalk_pipeline.workflows.validate import ObjectInfo, named_model_files, validate_graph

Status = Literal["OK", "FAIL", "INFO"]
PROFILE = "infinitetalk"


@dataclass(frozen=True)
class Check:
    kind: str  # comfyui, extension, custom_node, node, python, model, graph, attention
    name: str
    status: Status
    detail: str


def verify_worker(url: str, lock: WorkerLock, models_dir: Path | None = None, *, timeout: float = 30.0) -> list[Check]:
    with ComfyRest(url, timeout=timeout) as rest:  # one connection for the three reads
        stats, info, object_info = rest.system_stats(), rest.worker(), rest.object_info()
    checks = [_version_check(stats, lock)]
    checks += _extension_checks(info, lock)
    checks += _graph_checks(object_info, lock, models_dir)
    return checks


def _version_check(stats: dict[str, Any], lock: WorkerLock) -> Check:
    found = str(stats.get("system", {}).get("comfyui_version", "?"))
    want = lock.comfyui.version
    return Check(
        "comfyui", "version", "OK" if found == want else "FAIL", found if found == want else f"{found} (locked {want})"
    )


def _extension_checks(info: dict[str, Any] | None, lock: WorkerLock) -> list[Check]:
    if info is None:
        return [
            Check(
                "extension",
                "infinitetalk_worker",
                "FAIL",
                "missing: node commits, Python pins and attention kernels cannot be read "
                "(install with `infinitetalk comfyui install --profile infinitetalk`)",
            ),
            Check("attention", "attention_mode", "INFO", f"{attention_mode(None)} (the worker does not say)"),
        ]
    checks = [Check("extension", "infinitetalk_worker", "OK", f"python {info.get('python', '?')}")]
    nodes = info.get("custom_nodes", {})
    for pin in lock.custom_nodes:
        found = nodes.get(pin.name)
        if found is None:
            checks.append(Check("custom_node", pin.name, "FAIL", "not installed"))
        elif found.get("commit") != pin.commit:
            checks.append(Check("custom_node", pin.name, "FAIL", f"commit {found.get('commit')} (locked {pin.commit})"))
        else:
            checks.append(Check("custom_node", pin.name, "OK", pin.commit[:10]))
    packages = info.get("packages", {})
    for requirement in lock.requirements:
        name, sep, version = requirement.partition("==")
        if not sep:
            continue  # unpinned here: constraints/comfyui.txt decides, nothing to compare
        key = name.strip().lower().replace("_", "-")
        found = packages.get(key)
        ok = found == version.strip()
        checks.append(
            Check("python", key, "OK" if ok else "FAIL", found if ok else f"{found or 'missing'} (locked {version})")
        )
    modes = info.get("attention_modes", [])
    chosen = attention_mode(info)
    checks.append(Check("attention", "attention_mode", "INFO", f"{chosen} (kernels that import: {', '.join(modes)})"))
    return checks


def _graph_checks(object_info: ObjectInfo, lock: WorkerLock, models_dir: Path | None) -> list[Check]:
    checks: list[Check] = []
    classes: dict[str, str] = {}
    named: dict[str, bool] = {}
    for template in list_templates(PROFILE):
        for _variant, graph in template.variant_graphs():
            for node in graph.values():
                classes.setdefault(node["class_type"], template.name)
            for file, listed in named_model_files(graph, object_info).items():
                named[file] = named.get(file, False) or listed
            # a missing class gets its own "node" row below
            problems = [p for p in validate_graph(graph, object_info) if p.class_type in object_info]
            if problems:
                checks.append(Check("graph", template.key, "FAIL", "; ".join(str(p) for p in problems[:3])))
    for cls in sorted(classes):
        schema = object_info.get(cls)
        if schema is None:
            checks.append(Check("node", cls, "FAIL", f"not loaded (used by {classes[cls]})"))
        else:
            checks.append(Check("node", cls, "OK", str(schema.get("python_module", ""))))
    for file in sorted(set(named) - {pin.file for pin in lock.models}):
        checks.append(Check("model", file, "FAIL", "a graph loads it but the lock does not list it"))
    for pin in lock.models:
        if pin.file not in named:
            detail = "no loaded node asks for it (its loader node is missing)"
            checks.append(Check("model", pin.relpath, "FAIL", detail))
        elif not named[pin.file]:
            checks.append(Check("model", pin.relpath, "FAIL", "not in the worker's model lists"))
        elif models_dir is None:
            checks.append(Check("model", pin.relpath, "OK", "listed by the worker"))
        elif (problem := check_model(models_dir, pin).problem) is not None:
            checks.append(Check("model", pin.relpath, "FAIL", problem))
        else:
            checks.append(Check("model", pin.relpath, "OK", f"{pin.size} bytes, sha256 {pin.sha256}"))
    return checks


def format_table(checks: list[Check]) -> str:
    kind_w, name_w = max(len(c.kind) for c in checks), max(len(c.name) for c in checks)
    lines = [f"{'KIND':<{kind_w}}  {'NAME':<{name_w}}  {'STATUS':<6}  DETAIL"]
    lines += [f"{c.kind:<{kind_w}}  {c.name:<{name_w}}  {c.status:<6}  {c.detail}" for c in checks]
    failed = [f"{c.kind} {c.name}" for c in checks if c.status == "FAIL"]
    plural = "" if len(failed) == 1 else "es"
    lines.append(f"{len(failed)} mismatch{plural}" + (f": {', '.join(failed)}" if failed else ""))
    return "\n".join(lines)
