"""The unit world's trained networks: a one-step generator and a fake score with a discriminator head.

Both are small MLPs on points, wrapped in the interfaces the registered samplers and losses call:

`UnitGenerator`  the models contract's call `v = model(x, t, text, causal=..., clean_x=...)` plus
                 what the causal samplers ask of a causal model (`block_ranges`, `new_kv_cache`,
                 `kv_cache` / `frame_offset` / `write_cache` keywords; one frame per block and no
                 cache: a point has no past). A one-step student is this model at t = 1000:
                 x0 = noise - v(noise, 1000) (`self_forcing` with steps [1000]); ASD's
                 `student_rollout` runs it at two steps, the fKL surrogate at per-frame t.
`UnitCritic`     the critic interface (oneforcing/critics/__init__.py): `denoise` -> velocity and,
                 with `head=True`, `logit` -> [B], the discriminator reading the fake score's
                 hidden features, as `register_gan_critic` reads the backbone's blocks: the GAN
                 discriminator loss trains the shared trunk too.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from oneforcing.unit_world.points import as_points, from_points, point_t


class TimeEmbedding(nn.Module):
    """sin / cos of sigma = t / 1000 at geometric frequencies."""

    def __init__(self, dim: int = 16):
        super().__init__()
        freqs = torch.exp(torch.linspace(0.0, math.log(100.0), dim // 2))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angle = (t.float() / 1000)[:, None] * self.freqs[None]
        return torch.cat([angle.sin(), angle.cos()], dim=-1)


def mlp(inp: int, hidden: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(inp if i == 0 else hidden, hidden), nn.SiLU()]
    return nn.Sequential(*layers)


class FourierFeatures(nn.Module):
    """[p, sin(p W), cos(p W)] with a fixed random W ~ N(0, scale^2): lets a small MLP bend sharply."""

    def __init__(self, dim: int, count: int, scale: float):
        super().__init__()
        self.register_buffer("w", torch.randn(dim, count) * scale)

    @property
    def out_dim(self) -> int:
        return self.w.shape[0] + 2 * self.w.shape[1]

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        if self.w.shape[1] == 0:
            return p
        z = p @ self.w
        return torch.cat([p, z.sin(), z.cos()], dim=-1)


class _PointNet(nn.Module):
    """trunk(point features, time embedding) -> features; `velocity` maps them to v."""

    def __init__(self, dim: int, hidden: int, depth: int, fourier: int = 0, fourier_scale: float = 1.0,
                 time_dim: int = 16):
        super().__init__()
        self.time = TimeEmbedding(time_dim)
        self.inputs = FourierFeatures(dim, fourier, fourier_scale)
        self.trunk = mlp(self.inputs.out_dim + time_dim, hidden, depth)
        self.velocity = nn.Linear(hidden, dim)

    def features(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x [B, F, C, H, W], t [B] or [B, F] -> features [points, hidden]."""
        p = as_points(x.float())
        return self.trunk(torch.cat([self.inputs(p), self.time(point_t(t, x))], dim=-1))


class UnitGenerator(_PointNet):
    frames_per_block = 1
    config: dict = {}

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, fourier: int = 0, fourier_scale: float = 1.0):
        super().__init__(dim, hidden, depth, fourier, fourier_scale)

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor | None = None, *,
                causal: bool | None = None, clean_x: torch.Tensor | None = None, kv_cache=None,
                frame_offset: int = 0, write_cache: bool = False) -> torch.Tensor:
        return from_points(self.velocity(self.features(x, t)), x)

    @staticmethod
    def block_ranges(frames: int) -> list[tuple[int, int]]:
        return [(i, i + 1) for i in range(frames)]

    @staticmethod
    def new_kv_cache(batch: int, frames: int, **_) -> None:
        return None


class UnitCritic(_PointNet):
    """`head=False`: a plain fake score (`logit` raises TypeError, as `fake_score`'s)."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, head: bool = True, fourier: int = 0,
                 fourier_scale: float = 1.0):
        super().__init__(dim, hidden, depth, fourier, fourier_scale)
        self.head = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(),
                                  nn.Linear(hidden, 1)) if head else None

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        return from_points(self.velocity(self.features(x_t, t)), x_t)

    def logit(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """[B]: the mean logit over a sample's points (one point per sample in the unit world)."""
        if self.head is None:
            raise TypeError("this UnitCritic was built without a discriminator head (head=False)")
        return self.head(self.features(x_t, t)).reshape(x_t.shape[0], -1).mean(1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        return self.denoise(x_t, t, text)
