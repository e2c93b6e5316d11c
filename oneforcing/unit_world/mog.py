"""The unit world's target: a mixture of isotropic Gaussians, and its exact flow-matching denoiser.

Under the library's flow convention (schedulers/flow_match.py: x_t = (1 - sigma) x0 + sigma eps,
sigma = t / 1000, the models predict v = eps - x0, x0 = x_t - sigma v) a mixture
sum_k pi_k N(mu_k, s^2 I) noised to sigma is again a mixture, with a = 1 - sigma:

    x_t | k   ~ N(a mu_k, (a^2 s^2 + sigma^2) I)
    E[x0 | x_t, k] = mu_k + a s^2 / (a^2 s^2 + sigma^2) (x_t - a mu_k)
    E[x0 | x_t]    = sum_k w_k(x_t) E[x0 | x_t, k],   w_k ∝ pi_k N(x_t; a mu_k, (a^2 s^2 + sigma^2) I)

(every component has the same variance, so the normaliser cancels in w). The velocity the
losses read is v = (x_t - E[x0 | x_t]) / sigma: `ExactScore` is that, called like any model
(`model(x, t, text, causal=...)`), so it stands in for the frozen teacher (`real_score`).

With s = 0 the same formula is the exact denoiser of an empirical distribution (a set of points):
`EmpiricalScore` uses it as a fake score that is exact for a bank of generator samples, the
control in which the fake score cannot lag the generator.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from oneforcing.unit_world.points import as_points, from_points, point_t

MIN_SIGMA = 1e-4  # t = 0 (a clean input) has no velocity; the losses never draw t below 20


def posterior_x0(x_t: torch.Tensor, sigma: torch.Tensor, means: torch.Tensor, std: float,
                 log_weights: torch.Tensor | None = None) -> torch.Tensor:
    """E[x0 | x_t] [N, D] for x0 ~ sum_k pi_k N(means[k], std^2 I), x_t [N, D], sigma [N]."""
    sigma = sigma.clamp_min(MIN_SIGMA)[:, None]
    a = 1 - sigma
    var = a ** 2 * std ** 2 + sigma ** 2                                   # [N, 1]
    # |x_t - a mu_k|^2 expanded, and sum_k w_k (mu_k + gain (x_t - a mu_k)) = m + gain (x_t - a m) with
    # m = sum_k w_k mu_k: no [N, K, D] tensor (the empirical score's bank has thousands of points).
    d2 = (x_t ** 2).sum(-1, keepdim=True) - 2 * a * (x_t @ means.T) + a ** 2 * (means ** 2).sum(-1)[None]
    logits = -d2 / (2 * var)                                               # [N, K]
    if log_weights is not None:
        logits = logits + log_weights[None]
    m = torch.softmax(logits, dim=-1) @ means                              # [N, D]
    gain = a * std ** 2 / var                                              # [N, 1]
    return m + gain * (x_t - a * m)


def velocity_from_x0(x_t: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return (x_t - x0) / sigma.clamp_min(MIN_SIGMA)[:, None]


class MixtureOfGaussians:
    """K isotropic Gaussians N(means[k], std^2 I) with weights `weights` (uniform if None)."""

    def __init__(self, means: torch.Tensor, std: float, weights: torch.Tensor | None = None):
        self.means = means.float()
        self.std = float(std)
        K = self.means.shape[0]
        w = torch.full((K,), 1.0 / K) if weights is None else weights.float() / weights.sum()
        self.weights = w

    @classmethod
    def ring(cls, modes: int = 8, radius: float = 2.0, std: float = 0.1) -> "MixtureOfGaussians":
        angle = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
        return cls(torch.stack([radius * angle.cos(), radius * angle.sin()], dim=-1).float(), std)

    @property
    def num_modes(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """[n, D] points."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return self.means[k] + self.std * torch.randn(n, self.dim, generator=generator)

    def x0(self, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return posterior_x0(x_t, sigma, self.means, self.std, self.weights.log())


class ExactScore(nn.Module):
    """The target's exact velocity, called as a model: `v = model(x, t, text, causal=None, ...)`
    with x [B, F, C=D, H, W] and t [B] or [B, F] model timesteps. It ignores the text (the
    target is unconditional, so any cfg_scale guides to the same velocity) and has no parameters."""

    def __init__(self, target: MixtureOfGaussians):
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor | None = None, **_) -> torch.Tensor:
        p = as_points(x.float())
        sigma = point_t(t, x) / 1000
        return from_points(velocity_from_x0(p, self.target.x0(p, sigma), sigma), x)


class EmpiricalScore(nn.Module):
    """A fake score exact for a bank of points (the generator's current samples, `refresh`ed by
    the caller): the critic interface's `denoise`, no discriminator head."""

    def __init__(self, bank: torch.Tensor):
        super().__init__()
        self.bank = bank.detach().float()

    def refresh(self, bank: torch.Tensor) -> None:
        self.bank = bank.detach().float()

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        p = as_points(x_t.float())
        sigma = point_t(t, x_t) / 1000
        return from_points(velocity_from_x0(p, posterior_x0(p, sigma, self.bank, 0.0), sigma), x_t)

    def logit(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        raise TypeError("EmpiricalScore has no discriminator head (`logit`)")

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        return self.denoise(x_t, t, text)
