"""Streaming decode of the Wan VAE (block by block, causal conv cache) equals whole-clip decode."""

import pytest
import torch

from oneforcing.registry import VAES, build
from oneforcing.testing.tiny_encoders import save_tiny_wan_vae


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
