"""ToyBench: VBench-style scores for toy-world videos against their prompts' exact ground truth.

Dimensions (raw value per video, averaged; `DIMENSIONS` holds group, weight, and the min/max
that normalise it to [0, 1] the way VBench's NORMALIZE_DIC does):
  quality   sharpness            edge energy vs the renderer's own video of the prompt:
                                 min(r, 1/r), r = mean|grad x| / mean|grad x_ref| (position-free)
            temporal_smoothness  1 - mean|x[t+1] - 2 x[t] + x[t-1]| (pixels in [0, 1]); flicker
            subject_consistency  per prompt object: 1 - mean_t |area_t - median| / median (0 if absent)
            fd_score             1 - min(FD / FD_MAX, 1), FD = Fréchet distance to real toy videos over
                                 the fixed feature map of features.py (set-level, not per video)
            dynamic_degree       share of prompt objects whose detected speed class matches (weight 0.5)
  semantic  colour, shape, size  share of prompt objects detected with that attribute right
            count                share of videos with exactly the prompt's number of objects
            direction            share of prompt objects moving in the prompt's direction
quality = weighted mean of its normalised dimensions, semantic likewise, and
total = (QUALITY_WEIGHT * quality + SEMANTIC_WEIGHT * semantic) / (QUALITY_WEIGHT + SEMANTIC_WEIGHT)
with VBench's 4 : 1. Also reported: speed_error (mean |speed - prompt speed| / prompt speed) and FD.
"""

from __future__ import annotations

import torch

from oneforcing.errors import UserError
from oneforcing.registry import METRICS
from oneforcing.toy.bench.detectors import PALETTE_NAMES, classify_motion, classify_shape, classify_size, detect
from oneforcing.toy.bench.features import frechet_to_toy_world
from oneforcing.toy.world import SPEEDS, parse_prompt, render_scenes, scale_factors, scene_from_prompt

# name: (group, weight, min, max). Minima are what pure noise scores (smoothness) or 0.
DIMENSIONS: dict[str, tuple[str, float, float, float]] = {
    "sharpness": ("quality", 1.0, 0.0, 1.0),
    "temporal_smoothness": ("quality", 1.0, 0.42, 1.0),
    "subject_consistency": ("quality", 1.0, 0.0, 1.0),
    "fd_score": ("quality", 1.0, 0.0, 1.0),
    "dynamic_degree": ("quality", 0.5, 0.0, 1.0),
    "colour": ("semantic", 1.0, 0.0, 1.0),
    "shape": ("semantic", 1.0, 0.0, 1.0),
    "size": ("semantic", 1.0, 0.0, 1.0),
    "count": ("semantic", 1.0, 0.0, 1.0),
    "direction": ("semantic", 1.0, 0.0, 1.0),
}
QUALITY_WEIGHT, SEMANTIC_WEIGHT = 4.0, 1.0
FD_MAX = 1.0  # real 256 videos ~0.02, frozen ~0.36, 3x3 blur ~0.15, noise ~26 (docs/toy_world.md)
COLUMNS = ("total", "quality", "semantic", "sharpness", "temporal_smoothness", "subject_consistency", "fd",
           "dynamic_degree", "speed_error", "colour", "shape", "size", "count", "direction")


def edge_energy(video: torch.Tensor) -> torch.Tensor:
    """[N, T, 3, H, W] in [-1, 1] -> [N] mean absolute spatial gradient (pixels in [0, 1])."""
    x = (video.float() + 1) / 2
    gx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=(1, 2, 3, 4))
    gy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(1, 2, 3, 4))
    return gx + gy


def temporal_smoothness(video: torch.Tensor) -> torch.Tensor:
    x = (video.float() + 1) / 2
    if x.shape[1] < 3:
        return torch.ones(x.shape[0])
    d2 = (x[:, 2:] - 2 * x[:, 1:-1] + x[:, :-2]).abs().mean(dim=(1, 2, 3, 4))
    return (1 - d2).clamp(0, 1)


def score_videos(videos: torch.Tensor, prompts: list[str]) -> list[dict]:
    """Per-video raw measurements (all but the set-level FD)."""
    if videos.dim() != 5 or videos.shape[2] != 3:
        raise UserError(f"toybench: videos must be [N, T, 3, H, W], got {tuple(videos.shape)}")
    if len(prompts) != videos.shape[0]:
        raise UserError(f"toybench: {videos.shape[0]} videos but {len(prompts)} prompts")
    n, frames, size = videos.shape[0], videos.shape[1], videos.shape[-1]
    parsed = [parse_prompt(p) for p in prompts]
    det = detect(videos)
    ref = torch.cat([edge_energy(render_scenes([scene_from_prompt(p, frames, size) for p in prompts[i:i + 64]]))
                     for i in range(0, n, 64)])
    ratio = edge_energy(videos) / ref.clamp_min(1e-6)
    sharp = torch.minimum(ratio, 1 / ratio.clamp_min(1e-6))
    smooth = temporal_smoothness(videos)
    _, speed_scale = scale_factors(frames, size)
    rows = []
    for i, truth in enumerate(parsed):
        objs = truth["objects"]
        acc = {k: 0.0 for k in ("colour", "shape", "size", "direction", "dynamic_degree", "subject_consistency")}
        speed_err = 0.0
        for o in objs:
            k = PALETTE_NAMES.index(o["colour"])
            nominal = SPEEDS[o["speed"]]
            if not det["present"][i, k]:
                speed_err += 1.0
                continue
            direction, speed_class, speed = classify_motion(det["velocity"][i, k].tolist(), frames, size)
            area = det["area"][i, k]
            med = area.median().clamp_min(1e-6)
            acc["colour"] += 1
            acc["shape"] += classify_shape(det["fill"][i, k].item(), det["skew"][i, k].item()) == o["shape"]
            acc["size"] += classify_size(det["extent"][i, k].item(), size) == o["size"]
            acc["direction"] += direction == o["direction"]
            acc["dynamic_degree"] += speed_class == o["speed"]
            acc["subject_consistency"] += float((1 - (area - med).abs().mean() / med).clamp(0, 1))
            speed_err += abs(speed - nominal) / nominal
        row = {k: v / len(objs) for k, v in acc.items()}
        row.update(count=float(int(det["present"][i].sum()) == len(objs)), speed_error=speed_err / len(objs),
                   sharpness=float(sharp[i]), temporal_smoothness=float(smooth[i]), prompt=prompts[i])
        rows.append(row)
    return rows


def summarise(rows: list[dict], fd: float | None) -> dict:
    raw = {k: sum(r[k] for r in rows) / len(rows) for k in DIMENSIONS if k != "fd_score"}
    raw["speed_error"] = sum(r["speed_error"] for r in rows) / len(rows)
    if fd is not None:
        raw["fd"] = fd
        raw["fd_score"] = 1 - min(fd / FD_MAX, 1.0)
    normalized, groups = {}, {"quality": [0.0, 0.0], "semantic": [0.0, 0.0]}
    for name, (group, weight, lo, hi) in DIMENSIONS.items():
        if name not in raw:
            continue  # FD off: quality averages the other dimensions
        normalized[name] = min(max((raw[name] - lo) / (hi - lo), 0.0), 1.0)
        groups[group][0] += weight * normalized[name]
        groups[group][1] += weight
    quality = groups["quality"][0] / groups["quality"][1]
    semantic = groups["semantic"][0] / groups["semantic"][1]
    total = (QUALITY_WEIGHT * quality + SEMANTIC_WEIGHT * semantic) / (QUALITY_WEIGHT + SEMANTIC_WEIGHT)
    return {"num_videos": len(rows), "total": total, "quality": quality, "semantic": semantic,
            "raw": raw, "normalized": normalized}


@METRICS.register("toybench")
class ToyBench:
    """`ToyBench()(videos [N, T, 3, H, W] in [-1, 1], prompts) -> dict` (see module doc).
    `fd=False` skips the Fréchet distance (it needs a few hundred videos to mean anything);
    `max_objects` / `start_positions` name the world's tier the FD reference videos come from."""

    def __init__(self, fd: bool = True, per_video: bool = False, max_objects: int = 2,
                 start_positions: int | None = None):
        self.fd, self.per_video = fd, per_video
        self.tier = {"max_objects": max_objects, "start_positions": start_positions}

    def __call__(self, videos: torch.Tensor, prompts: list[str]) -> dict:
        rows = score_videos(videos, prompts)
        result = summarise(rows, frechet_to_toy_world(videos, **self.tier) if self.fd else None)
        if self.per_video:
            result["per_video"] = rows
        return result


def markdown_header() -> str:
    cols = ("name", "weights", "videos", *COLUMNS)
    return "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"


def markdown_row(result: dict, name: str) -> str:
    cells = [name, str(result.get("weights", "-")), str(result["num_videos"])]
    for col in COLUMNS:
        value = result.get(col, result["raw"].get(col))
        if value is None:
            cells.append("-")
        elif col in ("fd", "speed_error"):
            cells.append(f"{value:.3f}")
        else:
            cells.append(f"{100 * value:.2f}")
    return "| " + " | ".join(cells) + " |\n"
