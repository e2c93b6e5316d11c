"""Where a discriminator's "real" samples come from (registered in REAL_SOURCES).

A real source is called as `source(s) -> x_real [B, F, C, H, W]` (clean latents, no gradient,
the same shape as the phase's rollout) and is chosen by the GAN losses' `real:` sub-config:

    real: {type: dataset}                                   One-Forcing (the default)
    real: {type: student_rollout}                           ASD: the student's (n+1)-step output
    real: {type: student_rollout, steps: [1000, 500]}       ... with an explicit step list
"""

from __future__ import annotations

import torch

from oneforcing.registry import REAL_SOURCES
from oneforcing.samplers.causal_inference import CausalInference
from oneforcing.samplers.self_forcing import Rollout


@REAL_SOURCES.register("dataset")
class DatasetReal:
    """The batch's clean latents `s.latents`, paired with the prompts (`s.text`) that drive the
    phase's rollout (defaults.md: "Real samples: clean latents from the dataset")."""

    def __call__(self, s) -> torch.Tensor:
        return s.latents.detach()


class _FullStepRollout:
    """A sampler with the `s.rollout` call signature that runs *every* step of its list for every
    block (no random exit, no gradient): the student's own n-step inference output."""

    def __init__(self, steps: list[float], shift: float, context_t: float):
        self.inner = CausalInference(steps=steps, first_frame_enhancement=False, shift=shift, context_t=context_t)
        self.steps = self.inner.steps

    def __call__(self, model, noise, text, *, generator=None, exit_generator=None) -> Rollout:
        with torch.no_grad():
            x0 = self.inner(model, noise, text, generator=generator)
        return Rollout(x0=x0, frame_mask=torch.ones(x0.shape[1], dtype=torch.bool), with_grad=False)


@REAL_SOURCES.register("student_rollout")
class StudentRolloutReal:
    """ASD's real side: the generator's own (n+1)-step rollout for the same prompts and (through
    `s.rollout`'s shared `rollout_noise`) the same initial noise as the n-step fake side, all
    steps run for every block, without gradient. Cached per phase under key "asd_real".

    `steps`: the (n+1)-step list on the un-shifted 1000 grid; None = the uniform grid
    [1000 (1 - i / (n+1))] for i < n+1, with n = the phase sampler's number of steps (so a
    one-step student gets [1000, 500]). Warped by `shift` like every step list."""

    def __init__(self, steps: list[float] | None = None, shift: float = 5.0, context_t: float = 0.0):
        if steps is not None and not steps:
            raise ValueError("student_rollout: `steps` must not be empty")
        self.steps = None if steps is None else [float(v) for v in steps]
        self.shift, self.context_t = float(shift), float(context_t)

    def step_list(self, s) -> list[float]:
        if self.steps is not None:
            return self.steps
        n = len(getattr(s.sampler, "steps", [1000.0]))
        return [1000.0 * (1 - i / (n + 1)) for i in range(n + 1)]

    def sampler(self, s) -> _FullStepRollout:
        return _FullStepRollout(self.step_list(s), self.shift, self.context_t)

    def __call__(self, s) -> torch.Tensor:
        return s.rollout(sampler=self.sampler(s), key="asd_real").x0.detach()
