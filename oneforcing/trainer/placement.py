"""Placement: the one seam between single-device models and how the trainer runs them; builds
a model already partitioned (ZeRO-3) and streams its pretrained weights in, or builds and loads
it on one device.

Models (oneforcing/models, oneforcing/critics) name their weights folder
(`PretrainedWeights.weights_folder`) and never load, shard or cast themselves.
Under `deepspeed.zero.Init` every parameter is sharded as it is created, so a 14B teacher never
exists whole on one rank; we then copy the checkpoint in one
tensor at a time: each parameter is gathered, filled on rank 0 from a lazily opened safetensors
file, and re-partitioned. Peak extra memory is one parameter.
Unpartitioned, a model that is entirely one checkpoint is built on the meta device and loaded
with `load_state_dict(assign=True)` (no random init); one with random parts (a critic's head)
is built on the CPU with the role's seed, the same on every rank. LoRA adapters, gradient
checkpointing, device and precision are set here too.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import torch

from oneforcing.errors import UserError
from oneforcing.models.wan_io import INDEX, WEIGHTS, resolve_folder
from oneforcing.models.weights import PretrainedWeights, covers_everything, load_pretrained, weight_owners
from oneforcing.registry import build, declared
from oneforcing.schedulers import FlowMatchScheduler
from oneforcing.runtime import RunContext, derive_seed
from oneforcing.trainer.config import LoraOptions
from oneforcing.trainer.engines import DeepSpeedPlan, import_deepspeed, is_partitioned
from oneforcing.trainer.lora import apply_lora

log = logging.getLogger("oneforcing")


def build_role_module(cfg: dict, registry, *, role: str, plan: DeepSpeedPlan, lora: LoraOptions | None,
                      ctx: RunContext, scheduler: FlowMatchScheduler) -> torch.nn.Module:
    """Build, load, adapt and place the model of `role` (models.<role> in the recipe); a model that
    declares `scheduler` gets the recipe's."""
    ds = plan.options
    path = f"models.{role}"
    handed = declared(cfg, registry, scheduler=scheduler)
    # Trained roles and a frozen role that becomes an inference engine are born partitioned.
    partition = plan.sharded and ds.zero_init and (role != "real_score" or ds.frozen_engine)
    if partition:
        torch.manual_seed(derive_seed(ctx.seed, "init", role))  # the same random parts on every rank
        with zero_init_context(plan.config(None)):
            module = build(cfg, registry, path=path, **handed)
        loaded = stream_pretrained_weights(module, ctx.rank)
    else:
        module = _built_on_meta(cfg, registry, path, handed)
        if module is None:
            torch.manual_seed(derive_seed(ctx.seed, "init", role))
            module = build(cfg, registry, path=path, **handed)
        loaded = load_pretrained(module)
    if loaded:
        log.info("%s: %s %d pretrained tensors into %s parameters", role, "streamed" if partition else "loaded",
                 loaded, "partitioned" if partition else "local")
    if lora is not None:
        torch.manual_seed(derive_seed(ctx.seed, "lora", role))
        apply_lora(module, lora, role)
    if ds.gradient_checkpointing:  # every (sub)model that supports it, e.g. a critic's inner Wan
        for sub in module.modules():
            if hasattr(sub, "gradient_checkpointing"):
                sub.gradient_checkpointing = True
    if any(is_partitioned(p) for p in module.parameters()):
        return module  # zero.Init already placed and cast the shards
    return module.to(device=ctx.device, dtype=ds.dtype)


def _built_on_meta(cfg: dict, registry, path: str, handed: dict) -> torch.nn.Module | None:
    """The model built on the meta device, when it is a `PretrainedWeights` class given a
    `pretrained` folder whose checkpoint then holds every tensor; else None (build it for real)."""
    name = cfg.get("type")
    cls = registry.find(name).obj if isinstance(name, str) and registry.find(name) is not None else None
    if not (isinstance(cls, type) and issubclass(cls, PretrainedWeights) and cfg.get("pretrained")):
        return None
    with torch.device("meta"):
        module = build(cfg, registry, path=path, **handed)
    return module if covers_everything(module) else None


def zero_init_context(ds_config: dict):
    """Parameters created inside are partitioned across the ranks (ZeRO-3) as they are created."""
    return import_deepspeed().zero.Init(config_dict_or_path=ds_config)


def _tensor_files(folder: Path) -> dict[str, Path]:
    """{tensor name: safetensors file} for a diffusers folder (single file or sharded index)."""
    folder = resolve_folder(folder)
    if (folder / WEIGHTS).is_file():
        from safetensors import safe_open

        with safe_open(str(folder / WEIGHTS), "pt") as f:
            return {k: folder / WEIGHTS for k in f.keys()}
    if (folder / INDEX).is_file():
        weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
        return {k: folder / v for k, v in weight_map.items()}
    raise UserError(f"{folder} has neither {WEIGHTS} nor {INDEX}")


@torch.no_grad()
def stream_pretrained_weights(module: torch.nn.Module, rank: int) -> int:
    """Fill every weight owner of `module` from its folder, one tensor at a time; returns how
    many tensors were loaded. Works for partitioned and ordinary parameters alike."""
    from safetensors import safe_open

    deepspeed = import_deepspeed()
    loaded = 0
    for _, sub in weight_owners(module):
        path = sub.weights_folder
        files = _tensor_files(Path(path))
        own = dict(sub.named_parameters())
        missing = sorted(set(own) - set(files))
        if missing:
            raise UserError(f"{path}: checkpoint lacks {missing[:3]}{'...' if len(missing) > 3 else ''}")
        handles: dict[Path, object] = {}
        try:
            for name, p in own.items():
                file = files[name]
                if rank == 0 and file not in handles:
                    handles[file] = safe_open(str(file), "pt").__enter__()
                ctx = (deepspeed.zero.GatheredParameters([p], modifier_rank=0) if is_partitioned(p)
                       else contextlib.nullcontext())
                with ctx:
                    if rank == 0 or not is_partitioned(p):
                        if rank != 0:  # unpartitioned: every rank loads its own copy
                            handles.setdefault(file, safe_open(str(file), "pt").__enter__())
                        tensor = handles[file].get_tensor(name)
                        if tuple(tensor.shape) != tuple(p.shape):
                            raise UserError(f"{path}: '{name}' has shape {tuple(tensor.shape)}, "
                                            f"the model expects {tuple(p.shape)}")
                        p.data.copy_(tensor.to(p.dtype))
                loaded += 1
        finally:
            for h in handles.values():
                h.__exit__(None, None, None)
        sub.weights_loaded = True
    return loaded
