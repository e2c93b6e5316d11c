"""Causal consistency distillation (CD): Causal Forcing++'s data-only alternative to the causal ODE init.

thu-ml/Causal-Forcing model/naive_consistency.py `generator_loss` (configs/causal_cd_framewise.yaml,
trainer/naive_cd.py; docs/fidelity.md). No ODE pairs: the real clean latents x0 of the batch only.
    grid        the N-step inference grid of the recipe's scheduler (`num_steps`, official
                discrete_cd_N 48 at shift 5: t_i = warp(1000 (1 - i/N)), i = 0 .. N-1; no t = 0)
    i           uniform in {0 .. N-2}, one per sample, shared by all its frames;  t = t_i, t' = t_{i+1}
    x_t         = (1 - sigma_t) x0 + sigma_t eps
    teacher     x_t' = x_t + (sigma_t' - sigma_t) v_T,  v_T = v_u + w (v_c - v_u): one Euler step of the
                FROZEN causal AR-diffusion teacher (`models.real_score`, the stage-1 model), w = cfg_scale
                (official guidance_scale 3 written uncond + 3 (cond - uncond) there: cfg_scale 3.0)
    target      f_ema(x_t', t') = x_t' - sigma_t' v_ema(x_t', t'): the generator on its EMA weights
                (`s.ema_generator()`, recipe `ema:`), without gradient
    loss        mean((f(x_t, t) - f_ema(x_t', t'))^2) in fp32, f the generator's x0 prediction
Teacher, student and target all run causally in teacher-forcing mode on the REAL clean context
(`clean_x = x0`, official `clean_x=clean_latent`): block i sees the clean blocks < i and its own
noisy frames, the context the pairs of the causal ODE init are integrated with. The x0
parameterisation makes f(x, 0) = x, so no boundary term is needed.
"""

from __future__ import annotations

import torch

from oneforcing.losses.common import call_model, figure
from oneforcing.registry import LOSSES
from oneforcing.schedulers.flow_match import check_cfg_scale, guided_velocity


def cd_timesteps(scheduler, num_steps: int, batch: int, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, t_next) [B]: a uniform pair of neighbours (t_i, t_{i+1}), i in {0 .. N-2}, of the
    scheduler's N-step grid, one per sample."""
    grid = torch.tensor(scheduler.uniform_grid(num_steps), dtype=torch.float32)
    i = torch.randint(0, num_steps - 1, (batch,), generator=rng)
    return grid[i], grid[i + 1]


def consistency_target(target: torch.nn.Module, scheduler, x_next: torch.Tensor, t_next: torch.Tensor,
                       text: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """f_target(x_t', t') = x_t' - sigma_t' v(x_t', t'), teacher-forced on x0, without gradient."""
    with torch.no_grad():
        v = call_model(target, x_next, t_next, text, causal=True, clean_x=x0)
        return scheduler.x0_from_v(x_next, v, t_next)


@LOSSES.register("causal_cd")
class CausalCDLoss:
    """`{type: causal_cd, num_steps: 48, cfg_scale: 3.0}`. Needs `models.real_score` (the causal
    teacher, run teacher-forced) and `ema:` (the target network). `batch_cfg`: the teacher's
    conditional and unconditional passes as one batch of 2B (as the dmd loss)."""

    def __init__(self, num_steps: int = 48, cfg_scale: float = 3.0, batch_cfg: bool = True):
        if int(num_steps) < 2:
            raise ValueError(f"num_steps must be >= 2 (a step needs two grid points), got {num_steps}")
        self.num_steps, self.cfg_scale, self.batch_cfg = int(num_steps), check_cfg_scale(cfg_scale), bool(batch_cfg)

    def teacher_step(self, s, x_t: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
                     x0: torch.Tensor) -> torch.Tensor:
        """x_t' from one guided Euler step of the frozen causal teacher, teacher-forced on x0."""
        teacher = s.real_score
        if teacher is None:
            raise RuntimeError("the causal_cd loss needs models.real_score (the causal AR-diffusion teacher)")

        def velocity(x, t, text, clean_x):
            return call_model(teacher, x, t, text, causal=True, clean_x=clean_x)

        uncond = None if self.cfg_scale == 1.0 else s.uncond_text()
        with torch.no_grad():
            v = guided_velocity(velocity, x_t, t, s.text, uncond, self.cfg_scale, batch=self.batch_cfg, clean_x=x0)
            return s.scheduler.euler_step(x_t, v, t, t_next)

    def __call__(self, s):
        x0 = s.latents.float()
        B, F = x0.shape[:2]
        t, t_next = (u.to(s.device)[:, None].expand(B, F) for u in cd_timesteps(s.scheduler, self.num_steps, B, s.rng))
        eps = s.randn_like(x0)
        x_t = s.scheduler.add_noise(x0, eps, t)
        x_next = self.teacher_step(s, x_t, t, t_next, x0)
        with s.ema_generator() as target:
            goal = consistency_target(target, s.scheduler, x_next, t_next, s.text, x0)
        v = call_model(s.generator, x_t, t, s.text, causal=True, clean_x=x0)
        pred = s.scheduler.x0_from_v(x_t, v, t)
        return torch.mean((pred - goal) ** 2), {"t_mean": figure(t), "t_step": figure(t - t_next)}
