"""Flow-matching pre-training of a (bidirectional) teacher, with text dropout for CFG."""

from __future__ import annotations

import torch

from oneforcing.registry import LOSSES
from oneforcing.schedulers.flow_match import check_text_dropout, drop_text


@LOSSES.register("flow_matching")
class FlowMatchingLoss:
    """MSE between the model's velocity at x_t and eps - x0 on real latents.

    With probability `text_dropout` a sample's prompt embedding is replaced by the negative /
    empty prompt's, so the model also learns the unconditional score that CFG needs."""

    def __init__(self, text_dropout: float = 0.1):
        self.text_dropout = check_text_dropout(text_dropout)

    def __call__(self, s):
        x0 = s.latents
        eps = s.randn_like(x0)
        t = s.sample_t(x0.shape[0])
        x_t = s.scheduler.add_noise(x0, eps, t)
        text = drop_text(s.text, s.uncond_text(), self.text_dropout, s.rng) if self.text_dropout > 0 else s.text
        v = s.generator(x_t, t, text)
        loss = torch.mean((v.float() - s.scheduler.velocity(x0, eps).float()) ** 2)
        return loss, {"t_mean": float(t.float().mean())}
