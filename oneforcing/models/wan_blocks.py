"""Wan2.1 building blocks with diffusers' parameter names (so checkpoints load unchanged).

Names mirror `diffusers.models.transformers.transformer_wan`: `attn1`/`attn2` with to_q/to_k/
to_v/to_out.0/norm_q/norm_k, `ffn.net.0.proj`/`ffn.net.2`, `norm2` (affine, cross-attn norm),
`scale_shift_table` [1, 6, dim]; `condition_embedder.{time_embedder.linear_1, linear_2, time_proj,
text_embedder.linear_1, linear_2}`. The arithmetic follows diffusers operation by operation (fp32
norms and modulation) so that fp32 outputs agree to rounding.

What differs is the plumbing: modulation is per frame ([B, F, 1, dim] broadcast over the frame's
tokens, since timesteps are per frame), self-attention goes through a pluggable backend with an
optional FrameMask and an optional per-layer KV cache, and cross-attention can take precomputed
text keys/values (computed once per prompt).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from oneforcing.models.wan_rope import apply_rope


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype (as in Wan)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class WanAttention(nn.Module):
    """Projections + q/k RMSNorm across heads. The attention itself is done by the caller's backend."""

    def __init__(self, dim: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)

    def q(self, x):
        return self.norm_q(self.to_q(x)).unflatten(2, (self.heads, -1))

    def kv(self, ctx):
        k = self.norm_k(self.to_k(ctx)).unflatten(2, (self.heads, -1))
        return k, self.to_v(ctx).unflatten(2, (self.heads, -1))

    def out(self, o):
        return self.to_out[0](o.flatten(2, 3))


class GELUProj(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x):
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.net = nn.ModuleList([GELUProj(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim)])

    def forward(self, x):
        for m in self.net:
            x = m(x)
        return x


class WanBlock(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, heads: int, cross_attn_norm: bool, eps: float):
        super().__init__()
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.attn1 = WanAttention(dim, heads, eps)
        self.attn2 = WanAttention(dim, heads, eps)
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.ffn = FeedForward(dim, ffn_dim)
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x, mod, rope, text_kv, self_attn, cross_attn):
        """One block.

        x          [B, F, S, dim] tokens grouped by frame (S tokens per frame)
        mod        [B, F|1, 6, dim] per-frame timestep projection (time_proj output)
        rope       (cos, sin) for the F*S tokens
        text_kv    (k, v) [B, L, H, Dh]: this layer's cross-attention keys/values
        self_attn  callable(q, k, v) -> o over [B, N, H, Dh]: knows the mask and the KV cache
        cross_attn callable(q, k, v) -> o: plain full attention
        """
        B, Fr, S, D = x.shape
        table = self.scale_shift_table[:, None] + mod.float()  # [B, F|1, 6, D]
        shift, scale, gate, c_shift, c_scale, c_gate = (table[:, :, i:i + 1] for i in range(6))

        # 1. self-attention (adaLN-modulated, gated residual)
        h = (self.norm1(x.float()) * (1 + scale) + shift).type_as(x).reshape(B, Fr * S, D)
        q = apply_rope(self.attn1.q(h), *rope)
        k, v = self.attn1.kv(h)
        k = apply_rope(k, *rope)
        o = self.attn1.out(self_attn(q, k, v).type_as(q))
        x = (x.float() + o.reshape(B, Fr, S, D) * gate).type_as(x)

        # 2. cross-attention over the text (no mask: Wan zeroes padding, it does not mask it)
        h = self.norm2(x.float()).type_as(x).reshape(B, Fr * S, D)
        q = self.attn2.q(h)
        o = self.attn2.out(cross_attn(q, *text_kv).type_as(q))
        x = x + o.reshape(B, Fr, S, D)

        # 3. feed-forward
        h = (self.norm3(x.float()) * (1 + c_scale) + c_shift).type_as(x)
        x = (x.float() + self.ffn(h).float() * c_gate).type_as(x)
        return x


def sinusoidal(t: torch.Tensor, dim: int) -> torch.Tensor:
    """diffusers' Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0): [cos, sin]."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    emb = t[:, None].float() * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(emb), torch.sin(emb)], dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class TextProjection(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(F.gelu(self.linear_1(x), approximate="tanh"))


class ConditionEmbedder(nn.Module):
    def __init__(self, dim: int, freq_dim: int, text_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.time_embedder = TimestepEmbedding(freq_dim, dim)
        self.time_proj = nn.Linear(dim, dim * 6)
        self.text_embedder = TextProjection(text_dim, dim)

    def time(self, t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """t [M] on the 1000 grid -> temb [M, dim], timestep projection [M, 6, dim]."""
        e = sinusoidal(t, self.freq_dim).to(self.time_embedder.linear_1.weight.dtype)
        temb = self.time_embedder(e).to(dtype)
        return temb, self.time_proj(F.silu(temb)).unflatten(1, (6, -1))
