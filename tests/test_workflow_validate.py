"""The offline validator: one kind of defect per test, against the real core node schema."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from infinitetalk_pipeline.comfy.server import free_port
from infinitetalk_pipeline.workflows.cli import workflows
from infinitetalk_pipeline.workflows.templates import WORKFLOWS_DIR_ENV, load_template
from infinitetalk_pipeline.workflows.validate import (
    ObjectInfoError,
    Problem,
    fetch_object_info,
    load_object_info,
    model_files,
    validate_graph,
    validate_template,
)

DATA = Path(__file__).parent / "data" / "object_info"
WANVIDEO_SCHEMA = DATA / "comfyui-0.3.75+wanvideowrapper-1.4.7.json.gz"
CORE_SCHEMA = DATA / "comfyui-0.3.75-core.json.gz"

# image + audio -> mp4 with core nodes: valid as it stands; each test breaks one thing.
GOOD: dict[str, Any] = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},
    "2": {"class_type": "LoadAudio", "inputs": {"audio": "speech.wav"}},
    "3": {
        "class_type": "ImageScale",
        "inputs": {
            "image": ["1", 0],
            "upscale_method": "lanczos",
            "width": 512,
            "height": 512,
            "crop": "center",
        },
    },
    "4": {"class_type": "RepeatImageBatch", "inputs": {"image": ["3", 0], "amount": 125}},
    "5": {"class_type": "CreateVideo", "inputs": {"images": ["4", 0], "fps": 25.0, "audio": ["2", 0]}},
    "6": {
        "class_type": "SaveVideo",
        "inputs": {"video": ["5", 0], "filename_prefix": "video/t", "format": "mp4", "codec": "h264"},
    },
}


@pytest.fixture(scope="module")
def core() -> dict[str, Any]:
    return load_object_info(CORE_SCHEMA)


def broken(node: str, **inputs: Any) -> dict[str, Any]:
    graph = copy.deepcopy(GOOD)
    graph[node]["inputs"].update(inputs)
    return graph


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def test_a_valid_graph_has_no_problems(core: dict[str, Any]) -> None:
    assert validate_graph(GOOD, core) == []


def test_a_link_to_a_missing_node_is_a_problem(core: dict[str, Any]) -> None:
    problem = validate_graph(broken("4", image=["99", 0]), core)[0]  # nodes upstream of it also dangle now
    assert (problem.node, problem.class_type, problem.input) == ("4", "RepeatImageBatch", "image")
    assert "node 99" in problem.message


def test_a_link_to_an_output_index_that_does_not_exist_is_a_problem(core: dict[str, Any]) -> None:
    problem = only(validate_graph(broken("4", image=["3", 1]), core))
    assert (problem.node, problem.input) == ("4", "image")
    assert "output 1" in problem.message


def test_a_missing_required_input_is_a_problem(core: dict[str, Any]) -> None:
    graph = copy.deepcopy(GOOD)
    del graph["3"]["inputs"]["crop"]
    problem = only(validate_graph(graph, core))
    assert (problem.node, problem.class_type, problem.input) == ("3", "ImageScale", "crop")
    assert "missing" in problem.message


def test_a_value_above_the_maximum_is_a_problem(core: dict[str, Any]) -> None:
    problem = only(validate_graph(broken("4", amount=5000), core))
    assert (problem.node, problem.input) == ("4", "amount")
    assert "above the maximum 4096" in problem.message


def test_a_value_below_the_minimum_is_a_problem(core: dict[str, Any]) -> None:
    problem = only(validate_graph(broken("5", fps=0.5), core))
    assert "below the minimum 1.0" in problem.message


def test_a_value_of_the_wrong_type_is_a_problem(core: dict[str, Any]) -> None:
    problem = only(validate_graph(broken("3", width="512"), core))
    assert (problem.input, problem.message) == ("width", "expects an integer, got '512'")


def test_a_link_of_the_wrong_type_is_a_problem(core: dict[str, Any]) -> None:
    problem = validate_graph(broken("3", image=["2", 0]), core)[0]  # the unlinked LoadImage dangles too
    assert (problem.node, problem.input) == ("3", "image")
    assert "expects IMAGE" in problem.message and "is AUDIO" in problem.message


def test_an_unknown_node_class_is_a_problem(core: dict[str, Any]) -> None:
    graph = copy.deepcopy(GOOD)
    graph["3"]["class_type"] = "WanVideoSampler"
    problem = only(validate_graph(graph, core))
    assert (problem.node, problem.class_type) == ("3", "WanVideoSampler")
    assert "unknown node class" in problem.message


def test_a_combo_value_not_in_the_list_is_a_problem(core: dict[str, Any]) -> None:
    problem = only(validate_graph(broken("3", upscale_method="sharpest"), core))
    assert problem.input == "upscale_method"
    assert problem.message.startswith("'sharpest' is not one of the choices")
    assert "'lanczos'" in problem.message


def test_a_combo_declared_with_options_is_checked_too(core: dict[str, Any]) -> None:
    problem = only(validate_graph(broken("6", format="mkv"), core))
    assert (problem.node, problem.input) == ("6", "format")
    assert "'mp4'" in problem.message


def test_an_input_the_class_does_not_declare_is_a_problem(core: dict[str, Any]) -> None:
    problem = only(validate_graph(broken("3", widht=512), core))
    assert (problem.input, problem.message) == ("widht", "ImageScale has no such input")


def test_a_node_no_output_uses_is_a_problem(core: dict[str, Any]) -> None:
    graph = copy.deepcopy(GOOD)
    graph["7"] = {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}
    problem = only(validate_graph(graph, core))
    assert (problem.node, problem.class_type) == ("7", "ImageInvert")
    assert "dangling" in problem.message


def test_a_graph_without_an_output_node_is_a_problem(core: dict[str, Any]) -> None:
    graph = {k: v for k, v in GOOD.items() if k != "6"}
    assert any("no output node" in p.message for p in validate_graph(graph, core))


def test_model_files_are_reported_apart_not_as_problems(core: dict[str, Any]) -> None:
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "hi"}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "positive": ["2", 0],
                "negative": ["2", 0],
                "latent_image": ["3", 0],
                "seed": 1,
                "steps": 1,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "x"}},
    }
    assert validate_graph(graph, core) == []
    assert model_files(graph, core) == {"sd15.safetensors"}


def test_union_and_wildcard_types_link_as_comfyui_allows() -> None:
    schema = {
        "Src": {"input": {"required": {}}, "output": ["MASK"], "output_node": False},
        "Any": {"input": {"required": {}}, "output": ["*"], "output_node": False},
        "Sink": {
            "input": {"required": {"a": ["IMAGE,MASK"], "b": ["AUDIO"]}},
            "output": [],
            "output_node": True,
        },
    }
    graph = {
        "1": {"class_type": "Src", "inputs": {}},
        "2": {"class_type": "Any", "inputs": {}},
        "3": {"class_type": "Sink", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
    }
    assert validate_graph(graph, schema) == []
    graph["3"]["inputs"]["b"] = ["1", 0]
    assert validate_graph(graph, schema)[0].input == "b"


def _template_dir(tmp_path: Path, bindings: dict[str, Any], **extra: Any) -> Path:
    doc = {
        "name": "Tiny",
        "profile": "preview",
        "fps": 25,
        "bindings": bindings,
        "output": {"node": "6"},
        "graph": GOOD,
        **extra,
    }
    (tmp_path / "preview").mkdir(parents=True, exist_ok=True)
    (tmp_path / "preview" / "Tiny.json").write_text(json.dumps(doc))
    return tmp_path


def test_a_binding_to_an_input_the_class_does_not_have_is_a_problem(core: dict[str, Any], tmp_path: Path) -> None:
    root = _template_dir(tmp_path, {"width": [{"node": "3", "input": "widht"}]})
    report = validate_template(load_template("preview", "Tiny", root=root), core)
    problem = only(report.problems)
    assert (problem.node, problem.input) == ("3", "widht")
    assert "binding 'width'" in problem.message


def test_a_binding_that_would_overwrite_a_link_is_a_problem(core: dict[str, Any], tmp_path: Path) -> None:
    root = _template_dir(tmp_path, {"image": [{"node": "3", "input": "image"}]})
    problem = only(validate_template(load_template("preview", "Tiny", root=root), core).problems)
    assert "overwrite a link" in problem.message


def test_a_problem_in_one_variant_only_names_the_variant(core: dict[str, Any], tmp_path: Path) -> None:
    bad_scale = copy.deepcopy(GOOD["3"])
    bad_scale["inputs"]["crop"] = "edges"
    root = _template_dir(
        tmp_path,
        {"mode": []},
        defaults={"mode": "ok"},
        variants={"mode": {"ok": {}, "bad": {"3": bad_scale}}},
    )
    problem = only(validate_template(load_template("preview", "Tiny", root=root), core).problems)
    assert problem.message.endswith("(with mode='bad')")


def test_a_gzipped_schema_reads_the_same_as_the_plain_one(tmp_path: Path) -> None:
    plain = tmp_path / "core.json"
    with gzip.open(CORE_SCHEMA, "rt", encoding="utf-8") as fh:
        plain.write_text(fh.read())
    assert load_object_info(plain) == load_object_info(CORE_SCHEMA)


def test_an_unreachable_server_is_an_object_info_error() -> None:
    with pytest.raises(ObjectInfoError, match="cannot fetch node schema"):
        fetch_object_info(f"http://127.0.0.1:{free_port()}", timeout=2)


def test_cli_validate_passes_the_infinitetalk_templates_and_lists_model_files() -> None:
    result = CliRunner().invoke(
        workflows, ["validate", "--object-info", str(WANVIDEO_SCHEMA), "--profile", "infinitetalk"]
    )
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("0 problems in 4 templates (model files needed: ")
    assert "wav2vec2-chinese-base_fp16.safetensors" in last


def test_cli_validate_fails_on_problems_and_prints_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(WORKFLOWS_DIR_ENV, str(_template_dir(tmp_path, {"width": [{"node": "3", "input": "w"}]})))
    result = CliRunner().invoke(workflows, ["validate", "--object-info", str(CORE_SCHEMA), "Tiny"])
    assert result.exit_code == 1
    assert "node 3 (ImageScale), input 'w': binding 'width'" in result.output
    assert result.output.strip().endswith("1 problem in 1 templates")


def test_cli_validate_needs_exactly_one_schema_source() -> None:
    result = CliRunner().invoke(workflows, ["validate"])
    assert result.exit_code == 2
    assert "--object-info" in result.output


def test_cli_list_shows_every_template() -> None:
    result = CliRunner().invoke(workflows, ["list"])
    assert result.exit_code == 0
    assert sum(line.startswith(("infinitetalk/", "preview/")) for line in result.output.splitlines()) == 8


@pytest.mark.comfyui
def test_preview_templates_validate_against_a_running_comfyui(comfy_url: str) -> None:
    result = CliRunner().invoke(workflows, ["validate", "--comfyui-url", comfy_url, "--profile", "preview"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == "0 problems in 4 templates"
