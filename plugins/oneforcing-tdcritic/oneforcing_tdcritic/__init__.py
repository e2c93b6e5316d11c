"""An example oneforcing plugin: a critic whose discriminator looks at motion.

`temporal_difference_critic` is the fake score (the same bidirectional Wan as `fake_score`) plus
a small head on the hidden states of one block: tokens are mean-pooled per frame, and the head
scores the frames' mean feature together with the statistics of consecutive-frame differences.
A generator that freezes or blurs its motion changes exactly those statistics, which is what a
discriminator for streaming video should notice.

It implements the critic interface documented in `oneforcing.critics` (`denoise`, `logit`) and
nothing else; it reaches oneforcing only through the registry and the entry point in
pyproject.toml.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from oneforcing.critics import FakeScore
from oneforcing.registry import CRITICS

__all__ = ["TemporalDifferenceCritic"]


@CRITICS.register("temporal_difference_critic")
class TemporalDifferenceCritic(FakeScore):
    """Fake score + a discriminator on per-frame features and their frame-to-frame differences."""

    def __init__(self, pretrained: str | None = None, config: dict | None = None, layer: int = -1,
                 hidden: int = 256, attention: str = "auto", gradient_checkpointing: bool = False):
        super().__init__(pretrained=pretrained, config=config, attention=attention,
                         gradient_checkpointing=gradient_checkpointing)
        if not -self.num_layers <= layer < self.num_layers:
            raise ValueError(f"layer {layer} out of range for a {self.num_layers}-block model")
        self.layer = layer % self.num_layers
        # Inputs: mean frame feature, mean |difference|, and the spread of differences over time.
        self.head = nn.Sequential(nn.LayerNorm(3 * self.dim), nn.Linear(3 * self.dim, hidden), nn.SiLU(),
                                  nn.Linear(hidden, 1))

    def _features(self, hidden: torch.Tensor, frames: int) -> torch.Tensor:
        B, N, D = hidden.shape
        per_frame = hidden.view(B, frames, N // frames, D).mean(2)           # tokens are frame-major
        if frames > 1:
            diff = per_frame[:, 1:] - per_frame[:, :-1]
            motion, spread = diff.abs().mean(1), diff.std(1, unbiased=False)
        else:
            motion = spread = torch.zeros_like(per_frame[:, 0])
        return torch.cat([per_frame.mean(1), motion, spread], dim=-1)

    def denoise_and_logit(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor):
        v, hidden = self.model(x_t, t, text, causal=False, return_hidden=(self.layer,))
        return v, self.head(self._features(hidden[self.layer], x_t.shape[1])).squeeze(-1)

    def logit(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Real/fake logit [B] for noised latents x_t [B, F, C, H, W] at model timesteps t [B]."""
        return self.denoise_and_logit(x_t, t, text)[1]
