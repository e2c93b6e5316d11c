"""Samplers on tiny CausalWan models: causal inference, self-forcing rollout, teacher ODE."""

import pytest
import torch

from oneforcing.models.causal_wan import CausalWan
from oneforcing.registry import SAMPLERS, build
from oneforcing.samplers import CausalInference, SelfForcingRollout, TeacherODE, draw_exit_indices
from oneforcing.schedulers import FlowMatchScheduler
from oneforcing.testing.tiny_wan import TINY_WAN_CONFIG, tiny_inputs

FLOW = FlowMatchScheduler()  # the recipe's convention (shift 5), handed to every sampler


FLOW = FlowMatchScheduler()  # sigma = t / 1000 (the conversions never apply the shift)


def tiny_model(fpb=1, causal=True, seed=0):
    torch.manual_seed(seed)
    return CausalWan.from_config(TINY_WAN_CONFIG, frames_per_block=fpb, causal=causal, attention="sdpa")


class Counting(torch.nn.Module):
    """Wraps a model and records every call's (frame_offset, write_cache, t)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, x, t, text, **kw):
        self.calls.append((kw.get("frame_offset", 0), kw.get("write_cache", False), float(t.flatten()[0])))
        return self.model(x, t, text, **kw)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.model, name)


def test_causal_inference_one_step_equals_manual_blocks():
    model = tiny_model(fpb=1).eval()
    noise, text = tiny_inputs(2, 4, 4, 4, seed=1)
    sampler = build({"type": "causal_inference", "steps": [1000], "first_frame_enhancement": False}, SAMPLERS,
                    scheduler=FLOW)
    out = sampler(model, noise, text).x0
    with torch.no_grad():
        cache = model.new_kv_cache(2, 4)
        t1, t0 = torch.full((2,), 1000.0), torch.zeros(2)
        for f in range(4):
            x0 = FLOW.x0_from_v(noise[:, f:f + 1], model(noise[:, f:f + 1], t1, text, kv_cache=cache,
                                                              frame_offset=f), t1)
            assert (x0 - out[:, f:f + 1]).abs().max() <= 1e-5
            model(x0, t0, text, kv_cache=cache, frame_offset=f, write_cache=True)


@pytest.mark.parametrize("fpb", [1, 3])
def test_causal_inference_ffe_schedule_stream_and_determinism(fpb):
    model = Counting(tiny_model(fpb=fpb).eval())
    noise, text = tiny_inputs(1, 6, 4, 4, seed=2)
    sampler = CausalInference(scheduler=FLOW)  # FFE: [1000, 750, 500, 250] then [1000], shift 5
    assert sampler.first_block_steps == pytest.approx([1000.0, 937.5, 833.333, 625.0], abs=1e-3)
    seen = []
    out = sampler(model, noise, text, rng=torch.Generator().manual_seed(0),
                  on_block=lambda a, b, x0: seen.append((a, b, x0.shape[1]))).x0
    nb = 6 // fpb
    assert seen == [(a, a + fpb, fpb) for a in range(0, 6, fpb)]
    assert len(model.calls) == sampler.num_forwards(nb) == 4 + (nb - 1) * 2
    assert [c[2] for c in model.calls[:4]] == pytest.approx([1000.0, 937.5, 833.333, 625.0], abs=1e-3)
    assert all(c[2] == 0.0 for c in model.calls if c[1])  # cache writes at t = 0
    again = sampler(model, noise, text, rng=torch.Generator().manual_seed(0)).x0
    streamed = torch.cat([x0 for _, _, x0 in sampler.stream(model, noise, text,
                                                            rng=torch.Generator().manual_seed(0))], 1)
    assert torch.equal(out, again) and torch.equal(out, streamed) and out.shape == noise.shape


def _grads(out, f, params):
    g = torch.autograd.grad(out[:, f].sum(), params, retain_graph=True, allow_unused=True)
    return sum(0.0 if x is None else float(x.abs().sum()) for x in g)


def test_self_forcing_gradient_window_and_no_grad_through_cache():
    model = tiny_model(fpb=1)
    noise, text = tiny_inputs(1, 6, 4, 4, seed=3)
    noise.requires_grad_(True)
    rollout = SelfForcingRollout(steps=[1000, 750, 500, 250], grad_frames=4, scheduler=FLOW)
    out = rollout(model, noise, text, rng=torch.Generator().manual_seed(1),
                  exit_rng=torch.Generator().manual_seed(2))
    assert out.x0.shape == noise.shape and out.frame_mask.tolist() == [False] * 2 + [True] * 4
    assert out.grad_frames == [2, 3, 4, 5] and out.with_grad
    assert out.num_forwards == sum(e + 1 for e in out.exit_indices) + 5
    assert out.exit_t == pytest.approx([rollout.steps[e] for e in out.exit_indices])
    params = list(model.parameters())
    assert _grads(out.x0, 0, params) == 0 and _grads(out.x0, 1, params) == 0
    assert all(_grads(out.x0, f, params) > 0 for f in range(2, 6))
    # the text K/V are cached without graph; the grad forward recomputes them for the generator
    k_w = model.blocks[0].attn2.to_k.weight
    assert torch.autograd.grad(out.x0[:, 5].sum(), k_w, retain_graph=True)[0].abs().sum() > 0
    # frame 3's only link to frame 2 is the (detached) cache: no gradient to frame 2's noise
    g = torch.autograd.grad(out.x0[:, 3].sum(), noise, retain_graph=True)[0]
    assert g[:, 3].abs().sum() > 0 and g[:, :3].abs().sum() == 0


def test_self_forcing_chunkwise_all_frames_and_one_step_exit():
    model = tiny_model(fpb=3)
    noise, text = tiny_inputs(1, 6, 4, 4, seed=4)
    out = SelfForcingRollout(steps=[1000], scheduler=FLOW)(model, noise, text)
    assert out.exit_indices == [0, 0] and out.frame_mask.all() and out.num_forwards == 3
    assert out.x0.requires_grad
    with torch.no_grad():
        ref = CausalInference(steps=[1000], first_frame_enhancement=False, scheduler=FLOW)(model, noise, text).x0
    assert (out.x0.detach() - ref).abs().max() <= 1e-5
    with torch.no_grad():  # critic-side rollout: no graph at all
        assert not SelfForcingRollout(steps=[1000], scheduler=FLOW)(model, noise, text).x0.requires_grad


def test_exit_draws_are_seeded():
    a = draw_exit_indices(21, 4, torch.Generator().manual_seed(5))
    assert a == draw_exit_indices(21, 4, torch.Generator().manual_seed(5)) and set(a) <= {0, 1, 2, 3}
    same = draw_exit_indices(7, 4, torch.Generator().manual_seed(5), same_step_across_blocks=True)
    assert len(set(same)) == 1 and len(same) == 7


def test_exit_draws_agree_across_ranks_through_the_run_context():
    """No broadcast in the sampler: the trainer's exits generator (`per_rank=False`) is the same
    on every rank, so every rank draws the same exits and runs the same forwards under ZeRO-3,
    while the re-noising generator differs per rank."""
    from oneforcing.jobs.base import RunContext

    model = tiny_model(fpb=1)
    outs = []
    for rank in (0, 1):
        ctx = RunContext(seed=3, rank=rank, world_size=2)
        noise, text = tiny_inputs(1, 3, 2, 2, seed=rank)
        with torch.no_grad():
            out = SelfForcingRollout(steps=[1000, 750, 500, 250], same_step_across_blocks=False, scheduler=FLOW)(
                model, noise, text, rng=ctx.rng("train", 0), exit_rng=ctx.rng(
                    "exits", 0, "generator", "rollout", per_rank=False))
        outs.append((out.exit_indices, out.num_forwards))
    assert outs[0] == outs[1]
    assert outs[0][0] == draw_exit_indices(3, 4, RunContext(seed=3, rank=1, world_size=2).rng(
        "exits", 0, "generator", "rollout", per_rank=False))


def test_teacher_ode_grid_states_and_exact_straight_flow():
    target = torch.randn(1, 2, 4, 4, 4)

    def straight(x, t, text, causal=None):  # the exact velocity of x_t = (1-s) target + s eps
        s = (t / 1000).view(-1, 1, 1, 1, 1)
        return (x - target) / s  # = eps - target, constant along the path

    noise = torch.randn_like(target)
    sampler = build({"type": "teacher_ode", "num_steps": 48, "cfg_scale": 6.0}, SAMPLERS, scheduler=FLOW)
    out = sampler(straight, noise, torch.zeros(1, 3, 24), negative_text=torch.zeros(1, 3, 24))
    assert out.timesteps.tolist() == pytest.approx([1000.0, 937.5, 833.333, 625.0], abs=1e-3)
    assert out.states.shape == (1, 4, 2, 4, 4, 4) and torch.equal(out.states[:, 0], noise)
    assert (out.x0 - target).abs().max() < 1e-4
    s12 = out.timesteps[1] / 1000
    assert (out.states[:, 1] - ((1 - s12) * target + s12 * noise)).abs().max() < 1e-4


@torch.no_grad()
def test_teacher_ode_cfg_on_tiny_teacher():
    teacher = tiny_model(causal=False).eval()
    noise, text = tiny_inputs(1, 2, 4, 4, seed=6)
    neg = torch.randn_like(text)
    ode = TeacherODE(num_steps=4, keep_indices=[0, 2], cfg_scale=6.0, scheduler=FLOW)
    out = ode(teacher, noise, text, negative_text=neg)
    # batched cond/uncond == two separate calls
    t = torch.full((1,), ode.timesteps[0])
    cond, unc = teacher(noise, t, text), teacher(noise, t, neg)
    x1 = FLOW.euler_step(noise, unc + 6.0 * (cond - unc), t, torch.full((1,), ode.timesteps[1]))
    ode1 = TeacherODE(num_steps=4, keep_indices=[1], cfg_scale=6.0, scheduler=FLOW)
    assert (ode1(teacher, noise, text, negative_text=neg).states[:, 0] - x1).abs().max() < 1e-5
    assert out.x0.shape == noise.shape and out.states.shape[1] == 2
    assert torch.equal(out.x0, ode(teacher, noise, text, negative_text=neg).x0)  # deterministic


def test_samplers_follow_a_bf16_models_dtype():
    """fp32 noise and text into a bf16 model: every sampler works in the model's dtype (the
    trainer's precision) and gradients reach the bf16 parameters through the rollout."""
    model = tiny_model(fpb=1).to(torch.bfloat16)
    noise, text = tiny_inputs(1, 3, 4, 4, seed=7)
    rollout = SelfForcingRollout(steps=[1000, 500], grad_frames=2, scheduler=FLOW)(model, noise, text,
                                                                   rng=torch.Generator().manual_seed(0))
    assert rollout.x0.dtype == torch.bfloat16 and torch.isfinite(rollout.x0.float()).all()
    rollout.x0.float().square().mean().backward()
    assert model.proj_out.weight.grad is not None and model.proj_out.weight.grad.dtype == torch.bfloat16
    with torch.no_grad():
        assert CausalInference(scheduler=FLOW)(model.eval(), noise, text).x0.dtype == torch.bfloat16
        teacher = tiny_model(causal=False).to(torch.bfloat16)
        ode = TeacherODE(num_steps=2, keep_indices=[0], scheduler=FLOW)(teacher, noise, text, negative_text=text)
    assert ode.x0.dtype == ode.states.dtype == torch.float32 and torch.isfinite(ode.x0).all()  # the ODE state


def test_teacher_ode_state_stays_fp32_under_a_bf16_model():
    """Shift 8: the first Euler steps move sigma by ~0.003, below bf16's resolution at |x| ~ 1-4.
    The model answers in bf16 (here a constant velocity that bf16 holds exactly), but the state
    integrates in fp32, so the straight flow lands on its target (a bf16 state misses by ~1e-2)."""
    noise = torch.randn(2, 2, 4, 4, 4)
    velocity = (noise - 2 * torch.randn_like(noise)).to(torch.bfloat16)  # eps - x0, exact in bf16
    target = noise - velocity.float()

    class Bf16ConstantFlow(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1, dtype=torch.bfloat16))

        def forward(self, x, t, text, causal=None):
            assert x.dtype == torch.bfloat16  # the model sees its own dtype
            return velocity

    out = TeacherODE(num_steps=48, cfg_scale=1.0, scheduler=FlowMatchScheduler(shift=8.0))(
        Bf16ConstantFlow(), noise, torch.zeros(2, 3, 8))
    assert out.x0.dtype == torch.float32
    assert (out.x0 - target).abs().max() < 1e-4
