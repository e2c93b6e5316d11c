"""Prompt switches mid-video (oneforcing/streaming): no switch = the sampler's own stream; a
re-cache equals writing the same frames under the new prompt block by block; keep differs from it;
the sink + window re-cache reads nothing older than the window; schedules are validated."""

import pytest
import torch

from oneforcing.errors import UserError
from oneforcing.models.causal_wan import CausalWan
from oneforcing.samplers import CausalInference
from oneforcing.schedulers.flow_match import FlowMatchScheduler
from oneforcing.streaming.live import LiveRollout, scheduled_rollout
from oneforcing.streaming.schedule import Switch, block_starts, latent_frame, parse_schedule
from oneforcing.testing.tiny_wan import tiny_inputs, tiny_wan_config

FLOW = FlowMatchScheduler()
H, W = 4, 4
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def tiny_model(fpb: int, dtype) -> CausalWan:
    torch.manual_seed(0)
    model = CausalWan.from_config(tiny_wan_config(), frames_per_block=fpb, attention="sdpa")
    return model.to(dtype).eval().requires_grad_(False)


def inputs(frames: int, dtype):
    noise, text_a = tiny_inputs(2, frames, H, W, seed=3)
    _, text_b = tiny_inputs(2, 1, H, W, seed=5)
    return noise.to(dtype), text_a.to(dtype), text_b.to(dtype)


def sampler(steps=(1000, 500), **cache) -> CausalInference:
    return CausalInference(steps=list(steps), first_block_steps=[1000, 750, 500], scheduler=FLOW, **cache)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fpb,cache", [(1, {}), (3, {"local_attn_size": 7, "sink_size": 1})])
def test_no_switch_is_the_samplers_stream(dtype, fpb, cache):
    model = tiny_model(fpb, dtype)
    noise, text, _ = inputs(12, dtype)
    s = sampler(**cache)
    ref = s(model, noise, text, rng=torch.Generator().manual_seed(1)).x0
    out = scheduled_rollout(s, model, noise, [text], [0], rng=torch.Generator().manual_seed(1))
    assert out.dtype == ref.dtype and torch.equal(out, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_recache_equals_the_frames_written_under_the_new_prompt(dtype):
    """Unbounded cache: after a re-cache the next block sees exactly what it would if every earlier
    frame had been written under the new prompt; with keep it does not."""
    model, f0 = tiny_model(1, dtype), 4
    noise, text_a, text_b = inputs(6, dtype)
    s = sampler(steps=[1000])  # one step after the first block: the reference below is one call
    outs = {}
    for mode in ("recache", "keep"):
        live = LiveRollout(s, model, text_a, batch_size=2, num_frames=6, switch=mode,
                           rng=torch.Generator().manual_seed(1))
        for a in range(f0):
            live.step(noise[:, a:a + 1])
        live.set_text(text_b)
        outs[mode] = live.step(noise[:, f0:f0 + 1])[2]
        assert live.switches == [f0]
    # The references: the same clean frames written one block at a time under prompt b (re-cache)
    # or a (keep), then the next block denoised under b.
    t = torch.full((2,), s.steps[0])
    for mode, written_under in (("recache", text_b), ("keep", text_a)):
        cache = model.new_kv_cache(2, 6)
        for a in range(f0):
            model(live.written[a][:, None], torch.zeros(2), written_under, kv_cache=cache, frame_offset=a,
                  write_cache=True)
        cache.cross = None
        v = model(noise[:, f0:f0 + 1], t, text_b, kv_cache=cache, frame_offset=f0)
        assert (outs[mode] - FLOW.x0_from_v(noise[:, f0:f0 + 1], v, t)).abs().max() <= TOL[dtype]
    if dtype == torch.float32:  # (in bf16 the tiny model's text moves its K/V less than the rounding)
        assert (outs["recache"] - outs["keep"]).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_rolling_recache(dtype):
    """A window the video has not outgrown re-caches like the unbounded cache (sink and window
    split changes nothing); past it, the re-cache forgets frames older than the window."""
    model = tiny_model(1, dtype)
    noise, text_a, text_b = inputs(14, dtype)
    out = {}
    for name, cache in (("unbounded", {}), ("big window", {"local_attn_size": 20, "sink_size": 2}),
                        ("window", {"local_attn_size": 5, "sink_size": 1})):
        out[name] = scheduled_rollout(sampler(**cache), model, noise, [text_a, text_b], [0, 4],
                                      rng=torch.Generator().manual_seed(1))
    assert (out["big window"] - out["unbounded"]).abs().max() <= TOL[dtype]
    if dtype == torch.float32:
        assert (out["window"][:, 5:] - out["unbounded"][:, 5:]).abs().max() > 1e-3
    live = LiveRollout(sampler(local_attn_size=5, sink_size=1), model, text_a, batch_size=2, num_frames=14)
    for a in range(9):
        live.step(noise[:, a:a + 1])
    live.set_text(text_b)
    live.step(noise[:, 9:10])
    assert live.cache.context_frames(10, 1) == [0, 7, 8, 9]
    assert live.cache.floor == 6  # the re-cached window was frames 6..8 (+ the sink)
    assert sorted(live.written) == [0, 6, 7, 8, 9]  # only what a re-cache may still read is kept


def test_endless_stream_needs_a_window():
    model = tiny_model(1, torch.float32)
    text = tiny_inputs(1, 1, H, W)[1]
    with pytest.raises(ValueError, match="bounded cache"):
        LiveRollout(sampler(), model, text, batch_size=1)
    live = LiveRollout(sampler(local_attn_size=3, sink_size=1), model, text, batch_size=1)
    for _ in range(6):  # well past the window, memory flat
        live.step(torch.randn(1, 1, 4, H, W))
    assert live.frame == 6 and len(live.written) <= 3


def test_schedule_parsing_and_block_starts():
    sw = parse_schedule([{"frame": 0, "prompt": " a "}, {"frame": 6, "prompt": "b"}], num_frames=13)
    assert sw == [Switch(0, "a"), Switch(6, "b")]
    assert [latent_frame(v, 4) for v in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    # Wan VAE (x4): video frame 6 is latent 2; chunk-wise blocks of 3 latents start at 0, 3 -> 3.
    assert block_starts(sw, [(0, 3), (3, 4)], 4) == [0, 3]
    bad = {
        "prompt_schedule": "x",
        "prompt_schedule[0]": [{"frame": 0}],
        "prompt_schedule[0].frame": [{"frame": 2, "prompt": "a"}],
        "prompt_schedule[1].frame": [{"frame": 0, "prompt": "a"}, {"frame": 0, "prompt": "b"}],
        "prompt_schedule[1].prompt": [{"frame": 0, "prompt": "a"}, {"frame": 3, "prompt": " "}],
    }
    for key, value in bad.items():
        with pytest.raises(UserError) as err:
            parse_schedule(value, num_frames=13)
        assert err.value.key == key
    with pytest.raises(UserError, match="past the video") as err:
        parse_schedule([{"frame": 0, "prompt": "a"}, {"frame": 13, "prompt": "b"}], num_frames=13)
    with pytest.raises(UserError, match="same block") as err:  # latents 1 and 2 share the block at 3
        block_starts([Switch(0, "a"), Switch(1, "b"), Switch(5, "c")], [(0, 3), (3, 6), (6, 7)], 4)
    assert err.value.key == "prompt_schedule[2].frame"
