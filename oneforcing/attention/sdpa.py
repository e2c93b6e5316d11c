"""torch's scaled_dot_product_attention: runs anywhere, the reference the others are tested against."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from oneforcing.attention.base import AttentionBackend
from oneforcing.attention.masks import FrameMask
from oneforcing.registry import ATTENTION


@ATTENTION.register("sdpa")
class SDPAAttention(AttentionBackend):
    """Masks become a dense boolean matrix while it is small (<= `dense_mask_limit` entries);
    above that, one unmasked call per query group (a 21-frame teacher-forcing mask at 832x480 would
    be 65k x 65k = 4 GB as a matrix)."""

    name = "sdpa"

    def __init__(self, dense_mask_limit: int = 1 << 24):
        self.dense_mask_limit = int(dense_mask_limit)

    def full(self, q, k, v):
        return self.attend(q, k, v, None)

    @staticmethod
    def attend(q, k, v, attn_mask: torch.Tensor | None):
        # [B, N, H, D] -> sdpa's [B, H, N, D] and back; a bool mask is True where attention is allowed.
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=attn_mask, dropout_p=0.0, is_causal=False)
        return o.transpose(1, 2)

    def masked(self, q, k, v, mask: FrameMask):
        if q.shape[1] * k.shape[1] <= self.dense_mask_limit:
            return self.attend(q, k, v, mask.dense(q.device))
        return self.grouped(q, k, v, mask)
