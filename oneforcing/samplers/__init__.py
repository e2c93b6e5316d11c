"""Rollouts: causal streaming inference, the self-forcing training rollout, the teacher ODE sampler.

All share one call signature and return a `Rollout` (samplers/common.py)."""

from oneforcing.samplers.causal_inference import CausalInference
from oneforcing.samplers.common import Rollout, draw_exit_indices
from oneforcing.samplers.self_forcing import SelfForcingRollout
from oneforcing.samplers.teacher_ode import ODEResult, TeacherODE

__all__ = ["CausalInference", "ODEResult", "Rollout", "SelfForcingRollout", "TeacherODE",
           "draw_exit_indices"]
