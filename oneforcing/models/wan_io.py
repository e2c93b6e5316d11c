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
    # Not a diffusers key (diffusers ignores it; real Wan checkpoints never set it): a learned absolute
    # position per token of a frame's [H', W'] grid, for the toy models (docs/toy_world.md, item 8).
    "absolute_position_grid": None,
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


def check_wan_config(cfg: dict, *, file: str | None = None, key: str | None = None) -> None:
    """Keys and value types of a Wan config (a config.json or a recipe's `config:`), so a typo or
    a string where a number belongs is one error naming it, not a crash inside the model."""
    where = (lambda k: f"{key}.{k}" if key else k)
    if not isinstance(cfg, dict):
        raise UserError(f"expected a mapping of Wan config keys, got {type(cfg).__name__}", file=file, key=key)
    unknown = sorted(str(k) for k in cfg if not str(k).startswith("_") and k not in WAN_DEFAULTS)
    if unknown:
        raise UserError(f"keys this Wan implementation does not know: {unknown[:5]}", file=file,
                        key=where(unknown[0]))
    for k, value in cfg.items():
        if k not in _WAN_TYPES:
            continue
        ok = _WAN_TYPES[k](value)
        if not ok:
            raise UserError(f"expected {_WAN_TYPE_NAMES[k]}, got {type(value).__name__} {str(value)[:40]!r}",
                            file=file, key=where(k))


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


_WAN_TYPES = {
    "patch_size": lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(_positive_int(x) for x in v),
    "num_attention_heads": _positive_int, "attention_head_dim": _positive_int, "in_channels": _positive_int,
    "out_channels": lambda v: v is None or _positive_int(v), "text_dim": _positive_int,
    "freq_dim": _positive_int, "ffn_dim": _positive_int, "num_layers": _positive_int,
    "cross_attn_norm": lambda v: isinstance(v, bool), "qk_norm": lambda v: v is None or isinstance(v, str),
    "eps": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
    "rope_max_seq_len": _positive_int,
    "absolute_position_grid": lambda v: v is None or (isinstance(v, (list, tuple)) and len(v) == 2
                                                       and all(_positive_int(x) for x in v)),
}
_WAN_TYPE_NAMES = {k: "an integer >= 1" for k in _WAN_TYPES}
_WAN_TYPE_NAMES.update({"patch_size": "3 integers >= 1", "out_channels": "an integer >= 1 or null",
                        "cross_attn_norm": "true or false", "qk_norm": "a string or null",
                        "eps": "a number > 0",
                        "absolute_position_grid": "null or 2 integers >= 1 (a frame's token grid)"})


def load_config(path: str | Path) -> dict:
    p = resolve_folder(path)
    file = p / "config.json"
    try:
        cfg = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{file}: not a readable JSON config ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{file}: expected a JSON object, got {type(cfg).__name__}")
    if cfg.get("_class_name", "WanTransformer3DModel") != "WanTransformer3DModel":
        raise UserError(f"{file} describes a {str(cfg['_class_name'])[:60]}, not a WanTransformer3DModel")
    check_wan_config(cfg, file=str(file))
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def _load_file(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except Exception as exc:  # noqa: BLE001 - safetensors reports truncation by its own types
        raise UserError(f"{file}: unreadable safetensors weights ({str(exc).splitlines()[0][:120]})") from None


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The folder's tensors, minus the image-to-video `norm_added_q` ones (diffusers ignores
    them for text-to-video too)."""
    sd = _read_state_dict(path)
    return {k: v for k, v in sd.items() if "norm_added_q" not in k}


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    p = resolve_folder(path)
    if (p / WEIGHTS).is_file():
        return _load_file(p / WEIGHTS)
    if (p / INDEX).is_file():
        try:
            weight_map = json.loads((p / INDEX).read_text())["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"{p / INDEX}: expected {{'weight_map': {{tensor: file}}}}") from None
        sd: dict[str, torch.Tensor] = {}
        for shard in shards:
            if not isinstance(shard, str) or shard != Path(shard).name or shard in (".", ".."):
                raise UserError(f"{p / INDEX}: weight file {str(shard)[:80]!r} is not a plain file name in {p}")
            sd.update(_load_file(p / shard))
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
