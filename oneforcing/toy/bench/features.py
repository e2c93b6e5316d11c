"""ToyBench's fixed feature map and the Fréchet distance over it (a toy FVD).

Feature map (fixed; changing it changes every reported FD): a two-layer random 3-D conv net,
weights drawn from N(0, 1/fan_in) by torch.Generator().manual_seed(FEATURE_SEED), no biases:
    input: 6 channels over frames 1..T-1: the frame x[t] and 4 (x[t] - x[t-1]) (motion made explicit)
    conv3d(6 -> 16, kernel 3x3x3, stride (1, 2, 2), pad 1) -> ReLU
    conv3d(16 -> 32, kernel 3x3x3, stride 2, pad 1)        -> ReLU
    features = [mean, std] over (time, height, width) of the 32 channels -> 64 dims.
Inputs are videos [N, T, 3, H, W] in [-1, 1]. The difference channels make it see motion (a frozen
video differs), the spatial kernels see edges (a blurry video differs).

Reference statistics: REFERENCE_EXAMPLES videos of the toy world's "test" split, seed
REFERENCE_SEED, rendered on the fly at the videos' frame count and size (cached per process).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from oneforcing.toy.world import ToyWorld

FEATURE_SEED = 1234
REFERENCE_EXAMPLES = 512
REFERENCE_SEED = 0


@functools.lru_cache(maxsize=1)
def _weights() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(FEATURE_SEED)
    w1 = torch.randn(16, 6, 3, 3, 3, generator=g) / (6 * 27) ** 0.5
    w2 = torch.randn(32, 16, 3, 3, 3, generator=g) / (16 * 27) ** 0.5
    return w1, w2


@torch.no_grad()
def video_features(video: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """[N, T, 3, H, W] in [-1, 1] -> [N, 64] float64."""
    w1, w2 = _weights()
    out = []
    for i in range(0, video.shape[0], chunk):
        v = video[i:i + chunk].float()
        x = torch.cat([v[:, 1:], 4 * (v[:, 1:] - v[:, :-1])], dim=2).permute(0, 2, 1, 3, 4)  # [n, 6, T-1, H, W]
        x = F.relu(F.conv3d(x, w1, stride=(1, 2, 2), padding=1))
        x = F.relu(F.conv3d(x, w2, stride=2, padding=1)).flatten(2)
        out.append(torch.cat([x.mean(-1), x.std(-1)], dim=1))
    return torch.cat(out).double()


def statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu = features.mean(0)
    centred = features - mu
    return mu, centred.T @ centred / max(features.shape[0] - 1, 1)


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2): the symmetric form, stable for
    the rank-deficient covariances of a few hundred videos."""
    s1 = _sqrt_psd(cov1)
    cross = _sqrt_psd(s1 @ cov2 @ s1)
    return float((mu1 - mu2).pow(2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * torch.trace(cross))


@functools.lru_cache(maxsize=4)
def reference_statistics(frames: int, size: int, num: int = REFERENCE_EXAMPLES, seed: int = REFERENCE_SEED,
                         max_objects: int = 2, start_positions: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    world = ToyWorld("test", num, seed=seed, frames=frames, size=size, max_objects=max_objects,
                     start_positions=start_positions)
    feats = torch.cat([video_features(world.render(range(i, min(i + 64, num)))) for i in range(0, num, 64)])
    return statistics(feats)


def frechet_to_toy_world(video: torch.Tensor, max_objects: int = 2, start_positions: int | None = None) -> float:
    """FD between `video`'s features and the reference statistics of the toy world's tier (the
    default world, or the one with `max_objects` / `start_positions` as toy_data makes it)."""
    mu, cov = statistics(video_features(video))
    ref_mu, ref_cov = reference_statistics(video.shape[1], video.shape[-1], max_objects=max_objects,
                                           start_positions=start_positions)
    return frechet_distance(mu, cov, ref_mu, ref_cov)
