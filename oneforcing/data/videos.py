"""Video files <-> tensors: reading (mp4 via ffmpeg, gif), writing, resize + centre crop.

Tensors follow the project's convention: video [T, 3, H, W] float in [-1, 1].
mp4 files are written with libx264 at crf 0 in yuv444p: at toy resolutions (32 px) the usual
4:2:0 chroma subsampling would smear the colours ToyBench measures.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from oneforcing.errors import UserError

VIDEO_EXTENSIONS = (".mp4", ".gif", ".webm", ".mkv", ".mov", ".avi")


def read_video(path: str | Path, max_frames: int | None = None) -> torch.Tensor:
    """Decode a video file -> uint8 [T, H, W, 3] (at most `max_frames` frames, from the start)."""
    import imageio.v2 as imageio

    path = str(path)
    frames = []
    try:
        reader = imageio.get_reader(path)
        try:
            for frame in reader:
                frames.append(np.asarray(frame)[..., :3])
                if max_frames is not None and len(frames) >= max_frames:
                    break
        finally:
            reader.close()
    except Exception as exc:  # noqa: BLE001 - any decoder failure names the file
        raise UserError(f"{path}: cannot decode video ({str(exc).splitlines()[0]})") from None
    if not frames:
        raise UserError(f"{path}: video has no frames")
    arr = np.stack(frames)
    if arr.ndim == 3:  # greyscale
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """[T, 3, H, W] in [-1, 1] -> uint8 [T, H, W, 3]."""
    x = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> [T, 3, H, W] in [-1, 1]."""
    return frames.permute(0, 3, 1, 2).float() / 127.5 - 1


def write_video(path: str | Path, video: torch.Tensor, fps: int = 16) -> None:
    """Write [T, 3, H, W] in [-1, 1] to .mp4 (lossless x264 4:4:4) or .gif, atomically."""
    import imageio.v2 as imageio

    path = Path(path)
    frames = to_uint8(video)
    tmp = path.with_name(f".tmp{os.getpid()}-{path.name}")
    if path.suffix == ".gif":
        imageio.mimwrite(tmp, list(frames), format="GIF", duration=1000 / fps, loop=0)
    else:
        imageio.mimwrite(tmp, list(frames), format="FFMPEG", fps=fps, codec="libx264", macro_block_size=1,
                         pixelformat="yuv444p", output_params=["-crf", "0"])
    os.replace(tmp, path)


def resize_center_crop(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [T, 3, height, width] in [-1, 1]: scale so the frame covers the
    target (aspect kept), antialiased bilinear, then crop the centre."""
    x = from_uint8(frames)
    t, _, h, w = x.shape
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - height) // 2, (nw - width) // 2
    return x[:, :, top:top + height, left:left + width].clamp(-1, 1).contiguous()
