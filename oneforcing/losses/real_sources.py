"""Where a discriminator's "real" samples come from (registered in REAL_SOURCES).

A real source (the real_sources contract) is called as `source(s) -> x_real [B, F, C, H, W]`
(clean latents, no gradient, the same shape as the phase's rollout) and is chosen by the GAN
losses' `real:` sub-config:

    real: {type: dataset}                                   One-Forcing (the default)
    real: {type: student_rollout}                           ASD: the student's (n+1)-step output
    real: {type: student_rollout, steps: [1000, 500]}       ... with an explicit step list
"""

from __future__ import annotations

import torch

from oneforcing.registry import REAL_SOURCES
from oneforcing.samplers.causal_inference import CausalInference
from oneforcing.schedulers.flow_match import SHIFT_MOVED


@REAL_SOURCES.register("dataset")
class DatasetReal:
    """The batch's clean latents `s.latents`, paired with the prompts (`s.text`) that drive the
    phase's rollout: the reals of Aurora-edu/One-Forcing model/one_forcing.py (its `clean_latent`)."""

    def __call__(self, s) -> torch.Tensor:
        return s.latents.detach()


@REAL_SOURCES.register("student_rollout")
class StudentRolloutReal:
    """ASD's real side: the generator's own (n+1)-step rollout for the same prompts and (through
    `s.rollout`'s shared `rollout_noise`) the same initial noise as the n-step fake side, all
    steps run for every block, without gradient. Cached per phase under key "asd_real".

    `steps`: the (n+1)-step list on the un-shifted 1000 grid; None = the uniform grid
    [1000 (1 - i / (n+1))] for i < n+1, with n = the phase sampler's number of steps (so a
    one-step student gets [1000, 500]). Warped by the recipe scheduler's shift (`s.scheduler`) like
    every step list. The sampler runs every step of every block (causal_inference, no exit draw)."""

    renamed_keys = {"shift": SHIFT_MOVED}

    def __init__(self, steps: list[float] | None = None, context_t: float = 0.0):
        if steps is not None and not steps:
            raise ValueError("student_rollout: `steps` must not be empty")
        self.steps = None if steps is None else [float(v) for v in steps]
        self.context_t = float(context_t)

    def step_list(self, s) -> list[float]:
        if self.steps is not None:
            return self.steps
        if s.sampler is None:
            raise RuntimeError("student_rollout without `steps` takes n from the recipe's `sampler:`, which is not set")
        return s.scheduler.unshifted_grid(len(s.sampler.steps) + 1)

    def sampler(self, s) -> CausalInference:
        return CausalInference(steps=self.step_list(s), first_frame_enhancement=False, context_t=self.context_t,
                               scheduler=s.scheduler)

    def __call__(self, s) -> torch.Tensor:
        return s.rollout(sampler=self.sampler(s), key="asd_real").x0.detach()
