"""Non-saturating GAN losses on the critic's discriminator logits (One-Forcing, ASD).

Aurora-edu/One-Forcing model/one_forcing.py `_compute_gan_generator_loss` / `_compute_gan_discriminator_loss`
(paper Eqs. 5-6; docs/fidelity.md), with D = critic.logit:
    generator      softplus(-D(fake_t))                               critic frozen by the trainer
    discriminator  softplus(-D(real_t)) + softplus(D(fake_t))
    relativistic   G: softplus(-(D_f - D_r)),  D: softplus(-(D_r - D_f))
Real and fake are noised with the SAME t (s.sample_t: shift 5, clamp [20, 980]) and the SAME
noise eps, and go through the critic as ONE batch [real; fake] (one forward, and the two sides
see identical noise, so the logit gap measures the data and not the noise draw). The lambdas
(0.03 in One-Forcing) are the recipe's `weight:`. The real side comes from `real:` (a
REAL_SOURCES config; default `{type: dataset}`); the fake side is the phase's rollout.

Finite-difference R1 / R2 (discriminator only; off by default, the framewise setting), as the
official model/one_forcing.py `_compute_gan_discriminator_loss`: delta_R1 = D(x_real_t + s1 n) -
D(x_real_t), delta_R2 = D(x_fake_t + s2 n) - D(x_fake_t), n ~ N(0, I) (each perturbed copy joins
the same critic batch), and
    penalty_form apt (chunkwise_config.yaml r1_loss_type: apt):
        R1 term = r1_weight * mean(delta_R1^2)                 (NOT divided by sigma)
    penalty_form finite_difference (the official default r1_loss_type):
        R1 term = 0.5 * r1_weight * mean((delta_R1 / s1)^2)
    both:  R2 term = 0.5 * r2_weight * mean((delta_R2 / s2)^2)
and loss = weight * GAN-D loss + R1 term + R2 term: the recipe's `weight` (gan_d_weight, 0.03)
scales the GAN term only, never the penalties (the loss applies its own weight). Chunkwise
One-Forcing: r1_weight 1.0, r1_sigma 0.1, r2_weight 0.001, r2_sigma 0.01, apt.

Logged: logit_real, logit_fake (means), logit_gap = |mean l_r - mean l_f|, t_mean, gan_d (the
unweighted GAN-D loss), r1, r2 (the penalty terms as added).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from oneforcing.errors import UserError
from oneforcing.losses.common import critic_logit, figure
from oneforcing.losses.real_sources import DatasetReal  # noqa: F401 - registers the real sources
from oneforcing.registry import LOSSES, REAL_SOURCES, build


PENALTY_FORMS = ("apt", "finite_difference")


def fd_penalty(d_perturbed: torch.Tensor, d_clean: torch.Tensor, sigma: float, *, divide: bool = True) -> torch.Tensor:
    """mean(((D(x + sigma n) - D(x)) / sigma)^2), a finite-difference estimate of ||grad D||^2;
    `divide=False`: mean((D(x + sigma n) - D(x))^2) (the official `apt` R1)."""
    delta = d_perturbed - d_clean
    return torch.mean((delta / sigma if divide else delta) ** 2)


class _GANBase:
    def __init__(self, real: dict | None = None, relativistic: bool = False):
        try:
            self.real_source = build(real or {"type": "dataset"}, REAL_SOURCES, path="real")
        except UserError as err:  # keep "real.type" in the message: the outer build adds the loss's path
            raise type(err)(f"{err.key}: {err.message}" if err.key else err.message) from None
        self.relativistic = bool(relativistic)

    def _noised(self, s, fake: torch.Tensor, with_real: bool):
        """(x_t of [real; fake] or of fake alone, t, text), one t and one eps shared by both sides."""
        B = fake.shape[0]
        t = s.sample_t(B)
        eps = s.randn_like(fake).float()
        fake_t = s.scheduler.add_noise(fake.float(), eps, t)
        if not with_real:
            return fake_t, None, t, eps
        real = self.real_source(s).float()
        if real.shape != fake.shape:
            raise ValueError(f"real samples {tuple(real.shape)} and generated {tuple(fake.shape)} differ in shape")
        real_t = s.scheduler.add_noise(real, eps, t)
        return fake_t, real_t, t, eps

    @staticmethod
    def _figures(l_real, l_fake, t) -> dict[str, float]:
        out = {"logit_fake": figure(l_fake), "t_mean": figure(t)}
        if l_real is not None:
            out["logit_real"] = figure(l_real)
            out["logit_gap"] = abs(figure(l_real) - figure(l_fake))
        return out


@LOSSES.register("gan_generator")
class GANGeneratorLoss(_GANBase):
    """softplus(-D(fake_t)) (or relativistic softplus(-(D_f - D_r))) on the phase's rollout, with
    gradient through the frozen critic into the generator's output.

    The non-relativistic loss needs no real samples, but `log_real: true` (default) also scores
    the real side in the same critic batch, for the logit-gap figure (one extra sample per batch;
    set it false to save that compute)."""

    def __init__(self, real: dict | None = None, relativistic: bool = False, log_real: bool = True):
        super().__init__(real, relativistic)
        self.log_real = bool(log_real)

    def __call__(self, s):
        fake = s.rollout().x0
        want_real = self.relativistic or self.log_real
        fake_t, real_t, t, _ = self._noised(s, fake, want_real)
        if real_t is None:
            l_fake, l_real = critic_logit(s.critic, fake_t, t, s.text), None
        else:
            both = critic_logit(s.critic, torch.cat([real_t.detach(), fake_t]), torch.cat([t, t]),
                                torch.cat([s.text, s.text]))
            l_real, l_fake = both.chunk(2)
        if self.relativistic:
            loss = F.softplus(-(l_fake - l_real.detach())).mean()
        else:
            loss = F.softplus(-l_fake).mean()
        return loss, self._figures(l_real, l_fake, t)


@LOSSES.register("gan_discriminator")
class GANDiscriminatorLoss(_GANBase):
    """weight * [softplus(-D(real_t)) + softplus(D(fake_t))] (or relativistic softplus(-(D_r -
    D_f))), plus optional unscaled finite-difference R1 (real) / R2 (fake) penalties; critic phase.
    Its constructor names `weight`, so the trainer hands it the recipe's weight instead of scaling it."""

    def __init__(self, real: dict | None = None, relativistic: bool = False, r1_weight: float = 0.0,
                 r1_sigma: float = 0.1, r2_weight: float = 0.0, r2_sigma: float = 0.01,
                 penalty_form: str = "finite_difference", weight: float = 1.0):
        super().__init__(real, relativistic)
        if penalty_form not in PENALTY_FORMS:
            raise ValueError(f"penalty_form must be one of {', '.join(PENALTY_FORMS)}, got {penalty_form!r}")
        self.penalty_form, self.weight = penalty_form, float(weight)
        for name, v in (("r1_weight", r1_weight), ("r2_weight", r2_weight)):
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        for name, v in (("r1_sigma", r1_sigma), ("r2_sigma", r2_sigma)):
            if v <= 0:
                raise ValueError(f"{name} must be > 0, got {v}")
        self.r1_weight, self.r1_sigma = float(r1_weight), float(r1_sigma)
        self.r2_weight, self.r2_sigma = float(r2_weight), float(r2_sigma)

    def __call__(self, s):
        fake = s.rollout().x0.detach()
        fake_t, real_t, t, _ = self._noised(s, fake, with_real=True)
        xs, ts = [real_t, fake_t], [t, t]
        if self.r1_weight > 0:
            xs.append(real_t + self.r1_sigma * s.randn_like(real_t))
            ts.append(t)
        if self.r2_weight > 0:
            xs.append(fake_t + self.r2_sigma * s.randn_like(fake_t))
            ts.append(t)
        logits = critic_logit(s.critic, torch.cat(xs), torch.cat(ts), s.text.repeat(len(xs), 1, 1))
        parts = list(logits.chunk(len(xs)))
        l_real, l_fake = parts[0], parts[1]
        if self.relativistic:
            gan_d = F.softplus(-(l_real - l_fake)).mean()
        else:
            gan_d = F.softplus(-l_real).mean() + F.softplus(l_fake).mean()
        figures = {**self._figures(l_real, l_fake, t), "gan_d": float(gan_d.detach())}
        loss, k = self.weight * gan_d, 2
        if self.r1_weight > 0:
            apt = self.penalty_form == "apt"
            r1 = (1.0 if apt else 0.5) * self.r1_weight * fd_penalty(parts[k], l_real, self.r1_sigma, divide=not apt)
            loss, k = loss + r1, k + 1
            figures["r1"] = float(r1.detach())
        if self.r2_weight > 0:
            r2 = 0.5 * self.r2_weight * fd_penalty(parts[k], l_fake, self.r2_sigma)
            loss = loss + r2
            figures["r2"] = float(r2.detach())
        return loss, figures
