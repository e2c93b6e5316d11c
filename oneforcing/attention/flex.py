"""torch flex_attention with a BlockMask: block-causal and teacher-forcing training at full length.

The FrameMask rule is used directly as flex's mask_mod (indexing the per-token block/copy ids), so
fully masked 128x128 tiles are skipped. Block masks are cached on the backend instance (not
globally) keyed by the mask's content. flex_attention is compiled on CUDA; on CPU it runs in eager
mode (slow, materialises scores), enough to test it against sdpa; CPU calls that need gradients
take the sdpa path (flex has no CPU backward).
"""

from __future__ import annotations

import warnings

import torch

from oneforcing.attention.base import AttentionBackend
from oneforcing.attention.masks import FrameMask
from oneforcing.attention.sdpa import SDPAAttention
from oneforcing.registry import ATTENTION


def _flex():
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    return flex_attention, create_block_mask


@ATTENTION.register("flex")
class FlexAttention(AttentionBackend):
    name = "flex"

    def __init__(self, compile: bool = True):
        self.compile = bool(compile)
        self._fn = None
        self._masks: dict = {}

    @classmethod
    def unavailable_reason(cls, device):
        try:
            _flex()
        except Exception as err:  # noqa: BLE001
            return f"torch.nn.attention.flex_attention unavailable ({type(err).__name__})"
        return None

    def _attention_fn(self, device: torch.device):
        flex_attention, _ = _flex()
        if device.type != "cuda" or not self.compile:
            return flex_attention
        if self._fn is None:
            self._fn = torch.compile(flex_attention, dynamic=False)
        return self._fn

    def _block_mask(self, mask: FrameMask, device: torch.device):
        memo = mask._memo.get(("flex", str(device)))
        if memo is not None:  # the same mask object, asked again by the next layer
            return memo
        mask._memo[("flex", str(device))] = self._lookup(mask, device)
        return mask._memo[("flex", str(device))]

    def _lookup(self, mask: FrameMask, device: torch.device):
        _, create_block_mask = _flex()
        ids = torch.stack([mask.q_block, mask.q_clean.long()]).cpu(), torch.stack(
            [mask.k_block, mask.k_clean.long()]).cpu()
        key = (str(device), ids[0].shape[1], ids[1].shape[1], ids[0].numpy().tobytes(), ids[1].numpy().tobytes())
        if key not in self._masks:
            qb, qc = mask.q_block.to(device), mask.q_clean.to(device)
            kb, kc = mask.k_block.to(device), mask.k_clean.to(device)

            def mask_mod(b, h, q_idx, kv_idx):
                return FrameMask.visible(qb[q_idx], qc[q_idx], kb[kv_idx], kc[kv_idx])

            if len(self._masks) >= 16:  # a few shapes per run; keep memory bounded
                self._masks.clear()
            self._masks[key] = create_block_mask(mask_mod, None, None, qb.shape[0], kb.shape[0],
                                                 device=str(device))
        return self._masks[key]

    def _run(self, q, k, v, block_mask):
        fn = self._attention_fn(q.device)
        with warnings.catch_warnings():
            # CPU/eager use is for tests; the "not compiled" warning is expected there.
            warnings.filterwarnings("ignore", message=".*flex_attention.*")
            o = fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask)
        return o.transpose(1, 2)

    @staticmethod
    def _cpu_grad(q, k, v) -> bool:
        # flex_attention has no backward on CPU: such calls take the (exact) sdpa path instead.
        return q.device.type == "cpu" and torch.is_grad_enabled() and any(
            t.requires_grad for t in (q, k, v))

    def full(self, q, k, v):
        if self._cpu_grad(q, k, v):
            return SDPAAttention.attend(q, k, v, None)
        return self._run(q, k, v, None)

    def masked(self, q, k, v, mask: FrameMask):
        if self._cpu_grad(q, k, v):
            return SDPAAttention().masked(q, k, v, mask)
        return self._run(q, k, v, self._block_mask(mask, q.device))
