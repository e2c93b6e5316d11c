"""mp4 helpers: playable files, right frame count and size, atomic writes, value fidelity."""

import numpy as np
import pytest
import torch

from oneforcing.video import mp4_info, read_mp4, to_uint8_frames, write_mp4


def _smooth_video(t=9, h=32, w=48):
    """Smooth gradients (what H.264 keeps almost exactly), moving over time."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    frames = [torch.stack([xx * 0.8, yy * 0.8, torch.full_like(xx, i / t - 0.5)]) for i in range(t)]
    return torch.stack(frames)  # [T, 3, H, W] in [-1, 1]


def test_float_video_roundtrip(tmp_path):
    video = _smooth_video()
    out = write_mp4(tmp_path / "sub" / "clip.mp4", video, fps=16)
    frames = read_mp4(out)
    assert frames.shape == (9, 32, 48, 3) and frames.dtype == np.uint8
    err = np.abs(frames.astype(int) - to_uint8_frames(video).astype(int)).mean()
    assert err < 4, err
    info = mp4_info(out)
    assert info["size"] == (48, 32) and abs(info["fps"] - 16) < 1e-6
    assert [p.name for p in out.parent.iterdir()] == ["clip.mp4"]  # no temporary left behind


def test_uint8_frames_and_odd_size(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (5, 15, 17, 3), dtype=np.uint8)
    back = read_mp4(write_mp4(tmp_path / "odd.mp4", frames))
    assert back.shape == (5, 16, 18, 3)  # padded to even by edge replication, never rescaled


def test_conversion_and_errors(tmp_path):
    x = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1)
    assert to_uint8_frames(x).reshape(-1).tolist() == [0, 128, 255]
    with pytest.raises(ValueError):
        to_uint8_frames(torch.zeros(2, 4, 8, 8))
    with pytest.raises(FileNotFoundError):
        read_mp4(tmp_path / "missing.mp4")


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "bad.mp4"
    target.write_bytes(b"old")
    with pytest.raises(ValueError):
        write_mp4(target, np.zeros((0, 8, 8, 3), np.uint8))
    assert target.read_bytes() == b"old"  # the previous file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mp4"]
