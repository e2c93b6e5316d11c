"""The paper's claims (a)-(g) and two controls, (h) the GAN term and (i) the init's context, as tests over
seeds with Holm-corrected verdicts.

Every test of every claim is one family, corrected with Holm at the report's `alpha`
(oneforcing/toy/jobs/report_stats.py); a claim's verdict reads only the corrected decisions. The
words are chosen by the functions below, and only these: "supported" is written where the corrected
tests the claim needs reject in the claimed direction, "equivalent at margin ±m" only where the
equivalence test (TOST on the paired per-seed differences, margin from the recipe) rejects, and
everything else is "not resolved", "partly" (some parts established, none contradicted),
"contradicted" (a test rejects in the opposite direction) or "no verdict" (one seed: no test).
"""

from __future__ import annotations

import math
from pathlib import Path

from oneforcing.toy.jobs.report_stats import Hypothesis, correct, mean_ci, paired

OF, ASD, SF1, SF4 = "one_forcing_framewise", "asd_1step", "self_forcing_1step", "self_forcing_4step"
OFC, FKL, CAUSVID, NO_GAN = ("one_forcing_chunkwise", "one_forcing_fkl", "one_forcing_framewise_causvid_init",
                             "one_forcing_framewise_no_gan")
CAUSAL_PAIRS = "one_forcing_framewise_causal_pairs_init"   # (i): the CausVid-style init's recipe, clean context
TOTAL, DYNAMIC = ("total",), ("raw", "dynamic_degree")
GAP_ZERO, GAP_ONE = 0.1, 1.0      # claim (e): "≈ 0" is a mean gap below 0.1; One-Forcing's must exceed 1
COLLAPSE = 0.5                    # claim (d): "collapses" is a dynamic degree at most half the baseline's
CURVATURE_MASS = 0.5              # claim (f): "concentrates" is more than half the curvature mass at t >= high_t

CLAIM_TEXT = {
    "a": "One-Forcing 1-step framewise > ASD 1-step > Self Forcing 1-step",
    "b": "One-Forcing 1-step ≈ Self Forcing 4-step",
    "c": "framewise ≥ chunkwise, at fewer iterations",
    "d": "the forward-KL surrogate collapses dynamic degree",
    "e": "ASD's discriminator logit gap ≈ 0 while One-Forcing's stays > 1",
    "f": "the teacher ODE's curvature concentrates at high noise (t ≥ 0.9)",
    "g": "the causal ODE init beats a CausVid-style ODE init (init ablation)",
    "h": "control: One-Forcing's GAN term matters (framewise vs the same recipe with GAN weights 0)",
    "i": "control: the init's context alone matters (the CausVid-style init's recipe with a clean context vs "
         "its noisy one: same pairs, loss and steps)",
}
PAPER = {  # the One-Forcing paper's Table 1, Table 3, Figure 4, Eq. 2 (its code: docs/fidelity.md)
    "a": "One-Forcing framewise 83.76 > ASD 79.12 > Self Forcing 77.18 (VBench total)",
    "b": "One-Forcing framewise 83.76 vs Self Forcing 4-step 83.46",
    "c": "framewise 83.76 > chunkwise 81.60",
    "d": "forward-KL surrogate (lambda 1): total 74.83, dynamic degree 1.30",
    "e": "logit gap: One-Forcing mean 1.53 (sd 1.20); ASD ~0.001",
    "f": "the Wan teacher puts 92.5 % of its curvature mass at t ≥ 0.9",
    "g": "Table 3 compares a causal consistency-distillation (CD) init, not a CausVid-style one: framewise "
         "with CD init 82.36, dynamic degree 23.61 vs 52.76 with the causal ODE init. The toy tier has no "
         "causal CD init (it trains no full-range AR-diffusion model to distil), so this row tests the init it "
         "has: the causal ODE init against a CausVid-style (noisy-context) ODE init",
    "h": "no such row; the paper argues the real-data GAN is what separates One-Forcing from ASD",
    "i": "no such row; it separates the context (the paper's argument for a causal init) from the other "
         "differences between the two inits of (g) (kept states vs continuous t, x0 vs velocity error, pairs vs data)",
}


# The words of each claim's parts: (claimed, opposite) per test, or for a difference-or-equivalence
# claim (a better, b better, a ≈ b, what the paper claims: ">" or "≈").
PARTS = {
    "a": [("One-Forcing > ASD", "One-Forcing < ASD"), ("ASD > Self Forcing", "ASD < Self Forcing")],
    "e": [(f"ASD's gap < {GAP_ZERO:g}", ""), (f"One-Forcing's gap > {GAP_ONE:g}", "")],
    "f": [(f"more than {100 * CURVATURE_MASS:.0f} % of the mass at high noise", ""), ("high/mid ratio > 1", "")],
    "g": [("the causal ODE init gives a higher total", "the CausVid-style init gives a higher total"),
          ("the causal ODE init gives a higher dynamic degree",
           "the CausVid-style init gives a higher dynamic degree")],
}
TWO_WAY = {
    "b": ("One-Forcing 1-step is better than Self Forcing 4-step", "Self Forcing 4-step is better",
          "One-Forcing 1-step ≈ Self Forcing 4-step", "≈"),
    "c": ("framewise is better", "chunkwise is better", "framewise no worse than chunkwise beyond the margin", ">"),
    "h": ("the GAN term helps", "the GAN term hurts", "the GAN term makes no difference beyond the margin", ">"),
    "i": ("the clean context helps", "the noisy context helps", "the context makes no difference beyond the margin",
          ">"),
}


# --- the wording chooser: corrected tests in, words out -----------------------------------------
def _holds(t: Hypothesis) -> bool:
    """The test established its claimed direction (difference: mean > 0)."""
    return t.rejected and (t.kind != "difference" or t.mean > 0)


def _reversed(t: Hypothesis) -> bool:
    return t.rejected and t.kind == "difference" and t.mean < 0


def no_test(tests: list[Hypothesis]) -> str | None:
    if any(t.p is None for t in tests):
        n = min(t.n for t in tests)
        return f"no verdict ({n} {tests[0].unit[:-1] if n == 1 else tests[0].unit}: no test)"
    return None


def all_of(tests: list[Hypothesis], parts: list[tuple[str, str]]) -> str:
    """A claim made of parts that must all hold; parts[i] = (claimed, opposite) for tests[i]."""
    missing = no_test(tests)
    if missing:
        return missing
    reversed_ = [opp for t, (_, opp) in zip(tests, parts) if _reversed(t)]
    held = [claim for t, (claim, _) in zip(tests, parts) if _holds(t)]
    open_ = [claim for t, (claim, _) in zip(tests, parts) if not t.rejected]
    if reversed_:
        return "contradicted: " + "; ".join(reversed_)
    if len(held) == len(tests):
        return "supported: " + "; ".join(held)
    if held:
        return f"partly: {'; '.join(held)} (established); {'; '.join(open_)} (not resolved)"
    return "not resolved: no part is established at this number of seeds"


def difference_or_equivalence(diff: Hypothesis, tost: Hypothesis, better: str, worse: str, same: str,
                              claimed: str) -> str:
    """A claim that a − b is positive (claimed '>') or near zero (claimed '≈'), from the difference
    test and TOST at its margin. Only TOST rejecting gives 'equivalent at margin'."""
    missing = no_test([diff, tost])
    if missing:
        return missing
    margin = f"equivalent at margin ±{tost.bound:g}"
    if claimed == "≈" and tost.rejected:
        return f"supported: {margin} ({same})"
    if _holds(diff):
        return (f"supported: {better}" if claimed == ">" else f"exceeded: {better}") + \
            (f"; also {margin}" if tost.rejected else "")
    if _reversed(diff):
        return f"contradicted: {worse}" + (f"; also {margin}" if tost.rejected else "")
    if tost.rejected:
        return f"{margin} ({same}); the claimed advantage is not established"
    return f"not resolved: neither a difference nor equivalence at margin ±{tost.bound:g} is established"


def collapse(dynamic: Hypothesis, ratio: float) -> str:
    """Claim (d): the dynamic-degree difference must be negative, and the ratio at most COLLAPSE."""
    missing = no_test([dynamic])
    if missing:
        return missing
    share = f"{100 * ratio:.0f} % of chunkwise" if math.isfinite(ratio) else "chunkwise dynamic degree is 0"
    if _reversed(dynamic):
        return ("supported: dynamic degree collapses" if ratio <= COLLAPSE else
                "partly: dynamic degree is lower, but not collapsed") + f" ({share})"
    if _holds(dynamic):
        return f"contradicted: the surrogate moves more ({share})"
    return f"not resolved: no dynamic-degree difference is established ({share})"


# --- the claims -------------------------------------------------------------------------------
def metric(result: dict, path: tuple[str, ...]) -> float:
    for part in path:
        result = result[part]
    return float(result)


def late_mean(curve: tuple[list[int], list[float]]) -> float:
    """Mean over the second half of training (the gap once the discriminator has settled)."""
    steps, values = curve
    half = steps[-1] / 2
    late = [v for s, v in zip(steps, values) if s >= half] or values
    return sum(late) / len(late)


class Claims:
    """Build every claim's tests, correct them as one family, then word each verdict.
    results: {name: {seed: toybench result}}; gaps: {name: {seed: (steps, logit gaps)}};
    curvature: the curvature job's result (or None); margin in ToyBench points."""

    def __init__(self, results: dict, gaps: dict, steps: dict[str, int], labels: dict[str, str], *,
                 margin: float, alpha: float, curvature: dict | None = None):
        self.results, self.gaps, self.steps, self.labels = results, gaps, steps, labels
        self.margin, self.alpha, self.curvature = margin, alpha, curvature
        self.tests: dict[str, list[Hypothesis]] = {}
        self.not_run: dict[str, str] = {}          # letter -> why the claim has no tests
        for letter in CLAIM_TEXT:
            made = getattr(self, f"_tests_{letter}")()
            if isinstance(made, str):
                self.not_run[letter], made = made, []
            self.tests[letter] = made
        self.family = [t for letter in CLAIM_TEXT for t in self.tests[letter]]
        correct(self.family, alpha)

    # --- inputs
    def values(self, name: str, path=TOTAL) -> dict[int, float]:
        return {s: 100 * metric(r, path) for s, r in self.results.get(name, {}).items()}

    def diff_test(self, a: str, b: str, kind: str = "difference", path=TOTAL, what="total") -> Hypothesis:
        va, vb = self.values(a, path), self.values(b, path)
        seeds = sorted(set(va) & set(vb))
        name = f"{self.labels[a]} − {self.labels[b]} ({what}, points)"
        return Hypothesis(name + (f", TOST ±{self.margin:g}" if kind == "equivalence" else ""), kind,
                    paired([va[s] for s in seeds], [vb[s] for s in seeds]),
                    bound=self.margin if kind == "equivalence" else 0.0)

    def _missing(self, *names) -> str | None:
        gone = [n for n in names if n not in self.results]
        return f"not run (the report has no {', '.join(gone)})" if gone else None

    # --- tests per claim (a list, or a 'not run' sentence)
    def _tests_a(self):
        return self._missing(OF, ASD, SF1) or [self.diff_test(OF, ASD), self.diff_test(ASD, SF1)]

    def _tests_b(self):
        return self._missing(OF, SF4) or [self.diff_test(OF, SF4), self.diff_test(OF, SF4, "equivalence")]

    def _tests_c(self):
        return self._missing(OF, OFC) or [self.diff_test(OF, OFC), self.diff_test(OF, OFC, "equivalence")]

    def _tests_d(self):
        return self._missing(FKL, OFC) or [self.diff_test(FKL, OFC, path=DYNAMIC, what="dynamic degree"),
                                           self.diff_test(FKL, OFC)]

    def _tests_e(self):
        if OF not in self.gaps or ASD not in self.gaps:
            return "not run (no logit gap logged for One-Forcing framewise or ASD)"
        of = [late_mean(c) for c in self.gaps[OF].values()]
        asd = [late_mean(c) for c in self.gaps[ASD].values()]
        return [Hypothesis(f"ASD late logit gap (vs {GAP_ZERO:g})", "less", asd, bound=GAP_ZERO),
                Hypothesis(f"One-Forcing framewise late logit gap (vs {GAP_ONE:g})", "greater", of, bound=GAP_ONE)]

    def _tests_f(self):
        if self.curvature is None:
            return "not run (the report has no curvature task)"
        per = self.curvature["variants"]["latent"]["per_prompt"]
        high = self.curvature["high_t"]
        return [Hypothesis(f"curvature mass at t ≥ {high:g} (vs {CURVATURE_MASS:g})", "greater", per["mass_high"],
                     bound=CURVATURE_MASS, unit="prompts"),
                Hypothesis("log high/mid curvature ratio (vs 0)", "greater",
                     [math.log(max(r, 1e-30)) for r in per["ratio"]], unit="prompts")]

    def _tests_g(self):
        return self._missing(OF, CAUSVID) or [self.diff_test(OF, CAUSVID),
                                              self.diff_test(OF, CAUSVID, path=DYNAMIC, what="dynamic degree")]

    def _tests_h(self):
        return self._missing(OF, NO_GAN) or [self.diff_test(OF, NO_GAN), self.diff_test(OF, NO_GAN, "equivalence")]

    def _tests_i(self):
        return self._missing(CAUSAL_PAIRS, CAUSVID) or [self.diff_test(CAUSAL_PAIRS, CAUSVID),
                                                        self.diff_test(CAUSAL_PAIRS, CAUSVID, "equivalence")]

    # --- verdicts
    def verdict(self, letter: str) -> tuple[str, list[str]]:
        """(verdict, evidence lines) of one claim."""
        tests = self.tests[letter]
        if letter in self.not_run:
            return self.not_run[letter], []
        evidence = [t.format(digits=3 if letter in "ef" else 2) for t in tests]   # gaps and masses are small
        it = f" ({self.steps.get(OF)} vs {self.steps.get(OFC)} iterations)"
        if letter in PARTS:
            words = all_of(tests, PARTS[letter])
        elif letter == "d":
            words = collapse(tests[0], self._dynamic_ratio())
        else:
            better, worse, same, claimed = TWO_WAY[letter]
            if letter == "c":
                better, worse, same = better + it, worse + it, same + it
            words = difference_or_equivalence(*tests, better, worse, same, claimed)
        if letter == "f":
            evidence += self._curvature_evidence()
        if letter == "e":
            evidence.append(self._gap_means())
        return words, evidence

    def _dynamic_ratio(self) -> float:
        fkl = mean_ci(list(self.values(FKL, DYNAMIC).values())).mean
        base = mean_ci(list(self.values(OFC, DYNAMIC).values())).mean
        return fkl / base if base else math.inf

    def _gap_means(self) -> str:
        of = [late_mean(c) for c in self.gaps[OF].values()]
        asd = [late_mean(c) for c in self.gaps[ASD].values()]
        return (f"mean logit gap over the second half of training (no interval): One-Forcing framewise "
                f"{sum(of) / len(of):.2f}, ASD {sum(asd) / len(asd):.3f}")

    def _curvature_evidence(self) -> list[str]:
        c = self.curvature
        lines = []
        for name, v in c["variants"].items():
            lines.append(f"{name} (no interval): mass at t ≥ {c['high_t']:g} {100 * v['mass_high']['mean']:.1f} %, "
                         f"dt-weighted {100 * v['mass_high_dt']['mean']:.1f} %, high/mid ratio "
                         f"{v['ratio']['mean']:.1f} (mid band {c['mid_band']}), {c['num_prompts']} prompts, "
                         f"teacher {Path(c['teacher']).name}")
        return lines
