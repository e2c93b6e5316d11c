"""2-D points in the library's latent layout, so the registered losses run on them unchanged.

The losses, samplers and critics all speak latents [B, F, C, H, W] and model timesteps t [B]
(or [B, F]). The unit world's points [N, D] travel as [B, F=1, C=D, H=1, W=1]; these helpers go
back and forth, and give every point its own timestep, whatever layout the caller used.
"""

from __future__ import annotations

import torch


def as_latents(points: torch.Tensor) -> torch.Tensor:
    """[B, D] -> [B, 1, D, 1, 1]."""
    return points[:, None, :, None, None]


def as_points(x: torch.Tensor) -> torch.Tensor:
    """[B, F, C, H, W] -> [B * F * H * W, C] (channels last: one point per frame and pixel)."""
    return x.movedim(2, -1).reshape(-1, x.shape[2])


def from_points(points: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The inverse of `as_points` for a tensor shaped like `like` [B, F, C, H, W]."""
    B, F, C, H, W = like.shape
    return points.reshape(B, F, H, W, C).movedim(-1, 2)


def point_t(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Model timesteps [B] or [B, F] -> one per point of `like` [B, F, C, H, W], as `as_points` orders them."""
    B, F, _, H, W = like.shape
    t = torch.as_tensor(t, dtype=torch.float32, device=like.device)
    if t.dim() == 0:
        t = t.expand(B)
    if t.dim() == 1:
        t = t[:, None].expand(B, F)
    return t[:, :, None, None].expand(B, F, H, W).reshape(-1)
