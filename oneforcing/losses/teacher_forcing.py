"""Causal Forcing stage 1: autoregressive diffusion with teacher forcing.

defaults.md, "Causal student" / "Teacher forcing": the real latents x0 are noised with one t per
autoregressive block (shared by the block's frames; `per_frame: true` draws one per frame), and
the causal model sees the sequence [clean ; noisy] (`clean_x=x0`, clean frames at t = 0): noisy
block i attends to the clean blocks < i and to itself, which is exactly what it will see at
inference with a KV cache of its own clean outputs. Loss = mean((v_hat - (eps - x0))^2), fp32.
t comes from the recipe's timestep sampler (`s.sample_t`, model timesteps, sigma = t / 1000).

`text_dropout`: with this probability a sample's prompt is replaced by the negative prompt, so the
AR model also learns the unconditional score that CFG needs when it later generates ODE pairs.
"""

from __future__ import annotations

import torch

from oneforcing.losses.common import GRID, call_model, figure
from oneforcing.registry import LOSSES


def block_timesteps(s, batch: int, frames: int, block: int) -> torch.Tensor:
    """[B, F] timesteps, one draw per block of `block` frames (the last block may be shorter)."""
    n_blocks = -(-frames // block)
    t = s.sample_t(batch * n_blocks).reshape(batch, n_blocks)
    return t.repeat_interleave(block, dim=1)[:, :frames]


@LOSSES.register("teacher_forcing_diffusion")
class TeacherForcingDiffusionLoss:
    """`{type: teacher_forcing_diffusion}`; block size = the generator's `frames_per_block`."""

    def __init__(self, per_frame: bool = False, text_dropout: float = 0.0):
        if not 0.0 <= text_dropout <= 1.0:
            raise ValueError(f"text_dropout must be in [0, 1], got {text_dropout}")
        self.per_frame, self.text_dropout = bool(per_frame), float(text_dropout)

    def __call__(self, s):
        x0 = s.latents.float()
        B, F = x0.shape[:2]
        block = 1 if self.per_frame else int(getattr(s.generator, "frames_per_block", 1))
        t = block_timesteps(s, B, F, block)               # [B, F]
        eps = s.randn_like(x0)
        x_t = GRID.add_noise(x0, eps, t)
        text = s.text
        if self.text_dropout > 0:
            drop = torch.rand(B, generator=s.rng) < self.text_dropout
            text = torch.where(drop.to(text.device)[:, None, None], s.uncond_text(), text)
        v = call_model(s.generator, x_t, t, text, clean_x=x0)
        loss = torch.mean((v - GRID.velocity(x0, eps)) ** 2)
        return loss, {"t_mean": figure(t)}
