"""Regression onto stored teacher ODE trajectories: ODE initialisation and the forward-KL surrogate.

Batch fields (oneforcing.data.Batch, from the ODE-pairs dataset; the teacher's states at the kept steps):
    ode_states  [B, K, F, C, H, W]   x at the kept steps (TeacherODE `states`)
    ode_t       [K] or [B, K]        their model timesteps (sigma = t / 1000; e.g. 1000, 937.5,
                                     833.3, 625 for indices 0, 12, 24, 36 of 48 steps at shift 5)
    ode_x0      [B, F, C, H, W]      the final clean ODE output (the regression target)
    ode_context [B, F, C, H, W]      the real clean latents the pairs were integrated with (causal
                                     ODE pairs of Causal Forcing only; `teacher_forcing: true`)
    text        [B, L, D]            as in every batch

`ode_regression` (thu-ml/Causal-Forcing model/ode_regression.py; docs/fidelity.md): per sample one kept
index k (uniform, shared by all its frames; `uniform_timestep = True` there), x0_hat = x_k - sigma_k *
G(x_k, t_k, text) with the causal student in block-causal full-sequence mode (no cache: every frame
sees the earlier *noisy* frames, as in CausVid / Self Forcing's ODE init), loss =
mean((x0_hat - ode_x0)^2) in fp32. `per_block: true` draws k per block instead (Self Forcing's
`uniform_timestep=False`): block j's frames come from state k_j at t_{k_j}.
With `teacher_forcing: true` (Causal Forcing's causal ODE init; official model/ode_regression.py
passes `clean_x=clean_latent`) the student runs in teacher-forcing mode instead: block i sees the
REAL clean frames of blocks < i (`ode_context`) and its own noisy state, exactly the context the
pairs were integrated with, and the clean context it later gets at t = 0 from its own rollout.

`fkl_surrogate` (paper Eq. 10; no official code, docs/fidelity.md `one_forcing_fkl.yaml`): the same MSE from ONE fixed
kept state x_{t0} (`index`, default 0 = t 1000, the one-step generator's input) to the stored
endpoint, through the generator in causal mode with per-frame t [B, F]. It is added to the DMD
(+ GAN) generator objective with weight lambda_fkl (recipe `weight: 1.0`).
"""

from __future__ import annotations

import torch

from oneforcing.losses.common import call_model, figure
from oneforcing.registry import LOSSES

def ode_batch(s) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(states [B, K, F, C, H, W], t [B, K], x0 [B, F, C, H, W]) from the batch, on the device."""
    who, hint = "ODE regression", "use an ode_pairs dataset"
    states = s.batch.require("ode_states", who, hint).to(s.device)
    t = torch.as_tensor(s.batch.require("ode_t", who, hint)).to(s.device).float()
    x0 = s.batch.require("ode_x0", who, hint).to(s.device)
    B, K = states.shape[:2]
    if t.dim() == 1:
        t = t.expand(B, K)
    if t.shape != (B, K):
        raise ValueError(f"ode_t has shape {tuple(t.shape)}, expected [{K}] or [{B}, {K}]")
    return states, t, x0


def regress(s, states: torch.Tensor, t_all: torch.Tensor, x0: torch.Tensor, idx: torch.Tensor,
            per_frame_t: bool, context: torch.Tensor | None = None):
    """MSE between the causal student's x0 prediction from the kept states `idx` and x0; `idx` is
    [B] (one kept state per sample) or [B, F] (one per frame: per-block draws). With `context`
    (real clean latents) the student is teacher-forced on it."""
    B, F = states.shape[0], states.shape[2]
    rows = torch.arange(B, device=states.device)
    idx = idx.to(states.device)
    if idx.dim() == 1:
        x_t = states[rows, idx].float()                   # [B, F, C, H, W]
        t = t_all[rows, idx]                              # [B]
        t_model = t[:, None].expand(-1, F) if per_frame_t else t
    else:
        frames = torch.arange(F, device=states.device)
        x_t = states[rows[:, None], idx, frames[None, :]].float()   # [B, F, C, H, W]
        t = t_model = t_all.gather(1, idx)                # [B, F]
    text = s.text if s.batch.ode_text is None else s.batch.ode_text.to(s.device)  # the pairs' own prompts
    kw = {} if context is None else {"clean_x": context.to(s.device).float()}
    v = call_model(s.generator, x_t, t_model, text, causal=True, **kw)
    x0_hat = s.scheduler.x0_from_v(x_t, v, t)
    err = (x0_hat - x0.float()) ** 2
    if t.dim() == 2:
        # Frames drawn at a clean (t = 0) kept state carry no regression target (official
        # `mask = timestep != 0`); pairs that keep only noisy states never have one.
        err = err[t > 0]
    return torch.mean(err), {"t_mean": figure(t)}


def block_indices(B: int, F: int, K: int, block: int, rng: torch.Generator) -> torch.Tensor:
    """[B, F] kept-state indices, uniform in [0, K), one draw per block of `block` frames (the
    last block may be shorter), as SF `model/base.py` `_get_timestep(uniform_timestep=False)`."""
    n_blocks = -(-F // block)
    idx = torch.randint(0, K, (B, n_blocks), generator=rng)
    return idx.repeat_interleave(block, dim=1)[:, :F]


@LOSSES.register("ode_regression")
class ODERegressionLoss:
    """`{type: ode_regression}`; `per_frame_t`: pass t as [B, F] (the same value on every frame);
    `teacher_forcing`: teacher-force the student on a clean context, `context` says which:
    "real" = the real latents the causal ODE pairs were integrated with (Causal Forcing's
    `ode_context`), "endpoint" = the pair's own clean ODE output `ode_x0` (pairs of a bidirectional
    teacher: block i then learns its frames given the clean earlier frames of the same teacher
    sample, the context a causal rollout gives it at t = 0).
    `per_block`: draw the kept index per block of the generator's `frames_per_block` frames
    instead of once per sample (Self Forcing's ODE init: SF `model/ode_regression.py`
    `uniform_timestep=False`); the student then sees [B, F] timesteps."""

    CONTEXTS = ("real", "endpoint")

    def __init__(self, per_frame_t: bool = False, teacher_forcing: bool = False, context: str = "real",
                 per_block: bool = False):
        if context not in self.CONTEXTS:
            raise ValueError(f"context must be one of {', '.join(self.CONTEXTS)}, got {context!r}")
        self.per_frame_t, self.teacher_forcing, self.context = bool(per_frame_t), bool(teacher_forcing), context
        self.per_block = bool(per_block)

    def __call__(self, s):
        states, t, x0 = ode_batch(s)
        context = None
        if self.teacher_forcing and self.context == "endpoint":
            context = x0
        elif self.teacher_forcing:
            context = s.batch.require("ode_context", "ode_regression with teacher_forcing",
                                      "write causal ODE pairs with an ode_pairs sampler that has teacher_forcing: true, "
                                      "or use context: endpoint")
        B, K, F = states.shape[:3]
        if self.per_block:
            idx = block_indices(B, F, K, int(s.generator.frames_per_block), s.rng)
        else:
            idx = torch.randint(0, K, (B,), generator=s.rng)
        return regress(s, states, t, x0, idx, self.per_frame_t, context)


@LOSSES.register("fkl_surrogate")
class FKLSurrogateLoss:
    """`{type: fkl_surrogate, index: 0, weight: 1.0}`: ||G(x_{t0}, t0) - x_ode||^2 for the kept
    state `index` (0 = the pure-noise start at t = 1000)."""

    def __init__(self, index: int = 0):
        self.index = int(index)

    def __call__(self, s):
        states, t, x0 = ode_batch(s)
        B, K = states.shape[:2]
        if not -K <= self.index < K:
            raise IndexError(f"fkl_surrogate index {self.index} out of range for {K} stored ODE states")
        idx = torch.full((B,), self.index % K, dtype=torch.long)
        return regress(s, states, t, x0, idx, per_frame_t=True)
