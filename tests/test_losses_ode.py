"""ODE regression, the forward-KL surrogate and teacher-forcing AR diffusion: formulas and grads."""

import pytest
import torch
import torch.nn as nn

from oneforcing.data import Batch
from oneforcing.errors import UserError
from oneforcing.jobs.base import RunContext
from oneforcing.registry import LOSSES, build
from oneforcing.schedulers import FlowMatchScheduler, ShiftedUniformTimesteps
from oneforcing.trainer.step import StepContext

FLOW = FlowMatchScheduler()  # the recipe's convention (shift 5), handed to every sampler

B, K, F, C, H, W = 3, 4, 4, 2, 2, 2


class LinGen(nn.Module):
    """v = a x + t / 1000 (per frame); records t and the keyword arguments."""

    def __init__(self, frames_per_block=1):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.4))
        self.frames_per_block = frames_per_block
        self.calls = []

    def forward(self, x, t, text, **kw):
        self.calls.append((t.detach().clone(), kw))
        tt = t if t.dim() == 2 else t[:, None].expand(-1, x.shape[1])
        return self.a * x + (tt / 1000).view(x.shape[0], x.shape[1], 1, 1, 1)


def make_ctx(batch, gen, seed=0, timesteps=None, uncond=None):
    return StepContext(step=0, phase="generator", batch=Batch(**batch), generator=gen, critic=None, real_score=None,
                       scheduler=FLOW, timesteps=timesteps or ShiftedUniformTimesteps(scheduler=FLOW),
                       sampler=None, uncond_text=torch.zeros(1, 2, 3) if uncond is None else uncond,
                       rng=torch.Generator().manual_seed(seed), ctx=RunContext())


def ode_batch(t_shape="k"):
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([1000.0, 937.5, 833.3, 625.0])
    return {"ode_states": torch.randn(B, K, F, C, H, W, generator=g),
            "ode_x0": torch.randn(B, F, C, H, W, generator=g),
            "ode_t": t if t_shape == "k" else t.expand(B, K).clone(),
            "text": torch.randn(B, 2, 3, generator=g)}


def expected(batch, idx, a=0.4):
    rows = torch.arange(B)
    x_t = batch["ode_states"][rows, idx]
    t = torch.as_tensor(batch["ode_t"]).expand(B, K)[rows, idx]
    sig = (t / 1000).view(-1, 1, 1, 1, 1)
    x0_hat = x_t - sig * (a * x_t + sig)
    return torch.mean((x0_hat - batch["ode_x0"]) ** 2), x_t, t


@pytest.mark.parametrize("t_shape", ["k", "bk"])
def test_ode_regression_one_index_per_sample(t_shape):
    batch = ode_batch(t_shape)
    gen = LinGen()
    loss, figs = build({"type": "ode_regression"}, LOSSES)(make_ctx(batch, gen, seed=7))
    idx = torch.randint(0, K, (B,), generator=torch.Generator().manual_seed(7))
    want, _, t = expected(batch, idx)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    (t_seen, kw), = gen.calls
    assert t_seen.shape == (B,) and torch.equal(t_seen, t)  # one t per sample, shared by frames
    assert figs["t_mean"] == pytest.approx(t.mean().item())
    loss.backward()
    assert gen.a.grad is not None


@pytest.mark.parametrize("block", [1, 2, 3])
def test_ode_regression_per_block_draws_one_index_per_block(block):
    """Self Forcing's ODE init (uniform_timestep=False): each block of `frames_per_block` frames
    regresses from its own kept state, at that state's t; the frames of a block share it."""
    batch = ode_batch("k")
    gen = LinGen(frames_per_block=block)
    loss, figs = build({"type": "ode_regression", "per_block": True}, LOSSES)(make_ctx(batch, gen, seed=5))
    n_blocks = -(-F // block)
    draws = torch.randint(0, K, (B, n_blocks), generator=torch.Generator().manual_seed(5))
    idx = draws.repeat_interleave(block, dim=1)[:, :F]                      # [B, F]
    t_all = torch.as_tensor(batch["ode_t"]).expand(B, K)
    x_t = torch.stack([torch.stack([batch["ode_states"][b, idx[b, f], f] for f in range(F)]) for b in range(B)])
    t = torch.stack([t_all[b, idx[b]] for b in range(B)])                   # [B, F]
    sig = (t / 1000).view(B, F, 1, 1, 1)
    want = torch.mean((x_t - sig * (0.4 * x_t + sig) - batch["ode_x0"]) ** 2)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    (t_seen, _), = gen.calls
    assert t_seen.shape == (B, F) and torch.equal(t_seen, t)
    for j in range(n_blocks):  # constant within a block
        assert torch.all(t_seen[:, j * block:(j + 1) * block] == t_seen[:, j * block:j * block + 1])
    assert figs["t_mean"] == pytest.approx(t.mean().item())
    loss.backward()
    assert gen.a.grad is not None


def test_ode_regression_per_block_differs_across_blocks_and_skips_clean_states():
    """Over a few draws the blocks of one sample get different states (not one per sample), and a
    frame drawn at a kept t = 0 state adds nothing (official `mask = timestep != 0`)."""
    batch = ode_batch("k")
    gen = LinGen(frames_per_block=1)
    loss_fn = build({"type": "ode_regression", "per_block": True}, LOSSES)
    for seed in range(4):
        loss_fn(make_ctx(batch, gen, seed=seed))
    assert any(len(set(t_seen[b].tolist())) > 1 for t_seen, _ in gen.calls for b in range(B))
    clean = dict(batch, ode_t=torch.tensor([1000.0, 937.5, 833.3, 0.0]))
    clean["ode_states"] = batch["ode_states"].clone()
    clean["ode_states"][:, 3] = float("nan")  # would poison the mean if a t = 0 frame were counted
    loss, _ = loss_fn(make_ctx(clean, LinGen(), seed=0))
    assert torch.isfinite(loss)


def test_fkl_surrogate_fixed_state_per_frame_t_and_gradient():
    batch = ode_batch()
    gen = LinGen()
    loss, _ = build({"type": "fkl_surrogate", "index": 0}, LOSSES)(make_ctx(batch, gen))
    idx = torch.zeros(B, dtype=torch.long)
    want, x_t, t = expected(batch, idx)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    (t_seen, _), = gen.calls
    assert t_seen.shape == (B, F) and torch.all(t_seen == 1000.0)
    loss.backward()
    # d/da mean((x_t - s(a x_t + s) - x0)^2) = mean(2 r * (-s x_t))
    sig = (t / 1000).view(-1, 1, 1, 1, 1)
    r = x_t - sig * (0.4 * x_t + sig) - batch["ode_x0"]
    assert gen.a.grad.item() == pytest.approx(torch.mean(2 * r * (-sig * x_t)).item(), rel=1e-4)
    with pytest.raises(IndexError):
        build({"type": "fkl_surrogate", "index": 9}, LOSSES)(make_ctx(batch, LinGen()))


def test_ode_losses_name_missing_batch_keys():
    with pytest.raises(UserError, match="^data: ODE regression needs 'ode_states' in every batch.*use an ode_pairs"):
        build({"type": "ode_regression"}, LOSSES)(make_ctx({"text": torch.zeros(B, 2, 3)}, LinGen()))


def test_ode_regression_on_tiny_causal_wan_runs_block_causal():
    from oneforcing.models import CausalWan
    from oneforcing.testing.tiny_wan import TINY_WAN_CONFIG

    torch.manual_seed(0)
    gen = CausalWan.from_config(TINY_WAN_CONFIG, frames_per_block=1, causal=True, attention="sdpa")
    g = torch.Generator().manual_seed(2)
    batch = {"ode_states": torch.randn(1, 2, 3, 4, 4, 4, generator=g), "ode_t": torch.tensor([1000.0, 625.0]),
             "ode_x0": torch.randn(1, 3, 4, 4, 4, generator=g), "text": torch.randn(1, 5, 24, generator=g)}
    loss, _ = build({"type": "ode_regression"}, LOSSES)(make_ctx(batch, gen))
    loss.backward()
    assert torch.isfinite(loss) and gen.blocks[0].attn1.to_q.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("fpb,per_frame", [(2, False), (1, False), (2, True)])
def test_teacher_forcing_diffusion_per_block_t_and_clean_context(fpb, per_frame):
    g = torch.Generator().manual_seed(3)
    F5 = 5
    batch = {"latents": torch.randn(B, F5, C, H, W, generator=g), "text": torch.randn(B, 2, 3, generator=g)}
    gen = LinGen(frames_per_block=fpb)
    loss, _ = build({"type": "teacher_forcing_diffusion", "per_frame": per_frame}, LOSSES)(make_ctx(batch, gen, seed=4))
    (t, kw), = gen.calls
    assert t.shape == (B, F5) and torch.equal(kw["clean_x"], batch["latents"])
    block = 1 if per_frame else fpb
    n_blocks = -(-F5 // block)
    # the same draws, in order: one t per (sample, block), then the noise
    rng = torch.Generator().manual_seed(4)
    t_want = ShiftedUniformTimesteps(scheduler=FLOW)(B * n_blocks, rng=rng).reshape(B, n_blocks)
    t_want = t_want.repeat_interleave(block, dim=1)[:, :F5]
    torch.testing.assert_close(t, t_want)
    eps = torch.randn(batch["latents"].shape, generator=rng)
    sig = (t / 1000)[..., None, None, None]
    x_t = (1 - sig) * batch["latents"] + sig * eps
    v = 0.4 * x_t + sig
    assert loss.item() == pytest.approx(torch.mean((v - (eps - batch["latents"])) ** 2).item(), rel=1e-5)


def test_teacher_forcing_diffusion_on_tiny_causal_wan():
    from oneforcing.models import CausalWan
    from oneforcing.testing.tiny_wan import TINY_WAN_CONFIG

    torch.manual_seed(0)
    gen = CausalWan.from_config(TINY_WAN_CONFIG, frames_per_block=1, causal=True, attention="sdpa")
    g = torch.Generator().manual_seed(2)
    batch = {"latents": torch.randn(2, 3, 4, 4, 4, generator=g), "text": torch.randn(2, 5, 24, generator=g)}
    loss, _ = build({"type": "teacher_forcing_diffusion", "text_dropout": 0.5}, LOSSES)(
        make_ctx(batch, gen, uncond=torch.zeros(1, 5, 24)))
    loss.backward()
    assert torch.isfinite(loss) and gen.proj_out.weight.grad.abs().sum() > 0


def test_ode_regression_teacher_forcing_passes_the_real_clean_context():
    batch = ode_batch()
    batch["ode_context"] = torch.randn(B, F, C, H, W, generator=torch.Generator().manual_seed(5))
    gen = LinGen()
    loss, _ = build({"type": "ode_regression", "teacher_forcing": True}, LOSSES)(make_ctx(batch, gen, seed=7))
    (_, kw), = gen.calls
    torch.testing.assert_close(kw["clean_x"], batch["ode_context"])
    idx = torch.randint(0, K, (B,), generator=torch.Generator().manual_seed(7))
    assert loss.item() == pytest.approx(expected(batch, idx)[0].item(), rel=1e-6)
    del batch["ode_context"]
    with pytest.raises(UserError, match="needs .ode_context. in every batch.*teacher_forcing: true"):
        build({"type": "ode_regression", "teacher_forcing": True}, LOSSES)(make_ctx(batch, LinGen()))


def test_ode_regression_teacher_forcing_on_the_pairs_own_endpoint():
    """context: endpoint (pairs of a bidirectional teacher, no real latents) teacher-forces on ode_x0."""
    batch = ode_batch()
    gen = LinGen()
    loss, _ = build({"type": "ode_regression", "teacher_forcing": True, "context": "endpoint"}, LOSSES)(
        make_ctx(batch, gen, seed=7))
    (_, kw), = gen.calls
    torch.testing.assert_close(kw["clean_x"], batch["ode_x0"])
    idx = torch.randint(0, K, (B,), generator=torch.Generator().manual_seed(7))
    assert loss.item() == pytest.approx(expected(batch, idx)[0].item(), rel=1e-6)
    with pytest.raises(UserError, match="context.*one of real, endpoint"):
        build({"type": "ode_regression", "teacher_forcing": True, "context": "ode_x0"}, LOSSES)


def test_ode_regression_teacher_forcing_on_tiny_causal_wan_ignores_noisy_earlier_frames():
    """With clean context, frame 2's prediction depends on the real frames 0-1, not on their noisy
    ODE states (CausVid-style regression, teacher_forcing off, depends on those)."""
    from oneforcing.models import CausalWan
    from oneforcing.testing.tiny_wan import TINY_WAN_CONFIG

    torch.manual_seed(0)
    gen = CausalWan.from_config(TINY_WAN_CONFIG, frames_per_block=1, causal=True, attention="sdpa")
    g = torch.Generator().manual_seed(3)
    batch = {"ode_states": torch.randn(1, 2, 3, 4, 4, 4, generator=g), "ode_t": torch.tensor([1000.0, 625.0]),
             "ode_x0": torch.randn(1, 3, 4, 4, 4, generator=g), "text": torch.randn(1, 5, 24, generator=g),
             "ode_context": torch.randn(1, 3, 4, 4, 4, generator=g)}

    def frame2_loss(b, tf):
        loss_fn = build({"type": "ode_regression", "teacher_forcing": tf}, LOSSES)
        out = {}
        orig = gen.forward

        def spy(*a, **kw):
            out["v"] = orig(*a, **kw)
            return out["v"]

        gen.forward = spy
        try:
            loss_fn(make_ctx(b, gen, seed=1))
        finally:
            del gen.forward
        return out["v"][:, 2]

    changed = dict(batch, ode_states=batch["ode_states"].clone())
    changed["ode_states"][:, :, :2] += 1.0
    with torch.no_grad():
        assert torch.allclose(frame2_loss(batch, True), frame2_loss(changed, True), atol=1e-6)
        assert not torch.allclose(frame2_loss(batch, False), frame2_loss(changed, False), atol=1e-4)
        other_ctx = dict(batch, ode_context=batch["ode_context"] + 1.0)
        assert not torch.allclose(frame2_loss(batch, True), frame2_loss(other_ctx, True), atol=1e-4)


def test_training_weight_is_the_official_bell_over_the_shift5_grid():
    sched = FlowMatchScheduler(shift=5.0)
    grid = sched.warp(torch.linspace(1000, 0, 1001)[:-1])
    w = sched.training_weight(grid)
    assert w.mean().item() == pytest.approx(1.0, abs=1e-4)
    # y = exp(-2 ((t - 500) / 1000)^2) shifted so its grid minimum (t = 1000) is 0
    y = torch.exp(-2 * ((grid.double() - 500) / 1000) ** 2)
    torch.testing.assert_close(w.double(), (y - y.min()) * 1000 / (y - y.min()).sum(), atol=1e-5, rtol=1e-5)
    assert sched.training_weight(torch.tensor([1000.0])).item() == 0.0
    assert sched.training_weight(torch.tensor([500.0])).item() == pytest.approx(w.max().item(), rel=1e-3)


def test_teacher_forcing_diffusion_timestep_weighting():
    g = torch.Generator().manual_seed(3)
    batch = {"latents": torch.randn(B, F, C, H, W, generator=g), "text": torch.randn(B, 2, 3, generator=g)}
    gen = LinGen(frames_per_block=2)
    loss, _ = build({"type": "teacher_forcing_diffusion", "timestep_weighting": True}, LOSSES)(
        make_ctx(batch, gen, seed=4))
    (t, _), = gen.calls
    rng = torch.Generator().manual_seed(4)
    ShiftedUniformTimesteps(scheduler=FLOW)(B * 2, rng=rng)
    eps = torch.randn(batch["latents"].shape, generator=rng)
    sig = (t / 1000)[..., None, None, None]
    x_t = (1 - sig) * batch["latents"] + sig * eps
    per_frame = ((0.4 * x_t + sig - (eps - batch["latents"])) ** 2).mean(dim=(2, 3, 4))
    want = (per_frame * FlowMatchScheduler(shift=5.0).training_weight(t)).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert loss.item() != pytest.approx(per_frame.mean().item(), rel=1e-3)
