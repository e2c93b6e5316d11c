"""Which generator weights a trained export is sampled with: one convention for every job.

A training export holds generator/ (the raw weights) and, with an EMA, ema/. The recipe declares
which its method's official inference uses (`export.inference_weights`: One-Forcing samples the
raw generator; Self Forcing and Causal Forcing pass --use_ema), the export records it in
export.json, and every job that loads a generator takes `weights: auto | raw | ema` (auto = what
export.json says; a folder without it is sampled raw).
"""

from __future__ import annotations

import json
from pathlib import Path

from oneforcing.errors import UserError

INFERENCE_WEIGHTS = ("raw", "ema")
WEIGHT_CHOICES = ("auto", *INFERENCE_WEIGHTS)
EXPORT_MANIFEST = "export.json"
SUBFOLDER = {"raw": "generator", "ema": "ema"}
WEIGHTS_RENAMED = "it is now 'weights: raw | ema | auto' (auto: the export's declared inference weights)"


def check_weights(weights: str, key: str = "weights") -> str:
    if weights not in WEIGHT_CHOICES:
        raise UserError(f"must be one of {', '.join(WEIGHT_CHOICES)}, got {weights!r}", key=key)
    return weights


def declared_weights(root: Path) -> str | None:
    """The inference weights an export declares in its export.json, or None (no manifest)."""
    path = Path(root) / EXPORT_MANIFEST
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))["inference_weights"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{path}: not a readable export manifest (needs 'inference_weights')") from None
    if value not in INFERENCE_WEIGHTS:
        raise UserError(f"{path}: 'inference_weights' must be one of {', '.join(INFERENCE_WEIGHTS)}, got {value!r}")
    return value


def resolve_weights(root: Path, weights: str) -> str:
    """`weights` with auto replaced by the export's declaration (raw without one)."""
    check_weights(weights)
    return (declared_weights(root) or "raw") if weights == "auto" else weights


LABELS = {"generator": "raw", "ema": "EMA", "diffusers": "folder"}


def weights_label(folder: Path) -> str:
    """What a ToyBench row says it scored: raw, EMA, or folder (a plain diffusers folder)."""
    return LABELS[weights_kind(folder)]


def weights_kind(folder: Path) -> str:
    """'ema', 'generator' (raw) or 'diffusers' (a plain transformer folder: its own weights)."""
    name = Path(folder).name
    return name if name in ("ema", "generator") else "diffusers"
