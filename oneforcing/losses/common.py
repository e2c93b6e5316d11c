"""Helpers shared by the distillation losses: model calls, masking.

Timestep convention (schedulers/flow_match.py): `s.sample_t` returns *model* timesteps that the
recipe's timestep sampler has already shifted, and samplers / ODE pairs store model timesteps the
same way; for all of them sigma = t / 1000, and every conversion goes through `s.scheduler` (the
recipe's flow-matching convention, whose conversions never apply the shift a second time).
"""

from __future__ import annotations

import torch

from oneforcing.samplers.common import model_dtype


def _cast(x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return x if dtype is None or x.dtype == dtype else x.to(dtype)


def call_model(model, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, *, causal: bool | None = None,
               **kw) -> torch.Tensor:
    """v = model(x, t, text, causal=..., **kw) in the model's dtype, returned in fp32. Every
    registered model takes `causal` (None: its own setting) and `clean_x` (the models contract)."""
    dtype = model_dtype(model)
    if causal is not None:
        kw["causal"] = causal
    if kw.get("clean_x") is not None:
        kw["clean_x"] = _cast(kw["clean_x"], dtype)
    return model(_cast(x, dtype), t, _cast(text, dtype), **kw).float()


def critic_denoise(critic, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The critic's (fake score's) velocity (fp32)."""
    dtype = model_dtype(critic)
    return critic.denoise(_cast(x_t, dtype), t, _cast(text, dtype)).float()


def critic_logit(critic, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The critic's discriminator logits [B] (fp32); a critic without a head raises in `logit`."""
    dtype = model_dtype(critic)
    return critic.logit(_cast(x_t, dtype), t, _cast(text, dtype)).float().reshape(-1)


def frame_select(x: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
    """x [B, F, ...] restricted to the frames of `frame_mask` [F] bool (all frames if None)."""
    if frame_mask is None:
        return x
    return x[:, frame_mask.to(x.device)]


def figure(x: torch.Tensor) -> float:
    return float(x.detach().float().mean())
