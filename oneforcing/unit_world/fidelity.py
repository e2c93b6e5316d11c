"""How much of the DMD gradient a learned fake score gets right, by noise level.

For generator samples x, one t and one eps each (drawn as the dmd loss draws them), the registered
`dmd_gradient` is computed twice on the same x_t: with the learned critic's x0 and with the x0 of
a fake score exact for a large bank of fresh generator samples (mog.EmpiricalScore). The cosine
between the two, over the samples whose sigma falls in a band, says whether the generator is
following the distribution gap or the critic's error there: ~1 = the learned fake score is as
good as exact, ~0 = the DMD update is noise. The exact-fake gradient's RMS says how large the true
signal is in that band.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from oneforcing.losses.common import critic_denoise
from oneforcing.losses.dmd import dmd_gradient
from oneforcing.unit_world.mog import EmpiricalScore
from oneforcing.unit_world.points import as_latents

BANDS = ((0.0, 0.3), (0.3, 0.7), (0.7, 1.0))


@dataclass(frozen=True)
class Fidelity:
    band: tuple[float, float]
    cosine: float       # cos(learned-fake gradient, exact-fake gradient) over the band's samples
    exact_rms: float    # RMS of the exact-fake gradient (the signal)
    error_rms: float    # RMS of their difference (what the critic gets wrong)


@torch.no_grad()
def gradient_fidelity(world, n: int = 4096, bank: int = 8192, seed: int = 0) -> list[Fidelity]:
    """One Fidelity per sigma band for `world` (a UnitWorld with a learned critic)."""
    g = torch.Generator().manual_seed(seed)
    x = as_latents(world.sample(n, seed=-2 - seed))
    exact = EmpiricalScore(world.sample(bank, seed=-1000 - seed))
    t = world.timesteps(n, rng=g)
    x_t = world.scheduler.add_noise(x, torch.randn(x.shape, generator=g), t)
    text = torch.zeros(n, 1, 1)
    real_x0 = world.scheduler.x0_from_v(x_t, world.real_score(x_t, t, text), t)
    learned = dmd_gradient(x, world.scheduler.x0_from_v(x_t, critic_denoise(world.critic, x_t, t, text), t), real_x0)
    ideal = dmd_gradient(x, world.scheduler.x0_from_v(x_t, exact.denoise(x_t, t, text), t), real_x0)
    sigma = world.scheduler.sigma(t)
    out = []
    for lo, hi in BANDS:
        m = (sigma >= lo) & (sigma < hi)
        a, b = learned[m].flatten(), ideal[m].flatten()
        if a.numel() == 0:
            continue
        cos = float(a @ b / (a.norm() * b.norm()).clamp_min(1e-12))
        out.append(Fidelity((lo, hi), cos, float(b.pow(2).mean().sqrt()), float((a - b).pow(2).mean().sqrt())))
    return out
