"""Sample grids of toy-world videos (the README's GIF).

    python -m oneforcing.toy.samples docs/assets/toy_world.gif
"""

from __future__ import annotations

import sys

import torch

from oneforcing.toy.world import ToyWorld


def write_sample_gif(path: str, num: int = 8, columns: int = 4, seed: int = 0, scale: int = 2,
                     fps: int = 8) -> list[str]:
    """A grid of `num` train-split videos, upscaled `scale`x, as an animated GIF (the README's)."""
    import imageio.v2 as imageio
    import numpy as np

    world = ToyWorld("train", num, seed=seed)
    video = ((world.render(range(num)) + 1) * 127.5).round().to(torch.uint8)  # [N, T, 3, H, W]
    video = video.repeat_interleave(scale, dim=3).repeat_interleave(scale, dim=4)
    video = torch.nn.functional.pad(video, (2, 2, 2, 2), value=40)  # dark gutters between tiles
    n, t, c, h, w = video.shape
    rows = -(-num // columns)
    grid = torch.full((t, c, rows * h, columns * w), 40, dtype=torch.uint8)
    for i in range(num):
        r, k = divmod(i, columns)
        grid[:, :, r * h:(r + 1) * h, k * w:(k + 1) * w] = video[i]
    frames = [np.ascontiguousarray(f.permute(1, 2, 0).numpy()) for f in grid]
    imageio.mimwrite(path, frames, format="GIF", duration=1000 / fps, loop=0)
    return world.prompts()


if __name__ == "__main__":
    for line in write_sample_gif(sys.argv[1] if len(sys.argv) > 1 else "toy_world.gif"):
        print(line)
