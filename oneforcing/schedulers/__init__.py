"""Noise schedules, step lists and timestep samplers."""

from oneforcing.schedulers.flow_match import FlowMatchScheduler
from oneforcing.schedulers.timesteps import ShiftedUniformTimesteps, UniformTimesteps

__all__ = ["FlowMatchScheduler", "ShiftedUniformTimesteps", "UniformTimesteps"]
