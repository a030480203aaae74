"""TEST-ONLY: lets the loaders whose architecture is fixed in code load the tiny files of `../../make_models.py`.

Each patch reads the architecture from the file's shapes instead of a hard-coded config; for the real files the
values read are the hard-coded ones, so a patch never changes what a real model loads, nor any graph input. What and
why: `../../README.md`. Loaded by the tiny-weights tests only (`LocalComfyUI(extra_custom_nodes=[...])`), never
installed on a worker.

ComfyUI imports custom nodes in `os.listdir` order, so the custom nodes' modules may not exist yet when this one is
imported: the core CLIP vision loader is patched at import, the custom nodes' loaders when found, at import or at the
latest when a prompt arrives (before it is validated and queued).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import comfy.clip_vision
import folder_paths
import torch
from safetensors import safe_open
from server import PromptServer

NODE_CLASS_MAPPINGS: dict[str, type] = {}
TOKENIZER_DIR = "tiny_t5_tokenizer"  # written next to the models by make_models.py

log = logging.getLogger("infinitetalk_tiny_overrides")


def _count(keys: Any, pattern: str) -> int:
    """How many distinct indices the first group of `pattern` takes over `keys` (layers in a ModuleList)."""
    regex = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := regex.match(k))})


def _shapes(path: str) -> dict[str, list[int]]:
    with safe_open(path, "pt") as f:
        return {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict


# umt5 (LoadWanVideoT5TextEncoder): always 24 blocks, dim 4096, vocab 256,384 (5.7B parameters).
def t5_config(sd: dict[str, torch.Tensor]) -> dict[str, int]:
    vocab, dim = sd["token_embedding.weight"].shape
    buckets, heads = sd["blocks.0.pos_embedding.embedding.weight"].shape
    return {
        "vocab_size": vocab,
        "dim": dim,
        "dim_attn": sd["blocks.0.attn.q.weight"].shape[0],
        "dim_ffn": sd["blocks.0.ffn.fc1.weight"].shape[0],
        "num_heads": heads,
        "num_buckets": buckets,
        "encoder_layers": _count(sd, r"blocks\.(\d+)\."),
    }


def _patch_t5(t5: ModuleType) -> None:
    original = t5.T5EncoderModel.__init__

    def __init__(
        self: Any,
        text_len: int,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device = torch.device("cuda"),  # noqa: B008 - the original's signature
        state_dict: dict[str, torch.Tensor] | None = None,
        tokenizer_path: str | None = None,
        quantization: str = "disabled",
    ) -> None:
        config = t5_config(state_dict or {})
        # The vendored node lacks its tokenizer files (spiece.model, tokenizer.json); the tiny encoder's vocabulary
        # is the tiny word-level tokenizer's.
        tiny_tokenizer = Path(folder_paths.models_dir) / TOKENIZER_DIR
        if tiny_tokenizer.is_dir():
            tokenizer_path = str(tiny_tokenizer)
        umt5_xxl = t5.umt5_xxl
        t5.umt5_xxl = lambda **kwargs: umt5_xxl(**kwargs, **config)
        try:
            original(self, text_len, dtype, device, state_dict, tokenizer_path, quantization)
        finally:
            t5.umt5_xxl = umt5_xxl

    t5.T5EncoderModel.__init__ = __init__


# MelBandRoFormerModelLoader: always dim 384, depth 6 (228M parameters, 51 s per 8 s chunk on a CPU).
def melband_config(shapes: dict[str, list[int]]) -> dict[str, int]:
    heads, dim = shapes["layers.0.0.layers.0.0.to_gates.weight"]
    return {
        "dim": dim,
        "depth": _count(shapes, r"layers\.(\d+)\."),
        "heads": heads,
        "dim_head": shapes["layers.0.0.layers.0.0.to_qkv.weight"][0] // 3 // heads,
        "time_transformer_depth": _count(shapes, r"layers\.0\.0\.layers\.(\d+)\."),
        "freq_transformer_depth": _count(shapes, r"layers\.0\.1\.layers\.(\d+)\."),
        "mask_estimator_depth": _count(shapes, r"mask_estimators\.0\.to_freqs\.0\.0\.(\d+)\.weight") - 1,
    }


def _patch_melband(nodes: ModuleType) -> None:
    loader = nodes.MelBandRoFormerModelLoader
    original = loader.loadmodel

    def loadmodel(self: Any, model_name: str) -> tuple[Any]:
        config = melband_config(_shapes(folder_paths.get_full_path_or_raise("diffusion_models", model_name)))
        build = nodes.MelBandRoformer
        nodes.MelBandRoformer = lambda **kwargs: build(**(kwargs | config))
        try:
            return original(self, model_name)
        finally:
            nodes.MelBandRoformer = build

    loader.loadmodel = loadmodel


# Core CLIPVisionLoader: picks a fixed config (ViT-H: 632M parameters) by layer count and knows no other.
def clip_vision_config(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """ViT-H's config with every size the file's shapes give."""
    base = Path(comfy.clip_vision.__file__).with_name("clip_vision_config_h.json")
    fc1 = sd["vision_model.encoder.layers.0.mlp.fc1.weight"]
    patch = sd["vision_model.embeddings.patch_embedding.weight"]
    positions = sd["vision_model.embeddings.position_embedding.weight"].shape[0]
    return json.loads(base.read_text()) | {
        "hidden_size": fc1.shape[1],
        "intermediate_size": fc1.shape[0],
        "num_hidden_layers": _count(sd, r"vision_model\.encoder\.layers\.(\d+)\."),
        "patch_size": patch.shape[-1],
        "image_size": round((positions - 1) ** 0.5) * patch.shape[-1],
        "projection_dim": sd["visual_projection.weight"].shape[0],
    }


def _patch_clip_vision() -> None:
    original = comfy.clip_vision.load_clipvision_from_sd

    def load_clipvision_from_sd(sd: dict[str, torch.Tensor], prefix: str = "", convert_keys: bool = False) -> Any:
        clip = original(sd, prefix, convert_keys)
        if clip is not None or "vision_model.encoder.layers.0.mlp.fc1.weight" not in sd:
            return clip
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:  # ClipVisionModel reads a path
            json.dump(clip_vision_config(sd), f)
        try:
            clip = comfy.clip_vision.ClipVisionModel(f.name)
        finally:
            os.unlink(f.name)
        missing, _unexpected = clip.load_sd(sd)
        if missing:
            raise ValueError(f"tiny CLIP vision file lacks {missing}")
        return clip

    comfy.clip_vision.load_clipvision_from_sd = load_clipvision_from_sd


# The custom nodes' modules, by file (ComfyUI names a node's modules after its folder's absolute path).
PATCHES: dict[str, Callable[[ModuleType], None]] = {
    "ComfyUI-WanVideoWrapper/wanvideo/modules/t5.py": _patch_t5,
    "ComfyUI-MelBandRoFormer/nodes.py": _patch_melband,
}
_applied: set[str] = set()


def _module(relpath: str) -> ModuleType | None:
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and Path(file).as_posix().endswith("/" + relpath):
            return module
    return None


def apply_patches() -> list[str]:
    """Patch every target module loaded by now (once each); return the targets still missing."""
    missing = []
    for relpath, patch in PATCHES.items():
        if relpath in _applied:
            continue
        module = _module(relpath)
        if module is None:
            missing.append(relpath)
            continue
        patch(module)
        _applied.add(relpath)
        log.info("infinitetalk_tiny_overrides: patched %s", relpath)
    return missing


def _on_prompt(json_data: dict[str, Any]) -> dict[str, Any]:
    missing = apply_patches()
    if missing:
        log.error("infinitetalk_tiny_overrides: not loaded, cannot patch: %s", ", ".join(missing))
    return json_data  # never changes the prompt


_patch_clip_vision()
apply_patches()
PromptServer.instance.add_on_prompt_handler(_on_prompt)
