"""The toy report's statistics and wording: Student's t, Holm's correction and its intervals, TOST,
one-sided tests, and the chooser of a claim's words (a non-result is never "supported")."""

import itertools
import math
import random

import pytest

from oneforcing.toy.jobs.report_claims import Claims, all_of, collapse, difference_or_equivalence, late_mean
from oneforcing.toy.jobs.report_stats import Hypothesis, correct, holm, mean_ci, paired, t975, t_quantile, t_sf


def test_student_t_matches_the_tables():
    for df, q in ((1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042)):
        assert t975(df) == pytest.approx(q, abs=1e-3)
    assert t_quantile(0.995, 4) == pytest.approx(4.604, abs=1e-3)
    assert t_quantile(0.95, 4) == pytest.approx(2.132, abs=1e-3)
    assert t_sf(2.0, 5) == pytest.approx(0.05097, abs=1e-5)       # two-sided p 0.1019
    assert t_sf(-2.0, 5) == pytest.approx(1 - 0.05097, abs=1e-5)
    assert t_sf(0.0, 3) == pytest.approx(0.5)
    assert t_sf(1.0, 1) == pytest.approx(0.25)                    # Cauchy: 1/2 - atan(1)/pi


def test_mean_ci_is_the_t_interval():
    est = mean_ci([1.0, 2.0, 3.0])          # sd 1, n 3: half-width t_{0.975,2} / sqrt(3)
    assert est.mean == pytest.approx(2.0)
    assert est.half_width == pytest.approx(4.303 / 3 ** 0.5, rel=1e-3)
    assert mean_ci([5.0]).half_width is None and mean_ci([5.0]).format() == "5.00"
    with pytest.raises(ValueError):
        mean_ci([])
    with pytest.raises(ValueError):
        paired([1.0], [1.0, 2.0])


def test_holm_textbook_example():
    # Holm (1979) as in the usual textbook example: four hypotheses, p = .01, .04, .03, .005, alpha .05.
    # Sorted .005, .01, .03, .04 against .05/4, .05/3, .05/2, .05/1: the first two are rejected, the
    # third is not (.03 > .025), so neither is the fourth although .04 < .05.
    adjusted, rejected, levels = holm([0.01, 0.04, 0.03, 0.005], 0.05)
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])   # R: p.adjust(p, "holm")
    assert rejected == [True, False, False, True]
    assert levels == pytest.approx([0.05 / 3, 0.05 / 2, 0.05 / 2, 0.05 / 4])
    # All rejected: each keeps its own step's level.
    adjusted, rejected, levels = holm([0.001, 0.02], 0.05)
    assert adjusted == pytest.approx([0.002, 0.02]) and rejected == [True, True]
    assert levels == pytest.approx([0.025, 0.05])
    with pytest.raises(ValueError):
        holm([0.1], 0.0)


def test_holm_intervals_exclude_the_null_exactly_where_holm_rejects():
    rng = random.Random(0)
    for _ in range(200):
        tests = []
        for i in range(rng.randint(1, 8)):
            kind = rng.choice(["difference", "equivalence", "greater", "less"])
            shift = rng.choice([0.0, 0.5, 2.0, -2.0])
            values = [shift + rng.gauss(0, 1) for _ in range(rng.randint(2, 8))]
            bound = 1.0 if kind == "equivalence" else rng.choice([0.0, 1.0])
            tests.append(Hypothesis(f"t{i}", kind, values, bound=bound))
        correct(tests, 0.05)
        for t in tests:
            lo, hi = t.interval()
            excludes = {"difference": lo > 0 or hi < 0, "equivalence": -t.bound < lo and hi < t.bound,
                        "greater": lo > t.bound, "less": hi < t.bound}[t.kind]
            # equality of a p-value and a level is measure-zero; the interval and the decision agree
            assert excludes == t.rejected, (t.kind, t.values, t.p, t.level)
            assert t.adjusted >= t.p - 1e-12


def test_tost_passes_within_the_margin_and_fails_outside():
    close = Hypothesis("close", "equivalence", [0.1, -0.2, 0.3, 0.0, 0.1], bound=1.0)
    # by hand: mean 0.06, se 0.0927; t = (0.06 + 1)/se = 11.4 and (1 - 0.06)/se = 10.1, df 4
    assert close.p == pytest.approx(t_sf((1 - 0.06) / close.se, 4), rel=1e-9)
    correct([close], 0.05)
    assert close.rejected and close.outcome() == "≈ within ±1"
    noisy = Hypothesis("noisy", "equivalence", [0.5, -3.0, 4.0, 1.0, -2.0], bound=1.0)   # mean 0.1, too noisy
    precise_but_off = Hypothesis("off", "equivalence", [3.0, 3.1, 2.9, 3.2, 3.0], bound=1.0)  # outside the margin
    correct([noisy, precise_but_off], 0.05)
    assert not noisy.rejected and not precise_but_off.rejected
    assert noisy.outcome() == "n.s." and precise_but_off.p > 0.99
    with pytest.raises(ValueError):
        Hypothesis("x", "equivalence", [1.0, 2.0], bound=0.0)


def test_one_sided_and_untestable():
    above = Hypothesis("gap", "greater", [1.5, 1.6, 1.4, 1.55, 1.45], bound=1.0)
    below = Hypothesis("gap", "less", [0.12, 0.1, 0.14, 0.11, 0.13], bound=0.1)     # above 0.1: not shown < 0.1
    single = Hypothesis("one seed", "difference", [2.0])
    correct([above, below, single], 0.05)
    assert above.rejected and not below.rejected
    assert single.p is None and single.adjusted is None and single.outcome() == "no test (n = 1)"
    assert "no test" in single.format()
    constant = Hypothesis("same every seed", "difference", [1.0, 1.0, 1.0])           # zero spread: a step
    assert constant.p == 0.0


# --- the wording chooser ----------------------------------------------------------------------
ESTABLISHING = ("supported", "consistent", "equivalent", "exceeded", "partly", "contradicted")
STATES = ("untestable", "kept", "positive", "negative")


def _state(kind: str, state: str, bound: float = 2.0) -> Hypothesis:
    t = Hypothesis("x", kind, [1.0] if state == "untestable" else [1.0, 2.0], bound=bound)
    t.mean = {"negative": -1.0}.get(state, 1.0)
    t.rejected = state in ("positive", "negative")
    return t


def _never_claims_a_non_result(words: str, tests: list[Hypothesis]):
    if not any(t.rejected for t in tests):
        assert not any(w in words for w in ESTABLISHING), words
    if "equivalent" in words:
        assert any(t.kind == "equivalence" and t.rejected for t in tests), words
    if words.startswith("supported"):
        assert any(t.rejected for t in tests)
    if any(t.p is None for t in tests):
        assert words.startswith("no verdict"), words


@pytest.mark.parametrize("n", [1, 2, 3])
def test_all_of_words_every_combination(n):
    for states in itertools.product(STATES, repeat=n):
        tests = [_state("difference", s) for s in states]
        words = all_of(tests, [(f"part {i}", f"part {i} reversed") for i in range(n)])
        _never_claims_a_non_result(words, tests)
        if "untestable" not in states:
            assert words.startswith("supported") == all(s == "positive" for s in states)
            assert words.startswith("contradicted") == ("negative" in states)


@pytest.mark.parametrize("claimed", [">", "≈"])
def test_difference_or_equivalence_words_every_combination(claimed):
    for d, e in itertools.product(STATES, ("untestable", "kept", "positive")):
        diff, tost = _state("difference", d), _state("equivalence", e)
        words = difference_or_equivalence(diff, tost, "a better", "b better", "a ≈ b", claimed)
        _never_claims_a_non_result(words, [diff, tost])
        if "untestable" not in (d, e):
            assert ("equivalent at margin ±2" in words) == (e == "positive")
            if claimed == "≈":
                assert words.startswith("supported") == (e == "positive")
            else:
                assert words.startswith("supported") == (d == "positive")


def test_collapse_words_every_state():
    for state, ratio in itertools.product(STATES, (0.1, 0.9, math.inf)):
        t = _state("difference", state)
        words = collapse(t, ratio)
        _never_claims_a_non_result(words, [t])
        assert words.startswith("supported") == (state == "negative" and ratio <= 0.5)


# --- claims from data -------------------------------------------------------------------------
def _result(total, dyn=0.3):
    return {"total": total, "raw": {"dynamic_degree": dyn}}


def _claims(totals: dict[str, list[float]], dyn: dict[str, list[float]] | None = None, gaps=None, margin=2.0):
    results = {n: {s: _result(v, (dyn or {}).get(n, [0.3] * len(vals))[s]) for s, v in enumerate(vals)}
               for n, vals in totals.items()}
    return Claims(results, gaps or {}, {n: 100 for n in totals}, {n: n for n in totals}, margin=margin, alpha=0.05)


NOISE = [0.001, -0.002, 0.0015, -0.001, 0.0005]    # fractions: +-0.2 ToyBench points


def test_claim_a_supported_contradicted_unresolved_and_not_run():
    base = [0.30 + 0.01 * k for k in range(5)]
    up = lambda d: [b + d + e for b, e in zip(base, NOISE)]  # noqa: E731
    names = ("one_forcing_framewise", "asd_1step", "self_forcing_1step")
    ok = _claims(dict(zip(names, (up(0.10), up(0.05), base))))
    assert ok.verdict("a")[0].startswith("supported")
    bad = _claims(dict(zip(names, (base, up(0.05), base))))
    assert bad.verdict("a")[0].startswith("contradicted")
    noisy = _claims(dict(zip(names, ([b + 0.03 * (-1) ** k for k, b in enumerate(base)], base, base))))
    assert noisy.verdict("a")[0].startswith("not resolved")
    assert _claims({"asd_1step": base}).verdict("a")[0].startswith("not run")
    assert _claims(dict(zip(names, ([0.5], [0.4], [0.3])))).verdict("a")[0].startswith("no verdict")


def test_claim_b_equivalence_needs_tost_not_a_wide_interval():
    base = [0.30 + 0.01 * k for k in range(5)]
    near = _claims({"one_forcing_framewise": [b + e for b, e in zip(base, NOISE)], "self_forcing_4step": base})
    assert near.verdict("b")[0].startswith("supported: equivalent at margin ±2")
    wide = [b + 0.05 * (-1) ** k for k, b in enumerate(base)]     # mean difference ~1 point, spread 5 points
    far = _claims({"one_forcing_framewise": wide, "self_forcing_4step": base})
    assert far.verdict("b")[0].startswith("not resolved")


def test_claim_d_needs_a_collapse_not_just_a_drop():
    totals = {"one_forcing_fkl": [0.4] * 5, "one_forcing_chunkwise": [0.4] * 5}
    base = [0.3, 0.32, 0.31, 0.305, 0.315]
    collapsed = _claims(totals, {"one_forcing_fkl": [0.01, 0.02, 0.015, 0.012, 0.018], "one_forcing_chunkwise": base})
    assert collapsed.verdict("d")[0].startswith("supported")
    dropped = _claims(totals, {"one_forcing_fkl": [b - 0.05 for b in base], "one_forcing_chunkwise": base})
    assert dropped.verdict("d")[0].startswith("partly")


def test_claim_e_reads_the_late_logit_gap():
    curve = lambda early, late: ([0, 10, 20, 30], [early, early, late, late])  # noqa: E731
    assert late_mean(curve(0.1, 2.0)) == pytest.approx(2.0)
    gaps = {"one_forcing_framewise": {s: curve(0.1, 1.5 + 0.01 * s) for s in range(5)},
            "asd_1step": {s: curve(1.0, 0.001 + 0.0001 * s) for s in range(5)}}
    claims = _claims({"one_forcing_framewise": [0.5] * 5, "asd_1step": [0.5] * 5}, gaps=gaps)
    assert claims.verdict("e")[0].startswith("supported")
    gaps["asd_1step"] = {s: curve(1.0, 0.5 + 0.01 * s) for s in range(5)}
    assert _claims({"one_forcing_framewise": [0.5] * 5}, gaps=gaps).verdict("e")[0].startswith("partly")


def test_claim_i_compares_the_two_contexts_of_the_same_init_recipe():
    """(i): the clean-context arm against the CausVid-style (noisy-context) arm, both ways, and not run
    without the control arm; (g) is unaffected by it."""
    base = [0.30 + 0.01 * k for k in range(5)]
    noisy, clean = "one_forcing_framewise_causvid_init", "one_forcing_framewise_causal_pairs_init"
    worse = _claims({noisy: base, clean: [b - 0.02 + e for b, e in zip(base, NOISE)]})
    assert worse.verdict("i")[0] == "contradicted: the noisy context helps"
    same = _claims({noisy: base, clean: [b + e for b, e in zip(base, NOISE)]})
    assert same.verdict("i")[0].startswith("equivalent at margin ±2 (the context makes no difference")
    assert _claims({noisy: base}).verdict("i")[0] == f"not run (the report has no {clean})"
    assert same.verdict("g")[0].startswith("not run")


def test_one_family_holm_over_every_claim():
    """Adding claims to the family makes each test harder to pass: a difference that survives alone
    does not survive among many tests."""
    base = [0.30 + 0.01 * k for k in range(5)]
    diff = [0.004, 0.002, 0.006, 0.0025, 0.0045]            # 0.39 points, p = 0.006 alone
    alone = _claims({"one_forcing_framewise": [b + d for b, d in zip(base, diff)], "one_forcing_chunkwise": base},
                    margin=0.05)
    crowd = {"one_forcing_framewise": [b + d for b, d in zip(base, diff)], "one_forcing_chunkwise": base,
             "asd_1step": base, "self_forcing_1step": base, "self_forcing_4step": base,
             "one_forcing_fkl": base, "one_forcing_framewise_no_gan": base,
             "one_forcing_framewise_causvid_init": base}
    many = _claims(crowd, margin=0.05)
    assert len(alone.family) == 2 and len(many.family) > 8
    c_alone, c_many = alone.tests["c"][0], many.tests["c"][0]
    assert c_alone.p == pytest.approx(c_many.p)
    assert c_alone.rejected and not c_many.rejected
