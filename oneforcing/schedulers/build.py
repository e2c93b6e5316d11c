"""Build the recipe's flow-matching convention once and hand it to what depends on it.

    flow = build_flow(recipe.get("scheduler"), recipe.get("sampler"), recipe.get("timesteps"))
    flow.scheduler   FlowMatchScheduler: the shift, sigma = t / 1000, step lists, CFG (flow_match.py)
    flow.sampler     the recipe's sampler, built with `scheduler=flow.scheduler` (None if not set)
    flow.timesteps   the training timestep sampler, built the same way (None if not set)

Every job that samples (train, generate, toy_eval, ode_pairs, curvature) builds through here, and
the trainer hands `flow.scheduler` to every loss (StepContext.scheduler): the recipe's one
`scheduler:` line sets the shift of all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from oneforcing.registry import SAMPLERS, SCHEDULERS, TIMESTEP_SAMPLERS, build

DEFAULT_SCHEDULER = {"type": "flow_match"}  # FlowMatchScheduler's defaults: shift 5


@dataclass(frozen=True)
class Flow:
    scheduler: Any
    sampler: Any | None = None
    timesteps: Any | None = None


def build_flow(scheduler: dict | None = None, sampler: dict | None = None, timesteps: dict | None = None, *,
               file: str | None = None, sampler_key: str = "sampler") -> Flow:
    flow = build(scheduler or DEFAULT_SCHEDULER, SCHEDULERS, path="scheduler", file=file)
    return Flow(
        scheduler=flow,
        sampler=build(sampler, SAMPLERS, path=sampler_key, file=file, scheduler=flow) if sampler else None,
        timesteps=build(timesteps, TIMESTEP_SAMPLERS, path="timesteps", file=file, scheduler=flow)
        if timesteps else None,
    )
