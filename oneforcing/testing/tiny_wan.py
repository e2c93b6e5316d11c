"""A tiny Wan transformer for tests and CPU examples, in diffusers' own format.

`TINY_WAN_CONFIG` keeps Wan's structure (patch 1x2x2, RMS q/k norm, cross-attn norm) at toy size:
2 layers, 2 heads x 16 head dim (RoPE split 8 / 4 / 4 for time / height / width), 4 latent channels.
`save_tiny_wan(dir)` writes a randomly initialised diffusers `WanTransformer3DModel` with
`save_pretrained`, so loading it exercises the same path as the real checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_WAN_CONFIG = {
    "patch_size": [1, 2, 2],
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "in_channels": 4,
    "out_channels": 4,
    "text_dim": 24,
    "freq_dim": 32,
    "ffn_dim": 64,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}


def tiny_wan_config(**overrides) -> dict:
    return {**TINY_WAN_CONFIG, **overrides}


def random_diffusers_wan(seed: int = 0, perturb_norms: bool = True, **overrides):
    """A random diffusers WanTransformer3DModel. `perturb_norms` moves the RMSNorm/LayerNorm
    weights off their init (ones/zeros) so that tests would catch a mis-wired norm."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(**tiny_wan_config(**overrides)).eval()
    if perturb_norms:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.add_(0.1 * torch.randn_like(p))
    return model


def save_tiny_wan(out_dir: str | Path, seed: int = 0, **overrides) -> Path:
    """Write a random tiny diffusers Wan transformer folder (config.json + safetensors)."""
    out = Path(out_dir)
    random_diffusers_wan(seed, **overrides).save_pretrained(str(out), safe_serialization=True)
    return out


# A tiny Wan whose latents are the toy codec's (16 channels) and whose text is the toy encoder's (32).
TOY_SHAPED = {"in_channels": 16, "out_channels": 16, "text_dim": 32, "rope_max_seq_len": 64}


def save_toy_shaped_wan(path: str | Path, **kwargs) -> Path:
    """A random toy-shaped CausalWan (TOY_SHAPED) saved as a diffusers folder at `path`; `kwargs`
    go to CausalWan (default: a bidirectional teacher)."""
    from oneforcing.models.causal_wan import CausalWan

    CausalWan.from_config(tiny_wan_config(**TOY_SHAPED), **{"causal": False, **kwargs}).save_pretrained(path)
    return Path(path)


def tiny_inputs(batch: int = 1, frames: int = 3, height: int = 4, width: int = 6, text_len: int = 7,
                seed: int = 0, config: dict | None = None):
    """x [B, F, C, H, W], text [B, L, D_text] in the project's layout, from a seeded generator."""
    cfg = config or TINY_WAN_CONFIG
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames, cfg["in_channels"], height, width, generator=g)
    text = torch.randn(batch, text_len, cfg["text_dim"], generator=g)
    return x, text
