"""What every sampler shares: the one call signature, its result, noise and exit draws.

The sampler contract (checked when a sampler registers, oneforcing/registry/contracts.py, whose
SAMPLER_KEYWORDS is the one list of the call's keywords):

    sampler = SAMPLERS.get(name)(**recipe_keys, scheduler=flow)   # the recipe's flow-matching convention
    out = sampler(model, noise, text, *, rng=None, exit_rng=None,
                  negative_text=None, context=None, on_block=None)  # -> Rollout (out.x0 [B, F, C, H, W])
    sampler.steps            the model timesteps of a block's step list (warped by flow's shift)
    sampler.needs_context    True when it must get `context` (the real clean latents: teacher forcing)

`rng`: fresh noise between steps; `exit_rng`: random choices that change the number of
forwards (exit steps). The trainer passes the same `exit_rng` on every rank (run context,
`per_rank=False`), so ZeRO-3 ranks run the same forwards without any communication here.
`negative_text`: the unconditional prompt (used by samplers that guide; ignored by the others);
`on_block(a, b, x0)`: called as frames [a, b) are final (once with the whole clip for a sampler that
denoises all frames at once). Timesteps given to the model are on the *shifted* 1000 grid, sigma =
t / 1000 (schedulers/flow_match.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from oneforcing.errors import UserError

@dataclass
class Rollout:
    """What a sampler returns."""
    x0: torch.Tensor                              # [B, F, C, H, W] clean latents
    frame_mask: torch.Tensor | None = None        # [F] bool: the gradient window (None = every frame)
    with_grad: bool = False                       # grad mode was on: the window's frames carry a graph
    exit_indices: list[int] = field(default_factory=list)  # per block, index into the step list
    exit_t: list[float] = field(default_factory=list)      # per block, the model timestep exited at
    blocks: list[tuple[int, int]] = field(default_factory=list)
    num_forwards: int = 0

    @property
    def grad_frames(self) -> list[int]:
        if self.frame_mask is None:
            return list(range(self.x0.shape[1]))
        return torch.nonzero(self.frame_mask).flatten().tolist()


def checked_rollout(out, sampler) -> Rollout:
    """`out` if it is the `Rollout` the sampler contract promises; else one line naming the sampler
    (a plugin returning a bare tensor would otherwise fail later, far from its cause)."""
    if not isinstance(out, Rollout):
        kind = type(sampler)
        raise UserError(f"sampler {kind.__module__}.{kind.__qualname__} returned {type(out).__name__}; a sampler "
                        "returns a Rollout (oneforcing.samplers.common.Rollout: x0 [B, F, C, H, W], ...; "
                        "docs/architecture.md)", key="sampler")
    return out


@runtime_checkable
class PlansItsCache(Protocol):
    """A sampler that streams through a KV cache it can size up before allocating it (a job refuses
    a rollout that cannot fit, or a window no block fits, before any tensor exists)."""

    def new_cache(self, model, batch_size: int, num_frames: int): ...


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


def randn_like(x: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
    """Fresh noise like x; from `rng` when given (it may live on the CPU: moved over)."""
    if rng is None:
        return torch.randn_like(x)
    gen_device = rng.device
    return torch.randn(x.shape, generator=rng, device=gen_device, dtype=x.dtype).to(x.device)


def draw_exit_indices(num_blocks: int, num_steps: int, rng: torch.Generator | None = None,
                      same_step_across_blocks: bool = False) -> list[int]:
    """Per block, an exit step index uniform in [0, num_steps), from `rng` (the trainer's
    rank-independent exits generator: every rank draws the same indices).
    `same_step_across_blocks`: one draw shared by every block (Self Forcing's official setting)."""
    n = 1 if same_step_across_blocks else num_blocks
    idx = torch.randint(0, num_steps, (n,), generator=rng).tolist()
    return idx * num_blocks if same_step_across_blocks else idx


def no_context(name: str, context: torch.Tensor | None) -> None:
    if context is not None:
        raise ValueError(f"{name} takes no `context` (only a teacher-forcing sampler does)")
