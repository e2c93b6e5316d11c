"""Streaming decode of the Wan VAE (block by block, causal conv cache) equals whole-clip decode."""

import pytest
import torch

from oneforcing.registry import VAES, build
from oneforcing.testing.tiny_encoders import save_tiny_wan_vae


@pytest.fixture(scope="module")
def wan_root(tmp_path_factory):
    return save_tiny_wan_vae(tmp_path_factory.mktemp("wan_vae"), z_dim=4, seed=5)


@pytest.mark.parametrize("dtype,batch_slicing,blocks", [
    ("float32", True, [1, 1, 1]), ("float32", True, [1, 3]), ("float32", False, [2, 2]),
    ("bfloat16", True, [2, 1])])
def test_streaming_decode_equals_whole_clip(wan_root, dtype, batch_slicing, blocks):
    vae = build({"type": "wan_vae", "path": str(wan_root), "dtype": dtype, "batch_slicing": batch_slicing}, VAES)
    latents = torch.randn(2, sum(blocks), 4, 2, 3, generator=torch.Generator().manual_seed(0))
    whole = vae.decode(latents)
    dec = vae.stream_decoder()
    parts, a = [], 0
    for n in blocks:
        part = dec(latents[:, a:a + n])
        assert part.shape[1] == (1 + 4 * (n - 1) if a == 0 else 4 * n)  # frame 0 alone, then 4 per latent
        parts.append(part)
        a += n
    streamed = torch.cat(parts, dim=1)
    assert streamed.shape == whole.shape == (2, 1 + 4 * (a - 1), 3, 16, 24)
    tol = 1e-5 if dtype == "float32" else 2e-2
    assert (streamed - whole).abs().max() <= tol
    # the cache carries real context: decoding a later block alone (fresh cache) gives other frames
    assert (vae.stream_decoder()(latents[:, 1:2])[:, :1] - whole[:, 1:2]).abs().max() > 1e-3


def test_streaming_decode_refuses_tiling_and_batch_change(wan_root):
    vae = build({"type": "wan_vae", "path": str(wan_root), "tiling": True}, VAES)
    with pytest.raises(ValueError, match="tiling"):
        vae.stream_decoder()
    vae = build({"type": "wan_vae", "path": str(wan_root)}, VAES)
    dec = vae.stream_decoder()
    dec(torch.randn(2, 1, 4, 2, 3))
    with pytest.raises(ValueError, match="batch size changed"):
        dec(torch.randn(1, 1, 4, 2, 3))


def test_render_streams_blocks_and_equals_decode_at_the_end(wan_root):
    """generate's render(): blocks decoded as they come = the clip decoded after generation."""
    from oneforcing.jobs.generate import render
    from oneforcing.jobs.shared import rollout
    from oneforcing.models.causal_wan import CausalWan
    from oneforcing.samplers import CausalInference
    from oneforcing.schedulers.flow_match import FlowMatchScheduler
    from oneforcing.testing.tiny_wan import tiny_inputs, tiny_wan_config

    vae = build({"type": "wan_vae", "path": str(wan_root)}, VAES)
    torch.manual_seed(0)
    model = CausalWan.from_config(tiny_wan_config(), frames_per_block=2, attention="sdpa").eval()
    noise, text = tiny_inputs(1, 4, 2, 4, seed=1)
    sampler, cpu = CausalInference(scheduler=FlowMatchScheduler()), torch.device("cpu")
    calls = []
    decode = vae.stream_decoder

    def counting():
        dec = decode()
        return lambda z: calls.append(z.shape[1]) or dec(z)

    vae.stream_decoder = counting
    video, first, dit, total = render(sampler, model, vae, noise, text, cpu, torch.Generator().manual_seed(0))
    assert calls == [2, 2]  # one decode per generated block, in order
    latents, _ = rollout(sampler, model, noise, text, cpu, torch.Generator().manual_seed(0))
    assert (video - vae.decode(latents)).abs().max() <= 1e-5
    assert 0 < first < total and 0 < dit < total
