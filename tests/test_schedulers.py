import pytest
import torch

from oneforcing.schedulers import FlowMatchScheduler, ShiftedUniformTimesteps
from oneforcing.schedulers.flow_match import drop_text, guided_velocity

FLOW = FlowMatchScheduler()  # the recipe's convention (shift 5), handed to every sampler


def test_step_list_warp_matches_paper():
    s = FlowMatchScheduler(shift=5.0)
    assert s.step_list([1000, 750, 500, 250]) == pytest.approx([1000.0, 937.5, 833.3333, 625.0], abs=1e-3)


def test_sigma_matches_diffusers_flow_match_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
    # At construction diffusers holds the shifted sigmas of the un-shifted grid t = 1000 ... 1.
    grid = torch.linspace(1, 1000, 1000).flip(0)
    sched = FlowMatchScheduler(shift=5.0)
    torch.testing.assert_close(sched.warp(grid), ref.timesteps.float(), atol=1e-3, rtol=0)
    # Model timestep -> noise level is t / 1000, as diffusers' sigmas = timesteps / 1000.
    torch.testing.assert_close(sched.sigma(sched.warp(grid)), ref.sigmas.float(), atol=1e-6, rtol=0)


def test_conversions_round_trip():
    s = FlowMatchScheduler(shift=5.0)
    x0, eps = torch.randn(2, 3, 4, 2, 2), torch.randn(2, 3, 4, 2, 2)
    t = torch.tensor([937.5, 20.0])
    x_t = s.add_noise(x0, eps, t)
    v = s.velocity(x0, eps)
    torch.testing.assert_close(s.x0_from_v(x_t, v, t), x0)
    torch.testing.assert_close(s.eps_from_v(x_t, v, t), eps)
    # Per-frame timesteps [B, F] broadcast the same way.
    tf = t[:, None].expand(2, 3)
    torch.testing.assert_close(s.add_noise(x0, eps, tf), x_t)
    # An Euler step to t=0 with the true velocity lands on x0.
    torch.testing.assert_close(s.euler_step(x_t, v, t, torch.zeros(2)), x0)


def test_sigma_endpoints_and_shift_only_warps():
    s = FlowMatchScheduler(shift=5.0)
    assert s.sigma(1000.0) == pytest.approx(1.0) and s.sigma(0.0) == 0.0
    # The shift changes which timesteps are used, never the noise level of a given timestep.
    assert s.sigma(625.0) == FlowMatchScheduler(shift=1.0).sigma(625.0) == 0.625
    assert s.warp(250.0) == pytest.approx(625.0)


def test_shifted_uniform_sampler_range_and_shift():
    sampler = ShiftedUniformTimesteps(min_t=20, max_t=980, scheduler=FlowMatchScheduler(shift=5.0))
    t = sampler(20000, rng=torch.Generator().manual_seed(0))
    assert t.shape == (20000,) and t.min() >= 20 and t.max() <= 980
    # Shift 5 pushes mass to high t: P(t > 500) = P(u > 1/6) = 5/6.
    assert (t > 500).float().mean().item() == pytest.approx(5 / 6, abs=0.01)
    again = sampler(20000, rng=torch.Generator().manual_seed(0))
    assert torch.equal(t, again)


def test_bad_schedule_arguments():
    with pytest.raises(ValueError):
        FlowMatchScheduler(shift=0)
    with pytest.raises(ValueError):
        ShiftedUniformTimesteps(min_t=900, max_t=100, scheduler=FLOW)


def test_shifted_uniform_integer_grid_as_the_official_dmd():
    t = ShiftedUniformTimesteps(integer=True, scheduler=FLOW)(4096, rng=torch.Generator().manual_seed(0))
    k = torch.arange(1000).float() / 1000
    grid = (5 * k / (1 + 4 * k) * 1000).clamp(20, 980)
    assert torch.isin(t, grid).all() and t.unique().numel() > 500
    cont = ShiftedUniformTimesteps(scheduler=FLOW)(4096, rng=torch.Generator().manual_seed(0))
    assert not torch.isin(cont, grid).all()


def test_shifted_uniform_takes_the_shift_of_its_scheduler():
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    t3 = ShiftedUniformTimesteps(min_t=0, max_t=1000, scheduler=FlowMatchScheduler(shift=3.0))(64, rng=g())
    u = torch.rand(64, generator=g())
    assert torch.allclose(t3, 3 * u / (1 + 2 * u) * 1000)


def test_one_cfg_convention_batched_or_not_and_the_papers_form():
    calls = []

    def model(x, t, text, clean_x=None):
        calls.append(x.shape[0])
        return x * text.mean(dim=(1, 2)).view(-1, 1) + (0 if clean_x is None else clean_x)

    x, t = torch.randn(2, 3), torch.zeros(2)
    text, uncond, ctx = torch.randn(2, 4, 5), torch.randn(2, 4, 5), torch.randn(2, 3)
    batched = guided_velocity(model, x, t, text, uncond, 6.0, clean_x=ctx)
    separate = guided_velocity(model, x, t, text, uncond, 6.0, batch=False, clean_x=ctx)
    assert calls == [4, 2, 2] and torch.allclose(batched, separate)
    cond, unc = model(x, t, text, ctx), model(x, t, uncond, ctx)
    assert torch.allclose(batched, unc + 6.0 * (cond - unc))
    assert torch.allclose(batched, cond + 5.0 * (cond - unc), atol=1e-5)  # DMD papers' "guidance 5"
    calls.clear()
    assert torch.equal(guided_velocity(model, x, t, text, uncond, 1.0), model(x, t, text))
    assert calls == [2, 2]  # cfg_scale 1: the conditional pass alone (then the reference call)


def test_text_dropout_replaces_whole_prompts_with_probability_p():
    text, uncond = torch.ones(4000, 2, 3), torch.zeros(4000, 2, 3)
    out = drop_text(text, uncond, 0.25, torch.Generator().manual_seed(0))
    dropped = (out.sum(dim=(1, 2)) == 0).float()
    assert set(out.sum(dim=(1, 2)).unique().tolist()) == {0.0, 6.0}
    assert dropped.mean().item() == pytest.approx(0.25, abs=0.03)
    assert drop_text(text, uncond, 0.0, None) is text
