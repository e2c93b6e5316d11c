"""Writing and reading mp4 files (H.264, yuv420p, 16 fps by default) through imageio-ffmpeg.

Writes are atomic: frames go to a hidden temporary file beside the target, which replaces the
target only once ffmpeg has finished. An interrupted generate run therefore never leaves a
truncated mp4 under the final name (VBench and resume logic trust whatever exists).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


def to_uint8_frames(video) -> np.ndarray:
    """[T, 3, H, W] float in [-1, 1] (tensor or array) or uint8 [T, H, W, 3] -> uint8 [T, H, W, 3]."""
    if torch.is_tensor(video):
        video = video.detach().cpu()
        if video.dtype == torch.uint8:
            arr = video.numpy()
        else:
            if video.dim() != 4 or video.shape[1] != 3:
                raise ValueError(f"expected a float video [T, 3, H, W], got {tuple(video.shape)}")
            x = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            arr = x.permute(0, 2, 3, 1).numpy()
    else:
        arr = np.asarray(video)
        if arr.dtype != np.uint8:
            if arr.ndim != 4 or arr.shape[1] != 3:
                raise ValueError(f"expected a float video [T, 3, H, W], got {arr.shape}")
            arr = np.round((np.clip(arr, -1, 1) + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {arr.shape}")
    return np.ascontiguousarray(arr)


def _pad_even(frames: np.ndarray) -> np.ndarray:
    """H.264 in yuv420p needs even width and height: replicate the last row/column if odd
    (rather than letting ffmpeg rescale, which would blur every pixel)."""
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return frames


DEFAULT_FPS = 16        # Wan2.1's frame rate
DEFAULT_QUALITY = 8.0   # imageio-ffmpeg quality (see write_mp4)


def write_mp4(path: str | os.PathLike, video, fps: float = DEFAULT_FPS, quality: float = DEFAULT_QUALITY) -> Path:
    """Write `video` ([T, 3, H, W] in [-1, 1] or uint8 [T, H, W, 3]) to `path` atomically.

    quality is imageio-ffmpeg's 1..10 scale (8 -> libx264 crf 10: near-lossless, so metrics
    computed on the files see the model's output, not compression artefacts)."""
    import imageio_ffmpeg

    path = Path(path)
    frames = _pad_even(to_uint8_frames(video))
    if frames.shape[0] == 0:
        raise ValueError("cannot write a video with no frames")
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name keeps the .mp4 suffix: ffmpeg picks the container from it.
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.mp4")
    _, h, w, _ = frames.shape
    writer = imageio_ffmpeg.write_frames(
        str(tmp), (w, h), fps=fps, quality=quality, codec="libx264", pix_fmt_out="yuv420p",
        macro_block_size=1, ffmpeg_log_level="error",
        output_params=["-movflags", "+faststart"],  # index first: streamable, quick to probe
    )
    try:
        writer.send(None)  # start the generator (launches ffmpeg)
        for frame in frames:
            writer.send(frame)
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_mp4(path: str | os.PathLike) -> np.ndarray:
    """All frames of an mp4 as uint8 [T, H, W, 3] (for tests and metrics)."""
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3) for buf in reader]
    return np.stack(frames) if frames else np.zeros((0, h, w, 3), np.uint8)


def mp4_info(path: str | os.PathLike) -> dict:
    """ffmpeg's metadata of an mp4: size (w, h), fps, duration, codec ..."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        return dict(next(reader))
    finally:
        reader.close()


def mp4_problem(path: str | os.PathLike) -> str | None:
    """Why `path` is not a whole mp4 file, or None. Walks the top-level boxes of the ISO media
    container without decoding (fast enough for every clip of a study at start-up): a truncated
    file, bytes that are not boxes, no ftyp box first or no moov box (nothing a player could open)."""
    size = os.path.getsize(path)
    seen, pos = set(), 0
    with open(path, "rb") as f:
        while pos < size:
            f.seek(pos)
            header = f.read(16)
            if len(header) < 8:
                return f"{size - pos} stray bytes at the end"
            box = int.from_bytes(header[:4], "big")
            kind = header[4:8]
            if pos == 0 and kind != b"ftyp":
                return "not an mp4 file (it does not start with an ftyp box)"
            if not all(32 <= b < 127 for b in kind):
                return f"no mp4 box at byte {pos}"
            if box == 1:  # a 64-bit size follows the type
                box = int.from_bytes(header[8:16], "big") if len(header) == 16 else 0
            elif box == 0:  # the last box runs to the end of the file
                box = size - pos
            if box < 8 or pos + box > size:
                return f"truncated: box '{kind.decode()}' at byte {pos} runs past the end of the file"
            seen.add(kind)
            pos += box
    return None if b"moov" in seen else "no moov box (the index a player needs)"
