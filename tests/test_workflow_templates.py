"""The workflow templates in workflows/: what they contain, and how bind() fills them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from infinitetalk_pipeline.workflows.templates import (
    WORKFLOWS_DIR_ENV,
    Template,
    TemplateError,
    list_templates,
    load_template,
    templates_dir,
)
from infinitetalk_pipeline.workflows.validate import (
    load_object_info,
    model_files,
    validate_graph,
    validate_template,
)

DATA = Path(__file__).parent / "data" / "object_info"
WANVIDEO_SCHEMA = DATA / "comfyui-0.3.75+wanvideowrapper-1.4.7.json.gz"
CORE_SCHEMA = DATA / "comfyui-0.3.75-core.json.gz"
NAMES = ["I2V_single", "I2V_multi", "V2V_single", "V2V_multi"]
ORIGINAL_MODEL_FILES = {
    "Wan2_1-I2V-14B-480P_fp8_e4m3fn.safetensors",
    "lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors",
    "Wan2_1_VAE_bf16.safetensors",
    "umt5-xxl-enc-fp8_e4m3fn.safetensors",
    "clip_vision_h.safetensors",
    "MelBandRoformer_fp16.safetensors",
    "wav2vec2-chinese-base_fp16.safetensors",
}


@pytest.fixture(scope="module")
def wanvideo_schema() -> dict[str, Any]:
    return load_object_info(WANVIDEO_SCHEMA)


@pytest.fixture(scope="module")
def core_schema() -> dict[str, Any]:
    return load_object_info(CORE_SCHEMA)


def sample_values(template: Template) -> dict[str, Any]:
    """One value per required binding, distinct so a test can tell where each one landed."""
    values: dict[str, Any] = {
        "image": "face-1.png",
        "video": "source-1.mp4",
        "audio": "speech-1.wav",
        "audio_2": "speech-2.wav",
        "mask": "mask-1.png",
        "mask_2": "mask-2.png",
        "prompt": "a woman reads the news",
        "width": 336,
        "height": 432,
        "frames": 137,
        "audio_seconds": 5.48,
        "filename_prefix": "infinitetalk/clip-42",
    }
    return {k: v for k, v in values.items() if k in template.required_bindings}


def test_the_templates_dir_is_the_repository_workflows_folder() -> None:
    assert templates_dir() == Path(__file__).resolve().parents[1] / "workflows"


def test_there_are_four_infinitetalk_and_four_preview_templates() -> None:
    keys = [t.key for t in list_templates()]
    assert keys == [f"{p}/{n}" for p in ("infinitetalk", "preview") for n in sorted(NAMES)]


@pytest.mark.parametrize("name", NAMES)
def test_infinitetalk_template_has_no_problems_against_the_wanvideowrapper_schema(
    name: str, wanvideo_schema: dict[str, Any]
) -> None:
    report = validate_template(load_template("infinitetalk", name), wanvideo_schema)
    assert [str(p) for p in report.problems] == []


@pytest.mark.parametrize("name", NAMES)
def test_preview_template_has_no_problems_against_the_core_schema(name: str, core_schema: dict[str, Any]) -> None:
    report = validate_template(load_template("preview", name), core_schema)
    assert [str(p) for p in report.problems] == []


@pytest.mark.parametrize("name", NAMES)
def test_infinitetalk_template_uses_the_original_templates_model_files(
    name: str, wanvideo_schema: dict[str, Any]
) -> None:
    variant = "Multi" if name.endswith("multi") else "Single"
    report = validate_template(load_template("infinitetalk", name), wanvideo_schema)
    assert report.model_files == {
        *ORIGINAL_MODEL_FILES,
        f"Wan2_1-InfiniteTalk-{variant}_fp8_e4m3fn_scaled_KJ.safetensors",
    }


@pytest.mark.parametrize("name", NAMES)
def test_infinitetalk_template_loads_wav2vec_locally_and_never_downloads(name: str) -> None:
    classes = {n["class_type"] for n in load_template("infinitetalk", name).graph.values()}
    assert "Wav2VecModelLoader" in classes
    assert not {c for c in classes if c.startswith("DownloadAndLoad")}


@pytest.mark.parametrize("name", NAMES)
def test_preview_template_needs_no_model_file(name: str, core_schema: dict[str, Any]) -> None:
    for _selection, graph in load_template("preview", name).variant_graphs():
        assert model_files(graph, core_schema) == set()


@pytest.mark.parametrize("name", NAMES)
def test_preview_takes_the_same_media_size_and_timing_bindings_as_the_real_template(name: str) -> None:
    real, preview = load_template("infinitetalk", name), load_template("preview", name)
    assert set(real.bindings) - set(preview.bindings) == {"prompt", "negative_prompt", "seed", "attention_mode"}
    assert set(preview.bindings) <= set(real.bindings)
    assert preview.required_bindings == real.required_bindings - {"prompt"}
    assert preview.fps == real.fps == 25


@pytest.mark.parametrize("profile", ["infinitetalk", "preview"])
@pytest.mark.parametrize("name", NAMES)
def test_bind_fills_every_binding_target(profile: str, name: str) -> None:
    template = load_template(profile, name)
    values = sample_values(template)
    graph = template.bind(values)
    for binding, value in values.items():
        for target in template.bindings[binding]:
            assert graph[target.node]["inputs"][target.input] == value, (binding, target)


def test_bind_leaves_the_template_untouched() -> None:
    template = load_template("preview", "I2V_single")
    before = json.dumps(template.graph, sort_keys=True)
    template.bind(sample_values(template))
    assert json.dumps(template.graph, sort_keys=True) == before


def test_bind_rejects_an_unknown_binding_name() -> None:
    template = load_template("preview", "I2V_single")
    with pytest.raises(TemplateError, match=r"unknown binding.*widht"):
        template.bind({**sample_values(template), "widht": 512})


def test_bind_rejects_a_missing_required_binding() -> None:
    template = load_template("infinitetalk", "I2V_single")
    values = sample_values(template)
    del values["audio"]
    with pytest.raises(TemplateError, match=r"missing required binding.*audio"):
        template.bind(values)


def test_bind_fills_optional_bindings_with_their_defaults() -> None:
    template = load_template("infinitetalk", "I2V_single")
    graph = template.bind(sample_values(template))
    (seed,) = template.bindings["seed"]
    assert graph[seed.node]["inputs"][seed.input] == template.defaults["seed"] == 2
    assert all(graph[t.node]["inputs"][t.input] == 25 for t in template.bindings["fps"])


def test_bind_rejects_a_value_that_is_not_a_scalar() -> None:
    template = load_template("preview", "I2V_single")
    with pytest.raises(TemplateError, match="string, number or boolean"):
        template.bind({**sample_values(template), "width": [512]})


@pytest.mark.parametrize("profile", ["infinitetalk", "preview"])
@pytest.mark.parametrize("name", ["I2V_multi", "V2V_multi"])
def test_multi_audio_type_selects_overlay_for_para_and_concatenation_for_add(profile: str, name: str) -> None:
    template = load_template(profile, name)
    values = sample_values(template)
    para = {n["class_type"] for n in template.bind({**values, "multi_audio_type": "para"}).values()}
    add = {n["class_type"] for n in template.bind({**values, "multi_audio_type": "add"}).values()}
    assert "AudioConcat" not in para
    assert "AudioConcat" in add


def test_multi_audio_type_also_reaches_the_infinitetalk_embeddings() -> None:
    template = load_template("infinitetalk", "I2V_multi")
    graph = template.bind({**sample_values(template), "multi_audio_type": "add"})
    assert [graph[t.node]["inputs"][t.input] for t in template.bindings["multi_audio_type"]] == ["add"]


def test_bind_rejects_a_multi_audio_type_without_a_variant() -> None:
    template = load_template("preview", "I2V_multi")
    with pytest.raises(TemplateError, match="multi_audio_type='both'"):
        template.bind({**sample_values(template), "multi_audio_type": "both"})


def _write_template(root: Path, doc: dict[str, Any]) -> Path:
    path = root / doc["profile"] / f"{doc['name']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def _tiny_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "Tiny",
        "profile": "preview",
        "fps": 25,
        "bindings": {"image": [{"node": "1", "input": "image"}]},
        "output": {"node": "2"},
        "graph": {
            "1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}},
        },
    }
    return {**doc, **changes}


def test_the_templates_dir_can_be_moved_with_an_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_template(tmp_path, _tiny_doc())
    monkeypatch.setenv(WORKFLOWS_DIR_ENV, str(tmp_path))
    assert [t.key for t in list_templates()] == ["preview/Tiny"]
    assert load_template("preview", "Tiny").bind({"image": "a.png"})["1"]["inputs"]["image"] == "a.png"


def test_loading_refuses_a_binding_to_a_node_that_is_not_in_the_graph(tmp_path: Path) -> None:
    _write_template(tmp_path, _tiny_doc(bindings={"image": [{"node": "9", "input": "image"}]}))
    with pytest.raises(TemplateError, match="targets node 9"):
        load_template("preview", "Tiny", root=tmp_path)


def test_loading_refuses_an_output_node_that_is_not_in_the_graph(tmp_path: Path) -> None:
    _write_template(tmp_path, _tiny_doc(output={"node": "7"}))
    with pytest.raises(TemplateError, match=r"output\.node"):
        load_template("preview", "Tiny", root=tmp_path)


def test_loading_an_unknown_template_names_it() -> None:
    with pytest.raises(TemplateError, match="no template preview/I2V_triple"):
        load_template("preview", "I2V_triple")


@pytest.mark.parametrize(("profile", "schema"), [("infinitetalk", WANVIDEO_SCHEMA), ("preview", CORE_SCHEMA)])
@pytest.mark.parametrize("name", NAMES)
def test_preview_and_real_templates_accept_the_same_frame_counts_up_to_4096(
    profile: str, schema: Path, name: str
) -> None:
    """Both profiles cap a frame count at 4096 (163.84 s at 25 fps): a preview that binds fits the real one.

    Bound graphs are checked with the same validator."""
    template, object_info = load_template(profile, name), load_object_info(schema)
    values = sample_values(template)
    assert validate_graph(template.bind({**values, "frames": 4096}), object_info) == []
    too_long = validate_graph(template.bind({**values, "frames": 4097}), object_info)
    assert [p.message for p in too_long] == ["4097 is above the maximum 4096"]


@pytest.mark.parametrize("profile", ["infinitetalk", "preview"])
@pytest.mark.parametrize("name", ["I2V_multi", "V2V_multi"])
def test_multi_graphs_load_both_speakers_masks(name: str, profile: str) -> None:
    graph = load_template(profile, name).bind(sample_values(load_template(profile, name)))
    loaded = {node["inputs"]["image"] for node in graph.values() if node["class_type"] == "LoadImage"}
    assert {"mask-1.png", "mask-2.png"} <= loaded


@pytest.mark.parametrize("name", ["I2V_multi", "V2V_multi"])
def test_infinitetalk_multi_embeds_get_speaker_and_background_masks(name: str) -> None:
    """Without ref_target_masks WanVideoWrapper 1.4.7 fails every fresh multi prompt ('NoneType' ... 'max')."""
    template = load_template("infinitetalk", name)
    graph = template.bind(sample_values(template))
    embeds = next(node for node in graph.values() if node["class_type"] == "MultiTalkWav2VecEmbeds")
    to_mask = graph[embeds["inputs"]["ref_target_masks"][0]]
    assert to_mask["class_type"] == "ImageToMask"
    batch = graph[to_mask["inputs"]["image"][0]]
    speakers, background = graph[batch["inputs"]["image1"][0]], graph[batch["inputs"]["image2"][0]]
    assert [graph[speakers["inputs"][k][0]]["inputs"]["image"] for k in ("image1", "image2")] == [
        "mask-1.png",
        "mask-2.png",
    ]
    assert background["class_type"] == "ImageInvert"


@pytest.mark.parametrize("name", NAMES)
def test_attention_kernel_is_bound_per_worker_and_defaults_to_sdpa(name: str) -> None:
    """sageattn in a graph makes WanVideoModelLoader raise on any worker without the CUDA-only package."""
    template = load_template("infinitetalk", name)
    graph = template.bind(sample_values(template))
    (loader,) = [n for n in graph.values() if n["class_type"] == "WanVideoModelLoader"]
    assert loader["inputs"]["attention_mode"] == "sdpa"
    chosen = template.bind({**sample_values(template), "attention_mode": "sageattn"})
    assert [n["inputs"]["attention_mode"] for n in chosen.values() if n["class_type"] == "WanVideoModelLoader"] == [
        "sageattn"
    ]
