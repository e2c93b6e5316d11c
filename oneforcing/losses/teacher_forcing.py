"""Causal Forcing stage 1: autoregressive diffusion with teacher forcing.

defaults.md, "Causal student" / "Teacher forcing": the real latents x0 are noised with one t per
autoregressive block (shared by the block's frames; `per_frame: true` draws one per frame), and
the causal model sees the sequence [clean ; noisy] (`clean_x=x0`, clean frames at t = 0): noisy
block i attends to the clean blocks < i and to itself, which is exactly what it will see at
inference with a KV cache of its own clean outputs. Loss = mean((v_hat - (eps - x0))^2), fp32.
t comes from the recipe's timestep sampler (`s.sample_t`, model timesteps, sigma = t / 1000).

`timestep_weighting: true` (the official setting, model/diffusion.py): the per-frame squared
error (mean over C, H, W) is weighted by the scheduler's per-timestep training weight
(FlowMatchScheduler.training_weight: a bell over t, mean 1 over the shift-5 training grid) before
the mean.

`text_dropout` (default 0: the official AR-diffusion stage drops no text; Causal Forcing then still
guides its ODE pairs with CFG 6 against the negative prompt): with this probability a sample's
prompt is replaced by the negative prompt.
"""

from __future__ import annotations

import torch

from oneforcing.losses.common import GRID, call_model, figure
from oneforcing.registry import LOSSES
from oneforcing.schedulers import FlowMatchScheduler


def block_timesteps(s, batch: int, frames: int, block: int) -> torch.Tensor:
    """[B, F] timesteps, one draw per block of `block` frames (the last block may be shorter)."""
    n_blocks = -(-frames // block)
    t = s.sample_t(batch * n_blocks).reshape(batch, n_blocks)
    return t.repeat_interleave(block, dim=1)[:, :frames]


@LOSSES.register("teacher_forcing_diffusion")
class TeacherForcingDiffusionLoss:
    """`{type: teacher_forcing_diffusion, timestep_weighting: true}`; block size = the generator's
    `frames_per_block`; `weighting_shift`: the shift of the weighting's timestep grid (official 5)."""

    def __init__(self, per_frame: bool = False, text_dropout: float = 0.0, timestep_weighting: bool = False,
                 weighting_shift: float = 5.0):
        if not 0.0 <= text_dropout <= 1.0:
            raise ValueError(f"text_dropout must be in [0, 1], got {text_dropout}")
        self.per_frame, self.text_dropout = bool(per_frame), float(text_dropout)
        self.weighting = FlowMatchScheduler(shift=weighting_shift) if timestep_weighting else None

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
        per_frame = ((v - GRID.velocity(x0, eps)) ** 2).mean(dim=(2, 3, 4))   # [B, F]
        if self.weighting is not None:
            per_frame = per_frame * self.weighting.training_weight(t).to(per_frame.device)
        return per_frame.mean(), {"t_mean": figure(t)}
