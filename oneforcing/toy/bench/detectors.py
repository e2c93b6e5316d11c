"""Analytic detectors for toy-world videos: which palette objects are there, their shape, size,
and motion. They read pixels only (no model), so ToyBench's ground truth is exact.

Per video (batched): the background is the median colour; a pixel belongs to palette colour c
when it is within COLOUR_TOL of c, farther than COLOUR_TOL from the background, and at least
4 of its 3x3 neighbourhood agree (which rejects the isolated hits of noise). Around each colour's
core (dilated by one pixel, to take in the anti-aliased rim) a soft coverage is the projection of
(pixel - background) on (colour - background). From it, per frame: area, width and height
(the sums of column / row maxima), centroid. Over frames: a triangle (apex up) from its mass
sitting below the middle of its rows (skew ~1/6 of its height, 0 for the symmetric shapes), circle
vs square from the fill ratio area / (width * height) (0.785 vs 1), size from the extent
max(width, height), velocity from a least-squares line through the centroids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from oneforcing.toy.world import COLOURS, DIRECTIONS, REF_SIZE, SIZES, SPEEDS, scale_factors

PALETTE_NAMES = list(COLOURS)
PALETTE = torch.tensor([COLOURS[c] for c in PALETTE_NAMES])  # [K, 3] in [0, 1]
COLOUR_TOL = 0.3
MIN_CORE_PIXELS = 3        # median core pixels over frames for an object to be present
SKEW_THRESHOLD = 0.05     # triangle (~1/6; >= 0.08 as rendered) vs symmetric shapes (|skew| < 0.005)
FILL_THRESHOLD = 0.9      # circle (pi/4) | square (1)
STILL_FRACTION = 0.25      # slower than this share of the slow speed: not moving


def _median_bg(x: torch.Tensor) -> torch.Tensor:
    """x [N, T, 3, H, W] in [0, 1] -> background colour [N, 3]."""
    return x.permute(0, 2, 1, 3, 4).flatten(2).median(dim=2).values


@torch.no_grad()
def detect(video: torch.Tensor, chunk: int = 32) -> dict:
    """Chunked `_detect` (bounded memory); same output."""
    parts = [_detect(video[i:i + chunk]) for i in range(0, video.shape[0], chunk)]
    out = {k: torch.cat([p[k] for p in parts]) if torch.is_tensor(parts[0][k]) else parts[0][k] for k in parts[0]}
    return out


def _detect(video: torch.Tensor) -> dict:
    """video [N, T, 3, H, W] in [-1, 1] -> per (video, palette colour) measurements, all [N, K] or
    [N, K, T]: present, fill, extent, velocity [N, K, 2], area [N, K, T], centroid [N, K, T, 2]."""
    x = ((video.float() + 1) / 2).clamp(0, 1)
    n, t, _, h, w = x.shape
    k = len(PALETTE_NAMES)
    bg = _median_bg(x)                                                      # [N, 3]
    diff = x - bg[:, None, :, None, None]                                   # [N, T, 3, H, W]
    fg = diff.norm(dim=2) > COLOUR_TOL                                      # [N, T, H, W]
    pal = PALETTE.to(x)
    # |x - p|^2 = |x|^2 - 2 x.p + |p|^2, without materialising [N, T, K, 3, H, W]
    dist2 = (x.pow(2).sum(2, keepdim=True) - 2 * torch.einsum("ntchw,kc->ntkhw", x, pal)
             + pal.pow(2).sum(1)[None, None, :, None, None])
    dist = dist2.clamp_min(0).sqrt()                                        # [N, T, K, H, W]
    nearest = dist.argmin(dim=2)
    near = dist.amin(dim=2) < COLOUR_TOL
    mask = F.one_hot(nearest, k).permute(0, 1, 4, 2, 3).bool() & (near & fg)[:, :, None]
    flat = mask.reshape(n * t * k, 1, h, w).float()
    agree = F.avg_pool2d(flat, 3, stride=1, padding=1, count_include_pad=True) * 9
    core = (flat > 0) & (agree >= 4 - 1e-4)
    region = F.max_pool2d(core.float(), 3, stride=1, padding=1).reshape(n, t, k, h, w)
    core_count = core.reshape(n, t, k, h, w).sum(dim=(3, 4))                 # [N, T, K]
    axis = pal[None] - bg[:, None]                                          # [N, K, 3]
    norm2 = axis.pow(2).sum(-1).clamp_min(1e-6)[:, None, :, None, None]
    proj = torch.einsum("ntchw,nkc->ntkhw", diff, axis) / norm2
    alpha = proj.clamp(0, 1) * region                                       # [N, T, K, H, W]
    area = alpha.sum(dim=(3, 4))
    rows = alpha.amax(dim=4)                                                # [N, T, K, H]
    width = alpha.amax(dim=3).sum(dim=3)
    height = rows.sum(dim=3)
    ys = torch.arange(h, dtype=x.dtype) + 0.5
    xs = torch.arange(w, dtype=x.dtype) + 0.5
    safe = area.clamp_min(1e-6)
    cx = (alpha.sum(dim=3) * xs).sum(dim=3) / safe
    cy = (alpha.sum(dim=4) * ys).sum(dim=3) / safe
    # Apex-up triangles carry their mass below the middle of their rows: centroid offset h/6.
    skew = ((cy - (rows * ys).sum(dim=3) / height.clamp_min(1e-6)) / height.clamp_min(1e-6)).median(dim=1).values
    valid = (core_count > 0).float()                                        # [N, T, K]
    present = core_count.float().median(dim=1).values >= MIN_CORE_PIXELS      # [N, K]
    fill = (area / (width * height).clamp_min(1e-6)).median(dim=1).values
    extent = torch.maximum(width, height).median(dim=1).values
    # Weighted least squares slope of centroid vs frame index, over the frames it was seen in.
    tt = torch.arange(t, dtype=x.dtype)[None, :, None]
    wsum = valid.sum(dim=1).clamp_min(1e-6)
    tm = (valid * tt).sum(dim=1) / wsum
    var = (valid * (tt - tm[:, None]) ** 2).sum(dim=1).clamp_min(1e-6)
    vel = []
    for c in (cx, cy):
        cm = (valid * c).sum(dim=1) / wsum
        vel.append((valid * (tt - tm[:, None]) * (c - cm[:, None])).sum(dim=1) / var)
    enough = valid.sum(dim=1) >= 2
    velocity = torch.stack(vel, dim=-1) * enough[..., None]                  # [N, K, 2]
    return {"present": present, "fill": fill, "skew": skew, "extent": extent, "velocity": velocity,
            "area": area.permute(0, 2, 1), "centroid": torch.stack([cx, cy], -1).permute(0, 2, 1, 3),
            "valid": valid.permute(0, 2, 1).bool(), "frames": t, "size": h}


def classify_shape(fill: float, skew: float) -> str:
    if skew > SKEW_THRESHOLD:
        return "triangle"
    return "circle" if fill < FILL_THRESHOLD else "square"


def classify_size(extent: float, size: int) -> str:
    length = size / REF_SIZE
    cut = (SIZES["small"] + SIZES["large"]) * length  # midway between the two diameters
    return "small" if extent < cut else "large"


def classify_motion(velocity: tuple[float, float], frames: int, size: int) -> tuple[str, str, float]:
    """(direction or 'still', speed class or 'still', speed in reference px/frame)."""
    _, speed_scale = scale_factors(frames, size)
    vx, vy = velocity
    speed = (vx * vx + vy * vy) ** 0.5 / speed_scale
    if speed < STILL_FRACTION * SPEEDS["slowly"]:
        return "still", "still", speed
    unit = (1 if vx > 0 else -1, 0) if abs(vx) >= abs(vy) else (0, 1 if vy > 0 else -1)
    direction = next(d for d, v in DIRECTIONS.items() if v == unit)
    cut = (SPEEDS["slowly"] + SPEEDS["quickly"]) / 2
    return direction, ("slowly" if speed < cut else "quickly"), speed
