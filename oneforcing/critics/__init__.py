"""Critics: the trainable fake score, optionally with a discriminator head (registered in CRITICS).

The interface a critic plugin implements (an `nn.Module`, built from its recipe config like any
component, `@CRITICS.register("name")`):

    denoise(x_t, t, text) -> v        velocity (eps - x0) of the generator's distribution at x_t;
                                      x_t [B, F, C, H, W], t [B] model timesteps (sigma = t / 1000),
                                      text [B, L, D]. Used by `dmd` (fake score, no grad) and
                                      `flow_denoise` (its training loss).
    logit(x_t, t, text) -> [B]        a real/fake logit, for the GAN losses (`gan_generator`,
                                      `gan_discriminator`); a critic without a head raises
                                      TypeError in it (FakeScore does).

Both are checked when the critic registers (registry/contracts.py); `forward` should equal
`denoise`. In the generator phase the trainer freezes the critic's parameters, and gradients flow
through `logit` to x_t only. Keep every parameter inside a submodule that is *called* (a sharded
placement gathers a module's parameters when it is called: see oneforcing/trainer/placement.py),
as `fake_score` and `register_gan_critic` do. Pretrained weights: a submodule that is a
`PretrainedWeights` with a `weights_folder` (the inner CausalWan); the critic itself never loads them.

Built in:
    fake_score           bidirectional CausalWan under `model.`              (Self Forcing, DMD)
    register_gan_critic  fake_score + register-token head under `head.`      (One-Forcing, ASD)
"""

from oneforcing.critics.fake_score import FakeScore
from oneforcing.critics.register_gan import RegisterAttention, RegisterGANCritic, RegisterHead

__all__ = ["FakeScore", "RegisterAttention", "RegisterGANCritic", "RegisterHead"]
