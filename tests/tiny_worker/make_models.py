"""Random-weight model files with the real key structure, for running the InfiniteTalk graphs on a CPU.

Run with the ComfyUI venv's python (torch, accelerate, transformers, tokenizers, safetensors live there):

    python make_models.py --custom-nodes DIR --comfyui DIR --out MODELS_DIR

`--custom-nodes` holds ComfyUI-WanVideoWrapper and ComfyUI-MelBandRoFormer; `--comfyui` is the ComfyUI checkout their
modules import from. Every file is built from the loaders' own model classes, so its keys and shapes are exactly the
ones the loader reads; the values are seeded noise (deterministic for a given torch). Where a loader infers the
architecture from the file, the file is tiny; where its size is fixed in the node (wav2vec2-base, InfiniteTalk's
audio_proj) it is full size; the loaders with a fixed size we do shrink are adapted by `comfy_overrides/` (see
README.md). Writes `<out>/tiny-models.json`: relpath, size and sha256 of every file.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import sys
import time
import types
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Graph file names (workflows/infinitetalk/*.json, worker/worker.lock.toml [[models]]) -> builder name.
FILES = {
    "diffusion_models/Wan2_1-I2V-14B-480P_fp8_e4m3fn.safetensors": "wan_i2v",
    "diffusion_models/Wan2_1-InfiniteTalk-Single_fp8_e4m3fn_scaled_KJ.safetensors": "infinitetalk",
    "diffusion_models/Wan2_1-InfiniteTalk-Multi_fp8_e4m3fn_scaled_KJ.safetensors": "infinitetalk",
    "diffusion_models/MelBandRoformer_fp16.safetensors": "melband",
    "loras/lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors": "lora",
    "vae/Wan2_1_VAE_bf16.safetensors": "vae",
    "text_encoders/umt5-xxl-enc-fp8_e4m3fn.safetensors": "umt5",
    "clip_vision/clip_vision_h.safetensors": "clip_vision",
    "wav2vec2/wav2vec2-chinese-base_fp16.safetensors": "wav2vec2",
}
TOKENIZER_DIR = "tiny_t5_tokenizer"  # comfy_overrides points LoadWanVideoT5TextEncoder here
MANIFEST = "tiny-models.json"
SEED = 20260524

# Wan transformer: any dim other than 5120/3072/4096 is loaded as the 1.3B layout (12 heads, 30 blocks).
WAN_DIM, WAN_FFN, WAN_HEADS, WAN_LAYERS = 96, 192, 12, 30
WAN_IN_DIM = 36  # I2V: 16 noise + 4 mask + 16 image latent channels
LORA_RANK = 4
# umt5: the Wan transformer's text_embedding takes 4096 wide tokens, everything else may shrink.
T5 = {"vocab": 256, "dim": 4096, "dim_attn": 64, "dim_ffn": 64, "num_heads": 2, "num_layers": 1, "num_buckets": 32}
# CLIP vision: 1280 wide (Wan's img_emb input); two layers, because the encoder reads the penultimate one.
CLIP = {"num_hidden_layers": 2, "intermediate_size": 64}
MELBAND = {"dim": 32, "depth": 1, "heads": 2, "dim_head": 16}
TOKENIZER_WORDS = "a the person talking naturally speaking man woman face video"


def _package(alias: str, folder: Path) -> None:
    """Make `folder` importable as `alias` without running its __init__ (which registers every node)."""
    pkg = types.ModuleType(alias)
    pkg.__path__ = [str(folder)]
    sys.modules[alias] = pkg


def _meta(factory: Callable[[], nn.Module]) -> nn.Module:
    from accelerate import init_empty_weights

    with init_empty_weights():
        return factory()


def _noise(sd: dict[str, torch.Tensor], seed: int, keep: Callable[[str], bool] = lambda _k: False) -> dict:
    """Seeded values for every floating tensor of `sd` (shapes only are read): unit-gain weights, unit norms."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, ref in sd.items():
        if keep(key) or not ref.is_floating_point():
            out[key] = ref.detach().clone().contiguous()
            continue
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "gamma" or (ref.ndim == 1 and leaf == "weight" and "norm" in key):
            value = torch.ones(ref.shape)
        elif ref.ndim >= 2:
            value = torch.randn(ref.shape, generator=gen) * ref[0].numel() ** -0.5
        else:
            value = torch.randn(ref.shape, generator=gen) * 0.02
        out[key] = value
    return out


def _fp8(sd: dict[str, torch.Tensor], is_linear: Callable[[str], bool], *, scaled: bool) -> dict:
    """fp8 e4m3fn linear weights (with a per-tensor `scale_weight` when `scaled`, as KJ's files), the rest bf16."""
    out = {}
    for key, value in sd.items():
        if not is_linear(key):
            out[key] = value.to(torch.bfloat16)
        elif scaled:
            scale = value.abs().max().clamp(min=1e-12) / 448.0
            out[key] = (value / scale).to(torch.float8_e4m3fn)
            out[key.removesuffix(".weight") + ".scale_weight"] = scale.reshape(1).float()
        else:
            out[key] = value.to(torch.float8_e4m3fn)
    return out


def _linear_weights(module: nn.Module) -> set[str]:
    return {f"{name}.weight" for name, m in module.named_modules() if isinstance(m, nn.Linear)}


class Builder:
    def __init__(self, custom_nodes: Path, comfyui: Path) -> None:
        sys.path.insert(0, str(comfyui))
        import comfy.cli_args

        comfy.cli_args.args.cpu = True  # as the server runs: comfy.model_management would probe CUDA at import
        _package("wvw", custom_nodes / "ComfyUI-WanVideoWrapper")
        _package("melband", custom_nodes / "ComfyUI-MelBandRoFormer")
        self.comfyui = comfyui
        self.wvw_dir = custom_nodes / "ComfyUI-WanVideoWrapper"
        self._wan: nn.Module | None = None

    def wan(self) -> nn.Module:
        """The I2V transformer as WanVideoModelLoader configures it for a file of this dim."""
        if self._wan is None:
            model = importlib.import_module("wvw.wanvideo.modules.model")
            self._wan = _meta(
                lambda: model.WanModel(
                    model_type="i2v",
                    in_dim=WAN_IN_DIM,
                    dim=WAN_DIM,
                    in_features=WAN_DIM,
                    out_features=WAN_DIM,
                    ffn_dim=WAN_FFN,
                    ffn2_dim=WAN_FFN,
                    num_heads=WAN_HEADS,
                    num_layers=WAN_LAYERS,
                    main_device=torch.device("cpu"),
                    offload_device=torch.device("cpu"),
                )
            )
        return self._wan

    def wan_i2v(self, seed: int) -> dict:
        wan = self.wan()
        linear = {k for k in _linear_weights(wan) if k.startswith("blocks.")}
        return _fp8(_noise(wan.state_dict(), seed), linear.__contains__, scaled=False)

    def infinitetalk(self, seed: int) -> dict:
        """Per block `norm_x` + `audio_cross_attn` (sized by the transformer), `audio_proj` as MultiTalkModelLoader
        builds it; keys as in the released file (the loader renames `audio_proj.` itself)."""
        mt = importlib.import_module("wvw.multitalk.multitalk")
        model = importlib.import_module("wvw.wanvideo.modules.model")

        def build() -> nn.Module:
            root = nn.Module()
            root.blocks = nn.ModuleList()
            for _ in range(WAN_LAYERS):
                block = nn.Module()
                block.norm_x = model.WanLayerNorm(WAN_DIM, 1e-6, elementwise_affine=True)
                block.audio_cross_attn = mt.SingleStreamMultiAttention(dim=WAN_DIM, num_heads=WAN_HEADS)
                root.blocks.append(block)
            root.audio_proj = mt.AudioProjModel(
                seq_len=5, seq_len_vf=8, intermediate_dim=512, output_dim=768, context_tokens=32
            )
            return root

        root = _meta(build)
        return _fp8(_noise(root.state_dict(), seed), _linear_weights(root).__contains__, scaled=True)

    def lora(self, seed: int) -> dict:
        """lightx2v's layout: `diffusion_model.<block linear>.lora_down/lora_up/alpha`, `.diff_b` for biases and
        `.diff` for norm weights."""
        gen = torch.Generator().manual_seed(seed)
        sd = self.wan().state_dict()
        out = {}
        for key in sorted(_linear_weights(self.wan())):
            if not key.startswith("blocks."):
                continue
            out_dim, in_dim = sd[key].shape
            base = "diffusion_model." + key.removesuffix(".weight")
            out[f"{base}.lora_down.weight"] = torch.randn(LORA_RANK, in_dim, generator=gen) * in_dim**-0.5
            out[f"{base}.lora_up.weight"] = torch.randn(out_dim, LORA_RANK, generator=gen) * 0.01
            out[f"{base}.alpha"] = torch.tensor(float(LORA_RANK))
        for key, ref in sd.items():
            if not key.startswith("blocks.") or ref.ndim != 1:
                continue
            if key.endswith(".bias"):
                diff_key = key.removesuffix(".bias") + ".diff_b"
            elif "norm" in key:
                diff_key = key.removesuffix(".weight") + ".diff"
            else:
                continue
            out["diffusion_model." + diff_key] = torch.randn(ref.shape, generator=gen) * 1e-3
        return {k: v.to(torch.bfloat16) for k, v in out.items()}

    def vae(self, seed: int) -> dict:
        """The pruned "lightVAE" layout, which WanVideoVAELoader detects from decoder.conv1 (96 channels)."""
        vae_mod = importlib.import_module("wvw.wanvideo.wan_video_vae")
        vae = _meta(lambda: vae_mod.WanVideoVAE(pruning_rate=0.75))
        sd = {k.removeprefix("model."): v for k, v in vae.state_dict().items()}
        return {k: v.to(torch.bfloat16) for k, v in _noise(sd, seed).items()}

    def umt5(self, seed: int) -> dict:
        t5 = importlib.import_module("wvw.wanvideo.modules.t5")
        enc = _meta(lambda: t5.T5Encoder(shared_pos=False, dropout=0.0, **T5))
        sd = _noise(enc.state_dict(), seed)
        linear = _linear_weights(enc)
        # As Kijai's umt5-xxl-enc-fp8: linear weights fp8, embeddings and norms bf16.
        return {k: v.to(torch.float8_e4m3fn if k in linear else torch.bfloat16) for k, v in sd.items()}

    def clip_vision(self, seed: int) -> dict:
        import comfy.clip_model
        import comfy.ops

        config = json.loads((self.comfyui / "comfy" / "clip_vision_config_h.json").read_text()) | CLIP
        model = comfy.clip_model.CLIPVisionModelProjection(config, torch.float32, "meta", comfy.ops.manual_cast)
        return {k: v.to(torch.float16) for k, v in _noise(model.state_dict(), seed).items()}

    def melband(self, seed: int) -> dict:
        mbr = importlib.import_module("melband.model.mel_band_roformer")
        # Built for real: its rotary `freqs` parameters are computed, not learned, and are kept.
        model = mbr.MelBandRoformer(
            stereo=True,
            num_stems=1,
            time_transformer_depth=1,
            freq_transformer_depth=1,
            num_bands=60,
            mask_estimator_depth=2,
            stft_hop_length=441,
            **MELBAND,
        )
        sd = _noise(model.state_dict(), seed, keep=lambda k: k.endswith(".freqs"))
        return {k: v.to(torch.float16) for k, v in sd.items()}

    def wav2vec2(self, seed: int) -> dict:
        """wav2vec2-base as Wav2VecModelLoader builds it from its fixed config: `wav2vec2.` keys, the positional
        conv's weight norm as `weight_g`/`weight_v`."""
        from transformers import Wav2Vec2Config

        w2v = importlib.import_module("wvw.multitalk.wav2vec2")
        config = Wav2Vec2Config(**json.loads((self.wvw_dir / "multitalk" / "wav2vec2_config.json").read_text()))
        model = _meta(lambda: w2v.Wav2Vec2Model(config))
        sd = {}
        for name, param in model.named_parameters():
            if "original0" in name:
                name = "encoder.pos_conv_embed.conv.weight_g"
            elif "original1" in name:
                name = "encoder.pos_conv_embed.conv.weight_v"
            sd["wav2vec2." + name] = param
        return {k: v.to(torch.float16) for k, v in _noise(sd, seed).items()}


def write_tokenizer(dest: Path) -> None:
    """A word-level T5 stand-in (pad 0, eos 1, unk 2): the vendored node lacks spiece.model/tokenizer.json."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in TOKENIZER_WORDS.split():
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    dest.mkdir(parents=True, exist_ok=True)
    tok.save(str(dest / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": "<pad>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": 512,
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make_models(custom_nodes: Path, comfyui: Path, out: Path) -> dict[str, Any]:
    from safetensors.torch import save_file

    builder = Builder(custom_nodes.resolve(), comfyui.resolve())
    for relpath, kind in FILES.items():
        dest = out / relpath
        dest.parent.mkdir(parents=True, exist_ok=True)
        tensors = getattr(builder, kind)(SEED + zlib.crc32(relpath.encode()))
        save_file(tensors, str(dest))
    write_tokenizer(out / TOKENIZER_DIR)
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {
        "files": [
            {"relpath": p.relative_to(out).as_posix(), "size": p.stat().st_size, "sha256": _sha256(p)} for p in files
        ],
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--custom-nodes", type=Path, required=True, help="folder holding ComfyUI-WanVideoWrapper etc.")
    parser.add_argument("--comfyui", type=Path, required=True, help="the ComfyUI checkout (its comfy/ package)")
    parser.add_argument("--out", type=Path, required=True, help="the models folder to fill")
    args = parser.parse_args()
    t0 = time.perf_counter()
    manifest = make_models(args.custom_nodes, args.comfyui, args.out)
    total = sum(f["size"] for f in manifest["files"])
    print(f"{len(manifest['files'])} files, {total / 1e6:.0f} MB in {time.perf_counter() - t0:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
