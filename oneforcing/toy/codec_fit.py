"""Fit the toy codec's PCA basis: `python -m oneforcing.toy.codec_fit` rewrites
oneforcing/assets/toy_codec_pca.safetensors from 512 seeded train-split videos (deterministic)."""

from __future__ import annotations

import torch

from oneforcing.toy.codec import PCA_ASSET, ToyCodec
from oneforcing.toy.world import ToyWorld


def fit_pca(num_videos: int = 512, spatial_factor: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """PCA of f x f x 3 pixel patches of seeded train-split toy videos (float64, deterministic)."""
    world = ToyWorld("train", num_examples=num_videos, seed=seed)
    codec = ToyCodec(spatial_factor=spatial_factor, channels=None)
    patches = []
    for start in range(0, num_videos, 64):
        video = world.render(range(start, min(start + 64, num_videos)))
        p = codec._patches(video).double()                      # [N, D, h, w]
        patches.append(p.permute(0, 2, 3, 1).reshape(-1, p.shape[1]))
    x = torch.cat(patches)
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / (x.shape[0] - 1)
    evals, evecs = torch.linalg.eigh(cov)                        # ascending
    order = torch.argsort(evals, descending=True)
    comps = evecs[:, order].T                                     # [D, D], rows = components
    comps = comps * torch.sign(comps[:, :1] + 1e-12)              # a fixed sign per component
    std = evals[order].clamp_min(1e-12).sqrt()
    return {"components": comps.float().contiguous(), "mean": mean.float(), "std": std.float(),
            "explained": (evals[order] / evals.sum()).float()}


if __name__ == "__main__":
    from safetensors.torch import save_file

    stats = fit_pca()
    save_file(stats, str(PCA_ASSET))
    kept = stats["explained"][:16].sum().item()
    print(f"wrote {PCA_ASSET}: 16 of {stats['components'].shape[0]} components keep {kept:.4%} of patch variance")
