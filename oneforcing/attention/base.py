"""The attention-backend interface and the one place that picks a backend.

A backend is a callable object:

    out = backend(q, k, v, mask=None)     # q [B, Nq, H, D], k/v [B, Nk, H, D] -> [B, Nq, H, D]

`mask` is None (every query sees every key) or a `FrameMask` (block-causal / teacher forcing).
Backends hold no global state, so two models with different backends coexist in one process.
The scale is always 1/sqrt(D), as in Wan.

`resolve_attention(name, device)` is called once per model at build time and logs one line saying
which backend runs and why; asking explicitly for a backend that cannot run here is a UserError.
"""

from __future__ import annotations

import logging

import torch

from oneforcing.attention.masks import FrameMask, take
from oneforcing.errors import UserError
from oneforcing.registry import ATTENTION

log = logging.getLogger("oneforcing")


class AttentionBackend:
    name = "?"

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        """None when the backend can run on `device`, else a short reason."""
        return None

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 mask: FrameMask | None = None) -> torch.Tensor:
        if mask is None or mask.is_full():
            return self.full(q, k, v)
        return self.masked(q, k, v, mask)

    def full(self, q, k, v) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def masked(self, q, k, v, mask: FrameMask) -> torch.Tensor:
        return self.grouped(q, k, v, mask)

    def grouped(self, q, k, v, mask: FrameMask) -> torch.Tensor:
        """Exact masked attention as one unmasked call per query group (tokens of one block and
        copy all see the same keys). Memory O(N) instead of O(N^2); one call per block."""
        out = q.new_empty(q.shape)
        for q_idx, k_idx in mask.groups():
            o = self.full(take(q, q_idx), take(k, k_idx), take(v, k_idx))
            out.index_copy_(1, q_idx.to(q.device), o.to(out.dtype))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _flash_importable() -> str | None:
    try:
        import flash_attn  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import failure means "not usable"
        return f"flash-attn not importable ({type(err).__name__})"
    return None


def resolve_attention(name: str = "auto", device: str | torch.device | None = None,
                      *, owner: str = "model") -> AttentionBackend:
    """Pick the backend for a model once, log one line saying which and why.

    auto: flash on CUDA when flash-attn imports, else sdpa (flex only when asked for: it needs
    torch.compile to be fast). An explicit name that cannot run on `device` -> UserError."""
    import oneforcing.attention  # noqa: F401 - registers the built-in backends

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
