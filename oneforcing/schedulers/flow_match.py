"""The flow-matching noise schedule with a timestep shift: the one place for x0/eps/v/x_t.

Every timestep passed around (to models, losses, samplers) is the *model* timestep t on the
1000 grid, and the noise level is simply sigma = t / 1000 (Wan's convention):
    x_t = (1 - sigma) x0 + sigma eps,   v = eps - x0 (what the models predict)
    x0  = x_t - sigma v,                eps = x_t + (1 - sigma) v
The shift k only decides *which* timesteps are used: a point u = s / 1000 of the un-shifted grid
is warped to t = 1000 * k u / (1 + (k - 1) u). Inference step lists are written un-shifted and
warped once, so [1000, 750, 500, 250] at k = 5 becomes [1000, 937.5, 833.3, 625.0]; training
timesteps are drawn uniformly and warped the same way (schedulers/timesteps.py).
"""

from __future__ import annotations

from typing import Sequence

import torch

from oneforcing.registry import SCHEDULERS


def _bcast(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast per-sample [B] or per-frame [B, F] sigmas over latents [B, F, C, H, W]."""
    while s.dim() < like.dim():
        s = s.unsqueeze(-1)
    return s.to(like.dtype)


@SCHEDULERS.register("flow_match")
class FlowMatchScheduler:
    def __init__(self, shift: float = 5.0, num_train_timesteps: int = 1000):
        if shift <= 0:
            raise ValueError(f"shift must be positive, got {shift}")
        self.shift = float(shift)
        self.num_train_timesteps = int(num_train_timesteps)

    # --- the schedule -------------------------------------------------------------------
    def warp(self, s):
        """Un-shifted grid point(s) s in [0, 1000] -> the model timestep(s) the shift maps them to."""
        if isinstance(s, (int, float)):
            u = s / self.num_train_timesteps
            return self.num_train_timesteps * self.shift * u / (1 + (self.shift - 1) * u)
        s = s.float() if torch.is_tensor(s) else torch.as_tensor(s, dtype=torch.float32)
        u = s / self.num_train_timesteps
        return self.num_train_timesteps * self.shift * u / (1 + (self.shift - 1) * u)

    def sigma(self, t):
        """Noise level of model timestep(s) t: sigma = t / 1000 (float, list or tensor)."""
        if isinstance(t, (int, float)):
            return t / self.num_train_timesteps
        t = t.float() if torch.is_tensor(t) else torch.as_tensor(t, dtype=torch.float32)
        return t / self.num_train_timesteps

    def step_list(self, steps: Sequence[float], warp: bool = True) -> list[float]:
        """An inference step list on the un-shifted 1000 grid, warped by the shift."""
        return [float(self.warp(float(s))) if warp else float(s) for s in steps]

    # --- conversions ----------------------------------------------------------------------
    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = _bcast(self.sigma(t).to(x0.device), x0)
        return (1 - s) * x0 + s * eps

    @staticmethod
    def velocity(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return eps - x0

    def x0_from_v(self, x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = _bcast(self.sigma(t).to(x_t.device), x_t)
        return x_t - s * v

    def eps_from_v(self, x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = _bcast(self.sigma(t).to(x_t.device), x_t)
        return x_t + (1 - s) * v

    def euler_step(self, x_t: torch.Tensor, v: torch.Tensor, t, t_next) -> torch.Tensor:
        """One Euler step of the flow ODE dx/dsigma = v from t to t_next (t_next < t)."""
        s = _bcast(self.sigma(t).to(x_t.device), x_t)
        s_next = _bcast(self.sigma(t_next).to(x_t.device), x_t)
        return x_t + (s_next - s) * v

    def training_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Per-timestep loss weight of Causal Forcing's AR-diffusion stage (official
        utils/scheduler.py, `set_timesteps(1000, training=True)` + `training_weight`): on the grid
        of `num_train_timesteps` shifted model timesteps T (u = 1, 1 - 1/N, ..., 1/N),
        y = exp(-2 ((T - N/2) / N)^2), weight = (y - min y) scaled to mean 1 over the grid; t takes
        the weight of its nearest grid point. A bell over t that peaks at t = 500 and is 0 at the
        grid's smallest t."""
        n = self.num_train_timesteps
        grid = self.warp(torch.linspace(n, 0, n + 1)[:-1]).double()
        y = torch.exp(-2 * ((grid - n / 2) / n) ** 2)
        y = y - y.min()
        weights = y * (n / y.sum())
        t = torch.as_tensor(t, dtype=torch.float64)
        nearest = (grid.to(t.device).reshape(-1, *([1] * t.dim())) - t).abs().argmin(dim=0)
        return weights.to(t.device)[nearest].float()
