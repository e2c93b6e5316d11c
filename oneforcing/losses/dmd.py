"""Distribution matching distillation (DMD) for the generator.

defaults.md, "DMD (generator)":
    x_t       = (1 - sigma) x + sigma eps            x = rollout.x0, t = s.sample_t(B), one per sample
    real      = cond + g (cond - uncond)             frozen teacher s.real_score, g = `guidance`
    fake      = critic.denoise(x_t, t, text)         conditional only
    grad      = (fake_x0 - real_x0) / max(mean_{F,C,H,W} |x - real_x0|, 1e-6),  nan_to_num
                (official model/dmd.py p_real_l1: normalizer.clamp_min(eps))
    loss      = 0.5 * mean((x - sg(x - grad))^2)     over the rollout's frame_mask, in fp32

so d loss / d x = grad / N on the masked frames (N = number of masked elements) and 0 elsewhere:
the loss is a surrogate whose gradient is the normalised KL gradient. Both scores run without grad.
`guidance` is in the "cond + g (cond - uncond)" form: 5.0 = Wan's usual CFG 6 (One-Forcing);
Self Forcing / Causal Forcing recipes use 3.0.
"""

from __future__ import annotations

import torch

from oneforcing.losses.common import GRID, call_model, critic_denoise, figure, frame_select
from oneforcing.registry import LOSSES


def dmd_gradient(x: torch.Tensor, fake_x0: torch.Tensor, real_x0: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(fake_x0 - real_x0) / max(per-sample mean |x - real_x0|, eps), non-finite values zeroed."""
    x, fake_x0, real_x0 = x.float(), fake_x0.float(), real_x0.float()
    dims = tuple(range(1, x.dim()))
    normalizer = (x - real_x0).abs().mean(dim=dims, keepdim=True).clamp_min(eps)
    return torch.nan_to_num((fake_x0 - real_x0) / normalizer)


def dmd_surrogate(x: torch.Tensor, grad: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """0.5 * mean((x - sg(x - grad))^2) over the masked frames: its gradient in x is grad / N."""
    x = frame_select(x.float(), frame_mask)
    target = (x - frame_select(grad.float(), frame_mask)).detach()
    return 0.5 * torch.mean((x - target) ** 2)


@LOSSES.register("dmd")
class DMDLoss:
    """The DMD generator loss on the phase's rollout (recipe: `{type: dmd, guidance: 5.0}`).

    `batch_cfg`: run the teacher's conditional and unconditional passes as one batch of 2B (one
    forward; costs activation memory) instead of two forwards. `teacher_causal`: the mode a
    CausalWan teacher runs in (False = bidirectional, the real score of every recipe)."""

    def __init__(self, guidance: float = 5.0, batch_cfg: bool = True, teacher_causal: bool = False,
                 eps: float = 1e-6):
        if guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {guidance}")
        self.guidance, self.batch_cfg = float(guidance), bool(batch_cfg)
        self.teacher_causal, self.eps = bool(teacher_causal), float(eps)

    def real_v(self, s, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The teacher's guided velocity cond + g (cond - uncond) (linear, so the same in x0)."""
        teacher, text = s.real_score, s.text
        if teacher is None:
            raise RuntimeError("the dmd loss needs models.real_score (the frozen teacher)")
        if self.guidance == 0:
            return call_model(teacher, x_t, t, text, causal=self.teacher_causal)
        uncond = s.uncond_text()
        if self.batch_cfg and uncond.shape == text.shape:
            both = call_model(teacher, torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([text, uncond]),
                              causal=self.teacher_causal)
            cond, unc = both.chunk(2)
        else:
            cond = call_model(teacher, x_t, t, text, causal=self.teacher_causal)
            unc = call_model(teacher, x_t, t, uncond, causal=self.teacher_causal)
        return cond + self.guidance * (cond - unc)

    def __call__(self, s):
        rollout = s.rollout()
        x = rollout.x0
        B = x.shape[0]
        t = s.sample_t(B)
        noise = s.randn_like(x)
        with torch.no_grad():
            x_t = GRID.add_noise(x.detach().float(), noise.float(), t)
            real_x0 = GRID.x0_from_v(x_t, self.real_v(s, x_t, t), t)
            fake_x0 = GRID.x0_from_v(x_t, critic_denoise(s.critic, x_t, t, s.text), t)
            grad = dmd_gradient(x.detach(), fake_x0, real_x0, self.eps)
        mask = getattr(rollout, "frame_mask", None)
        loss = dmd_surrogate(x, grad, mask)
        g = frame_select(grad, mask)
        return loss, {
            "grad_norm": float(g.norm() / max(g.numel(), 1) ** 0.5),  # RMS of the DMD gradient
            "t_mean": figure(t),
            "real_fake_gap": figure((fake_x0 - real_x0).abs()),
        }
