"""The fake score's (critic's) flow denoising loss on generated latents.

Aurora-edu/One-Forcing model/dmd.py `critic_loss` (docs/fidelity.md): the rollout is regenerated without gradient (the critic
phase's own `s.rollout()`), new t (s.sample_t: shift 5, clamp [20, 980]) and new noise, then
    loss = mean((v_hat - (eps - x))^2),   v_hat = critic.denoise(x_t, t, text).
The mean runs over all frames by default: the critic must model the generator's whole output,
including the frames outside the generator's gradient window (`masked: true` restricts it to
the window, as an option).
"""

from __future__ import annotations

import torch

from oneforcing.losses.common import critic_denoise, figure, frame_select
from oneforcing.registry import LOSSES


@LOSSES.register("flow_denoise")
class FlowDenoiseLoss:
    def __init__(self, masked: bool = False):
        self.masked = bool(masked)

    def __call__(self, s):
        if s.critic is None:
            raise RuntimeError("the flow_denoise loss needs models.critic")
        rollout = s.rollout()
        x = rollout.x0.detach().float()
        t = s.sample_t(x.shape[0])
        eps = s.randn_like(x)
        x_t = s.scheduler.add_noise(x, eps, t)
        v_hat = critic_denoise(s.critic, x_t, t, s.text)
        mask = rollout.frame_mask if self.masked else None
        err = frame_select(v_hat - s.scheduler.velocity(x, eps), mask)
        return torch.mean(err ** 2), {"t_mean": figure(t)}
