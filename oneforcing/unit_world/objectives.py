"""The objectives the unit world trains, written as the recipes write them (loss lists of registered
losses), so that `trainer.config`'s loss builder turns them into the same loss objects a run uses.

    dmd             dmd + flow_denoise critic                            (Self Forcing / DMD)
    dmd_flipped     the same with the dmd term's weight -1: the gradient sign flipped (a control
                    that must diverge; it proves the convergence check can fail)
    dmd_exact_fake  dmd with a fake score that is exact for a bank of current generator samples
                    (mog.EmpiricalScore, refreshed before each generator update): no critic lag
    dmd_gan         dmd + gan_generator on real (target) samples; critic flow_denoise +
                    gan_discriminator                                    (One-Forcing framewise)
    gan             gan_generator alone on real samples; critic gan_discriminator (reference)
    fkl             fkl_surrogate alone: regression of G(noise) onto the exact teacher's ODE endpoint
    dmd_fkl         dmd + fkl_surrogate
    dmd_gan_fkl     dmd + gan + fkl_surrogate                            (recipes/one_forcing_fkl.yaml)
    asd             dmd + gan whose "real" side is the student's own 2-step rollout
                    (real_sources student_rollout, steps [1000, 500])    (recipes/asd_1step.yaml)

`cfg_scale: 1` everywhere: the target is unconditional, so every scale guides to the same
velocity and 1 saves the unconditional pass.
"""

from __future__ import annotations

from dataclasses import dataclass

DMD = {"type": "dmd", "cfg_scale": 1.0}
FLOW_DENOISE = {"type": "flow_denoise"}


@dataclass(frozen=True)
class Objective:
    generator_losses: list[dict]
    critic_losses: list[dict]
    critic: str           # "learned" (UnitCritic), "empirical" (EmpiricalScore) or "none"

    @property
    def needs_head(self) -> bool:
        return any(c["type"].startswith("gan_") for c in self.generator_losses + self.critic_losses)

    @property
    def needs_ode_pairs(self) -> bool:
        return any(c["type"] == "fkl_surrogate" for c in self.generator_losses)


def _gan(weight: float, real: dict | None = None) -> tuple[dict, dict]:
    real = real or {"type": "dataset"}
    return ({"type": "gan_generator", "weight": weight, "real": real},
            {"type": "gan_discriminator", "weight": weight, "real": real})


def objectives(gan_weight: float = 0.03, fkl_weight: float = 1.0) -> dict[str, Objective]:
    g_gan, d_gan = _gan(gan_weight)
    g_asd, d_asd = _gan(gan_weight, {"type": "student_rollout", "steps": [1000.0, 500.0]})
    g_only, d_only = _gan(1.0)
    fkl = {"type": "fkl_surrogate", "weight": fkl_weight, "index": 0}
    return {
        "dmd": Objective([DMD], [FLOW_DENOISE], "learned"),
        "dmd_flipped": Objective([{**DMD, "weight": -1.0}], [FLOW_DENOISE], "learned"),
        "dmd_exact_fake": Objective([DMD], [], "empirical"),
        "dmd_gan": Objective([DMD, g_gan], [FLOW_DENOISE, d_gan], "learned"),
        "gan": Objective([g_only], [d_only], "learned"),
        "fkl": Objective([fkl], [], "none"),
        "dmd_fkl": Objective([DMD, fkl], [FLOW_DENOISE], "learned"),
        "dmd_gan_fkl": Objective([DMD, g_gan, fkl], [FLOW_DENOISE, d_gan], "learned"),
        "asd": Objective([DMD, g_asd], [FLOW_DENOISE, d_asd], "learned"),
    }
