"""Workflow templates: an API-format ComfyUI graph plus the names under which the render layer fills it in.

A template lives in `workflows/<profile>/<Name>.json` (format: workflows/README.md). Node ids appear only in
those files: code speaks binding names (`image`, `audio`, `width`, `frames`, ...), never node ids.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infinitetalk_pipeline.errors import PipelineError
from infinitetalk_pipeline.paths import data_dir

WORKFLOWS_DIR_ENV = "INFINITETALK_WORKFLOWS_DIR"
PROFILES = ("infinitetalk", "preview")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SCALAR = (str, int, float, bool)


class TemplateError(PipelineError):
    """A template file is malformed, or a bind() call does not fit the template: a bug, not bad clip input."""


@dataclass(frozen=True)
class Target:
    """One input a binding writes: `graph[node]["inputs"][input]`."""

    node: str
    input: str


@dataclass(frozen=True)
class Template:
    name: str
    profile: str
    description: str
    fps: int
    graph: dict[str, Any]
    bindings: dict[str, tuple[Target, ...]]
    # Optional bindings and the value used when bind() is not given one; every other binding is required.
    defaults: dict[str, Any]
    # binding name -> value -> {node id: replacement node}; the selected patch is applied before binding.
    variants: dict[str, dict[str, dict[str, dict[str, Any]]]]
    output_node: str
    path: Path

    @property
    def key(self) -> str:
        return f"{self.profile}/{self.name}"

    @property
    def required_bindings(self) -> frozenset[str]:
        return frozenset(self.bindings) - frozenset(self.defaults)

    def bind(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A new graph with every binding filled; the template itself is left untouched.

        Unknown names and missing required names are errors, so a misspelled parameter can never fall back to
        the graph's placeholder (the original template's silent-default defect).
        """
        unknown = sorted(set(values) - set(self.bindings))
        if unknown:
            raise TemplateError(f"{self.key}: unknown binding(s) {', '.join(unknown)}; it takes {self._names()}")
        missing = sorted(self.required_bindings - set(values))
        if missing:
            raise TemplateError(f"{self.key}: missing required binding(s) {', '.join(missing)}")
        return self._build(values)

    def variant_graphs(self) -> Iterator[tuple[dict[str, str], dict[str, Any]]]:
        """Every graph the template can produce: one per combination of variant values, defaults elsewhere."""
        names = sorted(self.variants)
        for choice in itertools.product(*(sorted(self.variants[n]) for n in names)):
            selection = dict(zip(names, choice, strict=True))
            yield selection, self._build(selection)

    def _build(self, values: Mapping[str, Any]) -> dict[str, Any]:
        merged = {**self.defaults, **values}
        graph = copy.deepcopy(self.graph)
        for name, patches in self.variants.items():
            choice = merged[name]
            if choice not in patches:
                raise TemplateError(
                    f"{self.key}: {name}={choice!r} is not one of {', '.join(map(repr, sorted(patches)))}"
                )
            graph.update(copy.deepcopy(patches[choice]))
        for name, value in merged.items():
            if not isinstance(value, _SCALAR):
                raise TemplateError(f"{self.key}: binding {name} must be a string, number or boolean, not {value!r}")
            for target in self.bindings[name]:
                node = graph.get(target.node)
                if node is None:
                    raise TemplateError(f"{self.key}: binding {name} targets node {target.node}, not in the graph")
                node["inputs"][target.input] = value
        return graph

    def _names(self) -> str:
        return ", ".join(sorted(self.bindings))


def templates_dir() -> Path:
    """`$INFINITETALK_WORKFLOWS_DIR`, else the `workflows/` the package carries (the repository's in a checkout)."""
    override = os.environ.get(WORKFLOWS_DIR_ENV)
    if override:
        return Path(override)
    return data_dir() / "workflows"


def load_template(profile: str, name: str, root: Path | None = None) -> Template:
    if profile not in PROFILES:
        raise TemplateError(f"unknown profile {profile!r}: one of {', '.join(PROFILES)}")
    if not _NAME.match(name):
        raise TemplateError(f"bad template name {name!r}")
    path = (root or templates_dir()) / profile / f"{name}.json"
    if not path.is_file():
        raise TemplateError(f"no template {profile}/{name} ({path} does not exist)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TemplateError(f"{path}: {exc}") from exc
    return _parse(doc, path, profile, name)


def list_templates(profile: str | None = None, root: Path | None = None) -> list[Template]:
    """Every template on disk, sorted by profile then name (optionally one profile only)."""
    base = root or templates_dir()
    found = []
    for prof in PROFILES if profile is None else (profile,):
        found += [load_template(prof, p.stem, base) for p in sorted((base / prof).glob("*.json"))]
    return found


def _parse(doc: Any, path: Path, profile: str, name: str) -> Template:
    def fail(msg: str) -> TemplateError:
        return TemplateError(f"{path}: {msg}")

    if not isinstance(doc, dict):
        raise fail("a template is a JSON object")
    missing = sorted({"name", "profile", "fps", "bindings", "output", "graph"} - set(doc))
    if missing:
        raise fail(f"missing key(s) {', '.join(missing)}")
    if doc["name"] != name or doc["profile"] != profile:
        raise fail(f"name/profile {doc['name']!r}/{doc['profile']!r} do not match the file's place {profile}/{name}")
    graph = doc["graph"]
    if not isinstance(graph, dict) or not all(
        isinstance(n, dict) and isinstance(n.get("class_type"), str) and isinstance(n.get("inputs"), dict)
        for n in graph.values()
    ):
        raise fail("graph must map node ids to {class_type, inputs}")
    fps = doc["fps"]
    if not isinstance(fps, int) or fps <= 0:
        raise fail("fps must be a positive integer")

    variants = doc.get("variants", {})
    if not isinstance(variants, dict) or not all(
        isinstance(patches, dict) and all(isinstance(p, dict) for p in patches.values())
        for patches in variants.values()
    ):
        raise fail("variants must map binding -> value -> {node id: node}")
    # A node may be targeted only where it exists: in the graph or added by a variant patch.
    known_nodes = set(graph) | {nid for patches in variants.values() for p in patches.values() for nid in p}

    bindings: dict[str, tuple[Target, ...]] = {}
    if not isinstance(doc["bindings"], dict):
        raise fail("bindings must be an object")
    for bname, targets in doc["bindings"].items():
        if not isinstance(targets, list) or not all(
            isinstance(t, dict) and set(t) == {"node", "input"} for t in targets
        ):
            raise fail(f"binding {bname}: a list of {{node, input}} targets")
        bindings[bname] = tuple(Target(str(t["node"]), str(t["input"])) for t in targets)
        for t in bindings[bname]:
            if t.node not in known_nodes:
                raise fail(f"binding {bname} targets node {t.node}, which is not in the graph")

    defaults = dict(doc.get("defaults", {}))
    # The fps binding defaults to the template's own rate, so the two cannot disagree.
    if "fps" in bindings and defaults.setdefault("fps", fps) != fps:
        raise fail(f"defaults.fps {defaults['fps']} differs from fps {fps}")
    for key in (*defaults, *variants):
        if key not in bindings:
            raise fail(f"{key!r} has a default or variants but is not a binding")
    for key, patches in variants.items():
        if key not in defaults:
            raise fail(f"variant binding {key!r} needs a default")
        if defaults[key] not in patches:
            raise fail(f"default {key}={defaults[key]!r} is not one of its variants")

    output = doc["output"]
    if not isinstance(output, dict) or str(output.get("node")) not in graph:
        raise fail("output.node must name a node of the graph")
    return Template(
        name=name,
        profile=profile,
        description=str(doc.get("description", "")),
        fps=fps,
        graph=graph,
        bindings=bindings,
        defaults=defaults,
        variants=variants,
        output_node=str(output["node"]),
        path=path,
    )
