"""Distribution matching distillation (DMD) for the generator.

Aurora-edu/One-Forcing model/dmd.py `compute_distribution_matching_loss` / `_compute_kl_grad` (docs/fidelity.md):
    x_t       = (1 - sigma) x + sigma eps            x = rollout.x0, t = s.sample_t(B), one per sample
    real      = uncond + w (cond - uncond)           frozen teacher s.real_score, w = `cfg_scale`
    fake      = critic.denoise(x_t, t, text)         conditional only
    grad      = (fake_x0 - real_x0) / max(mean_{F,C,H,W} |x - real_x0|, 1e-6),  nan_to_num
                (official model/dmd.py p_real_l1: normalizer.clamp_min(eps))
    loss      = 0.5 * mean((x - sg(x - grad))^2)     over the rollout's frame_mask, in fp32

so d loss / d x = grad / N on the masked frames (N = number of masked elements) and 0 elsewhere:
the loss is a surrogate whose gradient is the normalised KL gradient. Both scores run without grad.
`cfg_scale` is the library's one CFG convention (schedulers/flow_match.py): 6.0 = One-Forcing's
official guidance_scale 5 (written cond + 5 (cond - uncond) there); Self Forcing / Causal Forcing's
guidance_scale 3 is cfg_scale 4.0.
"""

from __future__ import annotations

import torch

from oneforcing.losses.common import call_model, critic_denoise, figure, frame_select
from oneforcing.registry import LOSSES
from oneforcing.schedulers.flow_match import GUIDANCE_RENAMED, check_cfg_scale, guided_velocity


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
    """The DMD generator loss on the phase's rollout (recipe: `{type: dmd, cfg_scale: 6.0}`).

    `batch_cfg`: run the teacher's conditional and unconditional passes as one batch of 2B (one
    forward; costs activation memory) instead of two forwards. `teacher_causal`: the mode a
    CausalWan teacher runs in (False = bidirectional, the real score of every recipe)."""

    renamed_keys = {"guidance": GUIDANCE_RENAMED}

    def __init__(self, cfg_scale: float = 6.0, batch_cfg: bool = True, teacher_causal: bool = False,
                 eps: float = 1e-6):
        self.cfg_scale, self.batch_cfg = check_cfg_scale(cfg_scale), bool(batch_cfg)
        self.teacher_causal, self.eps = bool(teacher_causal), float(eps)

    def real_v(self, s, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The teacher's guided velocity uncond + w (cond - uncond) (linear, so the same in x0)."""
        teacher = s.real_score
        if teacher is None:
            raise RuntimeError("the dmd loss needs models.real_score (the frozen teacher)")

        def velocity(x, t, text):
            return call_model(teacher, x, t, text, causal=self.teacher_causal)

        uncond = None if self.cfg_scale == 1.0 else s.uncond_text()
        return guided_velocity(velocity, x_t, t, s.text, uncond, self.cfg_scale, batch=self.batch_cfg)

    def __call__(self, s):
        rollout = s.rollout()
        x = rollout.x0
        B = x.shape[0]
        t = s.sample_t(B)
        noise = s.randn_like(x)
        with torch.no_grad():
            x_t = s.scheduler.add_noise(x.detach().float(), noise.float(), t)
            real_x0 = s.scheduler.x0_from_v(x_t, self.real_v(s, x_t, t), t)
            fake_x0 = s.scheduler.x0_from_v(x_t, critic_denoise(s.critic, x_t, t, s.text), t)
            grad = dmd_gradient(x.detach(), fake_x0, real_x0, self.eps)
        mask = rollout.frame_mask
        loss = dmd_surrogate(x, grad, mask)
        g = frame_select(grad, mask)
        return loss, {
            "grad_norm": float(g.norm() / max(g.numel(), 1) ** 0.5),  # RMS of the DMD gradient
            "t_mean": figure(t),
            "real_fake_gap": figure((fake_x0 - real_x0).abs()),
        }
