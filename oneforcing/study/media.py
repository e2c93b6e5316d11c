"""Clips decoded before they are served, and the attention checks' degraded clips.

`check_media` decodes every clip the study shows (ffmpeg through imageio-ffmpeg): a clip that does
not decode, or has no frame, is refused, and so is a pair whose two clips differ in frame count,
size or frame rate -- an annotator would see the difference, and a blind study must not show which
is which by length or shape. `make_gold` writes, for a few seeded (prompt, sample), a copy of our clip that is
plainly worse (blocky and noisy, same frames and size): the attention checks' known answer.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from oneforcing.errors import UserError
from oneforcing.runtime import derive_seed
from oneforcing.study.design import GOLD, VIDEO_NAME, StudyDesign


def probe(path: Path) -> tuple[int, tuple[int, int], float]:
    """(frames, (width, height), fps) of a clip, decoding it; ValueError if it does not decode."""
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        reader.close()
        frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    except (RuntimeError, OSError, StopIteration, KeyError) as err:
        raise ValueError(str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__) from None
    if frames < 1:
        raise ValueError("no frame decodes")
    return frames, tuple(meta["size"]), float(meta.get("fps") or 16)


def check_media(design: StudyDesign) -> dict[Path, tuple[int, tuple[int, int], float]]:
    """Decode every clip; a clip that fails, or a pair whose clips differ in frames, size or frame rate,
    is refused."""
    seen: dict[Path, tuple[int, tuple[int, int], float]] = {}
    keys = {path: (system, path) for system, path in design.videos()}
    for path, (system, _) in keys.items():
        key = "attention_checks" if system == GOLD else f"systems.{system}"
        try:
            seen[path] = probe(path)
        except ValueError as err:
            raise UserError(f"{path.parent}: '{path.name}' does not decode ({err})", key=key) from None
    for pair in design.pairs:
        a, b = (design.video(s, pair.prompt, pair.sample) for s in (pair.a, pair.b))
        (fa, sa, ra), (fb, sb, rb) = seen[a], seen[b]
        if (fa, sa, round(ra, 2)) != (fb, sb, round(rb, 2)):
            raise UserError(f"'{a.name}' is {fa} frames of {sa[0]}x{sa[1]} at {ra:g} fps in {pair.a} but {fb} "
                            f"frames of {sb[0]}x{sb[1]} at {rb:g} fps in {pair.b}: a blind pair must match in "
                            "length, size and frame rate", key=f"systems.{pair.b if pair.b != GOLD else pair.a}")
    return seen


def degrade(frames: np.ndarray, seed: int) -> np.ndarray:
    """uint8 [T, H, W, 3] -> the same frames 8x blockier with strong noise: plainly the worse clip."""
    t, h, w, _ = frames.shape
    block = max(2, min(h, w) // 8)
    hb, wb = -(-h // block), -(-w // block)
    padded = np.pad(frames.astype(np.float32), ((0, 0), (0, hb * block - h), (0, wb * block - w), (0, 0)), "edge")
    coarse = padded.reshape(t, hb, block, wb, block, 3).mean(axis=(2, 4))
    blocky = coarse.repeat(block, axis=1).repeat(block, axis=2)[:, :h, :w]
    noise = np.random.default_rng(seed).normal(0, 45, blocky.shape)
    return np.clip(blocky + noise, 0, 255).astype(np.uint8)


def gold_picks(design: StudyDesign, count: int, seed: int) -> list[tuple[str, int]]:
    """`count` seeded (prompt, sample) for the attention checks."""
    every = [(p, i) for p in design.prompts for i in range(design.samples_per_prompt)]
    if count > len(every):
        raise UserError(f"{count} attention checks, but the study has only {len(every)} clips of ours",
                        key="attention_checks")
    return sorted(random.Random(derive_seed(seed, "study-gold")).sample(every, count), key=every.index)


def make_gold(design: StudyDesign, folder: Path, picks: list[tuple[str, int]], seed: int) -> None:
    """Write the degraded copy of each pick's clip of ours into `folder` (existing files are kept:
    their hashes are committed, and a reopened study checks them)."""
    from oneforcing.video import read_mp4, write_mp4

    folder.mkdir(parents=True, exist_ok=True)
    for prompt, sample in picks:
        target = folder / VIDEO_NAME.format(prompt=prompt, sample=sample)
        if target.exists():
            continue
        source = design.video(design.ours, prompt, sample)
        _, _, fps = probe(source)
        write_mp4(target, degrade(read_mp4(source), derive_seed(seed, "study-gold", prompt, sample)), fps=fps)
