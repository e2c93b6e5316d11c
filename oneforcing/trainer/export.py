"""Export the generator (or its EMA) to a diffusers-format folder, atomically."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from oneforcing.data.shards import atomic_write_text
from oneforcing.models.wan_io import save_folder
from oneforcing.trainer.engines import gathered
from oneforcing.trainer.lora import adapter_state_dict, merge_lora_state_dict
from oneforcing.weights import EXPORT_MANIFEST

log = logging.getLogger("oneforcing")


def full_state_dict(trainer, *, use_ema: bool) -> dict[str, torch.Tensor]:
    """The generator's whole state dict on every rank, with EMA weights swapped in if asked."""
    module = trainer.roles["generator"].module
    with gathered(module):
        sd = {k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()}
    if use_ema and trainer.ema is not None:
        sd.update({k: v.to("cpu") for k, v in trainer.ema.full_state_dict().items()})
    return sd


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def export_generator(trainer, out_dir: Path, *, merge_lora: bool = True, inference_weights: str = "raw") -> Path:
    """Write `out_dir/generator/` and, with an EMA, `out_dir/ema/`: diffusers folders that
    `oneforcing generate checkpoint=out_dir` and diffusers load; then `out_dir/export.json`
    declaring the weights the method's inference uses (oneforcing/weights.py)."""
    out_dir = Path(out_dir)
    _export_one(trainer, out_dir / "generator", use_ema=False, merge_lora=merge_lora)
    if trainer.ema is not None:
        _export_one(trainer, out_dir / "ema", use_ema=True, merge_lora=merge_lora)
    if trainer.ctx.is_main:
        manifest = {"inference_weights": inference_weights, "has_ema": trainer.ema is not None}
        atomic_write_text(out_dir / EXPORT_MANIFEST, json.dumps(manifest, indent=1) + "\n")
    trainer.ctx.barrier()
    return out_dir


def _export_one(trainer, out_dir: Path, *, use_ema: bool, merge_lora: bool) -> Path | None:
    """Write `out_dir` (config.json + diffusion_pytorch_model.safetensors) on rank 0. With LoRA,
    `merge_lora` folds the adapters into the weights; otherwise it writes the base folder plus
    `adapter_model.safetensors` and `adapter_config.json`."""
    module = trainer.roles["generator"].module
    sd = full_state_dict(trainer, use_ema=use_ema)
    lora = trainer.lora.get("generator")
    ctx = trainer.ctx
    if not ctx.is_main:
        ctx.barrier()
        return None
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if lora is not None:
        adapters = adapter_state_dict(sd)
        base = merge_lora_state_dict(sd, lora.alpha / lora.rank if merge_lora else 0.0)
        save_folder(base, module.config, tmp)
        if not merge_lora:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in adapters.items()}, str(tmp / "adapter_model.safetensors"))
            (tmp / "adapter_config.json").write_text(json.dumps(
                {"r": lora.rank, "lora_alpha": lora.alpha, "target_modules": list(lora.target_modules)}, indent=1))
    else:
        save_folder(sd, module.config, tmp)
    _replace_dir(tmp, out_dir)
    log.info("exported the %sgenerator to %s", "EMA " if use_ema and trainer.ema else "", out_dir)
    ctx.barrier()
    return out_dir
