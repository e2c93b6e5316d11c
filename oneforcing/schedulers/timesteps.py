"""Training-time timestep samplers (registered in `timestep_samplers`)."""

from __future__ import annotations

import torch

from oneforcing.registry import TIMESTEP_SAMPLERS


@TIMESTEP_SAMPLERS.register("shifted_uniform")
class ShiftedUniformTimesteps:
    """u ~ U[0, 1) -> shift -> t in [0, 1000] -> clamp to [min_t, max_t]; one t per sample.

    The paper's DMD, critic and GAN timesteps: shift 5, clamp [20, 980]. `integer: true` draws u
    on the integer grid k / 1000, k uniform in {0, ..., 999}, as the official DMD / critic / GAN
    code (model/dmd.py, model/one_forcing.py: `torch.randint(0, 1000)` -> shift -> clamp)."""

    def __init__(self, shift: float = 5.0, min_t: float = 20.0, max_t: float = 980.0,
                 num_train_timesteps: int = 1000, integer: bool = False):
        if not 0 <= min_t <= max_t <= num_train_timesteps:
            raise ValueError(f"need 0 <= min_t <= max_t <= {num_train_timesteps}, got [{min_t}, {max_t}]")
        self.shift, self.min_t, self.max_t = float(shift), float(min_t), float(max_t)
        self.num_train_timesteps, self.integer = num_train_timesteps, bool(integer)

    def __call__(self, batch_size: int, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
        if self.integer:
            n = self.num_train_timesteps
            u = torch.randint(0, n, (batch_size,), generator=generator, device="cpu").float() / n
        else:
            u = torch.rand(batch_size, generator=generator, device="cpu")
        sigma = self.shift * u / (1 + (self.shift - 1) * u)
        t = (sigma * self.num_train_timesteps).clamp(self.min_t, self.max_t)
        return t.to(device)


@TIMESTEP_SAMPLERS.register("uniform")
class UniformTimesteps:
    """t ~ U[min_t, max_t] on the 1000 grid (flow-matching pre-training of toy teachers)."""

    def __init__(self, min_t: float = 0.0, max_t: float = 1000.0):
        self.min_t, self.max_t = float(min_t), float(max_t)

    def __call__(self, batch_size: int, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
        u = torch.rand(batch_size, generator=generator, device="cpu")
        return (self.min_t + u * (self.max_t - self.min_t)).to(device)
