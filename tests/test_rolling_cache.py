"""Rolling KV cache (long videos): exact on the first window, the windowed semantics beyond it
against an untruncated reference, flat memory, the sink kept, RoPE placement of the sink."""

import pytest
import torch

from oneforcing.models.causal_wan import CausalWan
from oneforcing.models.wan_rope import apply_rope, rope_cos_sin, rope_time_shift
from oneforcing.samplers import CausalInference
from oneforcing.schedulers.flow_match import FlowMatchScheduler
from oneforcing.testing.tiny_wan import tiny_inputs, tiny_wan_config

FLOW = FlowMatchScheduler()  # the recipe's convention (shift 5), handed to every sampler

H, W = 4, 4          # latent frame; 2x2 patches -> 4 tokens per frame
S = (H // 2) * (W // 2)


def tiny_model(fpb: int, dtype=torch.float32) -> CausalWan:
    torch.manual_seed(0)
    model = CausalWan.from_config(tiny_wan_config(), frames_per_block=fpb, attention="sdpa")
    return model.to(dtype).eval().requires_grad_(False)


def rollout(model, x, noise, text, cache):
    """Streaming as the sampler does it, with fixed inputs: per block a denoising call on noise
    (returned) and a context call on the clean frames x (write_cache)."""
    outs = []
    t1, t0 = torch.full((x.shape[0],), 900.0), torch.zeros(x.shape[0])
    for a, b in model.block_ranges(x.shape[1]):
        outs.append(model(noise[:, a:b], t1.to(x.dtype), text, kv_cache=cache, frame_offset=a))
        model(x[:, a:b], t0.to(x.dtype), text, kv_cache=cache, frame_offset=a, write_cache=True)
    return torch.cat(outs, dim=1)


def inputs(frames: int, dtype=torch.float32):
    x, text = tiny_inputs(2, frames, H, W, seed=3)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    return x.to(dtype), noise.to(dtype), text.to(dtype)


@pytest.mark.parametrize("fpb,window,sink", [(1, 5, 0), (1, 5, 1), (3, 9, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_first_window_equals_unbounded_cache(fpb, window, sink, dtype):
    model = tiny_model(fpb, dtype)
    F = 3 * window
    x, noise, text = inputs(F, dtype)
    ref = rollout(model, x, noise, text, model.new_kv_cache(2, F))
    out = rollout(model, x, noise, text, model.new_kv_cache(2, F, local_attn_size=window, sink_size=sink))
    diff = (out - ref).abs().amax(dim=(0, 2, 3, 4)).float()
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert diff[:window].max() <= tol  # nothing dropped yet: the same numbers
    assert diff[window:].max() > 1e-3  # later frames lose context: the window has an effect


def shifted_sink(k: torch.Tensor, n_sink: int, shift: int, head_dim: int) -> torch.Tensor:
    """The sink's keys moved `shift` frames later: undo their RoPE at 0..n-1, apply it at shift..."""
    cos, sin = rope_cos_sin(head_dim, torch.arange(n_sink), H // 2, W // 2)
    cos2, sin2 = rope_cos_sin(head_dim, torch.arange(n_sink) + shift, H // 2, W // 2)
    raw = apply_rope(k[:, :n_sink * S].float(), cos, -sin)
    return torch.cat([apply_rope(raw, cos2, sin2).to(k.dtype), k[:, n_sink * S:]], dim=1)


class WindowedReference:
    """Attention over the *unbounded* cache with the keys outside the window left out, written
    from the definition: the sink frames, then the latest frames before the block that fit in
    `window` frames with the block itself."""

    def __init__(self, inner, window: int, sink: int, sink_rope: str, head_dim: int):
        self.inner, self.full = inner, inner.full
        self.window, self.sink, self.sink_rope, self.head_dim = window, sink, sink_rope, head_dim
        self.f0 = 0

    def __call__(self, q, k, v, mask=None):
        n = q.shape[1] // S
        f0 = self.f0
        n_sink = min(self.sink, f0)
        keep = self.window - n - n_sink
        recent = [f for f in range(f0) if f >= self.sink and f >= f0 - keep]
        frames = list(range(n_sink)) + recent + list(range(f0, f0 + n))
        idx = torch.tensor([f * S + i for f in frames for i in range(S)])
        k, v = k[:, idx], v[:, idx]
        if self.sink_rope == "adjacent" and n_sink and recent and recent[0] > n_sink:
            k = shifted_sink(k, n_sink, recent[0] - n_sink, self.head_dim)
        return self.inner(q, k, v, mask if mask is None or len(frames) == k.shape[1] // S else None)


@pytest.mark.parametrize("fpb,window,sink,sink_rope", [
    (1, 4, 0, "adjacent"), (1, 4, 1, "adjacent"), (1, 5, 2, "absolute"), (3, 9, 3, "adjacent"),
    (3, 9, 3, "absolute"), (1, 6, 1, "absolute")])
@torch.no_grad()
def test_rolling_matches_windowed_reference(fpb, window, sink, sink_rope):
    model = tiny_model(fpb)
    F = 4 * window
    x, noise, text = inputs(F)
    out = rollout(model, x, noise, text,
                  model.new_kv_cache(2, F, local_attn_size=window, sink_size=sink, sink_rope=sink_rope))
    inner = model.attn
    ref_attn = WindowedReference(inner, window, sink, sink_rope, model.head_dim)
    model.attn = ref_attn
    try:
        cache, t1, t0 = model.new_kv_cache(2, F), torch.full((2,), 900.0), torch.zeros(2)
        refs = []
        for a, b in model.block_ranges(F):
            ref_attn.f0 = a
            refs.append(model(noise[:, a:b], t1, text, kv_cache=cache, frame_offset=a))
            model(x[:, a:b], t0, text, kv_cache=cache, frame_offset=a, write_cache=True)
    finally:
        model.attn = inner
    assert (out - torch.cat(refs, dim=1)).abs().max() <= 2e-5


@torch.no_grad()
def test_sink_placement_matters_and_absolute_differs():
    """The two RoPE conventions give the same first window and different long videos."""
    model = tiny_model(1)
    x, noise, text = inputs(16)
    outs = {r: rollout(model, x, noise, text, model.new_kv_cache(2, 16, local_attn_size=4, sink_size=1, sink_rope=r))
            for r in ("adjacent", "absolute")}
    d = (outs["adjacent"] - outs["absolute"]).abs().amax(dim=(0, 2, 3, 4))
    assert d[:4].max() <= 1e-6 and d[4:].min() > 1e-4  # frame 4 is the first to lose frame 1 (a gap)


@torch.no_grad()
def test_memory_flat_in_length_and_sink_kept():
    model = tiny_model(1)
    window, sink = 5, 1
    sampler = CausalInference(steps=[1000], first_frame_enhancement=False, local_attn_size=window, sink_size=sink,
                              scheduler=FLOW)
    sizes = {}
    for F in (2 * window, 6 * window):
        x, noise, text = inputs(F)
        caches = []
        new = model.new_kv_cache
        model.new_kv_cache = lambda *a, **kw: caches.append(new(*a, **kw)) or caches[-1]
        try:
            blocks = sampler.stream(model, noise, text)
            next(blocks)  # frame 0 generated and written: it is the sink
            cache = caches[0]
            sink_k = [k[:, :sink * S].clone() for k in cache.k]
            ptrs = [k.data_ptr() for k in (*cache.k, *cache.v)]
            for _ in blocks:
                pass
        finally:
            del model.new_kv_cache
        sizes[F] = cache.nbytes
        assert [k.data_ptr() for k in (*cache.k, *cache.v)] == ptrs  # never reallocated
        assert all(torch.equal(k[:, :sink * S], s) for k, s in zip(cache.k, sink_k))
        assert cache.key_frames(F - 1, 1).tolist() == [0, F - 4, F - 3, F - 2, F - 1]
    layers, dim = len(model.blocks), model.dim
    assert sizes[2 * window] == sizes[6 * window] == 2 * layers * window * S * dim * 4 * 2  # x batch 2


@torch.no_grad()
def test_sampler_long_video_and_checks():
    model = tiny_model(1)
    x, noise, text = inputs(6)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    base = CausalInference(scheduler=FLOW)(model, noise, text, rng=g()).x0
    rolled = CausalInference(local_attn_size=6, sink_size=1, scheduler=FLOW)(model, noise, text, rng=g()).x0
    assert (base - rolled).abs().max() <= 1e-6  # a window as long as the clip drops nothing
    with pytest.raises(ValueError, match="sink_size needs local_attn_size"):
        CausalInference(sink_size=1, scheduler=FLOW)
    with pytest.raises(ValueError, match="sink_size < local_attn_size"):
        CausalInference(local_attn_size=2, sink_size=2, scheduler=FLOW)
    with pytest.raises(ValueError, match="sink_rope"):
        CausalInference(local_attn_size=4, sink_rope="middle", scheduler=FLOW)
    with pytest.raises(ValueError, match="does not fit"):
        CausalInference(local_attn_size=4, sink_size=2, scheduler=FLOW)(tiny_model(3), *inputs(6)[1:])


def test_rope_time_shift_composes():
    k = torch.randn(1, 3 * 6, 2, 16, dtype=torch.float64).float()
    cos, sin = rope_cos_sin(16, torch.arange(3), 2, 3)
    cos2, sin2 = rope_cos_sin(16, torch.arange(3) + 7, 2, 3)
    moved = apply_rope(apply_rope(k, cos, sin), *rope_time_shift(16, 7))
    assert (moved - apply_rope(k, cos2, sin2)).abs().max() <= 1e-5
