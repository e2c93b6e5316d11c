"""flash-attn (CUDA only): full attention and KV-cache attention (queries of the current block over
cache + block), masks as one call per query group. Inputs are run in bf16 when given fp32 (flash
supports fp16/bf16 only) and cast back."""

from __future__ import annotations

import torch

from oneforcing.attention.base import AttentionBackend, _flash_importable
from oneforcing.registry import ATTENTION


@ATTENTION.register("flash")
class FlashAttention(AttentionBackend):
    name = "flash"

    @classmethod
    def unavailable_reason(cls, device):
        if device.type != "cuda":
            return "flash-attn needs a CUDA device"
        return _flash_importable()

    def full(self, q, k, v):
        if q.device.type != "cuda":
            raise RuntimeError("flash attention was chosen for this model but got tensors on "
                               f"{q.device}; build the model with attention: sdpa for CPU use")
        from flash_attn import flash_attn_func

        dtype = q.dtype
        if dtype not in (torch.float16, torch.bfloat16):
            q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
        # flash-attn takes [B, N, H, D] (our layout); needs the last dim contiguous.
        o = flash_attn_func(q.contiguous(), k.contiguous(), v.contiguous(), dropout_p=0.0, causal=False)
        return o.to(dtype)
