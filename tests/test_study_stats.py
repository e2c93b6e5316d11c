"""The study's statistics against published or hand-computed values, and against data simulated
with a known answer: Wilson, Krippendorff's alpha, Fleiss' kappa, the annotator x prompt bootstrap,
Bradley-Terry."""

import random

import numpy as np
import pytest

from oneforcing.study.stats import bradley_terry, cluster_bootstrap, fleiss_kappa, krippendorff_alpha, wilson_interval


def test_wilson_interval_matches_newcombe_1998():
    # Newcombe (1998), Stat. Med. 17:857, Table I, method 3 (score interval without continuity correction)
    for (k, n), (lo, hi) in {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605),
                             (0, 20): (0.0, 0.1611), (1, 29): (0.0061, 0.1718)}.items():
        got = wilson_interval(k, n)
        assert got == pytest.approx((lo, hi), abs=5e-5), (k, n, got)


def test_krippendorff_alpha_matches_krippendorff_2011():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", example C: 4 observers, 12 units,
    # missing values; nominal alpha = 0.743
    n = None
    observers = [[1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n], [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
                 [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n], [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n]]
    units = {u: [o[u] for o in observers if o[u] is not None] for u in range(12)}
    assert krippendorff_alpha(units) == pytest.approx(0.743, abs=5e-4)
    # by hand: two units, two raters each, one agreeing ("a","a") and one not ("a","b"): n = 4, n_a = 3,
    # n_b = 1, D_o = 2/4, D_e = 2*3*1/(4*3) = 1/2 -> alpha = 0
    assert krippendorff_alpha({1: ["a", "a"], 2: ["a", "b"]}) == pytest.approx(0.0)
    assert krippendorff_alpha({1: ["a", "a"], 2: ["b", "b"], 3: ["c"]}) == pytest.approx(1.0)
    assert krippendorff_alpha({1: ["a"], 2: ["b"]}) is None  # nothing pairable


def test_fleiss_kappa_matches_the_worked_example():
    # The worked example of Fleiss' kappa on Wikipedia (10 subjects, 14 raters, 5 categories): 0.210
    counts = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1], [7, 7, 0, 0, 0],
              [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert fleiss_kappa(counts) == pytest.approx(0.210, abs=5e-4)
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa([[1, 1], [2, 1]])


def _votes(annotators, prompts, p_of):
    rng = np.random.default_rng(0)
    rows = [(a, p, rng.random() < p_of(a)) for a in range(annotators) for p in range(prompts)]
    onehot = np.array([[w, 0, not w] for _, _, w in rows], float)
    return onehot, [a for a, _, _ in rows], [p for _, p, _ in rows]


def test_the_bootstrap_widens_for_votes_that_cluster_by_annotator():
    # independent votes: somewhat wider than Wilson's (the two-way bootstrap is conservative: a vote's
    # weight varies with both its annotator's and its prompt's draw, about doubling the variance of pure
    # noise); annotators who each always vote one way (the same mean): far wider -- the Wilson interval
    # would overstate what 20 people told us
    iid, who, prompts = _votes(20, 30, lambda a: 0.6)
    lo, hi = cluster_bootstrap(iid, who, prompts, replicates=1000)[0]
    wl, wh = wilson_interval(int(iid[:, 0].sum()), len(iid))
    assert lo < iid[:, 0].mean() < hi and 1.0 < (hi - lo) / (wh - wl) < 2.0
    clustered, who, prompts = _votes(20, 30, lambda a: float(a < 12))
    lo2, hi2 = cluster_bootstrap(clustered, who, prompts, replicates=1000)[0]
    assert (hi2 - lo2) > 3 * (wh - wl), (lo2, hi2, wl, wh)
    again = cluster_bootstrap(clustered, who, prompts, replicates=1000)
    assert np.array_equal(again[0], [lo2, hi2])  # seeded


def test_bradley_terry_recovers_known_strengths():
    truth = {"ours": 4.0, "sf1": 2.0, "asd": 1.0, "ode": 0.5}
    rng = random.Random(0)
    results = []
    for _ in range(6000):
        i, j = rng.sample(sorted(truth), 2)
        u = rng.random()
        p = truth[i] / (truth[i] + truth[j])
        results.append((i, j, 1.0 if u < p else 0.0))
    got = bradley_terry(results)
    scale = np.exp(np.mean(np.log(list(truth.values()))))
    for name, s in truth.items():
        assert got[name] == pytest.approx(s / scale, rel=0.12), (name, got)
    assert sorted(got, key=got.get, reverse=True) == ["ours", "sf1", "asd", "ode"]
    ties = bradley_terry([("a", "b", 0.5)] * 10 + [("a", "b", 1.0)] * 10)  # 15 of 20 to a: s_a / s_b = 3
    assert ties["a"] / ties["b"] == pytest.approx(3.0, rel=1e-6)
