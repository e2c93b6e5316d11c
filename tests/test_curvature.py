"""curvature: Eq. 2 on flows with known geometry, the summaries, and the job end to end on a tiny teacher."""

import json
import math

import pytest
import torch
from torch import nn

from oneforcing.errors import UserError
from oneforcing.eval.curvature import (
    bootstrap_mean_ci, curvature_profile, normalised_profile, temporal_difference, trajectory_summaries,
)
from oneforcing.jobs.base import RunContext
from oneforcing.jobs.curvature import integrate
from oneforcing.registry import JOBS, build
from oneforcing.samplers.teacher_ode import TeacherODE
from oneforcing.schedulers import FlowMatchScheduler
from oneforcing.testing.tiny_wan import save_toy_shaped_wan

SHAPE = (2, 3, 5, 4, 4)  # [B, F, C, H, W]


class PointMassFlow(nn.Module):
    """The exact flow of a one-point data distribution: v = (x - x0) / sigma, a straight line."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x, t, text, **_):
        sigma = (t.float() / 1000).view(-1, *[1] * (x.dim() - 1))
        return ((x - self.x0.to(x.dtype)) / sigma.to(x.dtype)).to(x.dtype)  # all in the model dtype


class PiecewiseFlow(nn.Module):
    """Velocity c_high above sigma 0.9 and c_low at and below it: a trajectory with one bend."""

    def __init__(self, c_high, c_low):
        super().__init__()
        self.c_high, self.c_low = c_high, c_low

    def forward(self, x, t, text, **_):
        high = (t.float() / 1000 > 0.9 + 1e-6).view(-1, *[1] * (x.dim() - 1))
        return torch.where(high, self.c_high.expand_as(x), self.c_low.expand_as(x))


def _run(model, sampler, dtype=torch.float32):
    """Integrate with the model in `dtype` (a dtype-marking parameter: samplers run a model in the
    dtype of its parameters, and keep the ODE state in fp32 themselves)."""
    model.register_parameter("dtype_mark", nn.Parameter(torch.zeros(1, dtype=dtype), requires_grad=False))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    return integrate(sampler, model, noise, torch.zeros(SHAPE[0], 4, 8), None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_straight_flow_has_zero_curvature(dtype):
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    states, sigmas = _run(PointMassFlow(x0), TeacherODE(num_steps=50, cfg_scale=1.0, keep_indices=[], scheduler=FlowMatchScheduler(shift=8.0)), dtype)
    assert states.shape == (SHAPE[0], 51, *SHAPE[1:]) and sigmas[0] == 1 and sigmas[-1] == 0
    C = curvature_profile(states, sigmas)
    chord = ((states[:, 0] - states[:, -1]).double() ** 2).mean()
    # fp32: rounding of the states, amplified by 1 / (sigma_i+1 - sigma_i); bf16: the model's output
    # rounding only, as the state stays fp32 (a bf16 state would lose the first shift-8 steps whole)
    tol = 1e-6 if dtype == torch.float32 else 1e-4
    assert C.shape == (SHAPE[0], 50) and float(C.max()) < tol * float(chord)
    assert torch.allclose(states[:, -1], x0, atol=1e-4 if dtype == torch.float32 else 0.05)


def test_bent_flow_gives_the_expected_profile():
    """c_high = 9, c_low = -1 on a uniform 50-step grid: the chord x_1 - x_0 = 0.1 * 9 - 0.9 * 1 = 0, so
    C = 81 on the 5 segments starting above 0.9 and 1 on the other 45: mass 405 / 450 = 0.9, ratio 81
    (the band is set just above the segment that starts at 0.9, which is in the low part)."""
    ones = torch.ones(1, *SHAPE[1:])
    ode = TeacherODE(num_steps=50, cfg_scale=1.0, keep_indices=[], scheduler=FlowMatchScheduler(shift=1.0))
    states, sigmas = _run(PiecewiseFlow(9 * ones, -ones), ode)
    C = curvature_profile(states, sigmas)
    expected = torch.tensor([81.0] * 5 + [1.0] * 45, dtype=torch.float64)
    assert torch.allclose(C, expected.expand_as(C), rtol=1e-4)
    s = trajectory_summaries(C, sigmas, high_t=0.91, mid_band=(0.3, 0.7))  # the 5 segments above the bend
    assert torch.allclose(s["mass_high"], torch.full((SHAPE[0],), 0.9, dtype=torch.float64), rtol=1e-4)
    assert torch.allclose(s["ratio"], torch.full((SHAPE[0],), 81.0, dtype=torch.float64), rtol=1e-4)
    # every segment is 0.02 long: the dt-weighted mass equals the step-sum mass here
    assert torch.allclose(s["mass_high_dt"], s["mass_high"])
    assert torch.allclose(normalised_profile(C)[:, :5], torch.ones(SHAPE[0], 5, dtype=torch.float64))


def test_temporal_difference_removes_static_content():
    # a velocity that is the same in every frame (static appearance): the frame differences never move
    c_high = torch.randn(1, 1, *SHAPE[2:], generator=torch.Generator().manual_seed(2)).expand(1, *SHAPE[1:])
    noise = torch.randn(SHAPE[0], 1, *SHAPE[2:], generator=torch.Generator().manual_seed(3)).expand(SHAPE)
    sampler = TeacherODE(num_steps=20, scheduler=FlowMatchScheduler(shift=1.0), cfg_scale=1.0, keep_indices=[])
    states, sigmas = integrate(sampler, PiecewiseFlow(c_high, -c_high), noise.contiguous(), torch.zeros(2, 4, 8), None)
    assert float(curvature_profile(states, sigmas).max()) > 0.1
    assert float(curvature_profile(temporal_difference(states), sigmas).abs().max()) < 1e-10


def test_bootstrap_ci_and_profile_checks():
    v = torch.arange(20, dtype=torch.float64)
    out = bootstrap_mean_ci(v, samples=500, seed=0)
    assert out["mean"] == 9.5 and out["n"] == 20 and math.isclose(out["sem"], float(v.std()) / math.sqrt(20))
    assert out["ci95"][0] < 9.5 < out["ci95"][1] and out == bootstrap_mean_ci(v, samples=500, seed=0)
    assert bootstrap_mean_ci(v[:1])["ci95"] is None
    with pytest.raises(ValueError, match="decrease"):
        curvature_profile(torch.zeros(1, 3, 4), torch.tensor([0.0, 0.5, 1.0]))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_toy_shaped_wan(tmp_path_factory.mktemp("teacher") / "transformer")


def _job(teacher, out, **kw):
    cfg = {"type": "curvature", "teacher": str(teacher), "out": str(out), "split": "test", "num_prompts": 3,
           "batch_size": 2, "frames": 3, "size": 16, "bootstrap": 100,
           "scheduler": {"type": "flow_match", "shift": 5.0},
           "sampler": {"type": "teacher_ode", "num_steps": 20, "cfg_scale": 3.0}, **kw}
    return build(cfg, JOBS)


def test_job_writes_json_and_plot(teacher, tmp_path):
    out = tmp_path / "curv"
    result = _job(teacher, out).run(RunContext(seed=3))
    saved = json.loads((out / "curvature.json").read_text())
    assert (out / "curvature.png").stat().st_size > 1000
    assert saved["num_prompts"] == 3 and len(saved["t"]) == 20 and saved["t"][0] == 1.0
    for name in ("latent", "temporal_difference"):
        v = saved["variants"][name]
        assert len(v["per_prompt"]["profile"]) == 3 and len(v["mean_profile"]) == 20
        assert 0 <= v["mass_high"]["mean"] <= 1 and v["ratio"]["mean"] > 0
        lo, hi = v["mass_high"]["ci95"]
        assert lo <= v["mass_high"]["mean"] <= hi
        assert max(v["mean_normalised_profile"]) <= 1 + 1e-9
    assert result["variants"]["latent"]["mass_high"] == saved["variants"]["latent"]["mass_high"]
    # one deterministic seed per prompt: a re-run gives the same profiles
    again = _job(teacher, tmp_path / "again").run(RunContext(seed=3))
    assert again["variants"]["latent"]["per_prompt"] == saved["variants"]["latent"]["per_prompt"]


def test_job_user_errors(teacher, tmp_path):
    with pytest.raises(UserError, match="exactly one of"):
        _job(teacher, tmp_path, split=None)
    with pytest.raises(UserError, match="no step in the high"):
        _job(teacher, tmp_path, sampler={"type": "teacher_ode", "num_steps": 1},
             scheduler={"type": "flow_match", "shift": 1.0})
    with pytest.raises(UserError, match="high_t"):
        _job(teacher, tmp_path, high_t=0.5, mid_band=[0.3, 0.7])
