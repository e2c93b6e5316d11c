"""What a loss sees: one phase (generator or critic update) of one training iteration.

Losses are registered callables `loss(s: StepContext) -> (scalar tensor, {name: float})`. They
take the models, data and randomness they need from `s`; shared work (the generator rollout)
is computed once per phase and cached, so DMD and the GAN loss see the same rollout.
"""

from __future__ import annotations

from typing import Any, Callable, ContextManager

import torch

from oneforcing.data.batch import Batch
from oneforcing.runtime import RunContext
from oneforcing.samplers.common import checked_rollout


class StepContext:
    def __init__(self, *, step: int, phase: str, batch: Batch, generator: torch.nn.Module,
                 critic: torch.nn.Module | None, real_score: torch.nn.Module | None, scheduler,
                 timesteps, sampler, uncond_text: torch.Tensor | None, rng: torch.Generator,
                 ctx: RunContext, dtype: torch.dtype = torch.float32,
                 ema_weights: Callable[[], ContextManager[torch.nn.Module]] | None = None):
        self.step, self.phase, self.batch = step, phase, batch
        self.dtype = dtype  # the models' compute dtype (the trainer's precision)
        self.generator, self.critic, self.real_score = generator, critic, real_score
        # scheduler: the recipe's flow-matching convention (schedulers/flow_match.py), the same
        # object the sampler and the timesteps were built with.
        self.scheduler, self.timesteps, self.sampler = scheduler, timesteps, sampler
        self.rng, self.ctx = rng, ctx
        self._uncond = uncond_text
        self._ema_weights = ema_weights  # None: the recipe has no `ema:`
        self.cache: dict[str, Any] = {}

    # --- models --------------------------------------------------------------------------
    def ema_generator(self) -> ContextManager[torch.nn.Module]:
        """`with s.ema_generator() as target:` the generator running on its EMA weights, without
        gradient (a consistency target network); its own weights are back when the block ends."""
        if self._ema_weights is None:
            raise RuntimeError("this loss runs the generator's EMA: the recipe needs `ema:`")
        return self._ema_weights()

    # --- data ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def latents(self) -> torch.Tensor:
        """Clean real latents of this phase's minibatch [B, F, C, H, W]."""
        return self.batch.require("latents", "a loss reading the real latents (s.latents)").to(self.device)

    @property
    def text(self) -> torch.Tensor:
        return self.batch.text.to(self.device)

    @property
    def batch_size(self) -> int:
        return self.batch.size

    def uncond_text(self) -> torch.Tensor:
        """The negative-prompt embedding, repeated over the batch (zeros if none was given)."""
        text = self.text
        if self._uncond is None:
            return torch.zeros_like(text)
        u = self._uncond.to(self.device, text.dtype)
        if u.shape[-2] != text.shape[-2]:  # pad/crop to the conditioning length
            L = text.shape[-2]
            u = torch.nn.functional.pad(u, (0, 0, 0, max(0, L - u.shape[-2])))[..., :L, :]
        return u.expand(text.shape[0], -1, -1)

    # --- randomness ----------------------------------------------------------------------
    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=self.rng, dtype=x.dtype).to(x.device)

    def randn(self, shape, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Noise in the models' compute dtype unless `dtype` is given."""
        return torch.randn(tuple(shape), generator=self.rng, dtype=dtype or self.dtype).to(self.device)

    def sample_t(self, n: int | None = None) -> torch.Tensor:
        return self.timesteps(n or self.batch_size, rng=self.rng, device=self.device)

    # --- the generator's rollout ---------------------------------------------------------
    def rollout(self, sampler=None, key: str = "rollout"):
        """The generator's rollout from fresh noise for this batch's prompts (the sampler's
        `Rollout`: `.x0` [B, F, C, H, W] and `.frame_mask` [F], the gradient window). With
        gradient in the generator phase, without in the critic phase. Cached under `key`, so the
        losses of one phase share it; pass another `sampler` (and key) for e.g. ASD's n+1 steps."""
        if key not in self.cache:
            sampler = sampler or self.sampler
            if sampler is None:
                raise RuntimeError("this recipe has no `sampler:` but a loss asked for a generator rollout")
            shape = self.batch.rollout_shape("the generator rollout (its noise has the latents' shape)")
            noise = self.cache.setdefault("rollout_noise", self.randn(shape))
            exits = self.ctx.rng("exits", self.step, self.phase, key, per_rank=False)
            with torch.set_grad_enabled(self.phase == "generator"):
                self.cache[key] = checked_rollout(sampler(self.generator, noise, self.text, rng=self.rng,
                                                          exit_rng=exits), sampler)
        return self.cache[key]
