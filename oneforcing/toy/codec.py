"""The toy codec: a fixed linear stand-in for the Wan VAE.

encode: video [B, T, 3, H, W] in [-1, 1] -> space-to-depth by `spatial_factor` (pixel_unshuffle:
each latent position holds a f x f x 3 pixel patch) -> a fixed orthonormal PCA basis keeps the
patch's top `channels` components -> per-component normalisation -> latents [B, T, channels, H/f,
W/f]. decode applies the transpose. At the toy default (32 x 32 video, f = 4, 16 channels)
latents are [21, 16, 8, 8], like Wan's 16 latent channels.

Why PCA and not the exact 48-channel space-to-depth (still available: `channels: null`): a
transformer token with patch (1, 2, 2) then carries 4 x 48 = 192 numbers, more than a toy model's
width (128), and the model cannot predict per-pixel noise through that bottleneck: its 50-step
samples stay noisy. Wan's tokens carry 64 numbers into 1,536 dimensions. Toy videos are flat
colours, so 16 of 48 patch components keep almost all of their energy (reconstruction error is
measured in tests/test_toy_world.py), and 64 numbers per token fit a 128-wide model.

The basis, mean and per-component std are computed once from 512 seeded train-split videos by
`python -m oneforcing.toy.codec_fit` and ship in oneforcing/assets/toy_codec_pca.safetensors,
so every run agrees. No temporal compression (temporal_factor 1).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from oneforcing.config.assets import packaged_asset
from oneforcing.errors import UserError
from oneforcing.registry import VAES

TOY_MEAN, TOY_STD = -0.034, 0.813  # pixel statistics, for the exact (channels: null) mode
PCA_ASSET = packaged_asset("toy_codec_pca.safetensors")


@VAES.register("toy_codec")
class ToyCodec(torch.nn.Module):
    """Toy-world latents: space-to-depth + a fixed PCA basis (16 channels), or exact (channels: null)."""

    temporal_factor = 1

    def __init__(self, spatial_factor: int = 4, channels: int | None = 16, basis: str | None = None,
                 mean: float = TOY_MEAN, std: float = TOY_STD):
        super().__init__()
        if spatial_factor < 1:
            raise UserError(f"toy_codec: spatial_factor must be >= 1, got {spatial_factor}")
        if std <= 0:
            raise UserError(f"toy_codec: std must be positive, got {std}")
        self.spatial_factor = f = int(spatial_factor)
        self.patch_dim = 3 * f * f
        self.pca = channels is not None
        self.latent_channels = int(channels) if self.pca else self.patch_dim
        self.register_buffer("mean", torch.tensor(float(mean)), persistent=False)
        self.register_buffer("std", torch.tensor(float(std)), persistent=False)
        if self.pca:
            from safetensors.torch import load_file

            path = Path(basis) if basis else PCA_ASSET
            if not path.exists():
                raise UserError(f"toy_codec: PCA basis '{path}' not found (python -m oneforcing.toy.codec_fit)")
            stats = load_file(str(path))
            if stats["components"].shape[1] != self.patch_dim or not 1 <= channels <= stats["components"].shape[0]:
                raise UserError(f"toy_codec: basis {path} has {tuple(stats['components'].shape)} components; "
                                f"need channels <= that and patch size {self.patch_dim} (spatial_factor {f})")
            self.register_buffer("components", stats["components"][:channels].float(), persistent=False)
            self.register_buffer("patch_mean", stats["mean"].float(), persistent=False)
            self.register_buffer("scale", stats["std"][:channels].float(), persistent=False)

    def num_latent_frames(self, num_frames: int) -> int:
        return int(num_frames)

    def num_video_frames(self, num_latent_frames: int) -> int:
        return int(num_latent_frames)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        f = self.spatial_factor
        return (self.num_latent_frames(frames), self.latent_channels, height // f, width // f)

    @property
    def dtype(self) -> torch.dtype:
        return self.mean.dtype

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def _patches(self, video: torch.Tensor) -> torch.Tensor:
        """[B, T, 3, H, W] -> pixel patches [B*T, 3 f^2, H/f, W/f]."""
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"toy_codec.encode expects [B, T, 3, H, W], got {tuple(video.shape)}")
        b, t, c, h, w = video.shape
        f = self.spatial_factor
        if h % f or w % f:
            raise ValueError(f"toy_codec: height and width must be multiples of {f}, got {h}x{w}")
        return F.pixel_unshuffle(video.reshape(b * t, c, h, w), f)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, T, 3, H, W] in [-1, 1] -> normalised latents [B, T, C, H/f, W/f]."""
        b, t, _, h, w = video.shape
        x = self._patches(video)
        if self.pca:
            x = x - self.patch_mean.to(x.dtype)[None, :, None, None]
            x = torch.einsum("kc,nchw->nkhw", self.components.to(x.dtype), x)
            x = x / self.scale.to(x.dtype)[None, :, None, None]
        else:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        f = self.spatial_factor
        return x.reshape(b, t, self.latent_channels, h // f, w // f)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, F, C, h, w] -> video [B, F, 3, h f, w f] (not clamped)."""
        if latents.dim() != 5 or latents.shape[2] != self.latent_channels:
            raise ValueError(f"toy_codec.decode expects [B, F, {self.latent_channels}, h, w], "
                             f"got {tuple(latents.shape)}")
        b, n, c, h, w = latents.shape
        x = latents.reshape(b * n, c, h, w)
        if self.pca:
            x = x * self.scale.to(x.dtype)[None, :, None, None]
            x = torch.einsum("kc,nkhw->nchw", self.components.to(x.dtype), x)
            x = x + self.patch_mean.to(x.dtype)[None, :, None, None]
        else:
            x = x * self.std.to(latents.dtype) + self.mean.to(latents.dtype)
        x = F.pixel_shuffle(x, self.spatial_factor)
        return x.reshape(b, n, 3, h * self.spatial_factor, w * self.spatial_factor)

    def stream_decoder(self):
        """Block-by-block decoding (generate streams with it): frames decode independently here."""
        return self.decode
