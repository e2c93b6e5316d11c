"""One flow-matching convention: the recipe's `scheduler:` sets the shift of every sampler,
timestep sampler and loss, and no component keeps a shift (or a CFG form) of its own."""

import inspect
from pathlib import Path

import pytest
import torch

from oneforcing.errors import RecipeError
from oneforcing.registry import LOSSES, REAL_SOURCES, SAMPLERS, TIMESTEP_SAMPLERS, build, load_plugins
from oneforcing.jobs.base import prepare
from oneforcing.schedulers import FlowMatchScheduler, build_flow

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def train_flow(recipe: str, *overrides: str):
    """The train job of a recipe and its flow parts, built as the trainer builds them."""
    _, _, job = prepare(str(RECIPES / recipe), list(overrides))
    return job, build_flow(job.config.scheduler, job.config.sampler, job.config.timesteps)


class Ctx:
    """The few StepContext fields the shift reaches through (`s.scheduler`, `s.sampler`)."""

    def __init__(self, flow):
        self.scheduler, self.sampler = flow.scheduler, flow.sampler


@pytest.mark.parametrize("shift", [3.0, 5.0, 8.0])
def test_one_scheduler_line_sets_the_shift_of_every_sampler_timestep_sampler_and_loss(shift):
    job, flow = train_flow("toy/asd_1step.yaml", f"scheduler.shift={shift}")
    warp = FlowMatchScheduler(shift=shift).warp
    assert flow.scheduler.shift == shift
    # the rollout sampler: its step list is warped by the recipe's shift
    assert flow.sampler.scheduler is flow.scheduler
    assert flow.sampler.steps == pytest.approx([float(warp(s)) for s in (1000.0,)])
    # the training timesteps (_wan.yaml: integer k ~ U{0..999}, u = k / 1000) -> the same shift -> clamp
    assert flow.timesteps.scheduler is flow.scheduler and flow.timesteps.integer
    u = torch.randint(0, 1000, (256,), generator=torch.Generator().manual_seed(0)).float() / 1000
    t = flow.timesteps(256, rng=torch.Generator().manual_seed(0))
    assert torch.allclose(t, (1000 * shift * u / (1 + (shift - 1) * u)).clamp(20, 980))
    # ASD's real side (a GAN loss's student_rollout): its n+1 step list through s.scheduler
    real = next(w.fn.real_source for w in job.config.critic_losses if hasattr(w.fn, "real_source"))
    assert real.sampler(Ctx(flow)).steps == pytest.approx([1000.0, float(warp(500.0))])
    assert real.sampler(Ctx(flow)).scheduler is flow.scheduler


def test_the_shift_reaches_the_ar_diffusion_weighting_and_the_eval_jobs():
    from oneforcing.losses.teacher_forcing import TeacherForcingDiffusionLoss

    job, flow = train_flow("toy/causal_forcing_ar_diffusion.yaml", "scheduler.shift=3.0")
    loss = next(w.fn for w in job.config.generator_losses if isinstance(w.fn, TeacherForcingDiffusionLoss))
    assert loss.timestep_weighting and flow.timesteps.scheduler.shift == 3.0
    t = torch.tensor([300.0, 600.0])
    assert not torch.allclose(flow.scheduler.training_weight(t), FlowMatchScheduler(shift=5.0).training_weight(t))
    warp3 = FlowMatchScheduler(shift=3.0).warp
    _, _, student = prepare(str(RECIPES / "toy/eval_student.yaml"), ["scheduler.shift=3.0"])
    assert student.sampler.first_block_steps == pytest.approx([float(warp3(s)) for s in (1000, 750, 500, 250)])
    for recipe in ("toy/eval_teacher.yaml", "toy/curvature.yaml"):  # 50-step teacher ODEs
        _, _, teacher = prepare(str(RECIPES / recipe), ["scheduler.shift=3.0"])
        assert teacher.sampler.scheduler.shift == 3.0, recipe
        assert teacher.sampler.timesteps[1] == pytest.approx(float(warp3(1000 * (1 - 1 / 50)))), recipe


def test_default_shift_is_five_and_the_official_step_lists_are_unchanged():
    _, flow = train_flow("toy/self_forcing_4step.yaml")
    assert flow.scheduler.shift == 5.0 and flow.sampler.steps == pytest.approx([1000.0, 937.5, 833.333, 625.0], abs=1e-3)
    _, teacher = train_flow("toy/teacher.yaml")  # the toy teacher's training timesteps: shift 3
    assert teacher.scheduler.shift == 3.0 and teacher.timesteps.scheduler is teacher.scheduler


def test_no_component_keeps_a_shift_or_a_guidance_of_its_own():
    load_plugins()
    for registry in (SAMPLERS, TIMESTEP_SAMPLERS, LOSSES, REAL_SOURCES):
        for entry in registry.entries():
            target = entry.obj.__init__ if inspect.isclass(entry.obj) else entry.obj
            params = inspect.signature(target).parameters
            assert not {"shift", "weighting_shift", "guidance"} & set(params), (registry.kind, entry.name)


@pytest.mark.parametrize("cfg,registry,says", [
    ({"type": "self_forcing", "shift": 3.0}, SAMPLERS, "the shift is set once, in the recipe's `scheduler:"),
    ({"type": "teacher_ode", "guidance": 6.0}, SAMPLERS, "it is now 'cfg_scale'"),
    ({"type": "dmd", "guidance": 5.0}, LOSSES, "guidance 5 -> cfg_scale 6"),
    ({"type": "shifted_uniform", "shift": 5.0}, TIMESTEP_SAMPLERS, "the shift is set once"),
    ({"type": "teacher_forcing_diffusion", "weighting_shift": 5.0}, LOSSES, "the shift is set once"),
])
def test_an_old_key_says_where_its_value_went(cfg, registry, says):
    with pytest.raises(RecipeError) as err:
        build(cfg, registry, path="x", file="r.yaml")
    assert str(err.value).startswith("r.yaml: x.") and says in str(err.value)


def test_dmd_cfg_scale_keeps_the_official_effective_scales():
    """One-Forcing's DMD guidance_scale 5 and Self Forcing's 3 are written cond + g (cond - uncond):
    the recipes' cfg_scale is g + 1, the same teacher score."""
    for recipe, cfg_scale in (("one_forcing_framewise.yaml", 6.0), ("self_forcing_1step.yaml", 4.0),
                              ("asd_1step.yaml", 6.0), ("one_forcing_fkl.yaml", 6.0)):
        from oneforcing.config import load_recipe

        losses = load_recipe(RECIPES / recipe)["generator_losses"]
        assert [loss.get("cfg_scale") for loss in losses if loss["type"] == "dmd"] == [cfg_scale], recipe


def test_a_sampler_cannot_bring_its_own_scheduler():
    with pytest.raises(RecipeError, match="^r.yaml: sampler.scheduler: sampler 'self_forcing' gets 'scheduler' from the job"):
        build_flow({"type": "flow_match", "shift": 5.0},
                   {"type": "self_forcing", "scheduler": {"type": "flow_match", "shift": 3.0}}, file="r.yaml")
