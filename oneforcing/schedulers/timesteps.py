"""Training-time timestep samplers (registered in `timestep_samplers`).

Protocol: built with the recipe's `scheduler` (the flow-matching convention, handed in by the job:
never a shift of their own), called as `sampler(batch_size, rng=None, device="cpu")` -> model
timesteps [batch_size] on the 1000 grid."""

from __future__ import annotations

import torch

from oneforcing.registry import TIMESTEP_SAMPLERS
from oneforcing.schedulers.flow_match import SHIFT_MOVED, FlowMatchScheduler


@TIMESTEP_SAMPLERS.register("shifted_uniform")
class ShiftedUniformTimesteps:
    """u ~ U[0, 1) -> the scheduler's shift -> t in [0, 1000] -> clamp to [min_t, max_t]; one t per sample.

    The paper's DMD, critic and GAN timesteps: shift 5, clamp [20, 980]. `integer: true` draws u
    on the integer grid k / 1000, k uniform in {0, ..., 999}, as the official DMD / critic / GAN
    code (model/dmd.py, model/one_forcing.py: `torch.randint(0, 1000)` -> shift -> clamp)."""

    renamed_keys = {"shift": SHIFT_MOVED,
                    "num_train_timesteps": "it is the scheduler's (`scheduler: {type: flow_match, num_train_timesteps: ...}`)"}

    def __init__(self, min_t: float = 20.0, max_t: float = 980.0, integer: bool = False,
                 *, scheduler: FlowMatchScheduler):
        self.scheduler = scheduler  # the recipe's, handed in: no component has a convention of its own
        n = self.scheduler.num_train_timesteps
        if not 0 <= min_t <= max_t <= n:
            raise ValueError(f"need 0 <= min_t <= max_t <= {n}, got [{min_t}, {max_t}]")
        self.min_t, self.max_t, self.integer = float(min_t), float(max_t), bool(integer)

    @property
    def shift(self) -> float:
        return self.scheduler.shift

    def __call__(self, batch_size: int, rng: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
        n = self.scheduler.num_train_timesteps
        if self.integer:
            u = torch.randint(0, n, (batch_size,), generator=rng, device="cpu").float() / n
        else:
            u = torch.rand(batch_size, generator=rng, device="cpu")
        t = self.scheduler.warp_unit(u).clamp(self.min_t, self.max_t)
        return t.to(device)


@TIMESTEP_SAMPLERS.register("uniform")
class UniformTimesteps:
    """t ~ U[min_t, max_t] on the 1000 grid, no shift (flow-matching pre-training of toy teachers)."""

    def __init__(self, min_t: float = 0.0, max_t: float = 1000.0, *, scheduler: FlowMatchScheduler):
        self.scheduler = scheduler  # taken as every timestep sampler takes it; this one draws unshifted
        self.min_t, self.max_t = float(min_t), float(max_t)

    def __call__(self, batch_size: int, rng: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
        u = torch.rand(batch_size, generator=rng, device="cpu")
        return (self.min_t + u * (self.max_t - self.min_t)).to(device)
