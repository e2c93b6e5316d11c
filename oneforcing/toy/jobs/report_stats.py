"""Small-sample statistics for seed reports: t-intervals, paired and one-sample t-tests, the
equivalence test (TOST), and Holm's correction over a family of tests with matching intervals.

A report over a handful of training seeds cannot assume normal tails: everything uses Student's t
with n - 1 degrees of freedom (n = 5 seeds: a 95 % half-width is 2.78 standard errors, not 1.96).
Comparisons between two methods are paired by seed (seed k trains both runs and draws both
evaluations' noise), so a test is a one-sample test of the per-seed differences.

A family of m tests is corrected with Holm's step-down procedure at level alpha. Each test's
interval is drawn at the per-test level that matches its Holm decision: the test of rank i (by
p-value) gets alpha / (m - i + 1) if Holm rejects it, and every test from the first one Holm keeps
onwards gets alpha / (m - k + 1), k that first rank. So an interval excludes the null exactly when
Holm rejects (the t-test and its t-interval are dual), and no interval is narrower than Holm's
own threshold for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

KINDS = ("difference", "equivalence", "greater", "less")


# --- Student's t distribution (no scipy in the install) ----------------------------------------
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side; use symmetry otherwise
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: int) -> float:
    """P(T > t) for Student's t with `df` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def t_quantile(q: float, df: int) -> float:
    """The q-quantile of Student's t (0 < q < 1), by bisection on the survival function."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile level must be in (0, 1), got {q}")
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_sf(hi, df) > 1.0 - q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_sf(mid, df) > 1.0 - q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def t975(df: int) -> float:
    """t_{0.975} with `df` degrees of freedom."""
    return t_quantile(0.975, df)


# --- descriptive intervals ------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """Mean of `n` values with a CI half-width (None for a single value: no interval)."""
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


def _mean_se(values: list[float]) -> tuple[float, float | None]:
    n = len(values)
    if n == 0:
        raise ValueError("need at least one value")
    mean = sum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def mean_ci(values: list[float], level: float = 0.95) -> Estimate:
    """Mean and two-sided t-interval of `values` (at least one) at `level` (descriptive, no test)."""
    mean, se = _mean_se(values)
    if se is None:
        return Estimate(mean, None, 1)
    return Estimate(mean, t_quantile(0.5 + level / 2, len(values) - 1) * se, len(values))


def paired(a: list[float], b: list[float]) -> list[float]:
    """The per-seed differences a - b (a[k] and b[k] share seed k)."""
    if len(a) != len(b):
        raise ValueError(f"paired comparison of {len(a)} against {len(b)} values")
    return [x - y for x, y in zip(a, b)]


# --- tests ------------------------------------------------------------------------------------
@dataclass
class Hypothesis:
    """One hypothesis test on `values` (per-seed differences, or per-unit values):
    difference   H0: mean = 0 (two-sided); rejected -> the sign of the mean is established
    equivalence  TOST, H0: |mean| >= bound; rejected -> |mean| < bound (equivalent at margin bound)
    greater      H0: mean <= bound (one-sided); rejected -> mean > bound
    less         H0: mean >= bound (one-sided); rejected -> mean < bound
    `p` is None with fewer than two values (no test). Holm fills `adjusted`, `rejected`, `level`."""
    name: str
    kind: str
    values: list[float]
    bound: float = 0.0
    unit: str = "seeds"
    p: float | None = field(init=False)
    adjusted: float | None = None
    rejected: bool = False
    level: float | None = None          # the per-test alpha its interval is drawn at

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"test kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "equivalence" and self.bound <= 0:
            raise ValueError(f"an equivalence margin must be > 0, got {self.bound}")
        self.mean, self.se = _mean_se(list(self.values))
        self.p = None if self.se is None else self._p_value()

    @property
    def n(self) -> int:
        return len(self.values)

    def _sf(self, x: float) -> float:
        """P(mean estimate > mean + x) under the t model; a zero spread makes it a step."""
        if self.se == 0:
            return 0.0 if x > 0 else (0.5 if x == 0 else 1.0)
        return t_sf(x / self.se, self.n - 1)

    def _p_value(self) -> float:
        m, b = self.mean, self.bound
        if self.kind == "difference":
            return min(1.0, 2.0 * self._sf(abs(m)))
        if self.kind == "greater":
            return self._sf(m - b)
        if self.kind == "less":
            return self._sf(b - m)
        return max(self._sf(m + b), self._sf(b - m))    # TOST: both one-sided tests must reject

    def interval(self) -> tuple[float, float] | None:
        """The interval at `level` that matches the decision: two-sided (1 - level) for a
        difference, (1 - 2 level) for TOST, one-sided (1 - level) bounds for greater / less."""
        if self.level is None or self.se is None:
            return None
        q = {"difference": 1 - self.level / 2}.get(self.kind, 1 - self.level)
        w = t_quantile(q, self.n - 1) * self.se
        if self.kind == "greater":
            return self.mean - w, math.inf
        if self.kind == "less":
            return -math.inf, self.mean + w
        return self.mean - w, self.mean + w

    def outcome(self) -> str:
        """A short mark: what the corrected test established, or 'n.s.' / 'no test'."""
        if self.p is None:
            return f"no test (n = {self.n})"
        if not self.rejected:
            return "n.s."
        return {"difference": ">" if self.mean > 0 else "<", "equivalence": f"≈ within ±{self.bound:g}",
                "greater": f"> {self.bound:g}", "less": f"< {self.bound:g}"}[self.kind]

    def format(self, digits: int = 2) -> str:
        iv = self.interval()
        if iv is None:
            return f"{self.name}: {self.mean:.{digits}f} [{self.outcome()}]"
        lo, hi = ("−∞" if math.isinf(v) and v < 0 else "∞" if math.isinf(v) else f"{v:.{digits}f}" for v in iv)
        conf = {"difference": 1 - self.level, "equivalence": 1 - 2 * self.level}.get(self.kind, 1 - self.level)
        return (f"{self.name}: {self.mean:.{digits}f}, {100 * conf:.2f} % interval [{lo}, {hi}] over "
                f"{self.n} {self.unit}, Holm-adjusted p = {self.adjusted:.3g} [{self.outcome()}]")


def holm(pvalues: list[float], alpha: float) -> tuple[list[float], list[bool], list[float]]:
    """Holm's step-down correction: (adjusted p-values, rejections, per-test interval levels),
    each in the input order. Adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, rejected, levels = [1.0] * m, [False] * m, [alpha] * m
    running, stopped_at = 0.0, None
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
        if stopped_at is None and pvalues[i] > alpha / (m - rank):
            stopped_at = rank          # the first hypothesis Holm keeps: it and all after are kept
        rejected[i] = stopped_at is None
        levels[i] = alpha / (m - (rank if stopped_at is None else stopped_at))
    return adjusted, rejected, levels


def correct(tests: list[Hypothesis], alpha: float) -> list[Hypothesis]:
    """Holm over the tests that have a p-value (fewer than two values: no test, not counted);
    fills each test's adjusted p, rejection and interval level in place."""
    testable = [t for t in tests if t.p is not None]
    adjusted, rejected, levels = holm([t.p for t in testable], alpha)
    for t, a, r, lv in zip(testable, adjusted, rejected, levels):
        t.adjusted, t.rejected, t.level = a, r, lv
    return tests
