"""Wan VAE wrapper: 1 + 4k frame mapping, layout, normalisation, determinism (tiny offline VAE)."""

import pytest
import torch

from oneforcing.errors import UserError
from oneforcing.models.wan_vae import WanVAE
from oneforcing.registry import VAES, build
from oneforcing.testing.tiny_encoders import save_tiny_wan_vae


@pytest.fixture(scope="module")
def wan_root(tmp_path_factory):
    return save_tiny_wan_vae(tmp_path_factory.mktemp("wan_vae"), z_dim=4, seed=5)


@pytest.fixture(scope="module")
def vae(wan_root):
    return build({"type": "wan_vae", "path": str(wan_root)}, VAES)


def test_attributes_and_frame_mapping(vae):
    assert (vae.latent_channels, vae.temporal_factor, vae.spatial_factor) == (4, 4, 8)
    vae.train()
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    assert vae.num_latent_frames(81) == 21 and vae.num_video_frames(21) == 81
    assert vae.latent_shape(81, 480, 832) == (21, 4, 60, 104)
    assert vae.num_latent_frames(1) == 1 and vae.num_video_frames(1) == 1
    for bad in (0, 80, 82):
        with pytest.raises(ValueError, match="1 \\+ 4k"):
            vae.num_latent_frames(bad)


def test_encode_decode_shapes_and_range(vae):
    video = torch.rand(2, 9, 3, 16, 24) * 2 - 1
    z = vae.encode(video)
    assert z.shape == (2, 3, 4, 2, 3) and z.dtype == torch.float32
    torch.testing.assert_close(vae.encode(video), z)  # deterministic (the posterior mode)
    out = vae.decode(z)
    assert out.shape == video.shape and out.min() >= -1 and out.max() <= 1


def test_normalisation_matches_wan_pipeline(vae):
    """encode = (mode - mean) / std; decode undoes it the way WanPipeline does before vae.decode."""
    raw = vae.vae
    mean = torch.tensor(raw.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(raw.config.latents_std).view(1, -1, 1, 1, 1)
    assert not torch.allclose(std, torch.ones_like(std))  # the tiny VAE's stats are non-trivial
    video = torch.rand(1, 5, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        ref = (raw.encode(video.permute(0, 2, 1, 3, 4)).latent_dist.mean - mean) / std
    torch.testing.assert_close(vae.encode(video), ref.permute(0, 2, 1, 3, 4))

    z = torch.randn(1, 2, 4, 2, 2)
    with torch.no_grad():  # WanPipeline: latents / (1 / std) + mean
        ref_video = raw.decode(z.permute(0, 2, 1, 3, 4) / (1.0 / std) + mean).sample
    torch.testing.assert_close(vae.decode(z), ref_video.permute(0, 2, 1, 3, 4))
    torch.testing.assert_close(vae.normalize(vae.denormalize(z)), z)


def test_batch_slicing_is_transparent(wan_root, vae):
    whole = WanVAE(path=str(wan_root / "vae"), batch_slicing=False)  # the vae/ dir itself also works
    video = torch.rand(2, 5, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(whole.encode(video), vae.encode(video), rtol=1e-5, atol=1e-5)


def test_bad_inputs(vae, tmp_path):
    with pytest.raises(ValueError, match="multiple of 8"):
        vae.encode(torch.zeros(1, 5, 3, 12, 16))
    with pytest.raises(ValueError, match="latents"):
        vae.decode(torch.zeros(1, 2, 3, 2, 2))
    with pytest.raises(UserError, match="nowhere"):
        WanVAE(path=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="config.json"):
        WanVAE(path=str(tmp_path))
