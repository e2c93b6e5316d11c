"""The attention-backend interface (the backend is picked in resolve.py).

A backend is a callable object:

    out = backend(q, k, v, mask=None)     # q [B, Nq, H, D], k/v [B, Nk, H, D] -> [B, Nq, H, D]

`mask` is None (every query sees every key) or a `FrameMask` (block-causal / teacher forcing).
Backends hold no global state, so two models with different backends coexist in one process.
The scale is always 1/sqrt(D), as in Wan.
"""

from __future__ import annotations

import torch

from oneforcing.attention.masks import FrameMask, take


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
