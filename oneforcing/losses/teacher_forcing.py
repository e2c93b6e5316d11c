"""Causal Forcing stage 1: autoregressive diffusion with teacher forcing.

thu-ml/Causal-Forcing model/diffusion.py (docs/fidelity.md, `causal_forcing_ar_diffusion.yaml`): the real latents x0 are noised with one t per
autoregressive block (shared by the block's frames; `per_frame: true` draws one per frame), and
the causal model sees the sequence [clean ; noisy] (`clean_x=x0`, clean frames at t = 0): noisy
block i attends to the clean blocks < i and to itself, which is exactly what it will see at
inference with a KV cache of its own clean outputs. Loss = mean((v_hat - (eps - x0))^2), fp32.
t comes from the recipe's timestep sampler (`s.sample_t`, model timesteps, sigma = t / 1000).

`timestep_weighting: true` (the official setting, model/diffusion.py): the per-frame squared
error (mean over C, H, W) is weighted by the recipe scheduler's per-timestep training weight
(`s.scheduler.training_weight`: a bell over t, mean 1 over the shifted training grid, official
shift 5) before the mean.

`text_dropout` (default 0: the official AR-diffusion stage drops no text; Causal Forcing then still
guides its ODE pairs with CFG 6 against the negative prompt): with this probability a sample's
prompt is replaced by the negative prompt.
"""

from __future__ import annotations

import torch

from oneforcing.losses.common import call_model, figure
from oneforcing.registry import LOSSES
from oneforcing.schedulers.flow_match import SHIFT_MOVED, check_text_dropout, drop_text


def block_timesteps(s, batch: int, frames: int, block: int) -> torch.Tensor:
    """[B, F] timesteps, one draw per block of `block` frames (the last block may be shorter)."""
    n_blocks = -(-frames // block)
    t = s.sample_t(batch * n_blocks).reshape(batch, n_blocks)
    return t.repeat_interleave(block, dim=1)[:, :frames]


@LOSSES.register("teacher_forcing_diffusion")
class TeacherForcingDiffusionLoss:
    """`{type: teacher_forcing_diffusion, timestep_weighting: true}`; block size = the generator's
    `frames_per_block` (a causal model's attribute, the models contract)."""

    renamed_keys = {"weighting_shift": SHIFT_MOVED}

    def __init__(self, per_frame: bool = False, text_dropout: float = 0.0, timestep_weighting: bool = False):
        self.per_frame, self.text_dropout = bool(per_frame), check_text_dropout(text_dropout)
        self.timestep_weighting = bool(timestep_weighting)

    def __call__(self, s):
        x0 = s.latents.float()
        B, F = x0.shape[:2]
        block = 1 if self.per_frame else int(s.generator.frames_per_block)
        t = block_timesteps(s, B, F, block)               # [B, F]
        eps = s.randn_like(x0)
        x_t = s.scheduler.add_noise(x0, eps, t)
        text = drop_text(s.text, s.uncond_text(), self.text_dropout, s.rng) if self.text_dropout > 0 else s.text
        v = call_model(s.generator, x_t, t, text, clean_x=x0)
        per_frame = ((v - s.scheduler.velocity(x0, eps)) ** 2).mean(dim=(2, 3, 4))   # [B, F]
        if self.timestep_weighting:
            per_frame = per_frame * s.scheduler.training_weight(t).to(per_frame.device)
        return per_frame.mean(), {"t_mean": figure(t)}
