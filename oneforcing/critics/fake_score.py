"""`fake_score`: the trainable bidirectional score of the generator's distribution (DMD's fake score).

A bidirectional CausalWan under the attribute `model`, so the critic's parameter names are the
Wan/diffusers names prefixed with "model." (e.g. `model.blocks.0.attn1.to_q.weight`); the
checkpoint of the inner network alone is `critic.model.state_dict()` / `critic.save_pretrained`.
One-Forcing initialises it from the base Wan2.1-T2V-1.3B weights (not from the generator).

ZeRO-3 note: every parameter lives in a submodule that is *called* (`self.model(...)`), so
DeepSpeed's per-module gather hooks fire even though the losses call `denoise` / `logit` rather
than the top-level forward.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from oneforcing.models.causal_wan import CausalWan
from oneforcing.registry import CRITICS


@CRITICS.register("fake_score")
class FakeScore(nn.Module):
    """`{type: fake_score, pretrained: DIR}` or `{type: fake_score, config: {...}}` (diffusers keys)."""

    def __init__(self, pretrained: str | None = None, config: dict | None = None, attention: str = "auto",
                 gradient_checkpointing: bool = False, load_weights: bool = True):
        super().__init__()
        self.model = CausalWan(pretrained=pretrained, config=config, causal=False, attention=attention,
                               gradient_checkpointing=gradient_checkpointing, load_weights=load_weights)
        self.pretrained = pretrained
        self.dim = self.model.dim
        self.num_layers = len(self.model.blocks)

    check_recipe = staticmethod(CausalWan.check_recipe)  # the same `config:` as the inner Wan

    # --- weights (delegated to the inner Wan) ----------------------------------------------------
    @property
    def weights_loaded(self) -> bool:
        return self.model.weights_loaded

    def load_weights_from(self, path) -> None:
        """Load a diffusers transformer folder into the inner model (heads keep their init)."""
        self.model.load_weights_from(path)

    def save_pretrained(self, out_dir) -> None:
        self.model.save_pretrained(out_dir)

    # --- the critic interface --------------------------------------------------------------------
    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Velocity v = eps - x0 at (x_t, t), conditional, bidirectional. x_t [B, F, C, H, W]."""
        return self.model(x_t, t, text, causal=False)

    def logit(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The discriminator's logit [B]: a plain fake score has no discriminator head."""
        raise TypeError(f"the critic {type(self).__name__} has no discriminator head (`logit`); "
                        "use a critic such as `register_gan_critic` for the GAN losses")

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.denoise(x_t, t, text)
