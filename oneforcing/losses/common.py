"""Helpers shared by the distillation losses: timestep convention, model calls, masking.

Timestep convention (defaults.md, "Noise schedule"): `s.sample_t` returns *model* timesteps
that are already shifted (u ~ U[0,1) -> shift 5 -> t = 1000 * sigma -> clamp [20, 980]), and the
samplers / ODE pairs store model timesteps the same way. For such timesteps the noise level is
simply sigma = t / 1000, so every conversion here goes through `GRID` (a FlowMatchScheduler with
shift 1). Using the recipe's shift-5 `s.scheduler` on them would warp t a second time.
"""

from __future__ import annotations

import torch

from oneforcing.samplers.common import ON_GRID, model_dtype  # noqa: F401 - model_dtype is used here and re-exported

GRID = ON_GRID  # x_t = (1 - t/1000) x0 + (t/1000) eps; x0 = x_t - (t/1000) v


def _cast(x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return x if dtype is None or x.dtype == dtype else x.to(dtype)


def _is_causal_wan(model) -> bool:
    from oneforcing.models.causal_wan import CausalWan

    return isinstance(model, CausalWan)


def call_model(model, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, *, causal: bool | None = None,
               **kw) -> torch.Tensor:
    """v = model(x, t, text, **kw) in the model's dtype, returned in fp32. `causal` is passed only
    to CausalWan (other models, e.g. test stubs or plugins, need not take it)."""
    dtype = model_dtype(model)
    if causal is not None and _is_causal_wan(model):
        kw["causal"] = causal
    if "clean_x" in kw and kw["clean_x"] is not None:
        kw["clean_x"] = _cast(kw["clean_x"], dtype)
    return model(_cast(x, dtype), t, _cast(text, dtype), **kw).float()


def critic_denoise(critic, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The critic's (fake score's) velocity; a critic without `denoise` is called directly."""
    fn = getattr(critic, "denoise", None) or critic
    dtype = model_dtype(critic)
    return fn(_cast(x_t, dtype), t, _cast(text, dtype)).float()


def critic_logit(critic, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The critic's discriminator logits [B] (fp32)."""
    if not hasattr(critic, "logit"):
        raise TypeError(f"the critic {type(critic).__name__} has no discriminator head (`logit`); "
                        "use a critic such as `register_gan_critic` for the GAN losses")
    dtype = model_dtype(critic)
    return critic.logit(_cast(x_t, dtype), t, _cast(text, dtype)).float().reshape(-1)


def frame_select(x: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
    """x [B, F, ...] restricted to the frames of `frame_mask` [F] bool (all frames if None)."""
    if frame_mask is None:
        return x
    return x[:, frame_mask.to(x.device)]


def figure(x: torch.Tensor) -> float:
    return float(x.detach().float().mean())
