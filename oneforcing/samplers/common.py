"""Shared pieces of the samplers: timestep conventions, rank-0 draws, noise.

Timesteps given to the model are on the *shifted* 1000 grid (t_model = 1000 * sigma): step lists
are written on the un-shifted grid and warped once by `FlowMatchScheduler(shift).step_list`. After
that the noise level of a model timestep is simply sigma = t_model / 1000, which is what every
FlowMatchScheduler's conversions (add_noise, x0_from_v, euler_step) use whatever its shift.
"""

from __future__ import annotations

from typing import Sequence

import torch

from oneforcing.schedulers import FlowMatchScheduler

# Conversions of model timesteps (sigma = t / 1000; the shift only warps step lists).
ON_GRID = FlowMatchScheduler(shift=1.0)


def warped_steps(steps: Sequence[float], shift: float, warp: bool = True) -> list[float]:
    """A step list on the un-shifted grid -> the model timesteps (warped by the shift)."""
    return FlowMatchScheduler(shift=shift).step_list(list(steps), warp=warp)


def model_dtype(model) -> torch.dtype | None:
    """The dtype of a module's floating parameters (None for parameter-free stubs)."""
    for p in model.parameters() if isinstance(model, torch.nn.Module) else ():
        if p.is_floating_point():
            return p.dtype
    return None


def in_model_dtype(model, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The sampler's inputs (noise, text) in the model's dtype, so that every tensor the sampler
    derives from them (re-noising, x0, cache) follows the precision the trainer chose for it."""
    dtype = model_dtype(model)
    return tuple(t if t is None or dtype is None or t.dtype == dtype else t.to(dtype) for t in tensors)


def full_t(value: float, batch: int, device) -> torch.Tensor:
    return torch.full((batch,), float(value), device=device, dtype=torch.float32)


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Fresh noise like x; from `generator` when given (it may live on the CPU: moved over)."""
    if generator is None:
        return torch.randn_like(x)
    gen_device = generator.device
    return torch.randn(x.shape, generator=generator, device=gen_device, dtype=x.dtype).to(x.device)


def broadcast_from_rank0(values: list[int] | None) -> list[int]:
    """Rank 0's list of integers on every rank (no-op outside torch.distributed), sent as
    tensors, never pickled. Used for every random choice that changes the number of forwards,
    so that ZeRO-3 ranks stay in lockstep."""
    from oneforcing.distributed import broadcast_numbers

    return broadcast_numbers(values)


def draw_exit_indices(num_blocks: int, num_steps: int, generator: torch.Generator | None = None,
                      same_step_across_blocks: bool = False) -> list[int]:
    """Per block, an exit step index uniform in [0, num_steps); drawn on rank 0 and broadcast.
    `same_step_across_blocks`: one draw shared by every block (Self Forcing's official setting)."""
    dist = torch.distributed
    is_rank0 = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    drawn = None
    if is_rank0:
        n = 1 if same_step_across_blocks else num_blocks
        idx = torch.randint(0, num_steps, (n,), generator=generator).tolist()
        drawn = idx * num_blocks if same_step_across_blocks else idx
    return broadcast_from_rank0(drawn)
