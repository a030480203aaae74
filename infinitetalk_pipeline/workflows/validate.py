"""Offline checks of API-format graphs and templates against a ComfyUI node schema (`GET /object_info`).

The checks follow what ComfyUI itself does when a prompt is submitted (classes, required inputs, link
types, value ranges, combo lists), plus two it does not: bindings must target real inputs, and every node
must feed an output node. Model files are reported apart: a schema taken on a machine without the weights
lists none of them, and a missing weight is an installation matter rather than a graph defect. Uploaded
input files (images, audio, video) are not checked: ComfyUI checks them on submit, after the upload.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from infinitetalk_pipeline.comfy.errors import ComfyError
from infinitetalk_pipeline.comfy.rest import ComfyRest
from infinitetalk_pipeline.errors import PipelineError
from infinitetalk_pipeline.workflows.templates import Template

MODEL_EXTENSIONS = (".safetensors", ".pt", ".pth", ".ckpt", ".bin", ".gguf", ".onnx", ".sft")
MEDIA_EXTENSIONS = (
    *(".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"),
    *(".wav", ".mp3", ".flac", ".ogg", ".opus", ".m4a", ".aac"),
    *(".mp4", ".webm", ".mkv", ".mov", ".avi"),
)

ObjectInfo = dict[str, Any]


class ObjectInfoError(PipelineError):
    """The node schema could not be read (file or server)."""


@dataclass(frozen=True)
class Problem:
    node: str | None
    class_type: str | None
    input: str | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.node is not None:
            where.append(f"node {self.node}" + (f" ({self.class_type})" if self.class_type else ""))
        if self.input is not None:
            where.append(f"input {self.input!r}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


@dataclass(frozen=True)
class TemplateReport:
    template: Template
    problems: list[Problem]
    model_files: frozenset[str]


@dataclass(frozen=True)
class _Input:
    type: str  # "INT", "IMAGE", "COMBO", "IMAGE,MASK", "*", ...
    options: tuple[Any, ...] | None  # combo choices
    extra: dict[str, Any]
    required: bool


def load_object_info(path: Path) -> ObjectInfo:
    """A saved `/object_info` response, plain or gzipped (`.gz`)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                data = json.load(fh)
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ObjectInfoError(f"cannot read node schema {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ObjectInfoError(f"{path} is not an /object_info response (not a JSON object)")
    return data


def fetch_object_info(base_url: str, timeout: float = 30.0) -> ObjectInfo:
    """`GET <base_url>/object_info` from a running ComfyUI."""
    try:
        with ComfyRest(base_url, timeout=timeout) as rest:
            return rest.object_info()
    except ComfyError as exc:
        raise ObjectInfoError(f"cannot fetch node schema: {exc}") from exc


def validate_graph(graph: dict[str, Any], object_info: ObjectInfo) -> list[Problem]:
    """Every problem ComfyUI would refuse the graph for, plus nodes that no output node uses."""
    if not isinstance(graph, dict) or not graph:
        return [Problem(None, None, None, "the graph is empty or not a JSON object")]
    problems: list[Problem] = []
    for nid, node in graph.items():
        cls = node.get("class_type") if isinstance(node, dict) else None
        if not isinstance(cls, str) or not isinstance(node.get("inputs", {}), dict):
            problems.append(Problem(nid, None, None, "a node needs a class_type and an inputs object"))
            continue
        schema = object_info.get(cls)
        if schema is None:
            problems.append(Problem(nid, cls, None, f"unknown node class {cls!r} (not installed on this server?)"))
            continue
        inputs = node.get("inputs", {})
        declared = _declared_inputs(schema, inputs)
        for name, spec in declared.items():
            if spec.required and name not in inputs:
                problems.append(Problem(nid, cls, name, "required input is missing"))
        for name, value in inputs.items():
            spec = declared.get(name)
            if spec is None:
                problems.append(Problem(nid, cls, name, f"{cls} has no such input"))
            elif _is_link(value):
                problems += _check_link(graph, object_info, nid, cls, name, spec, value)
            else:
                problems += _check_value(nid, cls, name, spec, value)
    problems += _unused_nodes(graph, object_info)
    return problems


def model_files(graph: dict[str, Any], object_info: ObjectInfo) -> set[str]:
    """Model file names the graph asks for that the schema's loaders do not list (not installed there)."""
    return {name for name, listed in named_model_files(graph, object_info).items() if not listed}


def named_model_files(graph: dict[str, Any], object_info: ObjectInfo) -> dict[str, bool]:
    """Every model file name the graph asks for -> whether the schema's loader lists it."""
    found: dict[str, bool] = {}
    for _nid, cls, _name, spec, value in _literal_inputs(graph, object_info):
        if spec.type == "COMBO" and _file_kind(cls, spec, value) == "model":
            found[value] = found.get(value, False) or value in (spec.options or ())
    return found


def validate_template(template: Template, object_info: ObjectInfo) -> TemplateReport:
    """Check every variant of a template, its bindings and its output node.

    A problem found in only some variants says which (`with multi_audio_type='add'`).
    """
    seen: dict[Problem, list[str]] = {}
    files: set[str] = set()
    graphs = list(template.variant_graphs())
    for selection, graph in graphs:
        label = ", ".join(f"{k}={v!r}" for k, v in selection.items())
        files |= model_files(graph, object_info)
        for problem in [
            *validate_graph(graph, object_info),
            *_binding_problems(template, graph, object_info),
        ]:
            seen.setdefault(problem, []).append(label)
    problems = [
        p if len(labels) == len(graphs) else replace(p, message=f"{p.message} (with {'; '.join(labels)})")
        for p, labels in seen.items()
    ]
    out_cls = template.graph[template.output_node]["class_type"]
    if out_cls in object_info and not object_info[out_cls].get("output_node"):
        problems.append(Problem(template.output_node, out_cls, None, "the template's output is not an output node"))
    return TemplateReport(template=template, problems=problems, model_files=frozenset(files))


def _binding_problems(template: Template, graph: dict[str, Any], object_info: ObjectInfo) -> Iterator[Problem]:
    for name, targets in template.bindings.items():
        for target in targets:
            node = graph[target.node]  # bind() has already proved every target node exists
            cls = node["class_type"]
            if cls not in object_info:
                continue  # reported as an unknown class
            if target.input not in _declared_inputs(object_info[cls], node["inputs"]):
                yield Problem(target.node, cls, target.input, f"binding {name!r}: {cls} has no such input")
            elif _is_link(node["inputs"].get(target.input)):
                yield Problem(target.node, cls, target.input, f"binding {name!r} would overwrite a link")


def _declared_inputs(schema: dict[str, Any], inputs: dict[str, Any]) -> dict[str, _Input]:
    declared: dict[str, _Input] = {}
    spec_groups = schema.get("input", {})
    for group, required in (("required", True), ("optional", False)):
        for name, spec in spec_groups.get(group, {}).items():
            declared[name] = _parse_spec(spec, required)
    # VideoHelperSuite declares format-dependent widgets (pix_fmt, crf, ...) in its format combo's options.
    for name, spec in list(declared.items()):
        chosen = spec.extra.get("formats", {}).get(inputs.get(name)) if isinstance(inputs.get(name), str) else None
        if isinstance(chosen, list):
            for widget in chosen:
                if isinstance(widget, list) and len(widget) >= 2 and isinstance(widget[0], str):
                    declared.setdefault(widget[0], _parse_spec(widget[1:], False))
    return declared


def _parse_spec(spec: Any, required: bool) -> _Input:
    raw = spec[0] if isinstance(spec, list | tuple) and spec else spec
    extra = spec[1] if isinstance(spec, list | tuple) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(raw, list | tuple):
        return _Input("COMBO", tuple(raw), extra, required)
    if raw == "COMBO":
        return _Input("COMBO", tuple(extra.get("options", ())), extra, required)
    return _Input(str(raw), None, extra, required)


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _types_match(received: str, expected: str) -> bool:
    """ComfyUI's rule: equal, or either side `*`, or the comma-separated unions share a type."""
    if received == expected:
        return True
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    return "*" in got or "*" in want or bool(got & want)


def _check_link(
    graph: dict[str, Any],
    object_info: ObjectInfo,
    nid: str,
    cls: str,
    name: str,
    spec: _Input,
    link: list[Any],
) -> list[Problem]:
    src, slot = link
    if src not in graph:
        return [Problem(nid, cls, name, f"links to node {src}, which is not in the graph")]
    src_cls = graph[src].get("class_type") if isinstance(graph[src], dict) else None
    if src_cls not in object_info:
        return []  # reported at the source node
    outputs = object_info[src_cls].get("output", [])
    if not 0 <= slot < len(outputs):
        return [Problem(nid, cls, name, f"links to output {slot} of node {src} ({src_cls}), which has {len(outputs)}")]
    out_type = "COMBO" if isinstance(outputs[slot], list) else str(outputs[slot])
    if not _types_match(out_type, spec.type):
        return [
            Problem(
                nid,
                cls,
                name,
                f"expects {spec.type}, but output {slot} of node {src} ({src_cls}) is {out_type}",
            )
        ]
    return []


def _check_value(nid: str, cls: str, name: str, spec: _Input, value: Any) -> list[Problem]:
    def problem(msg: str) -> list[Problem]:
        return [Problem(nid, cls, name, msg)]

    kind = spec.type
    if kind == "INT" and (not isinstance(value, int) or isinstance(value, bool)):
        return problem(f"expects an integer, got {value!r}")
    if kind == "FLOAT" and (not isinstance(value, int | float) or isinstance(value, bool)):
        return problem(f"expects a number, got {value!r}")
    if kind in ("INT", "FLOAT"):
        low, high = spec.extra.get("min"), spec.extra.get("max")
        if low is not None and value < low:
            return problem(f"{value} is below the minimum {low}")
        if high is not None and value > high:
            return problem(f"{value} is above the maximum {high}")
        return []
    if kind == "BOOLEAN":
        return [] if isinstance(value, bool) else problem(f"expects true or false, got {value!r}")
    if kind == "STRING":
        return [] if isinstance(value, str) else problem(f"expects a string, got {value!r}")
    if kind == "COMBO":
        options = spec.options or ()
        if value in options or _file_kind(cls, spec, value) is not None:
            return []
        shown = ", ".join(map(repr, options[:8])) + (", ..." if len(options) > 8 else "")
        return problem(f"{value!r} is not one of the choices ({shown or 'none'})")
    if kind == "*":
        return []
    return problem(f"expects a link from a {kind} output, got the value {value!r}")


def _file_kind(cls: str, spec: _Input, value: Any) -> str | None:
    """'input' for an uploaded media file, 'model' for a model file, None for an ordinary choice."""
    if not isinstance(value, str):
        return None
    lowered = value.lower()
    if any(key.endswith("_upload") for key in spec.extra) or lowered.endswith(MEDIA_EXTENSIONS):
        return "input"
    files_listed = not spec.options or any(str(o).lower().endswith(MODEL_EXTENSIONS) for o in spec.options)
    if lowered.endswith(MODEL_EXTENSIONS) or ("Load" in cls and files_listed):
        return "model"
    return None


def _literal_inputs(graph: dict[str, Any], object_info: ObjectInfo) -> Iterable[tuple[str, str, str, _Input, Any]]:
    for nid, node in graph.items():
        if not isinstance(node, dict) or node.get("class_type") not in object_info:
            continue
        cls = node["class_type"]
        inputs = node.get("inputs", {})
        declared = _declared_inputs(object_info[cls], inputs)
        for name, value in inputs.items():
            if name in declared and not _is_link(value):
                yield nid, cls, name, declared[name], value


def _unused_nodes(graph: dict[str, Any], object_info: ObjectInfo) -> list[Problem]:
    """Nodes no output node depends on: ComfyUI never runs them; dead weight or a wiring mistake."""
    if any(not isinstance(n, dict) or n.get("class_type") not in object_info for n in graph.values()):
        return []  # an unknown class might be the output node: already reported, and nothing sound to add
    outputs = [
        nid
        for nid, node in graph.items()
        if isinstance(node, dict) and object_info.get(node.get("class_type"), {}).get("output_node")
    ]
    if not outputs:
        return [Problem(None, None, None, "the graph has no output node (ComfyUI refuses such a prompt)")]
    used: set[str] = set()
    stack = list(outputs)
    while stack:
        nid = stack.pop()
        if nid in used or not isinstance(graph.get(nid), dict):
            continue
        used.add(nid)
        stack += [v[0] for v in graph[nid].get("inputs", {}).values() if _is_link(v)]
    return [
        Problem(nid, node.get("class_type"), None, "dangling: no output node uses it")
        for nid, node in graph.items()
        if nid not in used and isinstance(node, dict)
    ]
