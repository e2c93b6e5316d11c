"""Reading and writing Wan transformers in diffusers' folder format (no diffusers import needed).

A folder holds config.json (WanTransformer3DModel's keys) and either
diffusion_pytorch_model.safetensors or shards listed in diffusion_pytorch_model.safetensors.index.json.
A pipeline folder (Wan-AI/Wan2.1-T2V-1.3B-Diffusers) is accepted too: its transformer/ subfolder is used.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from oneforcing.errors import UserError

WEIGHTS = "diffusion_pytorch_model.safetensors"
INDEX = WEIGHTS + ".index.json"

# WanTransformer3DModel's defaults (the 14B model's shape); checkpoints override them.
WAN_DEFAULTS = {
    "patch_size": [1, 2, 2], "num_attention_heads": 40, "attention_head_dim": 128, "in_channels": 16,
    "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 13824, "num_layers": 40,
    "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": None,
    "added_kv_proj_dim": None, "rope_max_seq_len": 1024, "pos_embed_seq_len": None,
}


def resolve_folder(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"Wan weights folder not found: {p}")
    if not (p / "config.json").is_file() and (p / "transformer" / "config.json").is_file():
        p = p / "transformer"
    if not (p / "config.json").is_file():
        raise UserError(f"{p} has no config.json: expected a diffusers Wan transformer folder")
    return p


def load_config(path: str | Path) -> dict:
    p = resolve_folder(path)
    cfg = json.loads((p / "config.json").read_text())
    if cfg.get("_class_name", "WanTransformer3DModel") != "WanTransformer3DModel":
        raise UserError(f"{p}/config.json describes a {cfg['_class_name']}, not a WanTransformer3DModel")
    unknown = set(k for k in cfg if not k.startswith("_")) - set(WAN_DEFAULTS)
    if unknown:
        raise UserError(f"{p}/config.json has keys this Wan implementation does not know: {sorted(unknown)}")
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    p = resolve_folder(path)
    if (p / WEIGHTS).is_file():
        return load_file(str(p / WEIGHTS))
    if (p / INDEX).is_file():
        shards = sorted(set(json.loads((p / INDEX).read_text())["weight_map"].values()))
        sd: dict[str, torch.Tensor] = {}
        for shard in shards:
            sd.update(load_file(str(p / shard)))
        return sd
    raise UserError(f"{p} has neither {WEIGHTS} nor {INDEX}")


def save_folder(state_dict: dict, config: dict, out_dir: str | Path) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {"_class_name": "WanTransformer3DModel", "_diffusers_version": "0.42.1",
           **{k: config.get(k, v) for k, v in WAN_DEFAULTS.items()}}
    cfg["patch_size"] = list(cfg["patch_size"])
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt"})
    return out
