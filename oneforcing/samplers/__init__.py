"""Rollouts: causal streaming inference, the self-forcing training rollout, the teacher ODE sampler."""

from oneforcing.samplers.causal_inference import CausalInference
from oneforcing.samplers.common import ON_GRID, broadcast_from_rank0, draw_exit_indices, warped_steps
from oneforcing.samplers.self_forcing import Rollout, SelfForcingRollout
from oneforcing.samplers.teacher_ode import ODEResult, TeacherODE

__all__ = ["CausalInference", "ODEResult", "ON_GRID", "Rollout", "SelfForcingRollout", "TeacherODE",
           "broadcast_from_rank0", "draw_exit_indices", "warped_steps"]
