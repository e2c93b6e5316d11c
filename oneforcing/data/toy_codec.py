"""The toy codec: a fixed, exactly invertible stand-in for the Wan VAE.

encode: video [B, T, 3, H, W] in [-1, 1] -> space-to-depth by `spatial_factor` (pixel_unshuffle,
channel = colour * f^2 + dy * f + dx) -> (x - mean) / std per colour channel -> latents
[B, F=T, 3 f^2, H/f, W/f]. decode is the exact inverse. At the toy default (32 x 32 video, f = 4)
latents are [21, 48, 8, 8]: a patch-(1, 2, 2) transformer sees 16 tokens per frame.

The normalisation constants are the toy-world train split's per-channel pixel statistics
(measured once on 1,000 videos: mean -0.034, std 0.813), fixed here so every run agrees.
It has no temporal compression (temporal_factor 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from oneforcing.errors import UserError
from oneforcing.registry import VAES

TOY_MEAN, TOY_STD = -0.034, 0.813


@VAES.register("toy_codec")
class ToyCodec(torch.nn.Module):
    temporal_factor = 1

    def __init__(self, spatial_factor: int = 4, mean: float = TOY_MEAN, std: float = TOY_STD):
        super().__init__()
        if spatial_factor < 1:
            raise UserError(f"toy_codec: spatial_factor must be >= 1, got {spatial_factor}")
        if std <= 0:
            raise UserError(f"toy_codec: std must be positive, got {std}")
        self.spatial_factor = int(spatial_factor)
        self.latent_channels = 3 * self.spatial_factor ** 2
        self.register_buffer("mean", torch.tensor(float(mean)), persistent=False)
        self.register_buffer("std", torch.tensor(float(std)), persistent=False)

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

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, T, 3, H, W] in [-1, 1] -> normalised latents [B, T, 3 f^2, H/f, W/f]."""
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"toy_codec.encode expects [B, T, 3, H, W], got {tuple(video.shape)}")
        b, t, c, h, w = video.shape
        f = self.spatial_factor
        if h % f or w % f:
            raise ValueError(f"toy_codec: height and width must be multiples of {f}, got {h}x{w}")
        x = F.pixel_unshuffle(video.reshape(b * t, c, h, w), f)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return x.reshape(b, t, self.latent_channels, h // f, w // f)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, F, C, h, w] -> video [B, F, 3, h f, w f] (not clamped)."""
        if latents.dim() != 5 or latents.shape[2] != self.latent_channels:
            raise ValueError(f"toy_codec.decode expects [B, F, {self.latent_channels}, h, w], "
                             f"got {tuple(latents.shape)}")
        b, n, c, h, w = latents.shape
        x = latents.reshape(b * n, c, h, w) * self.std.to(latents.dtype) + self.mean.to(latents.dtype)
        x = F.pixel_shuffle(x, self.spatial_factor)
        return x.reshape(b, n, 3, h * self.spatial_factor, w * self.spatial_factor)
