"""`fake_score`: the trainable bidirectional score of the generator's distribution (DMD's fake score).

A bidirectional CausalWan under the attribute `model`, so the critic's parameter names are the
Wan/diffusers names prefixed with "model." (e.g. `model.blocks.0.attn1.to_q.weight`); the
checkpoint of the inner network alone is `critic.model.state_dict()` / `critic.save_pretrained`.
One-Forcing initialises it from the base Wan2.1-T2V-1.3B weights (not from the generator).

Every parameter lives in a submodule that is *called* (`self.model(...)`): the critic protocol
(see oneforcing/critics/__init__.py) asks for that, whatever the placement does with it. The
weights come from the inner Wan's `weights_folder` (the critic's head, if any, keeps its init);
nothing is loaded here.
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
                 gradient_checkpointing: bool = False):
        super().__init__()
        self.model = CausalWan(pretrained=pretrained, config=config, causal=False, attention=attention,
                               gradient_checkpointing=gradient_checkpointing)
        self.dim = self.model.dim
        self.num_layers = len(self.model.blocks)

    check_recipe = staticmethod(CausalWan.check_recipe)  # the same `config:` as the inner Wan

    # --- weights (the inner Wan's) -----------------------------------------------------------------
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
