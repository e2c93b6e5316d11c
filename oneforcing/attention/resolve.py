"""`resolve_attention(name, device)`: called once per model at build time, it logs one line saying
which backend runs and why; asking explicitly for a backend that cannot run here is a UserError.
It imports every built-in backend's module, so each is registered before the first look-up."""

from __future__ import annotations

import logging

import torch

from oneforcing.attention import flash, flex, sdpa  # noqa: F401 - registers the built-in backends
from oneforcing.attention.base import AttentionBackend, _flash_importable
from oneforcing.errors import UserError
from oneforcing.registry import ATTENTION

log = logging.getLogger("oneforcing")


def resolve_attention(name: str = "auto", device: str | torch.device | None = None,
                      *, owner: str = "model") -> AttentionBackend:
    """Pick the backend for a model once, log one line saying which and why.

    auto: flash on CUDA when flash-attn imports, else sdpa (flex only when asked for: it needs
    torch.compile to be fast). An explicit name that cannot run on `device` -> UserError."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if name == "auto":
        if device.type == "cuda" and _flash_importable() is None:
            chosen, why = "flash", "auto: CUDA device and flash-attn importable"
        elif device.type == "cuda":
            chosen, why = "sdpa", f"auto: CUDA device but {_flash_importable()}"
        else:
            chosen, why = "sdpa", f"auto: {device.type} device (flash needs CUDA)"
    else:
        chosen, why = name, "requested"
    cls = ATTENTION.get(chosen)  # unknown name -> RegistryError with did-you-mean
    reason = cls.unavailable_reason(device)  # the attention contract (registry/contracts.py)
    if reason is not None:
        raise UserError(f"attention backend '{chosen}' cannot run on {device.type}: {reason}; "
                        "use attention: auto or sdpa")
    backend = cls()
    log.info("%s attention: %s (%s, device %s)", owner, chosen, why, device.type)
    return backend
