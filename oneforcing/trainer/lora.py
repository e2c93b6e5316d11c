"""LoRA adapters (peft) for a trained role, and merging them back for export."""

from __future__ import annotations

import torch

from oneforcing.errors import UserError
from oneforcing.trainer.config import LoraOptions


def apply_lora(module: torch.nn.Module, opts: LoraOptions, role: str) -> torch.nn.Module:
    """Inject adapters in place; only the adapters stay trainable."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=opts.rank, lora_alpha=opts.alpha, target_modules=list(opts.target_modules),
                        lora_dropout=opts.dropout, bias="none")
    try:
        inject_adapter_in_model(config, module)
    except ValueError as exc:
        raise UserError(f"lora.{role}.target_modules: {str(exc).splitlines()[0]}") from None
    for name, p in module.named_parameters():
        p.requires_grad_("lora_" in name)
    return module


def lora_scaling(opts_or_alpha, rank: int | None = None) -> float:
    if isinstance(opts_or_alpha, LoraOptions):
        return opts_or_alpha.alpha / opts_or_alpha.rank
    return float(opts_or_alpha) / float(rank)


def merge_lora_state_dict(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """`x.base_layer.weight` + scaling * B @ A -> `x.weight`; adapter tensors dropped."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        if ".base_layer." in key:
            prefix, _, leaf = key.partition(".base_layer.")
            if leaf == "weight":
                a = state.get(f"{prefix}.lora_A.default.weight")
                b = state.get(f"{prefix}.lora_B.default.weight")
                if a is not None and b is not None:
                    value = value + (scaling * (b.float() @ a.float())).to(value.dtype)
            out[f"{prefix}.{leaf}"] = value
        else:
            out[key] = value
    return out


def adapter_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if ".lora_" in k}
