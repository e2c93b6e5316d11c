"""Build a model already partitioned (ZeRO-3) and stream its pretrained weights in.

Under `deepspeed.zero.Init` every parameter is sharded as it is created, so a 14B teacher never
exists whole on one rank. Models that were given a `pretrained` folder notice their parameters
are empty and skip loading (`weights_loaded = False`); we then copy the checkpoint in one
tensor at a time: each parameter is gathered, filled on rank 0 from a lazily opened safetensors
file, and re-partitioned. Peak extra memory is one parameter.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from oneforcing.errors import UserError


def zero_init_context(ds_config: dict, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    from oneforcing.trainer.engines import import_deepspeed

    deepspeed = import_deepspeed()
    return deepspeed.zero.Init(config_dict_or_path=ds_config)


def _tensor_files(folder: Path) -> dict[str, Path]:
    """{tensor name: safetensors file} for a diffusers folder (single file or sharded index)."""
    from oneforcing.models.wan_io import INDEX, WEIGHTS, resolve_folder

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
    """Fill every submodule that has a `pretrained` folder but no weights yet; returns how many
    tensors were loaded. Works for partitioned and ordinary parameters alike."""
    from safetensors import safe_open

    from oneforcing.trainer.engines import import_deepspeed, is_partitioned

    deepspeed = import_deepspeed()
    loaded = 0
    wanting = [m for m in module.modules()
               if isinstance(getattr(m, "pretrained", None), str) and not getattr(m, "weights_loaded", True)]
    # A wrapper (a critic around its Wan) names the same folder as the model inside it: the
    # innermost module is the one whose parameter names match the checkpoint.
    owners = [m for m in wanting if not any(o is not m and any(o is d for d in m.modules()) for o in wanting)]
    for sub in owners:
        path = sub.pretrained
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
