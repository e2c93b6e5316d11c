"""Trajectory curvature of a teacher's ODE (the paper's Eq. 2, Figure 3 and Appendix B).

A trajectory is the teacher sampler's states x_0 .. x_N at noise levels sigma_0 = 1 > ... >
sigma_N = 0 (index 0 = pure noise; sigma = t / 1000). For segment i (from sigma_i to sigma_{i+1})

    C_i = (1 / d) | (x_{i+1} - x_i) / (sigma_{i+1} - sigma_i) - (x_noise - x_data) |^2

the per-coordinate squared deviation of the local velocity from the endpoint chord (x_noise =
x_0, x_data = x_N; for Euler steps the segment velocity is the guided teacher velocity at sigma_i).
C_i is reported at the segment's start, sigma_i (the noise level the teacher was evaluated at).
A straight flow (constant velocity) gives C = 0 everywhere.

Summaries per trajectory:
  mass_high      sum of C_i over segments with sigma_i >= high_t, over the sum of all C_i
                 (the paper's "curvature mass at t >= 0.9": a sum over the discrete profile)
  mass_high_dt   the same with each C_i weighted by its segment length |sigma_{i+1} - sigma_i|
                 (the integral of C over sigma: independent of how the shift spaces the steps)
  ratio          mean C over sigma >= high_t / mean C over the mid band [mid_lo, mid_hi]
                 (the paper's "high-noise/mid-noise ratio"; it does not give the band)
The temporal-difference variant applies the same to x[:, f+1] - x[:, f] along the frame axis,
which removes static appearance. Means over prompts carry percentile-bootstrap 95 % CIs.
"""

from __future__ import annotations

import math

import torch


def curvature_profile(states: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Eq. 2 per trajectory: states [B, N+1, ...] (noise first), sigmas [N+1] -> C [B, N] (float64)."""
    if states.dim() < 3 or states.shape[1] != sigmas.numel() or sigmas.numel() < 2:
        raise ValueError(f"need states [B, N+1, ...] and sigmas [N+1], got {tuple(states.shape)} and "
                         f"{tuple(sigmas.shape)}")
    x = states.double().flatten(2)                                          # [B, N+1, d]
    s = sigmas.double().to(x.device)
    ds = s[1:] - s[:-1]
    if bool((ds >= 0).any()):
        raise ValueError("sigmas must decrease strictly (noise first)")
    velocity = (x[:, 1:] - x[:, :-1]) / ds[None, :, None]                  # [B, N, d]
    chord = x[:, :1] - x[:, -1:]                                            # x_noise - x_data
    return ((velocity - chord) ** 2).mean(-1)


def temporal_difference(states: torch.Tensor, frame_dim: int = 2) -> torch.Tensor:
    """[B, N+1, F, ...] -> [B, N+1, F-1, ...]: consecutive-frame differences of every state."""
    return states.narrow(frame_dim, 1, states.shape[frame_dim] - 1) - states.narrow(
        frame_dim, 0, states.shape[frame_dim] - 1)


def trajectory_summaries(C: torch.Tensor, sigmas: torch.Tensor, high_t: float = 0.9,
                         mid_band: tuple[float, float] = (0.3, 0.7)) -> dict[str, torch.Tensor]:
    """Per-trajectory mass_high, mass_high_dt and ratio (see the module doc), each [B]."""
    start = sigmas[:-1].double()
    width = (sigmas[:-1] - sigmas[1:]).double()
    high = start >= high_t
    mid = (start >= mid_band[0]) & (start <= mid_band[1])
    if not bool(high.any()) or not bool(mid.any()):
        raise ValueError(f"no segment starts in the high (>= {high_t}) or mid {list(mid_band)} band of this "
                         "step list; use more steps")
    total = C.sum(-1).clamp_min(1e-30)
    weighted = C * width
    return {
        "mass_high": C[:, high].sum(-1) / total,
        "mass_high_dt": weighted[:, high].sum(-1) / weighted.sum(-1).clamp_min(1e-30),
        "ratio": C[:, high].mean(-1) / C[:, mid].mean(-1).clamp_min(1e-30),
    }


def bootstrap_mean_ci(values: torch.Tensor, samples: int = 2000, seed: int = 0,
                      level: float = 0.95) -> dict[str, float | list[float] | None]:
    """Mean, standard error and a percentile-bootstrap CI of the mean (None for one value)."""
    v = values.double().flatten()
    n = v.numel()
    out: dict = {"mean": float(v.mean()), "sem": float(v.std() / math.sqrt(n)) if n > 1 else None, "n": n}
    if n < 2 or samples < 1:
        out["ci95"] = None
        return out
    g = torch.Generator().manual_seed(seed)
    means = v[torch.randint(0, n, (samples, n), generator=g)].mean(-1)
    a = (1 - level) / 2
    out["ci95"] = [float(torch.quantile(means, a)), float(torch.quantile(means, 1 - a))]
    return out


def normalised_profile(C: torch.Tensor) -> torch.Tensor:
    """Each trajectory's profile divided by its own peak (the paper's Figure 3)."""
    return C / C.amax(-1, keepdim=True).clamp_min(1e-30)
