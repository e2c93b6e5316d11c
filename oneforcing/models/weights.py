"""Pretrained weights: which module owns which folder, and the one single-device way to load them.

A module that subclasses `PretrainedWeights` and sets `weights_folder` (a diffusers transformer
folder) declares that its own parameter names are that folder's tensor names. Models never load
at construction: whoever places the model does, either

- here, `load_pretrained(model)`: `load_state_dict(assign=True)`, so the checkpoint's tensors
  become the parameters (a model built on the meta device is materialised with no random init
  to overwrite), or
- the trainer's placement (oneforcing/trainer/placement.py), which streams the same tensors,
  one at a time, into parameters that ZeRO-3 partitioned at construction.

Nothing here knows about devices beyond CPU, processes or sharding.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from oneforcing.errors import UserError
from oneforcing.models.wan_io import load_state_dict


class PretrainedWeights:
    """Mixin for an nn.Module whose own parameter names match the folder `weights_folder`
    (None: randomly initialised, nothing to load). Until its weights are loaded (load_pretrained,
    or the trainer's placement, which set `weights_loaded`) such a module holds a random init:
    `require_weights()`, called by its forward, refuses to run it rather than produce output
    from random weights."""

    weights_folder: str | None = None
    weights_loaded: bool = False

    def init_when_absent(self) -> set[str]:
        """Names of tensors this module's config adds to its architecture (e.g. a toy model's
        absolute positions over a pretrained base): a folder without them loads, and they start at
        zero (also when the model was built on the meta device). Everything else must be in the folder."""
        return set()

    def require_weights(self) -> None:
        if self.weights_folder is not None and not self.weights_loaded:
            raise UserError(f"{type(self).__name__} names the weights folder {self.weights_folder} but they were "
                            "never loaded (it holds a random init): load them with "
                            "oneforcing.models.weights.load_pretrained(model), or build it with from_pretrained")


def weight_owners(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """[(prefix, submodule)] of the innermost modules that name a weights folder (a critic
    wrapping a Wan: the Wan, whose parameter names match the checkpoint)."""
    found = [(name, m) for name, m in module.named_modules()
             if isinstance(m, PretrainedWeights) and m.weights_folder is not None]
    return [(name, m) for name, m in found
            if not any(o is not m and any(o is d for d in m.modules()) for _, o in found)]


def covers_everything(module: nn.Module) -> bool:
    """True when the weight owners' checkpoints hold every parameter and buffer of `module` (then
    it can be built on the meta device and loaded with no random init at all)."""
    loaded = {f"{prefix}.{k}" if prefix else k for prefix, sub in weight_owners(module) for k in sub.state_dict()}
    return all(n in loaded for n, _ in (*module.named_parameters(), *module.named_buffers()))


def checked_state_dict(owner: nn.Module, folder: str | Path) -> dict[str, torch.Tensor]:
    """The folder's tensors, checked against `owner`'s names and shapes (one-line errors)."""
    sd = load_state_dict(folder)
    own = owner.state_dict()
    added = {f"{prefix}.{k}" if prefix else k for prefix, m in owner.named_modules()
             if isinstance(m, PretrainedWeights) for k in m.init_when_absent()}
    sd.update({k: torch.zeros(own[k].shape, dtype=own[k].dtype) for k in added if k in own and k not in sd})
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or unexpected:
        raise UserError(f"{folder}: checkpoint does not match the model's config: missing "
                        f"{missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
                        f"{unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise UserError(f"{folder}: tensor {k!r} has shape {tuple(v.shape)}, the config.json's model "
                            f"needs {tuple(own[k].shape)} (weights and config.json disagree)")
    return sd


def load_pretrained(module: nn.Module) -> int:
    """Load every weight owner's folder into `module` (assign=True); returns the tensors loaded."""
    loaded = 0
    for _, owner in weight_owners(module):
        sd = checked_state_dict(owner, owner.weights_folder)
        owner.load_state_dict(sd, strict=True, assign=True)
        owner.weights_loaded = True
        loaded += len(sd)
    return loaded
