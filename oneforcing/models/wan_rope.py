"""Wan's 3-D rotary position embedding, with a frame offset for causal rollout.

The head dim is split into time / height / width parts: h = w = 2 * (head_dim // 6), time gets
the rest (128 -> 44 / 42 / 42). Each part rotates pairs of channels (interleaved: channels 2i and
2i+1 form pair i) by position * theta^(-2i / part_dim), theta = 1e4, computed in float64 and cast
to float32 exactly like diffusers' WanRotaryPosEmbed, so bidirectional outputs match bit for bit.

Unlike diffusers' table of 1024 positions, angles are computed on the fly from positions, so a
block at frame offset f0 simply gets time positions f0, f0+1, ... (the teacher-forcing clean and
noisy copies get the same positions). Nothing is stored on the module: it is safe to build on the
meta device or under ZeRO-3 init.
"""

from __future__ import annotations

import torch


def rope_split(head_dim: int) -> tuple[int, int, int]:
    h = w = 2 * (head_dim // 6)
    return head_dim - h - w, h, w


def _angles(pos: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    """[len(pos), dim // 2] rotation angles in float64."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim))
    return torch.outer(pos.to(torch.float64), freqs)


def rope_cos_sin(head_dim: int, frames: torch.Tensor, height: int, width: int,
                 theta: float = 10000.0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [N, 1, head_dim // 2] (float32) for tokens ordered (frame, h, w).

    `frames` holds the absolute time index of each latent frame (after temporal patching)."""
    t_dim, h_dim, w_dim = rope_split(head_dim)
    frames = frames.to(device)
    ang_t = _angles(frames, t_dim, theta)
    ang_h = _angles(torch.arange(height, device=device), h_dim, theta)
    ang_w = _angles(torch.arange(width, device=device), w_dim, theta)
    f, h, w = len(frames), height, width
    ang = torch.cat([
        ang_t[:, None, None, :].expand(f, h, w, -1),
        ang_h[None, :, None, :].expand(f, h, w, -1),
        ang_w[None, None, :, :].expand(f, h, w, -1),
    ], dim=-1).reshape(f * h * w, 1, head_dim // 2)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of x [B, N, H, D] by the angles (cos/sin [N, 1, D/2])."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return out.type_as(x)


def rope_time_shift(head_dim: int, frames: int, theta: float = 10000.0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [1, 1, head_dim // 2] that move keys already rotated by `rope_cos_sin` by `frames`
    positions in time (height and width untouched): rotations compose, so
    apply_rope(apply_rope(k, *rope_cos_sin(.., [p], ..)), *rope_time_shift(.., d)) is k at p + d."""
    t_dim, h_dim, w_dim = rope_split(head_dim)
    ang_t = _angles(torch.tensor([frames], device=device), t_dim, theta)[0]
    ang = torch.cat([ang_t, ang_t.new_zeros((h_dim + w_dim) // 2)]).reshape(1, 1, head_dim // 2)
    return ang.cos().float(), ang.sin().float()
