"""Long-horizon training rollouts (SelfForcingRollout `rollout_frames` + rolling cache): the clip
DMD sees is an F-frame window of a longer self-generated rollout, block-aligned, drawn the same on
every rank, with gradient only inside it; without the option nothing changes."""

import pytest
import torch

from oneforcing.models.causal_wan import CausalWan
from oneforcing.samplers import SelfForcingRollout
from oneforcing.schedulers import FlowMatchScheduler
from oneforcing.testing.tiny_wan import tiny_inputs, tiny_wan_config

FLOW = FlowMatchScheduler()


def tiny_model(fpb: int = 1, dtype=torch.float32) -> CausalWan:
    torch.manual_seed(0)
    return CausalWan.from_config(tiny_wan_config(), frames_per_block=fpb, attention="sdpa").to(dtype)


def run(sampler, model, noise, text, seed=0):
    return sampler(model, noise, text, rng=torch.Generator().manual_seed(seed + 1),
                   exit_rng=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_window_of_a_long_rollout(dtype):
    model = tiny_model(fpb=2, dtype=dtype)
    noise, text = (t.to(dtype) for t in tiny_inputs(2, 4, 4, 4, seed=3))
    sampler = SelfForcingRollout(steps=[1000, 500], grad_frames=2, rollout_frames=12, local_attn_size=6,
                                 sink_size=1, scheduler=FLOW)
    starts = set()
    for seed in range(12):
        with torch.no_grad():
            out = run(sampler, model, noise, text, seed)
        assert out.x0.shape == noise.shape and out.blocks == [(0, 2), (2, 4)]
        assert out.frame_mask.tolist() == [False, False, True, True] and len(out.exit_t) == 2
        starts.add(sampler.window_start(4, model.block_ranges(12), torch.Generator().manual_seed(seed)))
    assert len(starts) > 1 and all(s % 2 == 0 and s + 4 <= 12 for s in starts)  # block-aligned, inside
    with torch.no_grad():  # the same exits generator (every rank's) -> the same window and clip
        assert torch.equal(run(sampler, model, noise, text, 5).x0, run(sampler, model, noise, text, 5).x0)
    out = run(sampler, model, noise, text)
    out.x0[:, out.frame_mask].float().sum().backward()
    assert out.x0.requires_grad
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_without_the_option_nothing_changes():
    model = tiny_model()
    noise, text = tiny_inputs(2, 5, 4, 4, seed=3)
    plain = SelfForcingRollout(steps=[1000, 500], grad_frames=3, scheduler=FLOW)
    same = SelfForcingRollout(steps=[1000, 500], grad_frames=3, rollout_frames=5, scheduler=FLOW)
    with torch.no_grad():
        a, b = run(plain, model, noise, text), run(same, model, noise, text)
    assert torch.equal(a.x0, b.x0) and a.exit_indices == b.exit_indices and a.blocks == b.blocks


def test_a_window_wider_than_the_rollout_equals_the_unbounded_cache():
    model = tiny_model()
    noise, text = tiny_inputs(1, 3, 4, 4, seed=3)
    kw = dict(steps=[1000], rollout_frames=9, scheduler=FLOW)
    differs = []
    for seed in range(4):
        with torch.no_grad():
            ref = run(SelfForcingRollout(**kw), model, noise, text, seed)
            wide = run(SelfForcingRollout(local_attn_size=16, sink_size=1, **kw), model, noise, text, seed)
            tight = run(SelfForcingRollout(local_attn_size=3, sink_size=1, **kw), model, noise, text, seed)
        assert (wide.x0 - ref.x0).abs().max() < 1e-5
        differs.append(bool((tight.x0 - ref.x0).abs().max() > 1e-4))
    assert any(differs)  # a window past frame 2 reads less context through the tight cache


def test_window_stride():
    model = tiny_model()
    sampler = SelfForcingRollout(steps=[1000], rollout_frames=12, window_stride=4, scheduler=FLOW)
    starts = {sampler.window_start(4, model.block_ranges(12), torch.Generator().manual_seed(s)) for s in range(30)}
    assert starts == {0, 4, 8}  # the rollout's consecutive clips, each as often


def test_bad_settings():
    with pytest.raises(ValueError, match="rollout_frames"):
        SelfForcingRollout(rollout_frames=0, scheduler=FLOW)
    with pytest.raises(ValueError, match="sink_size needs local_attn_size"):
        SelfForcingRollout(sink_size=1, scheduler=FLOW)
    model = tiny_model()
    noise, text = tiny_inputs(1, 4, 4, 4)
    with pytest.raises(ValueError, match="shorter than the clip"):
        run(SelfForcingRollout(steps=[1000], rollout_frames=2, scheduler=FLOW), model, noise, text)
