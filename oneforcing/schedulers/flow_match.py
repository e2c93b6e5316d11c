"""The flow-matching convention: the ONE place for sigma, the shift, step lists, CFG and text dropout.

Every timestep passed around (to models, losses, samplers) is the *model* timestep t on the
1000 grid, and the noise level is simply sigma = t / 1000 (Wan's convention):
    x_t = (1 - sigma) x0 + sigma eps,   v = eps - x0 (what the models predict)
    x0  = x_t - sigma v,                eps = x_t + (1 - sigma) v
The shift k only decides *which* timesteps are used: a point u = s / 1000 of the un-shifted grid
is warped to t = 1000 * k u / (1 + (k - 1) u). Inference step lists are written un-shifted and
warped once, so [1000, 750, 500, 250] at k = 5 becomes [1000, 937.5, 833.3, 625.0]; training
timesteps are drawn uniformly and warped the same way (schedulers/timesteps.py).

One object, built once from the recipe's `scheduler:` section (`{type: flow_match, shift: 5.0}`,
recipes/_wan.yaml), is handed to every sampler (its `scheduler` argument), every timestep sampler
and every loss (`s.scheduler`): setting the shift there changes it everywhere, and no component
has a shift of its own.

Classifier-free guidance, one convention for every component (key `cfg_scale`):
    v = v_uncond + cfg_scale * (v_cond - v_uncond)
cfg_scale 1 is the conditional velocity alone (no unconditional pass), 6 is Wan's usual CFG.
Papers that write "cond + g (cond - uncond)" (Self Forcing / One-Forcing DMD `guidance_scale`)
mean cfg_scale = g + 1: One-Forcing's DMD guidance_scale 5 is cfg_scale 6, Self Forcing's 3 is 4.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from oneforcing.registry import SCHEDULERS

CFG_DOC = "cfg_scale w: v = v_uncond + w (v_cond - v_uncond); 1 = conditional only, 6 = Wan's usual CFG"
# Keys that said the same thing before this module owned it: a recipe that still writes them gets
# one line saying where the value went (registry `renamed_keys`).
SHIFT_MOVED = "the shift is set once, in the recipe's `scheduler: {type: flow_match, shift: ...}`"
GUIDANCE_RENAMED = (f"it is now 'cfg_scale' ({CFG_DOC}); dmd's old guidance g (cond + g (cond - uncond)) is "
                    "cfg_scale g + 1 (guidance 5 -> cfg_scale 6), teacher_ode's old guidance is the same number")


MODEL_GRID = 1000  # the grid of model timesteps (Wan's num_train_timesteps): what every model is called with


def _bcast(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast per-sample [B] or per-frame [B, F] sigmas over latents [B, F, C, H, W]."""
    while s.dim() < like.dim():
        s = s.unsqueeze(-1)
    return s.to(like.dtype)


@SCHEDULERS.register("flow_match")
class FlowMatchScheduler:
    def __init__(self, shift: float = 5.0, num_train_timesteps: int = MODEL_GRID):
        if shift <= 0:
            raise ValueError(f"shift must be positive, got {shift}")
        self.shift = float(shift)
        self.num_train_timesteps = int(num_train_timesteps)

    def __repr__(self) -> str:
        return f"FlowMatchScheduler(shift={self.shift}, num_train_timesteps={self.num_train_timesteps})"

    # --- the schedule -------------------------------------------------------------------
    def warp(self, s):
        """Un-shifted grid point(s) s in [0, 1000] -> the model timestep(s) the shift maps them to."""
        if not isinstance(s, (int, float)):
            s = s.float() if torch.is_tensor(s) else torch.as_tensor(s, dtype=torch.float32)
        return self.warp_unit(s / self.num_train_timesteps)

    def warp_unit(self, u):
        """u in [0, 1] (float or tensor) -> model timestep 1000 * k u / (1 + (k - 1) u): the shift formula."""
        return self.shift * u / (1 + (self.shift - 1) * u) * self.num_train_timesteps

    def sigma(self, t):
        """THE noise level of model timestep(s) t: sigma = t / 1000 (float, list or tensor). A float64
        tensor stays float64 (the exact toy teacher and the curvature job compute in it); any other
        tensor is computed in float32 (a bf16 t would round 937.5 to 936). A model that needs it
        declares a `scheduler` constructor keyword and is handed the recipe's (docs/plugins.md)."""
        if not isinstance(t, (int, float)):
            t = t if torch.is_tensor(t) else torch.as_tensor(t, dtype=torch.float32)
            t = t if t.dtype == torch.float64 else t.float()
        return t / self.num_train_timesteps

    def step_list(self, steps: Sequence[float], warp: bool = True) -> list[float]:
        """An inference step list on the un-shifted 1000 grid -> model timesteps (warped by the shift)."""
        return [float(self.warp(float(s))) if warp else float(s) for s in steps]

    def unshifted_grid(self, num_steps: int) -> list[float]:
        """The un-shifted grid 1000 (1 - i / n), i = 0 .. n-1: an n-step list as recipes write it."""
        return [self.num_train_timesteps * (1 - i / num_steps) for i in range(num_steps)]

    def uniform_grid(self, num_steps: int) -> list[float]:
        """The un-shifted grid, warped: an n-step ODE's timesteps."""
        return self.step_list(self.unshifted_grid(num_steps))

    # --- conversions (they depend on t only, never on the shift) -------------------------------
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


# --- classifier-free guidance and the text dropout that trains it -------------------------------
def check_cfg_scale(cfg_scale: float) -> float:
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale must be >= 0 ({CFG_DOC}), got {cfg_scale}")
    return float(cfg_scale)


def guided_velocity(model_fn: Callable[..., torch.Tensor], x: torch.Tensor, t: torch.Tensor,
                    text: torch.Tensor, uncond_text: torch.Tensor | None, cfg_scale: float, *,
                    batch: bool = True, **tiled) -> torch.Tensor:
    """v_uncond + cfg_scale (v_cond - v_uncond) of `model_fn(x, t, text, **tiled)`. With cfg_scale
    1 or no `uncond_text` only the conditional pass runs. `batch`: when the two texts have the same
    length, one forward of 2B samples (x, t and every tensor of `tiled` repeated) instead of two."""
    if uncond_text is None or cfg_scale == 1.0:
        return model_fn(x, t, text, **tiled)
    if batch and uncond_text.shape == text.shape:
        doubled = {k: (None if v is None else torch.cat([v, v])) for k, v in tiled.items()}
        cond, uncond = model_fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([text, uncond_text]),
                                **doubled).chunk(2)
    else:
        cond, uncond = model_fn(x, t, text, **tiled), model_fn(x, t, uncond_text, **tiled)
    return uncond + cfg_scale * (cond - uncond)


def check_text_dropout(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"text_dropout must be in [0, 1], got {p}")
    return float(p)


def drop_text(text: torch.Tensor, uncond_text: torch.Tensor, p: float,
              rng: torch.Generator | None) -> torch.Tensor:
    """Text dropout for CFG: with probability p a sample's prompt embedding [B, L, D] is replaced
    by the negative / empty prompt's, so the model also learns the unconditional velocity."""
    if p <= 0:
        return text
    drop = torch.rand(text.shape[0], generator=rng) < p
    return torch.where(drop.to(text.device)[:, None, None], uncond_text, text)
