"""Small-sample statistics for seed reports: mean and 95 % CI over seeds, paired comparisons.

A report over a handful of training seeds cannot assume normal tails: the CI uses Student's t
with n - 1 degrees of freedom (n = 3 seeds: the half-width is 4.30 standard errors, not 1.96).
Comparisons between two methods are paired by seed (seed k trains both runs and draws both
evaluations' noise), so the CI is of the per-seed difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Two-sided 95 % quantiles of Student's t, t_{0.975, df} for df = 1..30 (standard table values).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """t_{0.975} with `df` degrees of freedom (1.96 beyond the table)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


@dataclass(frozen=True)
class Estimate:
    """Mean of `n` values with its 95 % CI half-width (None for a single value: no interval)."""
    mean: float
    half_width: float | None
    n: int

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    def format(self, scale: float = 1.0, digits: int = 2) -> str:
        if self.half_width is None:
            return f"{scale * self.mean:.{digits}f}"
        return f"{scale * self.mean:.{digits}f} ± {scale * self.half_width:.{digits}f}"


def mean_ci(values: list[float]) -> Estimate:
    """Mean and 95 % t-interval of `values` (at least one)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = sum(values) / n
    if n == 1:
        return Estimate(mean, None, 1)
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return Estimate(mean, t975(n - 1) * math.sqrt(var / n), n)


def paired(a: list[float], b: list[float]) -> Estimate:
    """The mean per-seed difference a - b with its 95 % CI (a[k] and b[k] share seed k)."""
    if len(a) != len(b):
        raise ValueError(f"paired comparison of {len(a)} against {len(b)} values")
    return mean_ci([x - y for x, y in zip(a, b)])


def direction(diff: Estimate) -> str:
    """'>' when the CI of a - b lies above 0, '<' when below, '≈' when it contains 0, and '?'
    without an interval (one seed: no verdict can be drawn)."""
    if diff.half_width is None:
        return "?"
    if diff.low > 0:
        return ">"
    if diff.high < 0:
        return "<"
    return "≈"
