"""The flow-matching convention (shift, sigma, step lists, CFG), its timestep samplers, and
`build_flow`, which builds it once from a recipe and hands it to the sampler and timesteps."""

from oneforcing.schedulers.build import Flow, build_flow
from oneforcing.schedulers.flow_match import FlowMatchScheduler, drop_text, guided_velocity
from oneforcing.schedulers.timesteps import ShiftedUniformTimesteps, UniformTimesteps

__all__ = ["Flow", "FlowMatchScheduler", "ShiftedUniformTimesteps", "UniformTimesteps", "build_flow", "drop_text",
           "guided_velocity"]
