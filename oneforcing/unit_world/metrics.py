"""How close a set of generated points is to the mixture: sliced W2 and the modes it covers.

sliced W2: sqrt(mean over random unit directions u of W2^2 of the 1-D projections <x, u>), each
           1-D W2 exact by sorting (equal sample sizes). A metric on distributions, zero only when
           they agree; with finite samples its floor is the target-vs-target value (`floor`).
modes:     a point belongs to its nearest mode if it lies within `radius_std` (3) of the mode's
           std of it (98.9 % of a 2-D Gaussian's mass); mode k is captured when at least
           `min_share` (1/2) of its fair share pi_k of the points belong to it. `on_mode` is the
           fraction of points that belong to some mode (precision-like: 0.99 for the target);
           `balance` the total-variation distance between the on-mode points' histogram over the
           modes and the weights pi (0 = perfectly balanced, 1 - 1/K = all on one mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from oneforcing.unit_world.mog import MixtureOfGaussians


def sliced_w2(a: torch.Tensor, b: torch.Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced W2 between point sets a, b [N, D] (same N)."""
    if a.shape != b.shape:
        raise ValueError(f"sliced_w2 compares equal-size point sets, got {tuple(a.shape)} and {tuple(b.shape)}")
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(a.shape[1], projections, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=0, keepdim=True)
    pa, pb = (a.double() @ u).sort(dim=0).values, (b.double() @ u).sort(dim=0).values
    return float(((pa - pb) ** 2).mean().sqrt())


@dataclass(frozen=True)
class ModeStats:
    fractions: list[float]   # per mode, the fraction of all points that belong to it
    captured: int
    on_mode: float
    balance: float           # TV distance of the on-mode histogram to the weights


def mode_stats(x: torch.Tensor, target: MixtureOfGaussians, radius_std: float = 3.0,
               min_share: float = 0.5) -> ModeStats:
    d = torch.cdist(x.float(), target.means)                   # [N, K]
    dist, nearest = d.min(dim=1)
    belongs = dist <= radius_std * target.std
    counts = torch.bincount(nearest[belongs], minlength=target.num_modes).double()
    fractions = counts / x.shape[0]
    captured = int((fractions >= min_share * target.weights.double()).sum())
    on = float(belongs.double().mean())
    hist = counts / counts.sum().clamp_min(1)
    balance = float(0.5 * (hist - target.weights.double()).abs().sum()) if counts.sum() > 0 else 1.0
    return ModeStats([float(f) for f in fractions], captured, on, balance)


@dataclass(frozen=True)
class Score:
    sw2: float
    floor: float             # sliced W2 between two target samples of the same size
    modes: ModeStats


def score(x: torch.Tensor, target: MixtureOfGaussians, seed: int = 0) -> Score:
    """Every figure for generated points x [N, D] against fresh target samples (seeded)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    ref, ref2 = target.sample(x.shape[0], g), target.sample(x.shape[0], g)
    return Score(sliced_w2(x, ref, seed=seed), sliced_w2(ref2, ref, seed=seed), mode_stats(x, target))
