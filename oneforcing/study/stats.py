"""The study's statistics, written out here (no statistics package needed) and each tested against
a published or hand-computed value.

wilson_interval       a binomial proportion's score interval (Newcombe 1998, method 3)
cluster_bootstrap     percentile intervals of vote shares, resampling annotators AND prompts (votes of
                      one annotator, or on one prompt, are not independent; the two-way "pigeonhole"
                      bootstrap of Owen 2007 keeps both clusterings)
krippendorff_alpha    nominal alpha with missing data (Krippendorff 2011)
fleiss_kappa          Fleiss (1971), every unit rated by the same number of raters
bradley_terry         strengths from pairwise wins, ties as half a win each (Hunter 2004's MM steps)
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a binomial proportion (Newcombe 1998, method 3)."""
    if n <= 0:
        raise ValueError("no trials")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def cluster_bootstrap(outcomes: np.ndarray, annotators: list, prompts: list, replicates: int = 2000,
                      seed: int = 0, level: float = 0.95) -> np.ndarray:
    """Percentile intervals [k, 2] of the share of votes in each of k outcome columns.

    `outcomes` is [votes, k] (one-hot: win / tie / loss); each replicate draws annotators and prompts
    with replacement, independently, and weights a vote by how often both its annotator and its prompt
    were drawn."""
    outcomes = np.asarray(outcomes, float)
    a_ids = {a: i for i, a in enumerate(dict.fromkeys(annotators))}
    p_ids = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
    a_idx = np.array([a_ids[a] for a in annotators])
    p_idx = np.array([p_ids[p] for p in prompts])
    rng = np.random.default_rng(seed)
    wa = rng.multinomial(len(a_ids), [1 / len(a_ids)] * len(a_ids), size=replicates)
    wp = rng.multinomial(len(p_ids), [1 / len(p_ids)] * len(p_ids), size=replicates)
    weights = (wa[:, a_idx] * wp[:, p_idx]).astype(float)  # [replicates, votes]
    total = weights.sum(axis=1, keepdims=True)
    shares = (weights @ outcomes)[total[:, 0] > 0] / total[total[:, 0] > 0]
    tail = (1 - level) / 2
    return np.quantile(shares, [tail, 1 - tail], axis=0).T


def krippendorff_alpha(units: dict) -> float | None:
    """Nominal alpha: `units` maps a unit to the values its raters gave (a unit rated once is
    unpairable and ignored). None when fewer than two pairable values or no disagreement is possible."""
    coincidence: dict[tuple, float] = defaultdict(float)
    for values in units.values():
        m = len(values)
        if m < 2:
            continue
        for i, c in enumerate(values):
            for j, k in enumerate(values):
                if i != j:
                    coincidence[(c, k)] += 1 / (m - 1)
    n_c: dict = defaultdict(float)
    for (c, _), w in coincidence.items():
        n_c[c] += w
    n = sum(n_c.values())
    if n < 2:
        return None
    observed = sum(w for (c, k), w in coincidence.items() if c != k)
    expected = (n * n - sum(v * v for v in n_c.values())) / (n - 1)  # sum over c != k of n_c n_k / (n - 1)
    return None if expected == 0 else 1 - observed / expected


def fleiss_kappa(counts) -> float | None:
    """`counts` is [units, categories]: how many raters put each unit in each category (the same number
    of raters for every unit)."""
    counts = np.asarray(counts, float)
    raters = counts.sum(axis=1)
    if counts.shape[0] == 0 or raters.min() != raters.max() or raters[0] < 2:
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of raters for every unit")
    r = raters[0]
    p_i = ((counts * counts).sum(axis=1) - r) / (r * (r - 1))
    p_j = counts.sum(axis=0) / counts.sum()
    p_e = float((p_j * p_j).sum())
    return None if p_e == 1 else float((p_i.mean() - p_e) / (1 - p_e))


def bradley_terry(results: list[tuple[str, str, float]], iterations: int = 2000, tol: float = 1e-10) -> dict:
    """{system: strength} (geometric mean 1) from (i, j, score of i) triples: 1 win, 0.5 tie, 0 loss.
    P(i beats j) = s_i / (s_i + s_j). Needs a connected comparison graph in which every system wins
    something and loses something (else a strength runs off to 0 or infinity)."""
    systems = sorted({s for i, j, _ in results for s in (i, j)})
    wins: dict = defaultdict(float)
    games: dict = defaultdict(float)
    for i, j, score in results:
        wins[i] += score
        wins[j] += 1 - score
        games[frozenset((i, j))] += 1
    strength = dict.fromkeys(systems, 1.0)
    for _ in range(iterations):
        new = {}
        for i in systems:
            denom = sum(n / (strength[i] + strength[next(iter(pair - {i}))]) for pair, n in games.items() if i in pair)
            new[i] = wins[i] / denom if denom else strength[i]
        scale = math.exp(sum(math.log(max(v, 1e-300)) for v in new.values()) / len(new))
        new = {k: v / scale for k, v in new.items()}
        done = max(abs(new[k] - strength[k]) for k in systems) < tol
        strength = new
        if done:
            break
    return strength
