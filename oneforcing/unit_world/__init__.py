"""A distribution-matching unit world (no video): a 2-D mixture of Gaussians with an exact score,
a one-step MLP generator and an MLP fake score, trained with the REGISTERED losses (dmd,
flow_denoise, gan_generator / gan_discriminator, fkl_surrogate, ASD's student_rollout real source)
through the library's StepContext, sampler, scheduler and timesteps. Points travel as latents
[B, 1, 2, 1, 1], so the code under test is the code that trains the video models.

    from oneforcing.unit_world import run
    result = run(seed=0, objective="dmd", steps=2000)
    result.final.sw2, result.final.modes.captured

Test: tests/test_unit_world.py. Benchmark: benchmarks/unit_world.py; results in docs/unit_world.md.
"""

from oneforcing.unit_world.metrics import ModeStats, Score, mode_stats, score, sliced_w2
from oneforcing.unit_world.mog import EmpiricalScore, ExactScore, MixtureOfGaussians
from oneforcing.unit_world.nets import UnitCritic, UnitGenerator
from oneforcing.unit_world.objectives import Objective, objectives
from oneforcing.unit_world.world import RunResult, UnitConfig, UnitWorld, run

__all__ = ["EmpiricalScore", "ExactScore", "MixtureOfGaussians", "ModeStats", "Objective", "RunResult", "Score",
           "UnitConfig", "UnitCritic", "UnitGenerator", "UnitWorld", "mode_stats", "objectives", "run", "score",
           "sliced_w2"]
