"""The bidirectional teacher's Euler ODE sampler with classifier-free guidance (ODE pairs).

Model timesteps: t_i = warp(1000 * (1 - i / num_steps)) for i = 0 .. num_steps-1, then 0 (with 48
steps and the recipe scheduler's shift 5, indices 0, 12, 24, 36 are t = 1000, 937.5, 833.3, 625).
Each step
    v = v_uncond + cfg_scale * (v_cond - v_uncond)         (cfg_scale 6 = Wan's usual CFG scale)
    x <- x + (sigma_{i+1} - sigma_i) v,  sigma = t / 1000
The states x_i at `keep_indices` (the inputs of those steps) and the final x0 are returned.
Conditional and unconditional passes share one batched forward when the texts have equal length.

Teacher forcing (`teacher_forcing: true`, Causal Forcing's causal ODE pairs; the official
`get_causal_ode_data_framewise.py` / `_chunkwise.py`): the AR-diffusion model denoises all frames
at once, every step called with `clean_x` = the sample's REAL clean latents (`context`), so the
noisy block i sees the clean real frames of the blocks < i and itself, never its own noisy
earlier frames. CFG 6 with the negative prompt, as in that script.

    out = TeacherODE(scheduler=flow)(teacher, noise, text, negative_text=negative_text)
    out = TeacherODE(teacher_forcing=True, scheduler=flow)(ar_model, noise, text, negative_text=neg, context=real_x0)
    out.x0 [B, F, C, H, W]; out.states [B, K, F, C, H, W]; out.timesteps [K]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from oneforcing.registry import SAMPLERS
from oneforcing.samplers.common import Rollout, full_t, in_model_dtype, model_dtype
from oneforcing.schedulers.flow_match import (GUIDANCE_RENAMED, SHIFT_MOVED, FlowMatchScheduler, check_cfg_scale,
                                              guided_velocity)


DEFAULT_STEPS, DEFAULT_KEEP = 48, [0, 12, 24, 36]  # change num_steps and keep_indices together


@dataclass
class ODEResult(Rollout):
    states: torch.Tensor | None = None      # [B, K, F, C, H, W]
    timesteps: torch.Tensor | None = None   # [K] model timesteps of the kept states
    keep_indices: list[int] = field(default_factory=list)


@SAMPLERS.register("teacher_ode")
class TeacherODE:
    renamed_keys = {"shift": SHIFT_MOVED, "guidance": GUIDANCE_RENAMED}
    steps: list[float]  # the step list in model timesteps (the sampler contract; set from the scheduler)

    def __init__(self, num_steps: int = DEFAULT_STEPS, cfg_scale: float = 6.0,
                 keep_indices: list[int] | None = None, causal: bool | None = False,
                 teacher_forcing: bool = False, *, scheduler: FlowMatchScheduler):
        self.scheduler = scheduler  # the recipe's, handed in: no component has a convention of its own
        keep = DEFAULT_KEEP if keep_indices is None else list(keep_indices)
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if keep_indices is None and any(k >= num_steps for k in keep):
            same = sorted({round(k * num_steps / DEFAULT_STEPS) for k in keep})
            raise ValueError(f"num_steps={num_steps} needs keep_indices too: the default {keep} is for "
                             f"{DEFAULT_STEPS} steps (the same fractions of {num_steps} steps: {same})")
        if any(not 0 <= k < num_steps for k in keep):
            raise ValueError(f"keep_indices {keep} must lie in [0, num_steps={num_steps})")
        self.num_steps = num_steps
        self.cfg_scale = check_cfg_scale(cfg_scale)
        self.keep_indices = keep
        # `causal` is passed to the model's forward (False: a CausalWan teacher runs bidirectionally;
        # None: not passed, the model's own setting).
        self.causal = causal
        self.teacher_forcing = bool(teacher_forcing)
        self.timesteps = self.scheduler.uniform_grid(num_steps) + [0.0]
        self.steps = self.timesteps[:-1]

    @property
    def needs_context(self) -> bool:
        return self.teacher_forcing

    def _v(self, model, x, t, text, negative_text, context=None):
        def velocity(x, t, text, clean_x=None):
            kw = {} if self.causal is None else {"causal": self.causal}
            if clean_x is not None:
                kw["clean_x"] = clean_x
            return model(x, t, text, **kw)

        return guided_velocity(velocity, x, t, text, negative_text, self.cfg_scale, clean_x=context)

    @torch.no_grad()
    def __call__(self, model, noise: torch.Tensor, text: torch.Tensor, *,
                 rng: torch.Generator | None = None, exit_rng: torch.Generator | None = None,
                 negative_text: torch.Tensor | None = None, context: torch.Tensor | None = None,
                 on_block: Callable[[int, int, torch.Tensor], None] | None = None,
                 callback=None) -> ODEResult:
        """`negative_text` [B, L, D] (Wan's negative prompt); None = no guidance. `context`
        [B, F, C, H, W]: the real clean latents (teacher forcing only). `callback(i, t, x)` is
        called before each step; `on_block` once, with the whole clip. The ODE is deterministic
        (`rng`, `exit_rng` unused). The ODE state stays in fp32 whatever the model's
        dtype: with shift 5-8 the first Euler steps move sigma by ~0.003, an update a bf16 state
        rounds away; the model sees the state in its own dtype."""
        if self.teacher_forcing != (context is not None):
            raise ValueError("teacher_forcing needs the real latents as `context`, and only it takes them"
                             if self.teacher_forcing else "context given, but teacher_forcing is off")
        if context is not None and context.shape != noise.shape:
            raise ValueError(f"context {tuple(context.shape)} and noise {tuple(noise.shape)} differ in shape")
        text, negative_text, context = in_model_dtype(model, text, negative_text, context)
        in_model = model_dtype(model) or noise.dtype
        B = noise.shape[0]
        x, kept = noise.float(), {}
        for i in range(self.num_steps):
            t, t_next = full_t(self.timesteps[i], B, x.device), full_t(self.timesteps[i + 1], B, x.device)
            if i in self.keep_indices:
                kept[i] = x
            if callback is not None:
                callback(i, self.timesteps[i], x)
            v = self._v(model, x.to(in_model), t, text, negative_text, context).float()
            x = self.scheduler.euler_step(x, v, t, t_next)
        states = torch.stack([kept[i] for i in self.keep_indices], dim=1) if kept else x.new_zeros(B, 0, *x.shape[1:])
        ts = torch.tensor([self.timesteps[i] for i in self.keep_indices])
        if on_block is not None:
            on_block(0, x.shape[1], x)
        return ODEResult(x0=x, states=states, timesteps=ts, keep_indices=list(self.keep_indices),
                         blocks=[(0, x.shape[1])], num_forwards=self.num_steps)
