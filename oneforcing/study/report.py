"""The study's report: the paper's Table 2 (% wins / ties / losses of the first system of each
comparison, with 95 % intervals from a bootstrap over annotators and prompts), agreement
(Krippendorff's alpha; Fleiss' kappa when every pair has the same number of raters), a per-annotator
table with the exclusion rules the study file committed applied, a Bradley-Terry ranking for more
than two systems, and every raw vote (CSV and JSONL).

Table 2 and agreement use each included annotator's first vote on each main pair: attention checks
and repeats only judge annotators.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass, field

import numpy as np

from oneforcing.study.protocol import completion_code
from oneforcing.study.stats import bradley_terry, cluster_bootstrap, fleiss_kappa, krippendorff_alpha
from oneforcing.study.store import StudyStore, Vote


@dataclass
class Annotator:
    id: str
    votes: int = 0
    slots: int = 0
    gold: list = field(default_factory=list)  # True where the gold pair's known answer was chosen
    repeats: list = field(default_factory=list)  # True where the repeat agreed with the first vote
    fast: int = 0
    seconds: list = field(default_factory=list)
    watched: list = field(default_factory=list)
    left_picks: int = 0
    decided: int = 0
    code: str = ""
    reasons: list = field(default_factory=list)  # why excluded; empty: included

    @property
    def done(self) -> float:
        return self.votes / self.slots if self.slots else 0.0

    @property
    def gold_accuracy(self) -> float | None:
        return sum(self.gold) / len(self.gold) if self.gold else None

    @property
    def consistency(self) -> float | None:
        return sum(self.repeats) / len(self.repeats) if self.repeats else None

    @property
    def fast_share(self) -> float:
        return self.fast / self.votes if self.votes else 0.0

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None


@dataclass
class Row:
    a: str
    b: str
    wins: int
    ties: int
    losses: int
    annotators: int
    prompts: int
    intervals: np.ndarray  # [3, 2]: wins, ties, losses

    @property
    def votes(self) -> int:
        return self.wins + self.ties + self.losses

    def share(self, k: int) -> float:
        return (self.wins, self.ties, self.losses)[k] / self.votes


@dataclass
class Analysis:
    store: StudyStore
    annotators: dict
    rows: list
    alpha: float | None
    kappa: float | None
    strengths: dict | None


def is_fast(vote: Vote, fast_s: float) -> bool:
    """Sooner than `fast_s` after the pair appeared, or before both clips had played through once."""
    ms = vote.client_ms if vote.client_ms is not None else vote.server_ms
    watched = [w for w in (vote.watched_left, vote.watched_right) if w is not None]
    return ms < 1000 * fast_s or any(w < 0.999 for w in watched)


def judge(store: StudyStore, votes: list[Vote]) -> dict[str, Annotator]:
    """Per-annotator accuracy, consistency, speed and side bias, and the exclusions they earn."""
    proto = store.protocol
    people = {a: Annotator(a) for a in store.annotators(consented=True)}  # who began, voting or not
    first: dict[tuple, str] = {}
    for v in votes:
        who = people.setdefault(v.annotator, Annotator(v.annotator))
        who.votes += 1
        who.fast += is_fast(v, proto.fast_vote_s)
        who.seconds.append((v.client_ms if v.client_ms is not None else v.server_ms) / 1000)
        who.watched += [w for w in (v.watched_left, v.watched_right) if w is not None]
        if v.choice != "tie":
            who.decided += 1
            who.left_picks += v.choice == "left"
        pair = store.pairs[v.pair_id]
        if pair.kind == "gold":
            who.gold.append(v.winner == pair.a)
        if v.repeat == 0:
            first[(v.annotator, v.pair_id)] = v.winner
    for v in votes:
        if v.repeat == 1 and (v.annotator, v.pair_id) in first:
            people[v.annotator].repeats.append(first[(v.annotator, v.pair_id)] == v.winner)
    rules = proto.exclude
    for who in people.values():
        who.slots = len(store.sequence(who.id))
        if who.votes == who.slots:
            who.code = completion_code(store.secret, who.id)
        if who.done < rules["min_done"]:
            who.reasons.append(f"done {who.done:.0%} < {rules['min_done']:.0%}")
        if who.gold_accuracy is not None and who.gold_accuracy < rules["min_gold_accuracy"]:
            who.reasons.append(f"attention {who.gold_accuracy:.0%} < {rules['min_gold_accuracy']:.0%}")
        if who.consistency is not None and who.consistency < rules["min_consistency"]:
            who.reasons.append(f"consistency {who.consistency:.0%} < {rules['min_consistency']:.0%}")
        if who.fast_share > rules["max_fast_share"]:
            who.reasons.append(f"fast votes {who.fast_share:.0%} > {rules['max_fast_share']:.0%}")
    return people


def analyse(store: StudyStore, replicates: int = 2000) -> Analysis:
    votes = store.votes()
    people = judge(store, votes)
    kept = [v for v in votes if not people[v.annotator].reasons and v.repeat == 0
            and store.pairs[v.pair_id].kind == "main"]
    comparisons = list(dict.fromkeys((p.a, p.b) for p in store.pairs.values() if p.kind == "main"))
    rows = []
    for a, b in comparisons:
        mine = [v for v in kept if (store.pairs[v.pair_id].a, store.pairs[v.pair_id].b) == (a, b)]
        onehot = np.array([[v.winner == a, v.winner == "tie", v.winner == b] for v in mine], float).reshape(-1, 3)
        prompts = [(store.pairs[v.pair_id].prompt, store.pairs[v.pair_id].sample) for v in mine]
        who = [v.annotator for v in mine]
        ci = cluster_bootstrap(onehot, who, prompts, replicates, seed=store.seed) if mine else np.full((3, 2), np.nan)
        w, t, l_ = (int(x) for x in onehot.sum(axis=0)) if mine else (0, 0, 0)
        rows.append(Row(a, b, w, t, l_, len(set(who)), len(set(prompts)), ci))
    units: dict = {}
    for v in kept:
        units.setdefault(v.pair_id, []).append("tie" if v.winner == "tie" else
                                                "a" if v.winner == store.pairs[v.pair_id].a else "b")
    alpha = krippendorff_alpha(units)
    sizes = {len(x) for x in units.values()}
    kappa = None
    if len(sizes) == 1 and min(sizes) >= 2:
        kappa = fleiss_kappa([[x.count(c) for c in ("a", "tie", "b")] for x in units.values()])
    strengths = None
    if len(store.systems) > 2 and kept:
        strengths = bradley_terry([(store.pairs[v.pair_id].a, store.pairs[v.pair_id].b,
                                    0.5 if v.winner == "tie" else float(v.winner == store.pairs[v.pair_id].a))
                                   for v in kept])
    return Analysis(store, people, rows, alpha, kappa, strengths)


def _pct(x: float) -> str:
    return "–" if x != x else f"{100 * x:.1f}"


def _opt(x: float | None, fmt: str = "{:.0%}") -> str:
    return "–" if x is None else fmt.format(x)


def markdown(an: Analysis) -> str:
    store, proto = an.store, an.store.protocol
    included = [p for p in an.annotators.values() if not p.reasons]
    main_pairs = sum(p.kind == "main" for p in store.pairs.values())
    lines = [f"Pairwise preference, {len(included)} of the {len(an.annotators)} annotator(s) who began included, "
             f"{main_pairs} "
             f"pairs ({len(json.loads(store.meta['prompts']))} prompts x {store.meta['samples_per_prompt']} "
             f"sample(s)); prompt file sha256 `{store.meta['prompts_sha256'][:16]}`. % of votes the first system "
             "wins / ties / loses, with 95 % intervals from a bootstrap resampling annotators and prompts "
             "(2000 replicates); each included annotator's first vote on each pair.", "",
             "| comparison | wins % | ties % | losses % | votes | annotators |",
             "| --- | --- | --- | --- | ---: | ---: |"]
    for r in an.rows:
        cells = [f"{_pct(r.share(k) if r.votes else float('nan'))} [{_pct(r.intervals[k][0])}, "
                 f"{_pct(r.intervals[k][1])}]" for k in range(3)]
        lines.append(f"| {r.a} vs {r.b} | {' | '.join(cells)} | {r.votes} | {r.annotators} |")
    kappa = "" if an.kappa is None else f"; Fleiss' kappa {an.kappa:.3f}"
    lines += ["", f"Agreement (included annotators, outcome first system / tie / second): Krippendorff's alpha "
              f"(nominal) {_opt(an.alpha, '{:.3f}')}{kappa}."]
    if an.strengths:
        ranked = sorted(an.strengths.items(), key=lambda kv: -kv[1])
        lines += ["", "Bradley-Terry strengths (ties half a win; geometric mean 1): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in ranked) + "."]
    rules = proto.exclude
    lines += ["", f"Exclusion rules (committed with the study): done >= {rules['min_done']:.0%}, attention checks "
              f">= {rules['min_gold_accuracy']:.0%} right, repeats >= {rules['min_consistency']:.0%} consistent, "
              f"fast votes (< {proto.fast_vote_s:g} s or a clip not played through) <= {rules['max_fast_share']:.0%}. "
              f"{proto.attention_checks} attention check(s) and {proto.repeats} repeat(s) per annotator.", "",
              "| annotator | votes | done | attention | consistency | fast | median s | left picks | code | "
              "excluded |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for p in an.annotators.values():
        left = _opt(p.left_picks / p.decided if p.decided else None)
        lines.append(f"| {p.id} | {p.votes} | {p.done:.0%} | {_opt(p.gold_accuracy)} | {_opt(p.consistency)} | "
                     f"{p.fast_share:.0%} | {_opt(p.median_s, '{:.1f}')} | {left} | {p.code or '–'} | "
                     f"{'; '.join(p.reasons) or 'no'} |")
    return "\n".join(lines) + "\n"


def table_csv(an: Analysis) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["a", "b", "votes", "annotators", "prompts", *[f"{k}{s}" for k in ("wins", "ties", "losses")
                                                                    for s in ("", "_pct", "_low", "_high")]])
    for r in an.rows:
        cells = []
        for k, n in enumerate((r.wins, r.ties, r.losses)):
            cells += [n, *(f"{100 * x:.2f}" if x == x else "" for x in
                           (r.share(k) if r.votes else float("nan"), *r.intervals[k]))]
        writer.writerow([r.a, r.b, r.votes, r.annotators, r.prompts, *cells])
    return out.getvalue()


ANNOTATOR_FIELDS = ["annotator", "votes", "slots", "gold_accuracy", "consistency", "fast_share", "median_s",
                    "left_share", "completion_code", "excluded"]


def annotators_csv(an: Analysis) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(ANNOTATOR_FIELDS)
    for p in an.annotators.values():
        left = p.left_picks / p.decided if p.decided else None
        cells = [_opt(x, "{:.4f}").replace("–", "") for x in (p.gold_accuracy, p.consistency, p.fast_share,
                                                              p.median_s, left)]
        writer.writerow([p.id, p.votes, p.slots, *cells, p.code, "; ".join(p.reasons)])
    return out.getvalue()


def raw_votes(store: StudyStore) -> list[dict]:
    """Every vote with its pair spelled out (what a reanalysis needs), in the order cast."""
    out = []
    for v in store.votes():
        pair = store.pairs[v.pair_id]
        out.append({"annotator": v.annotator, "slot": v.slot, "pair_id": v.pair_id, "kind": pair.kind,
                    "repeat": v.repeat, "prompt": pair.prompt, "sample": pair.sample, "a": pair.a, "b": pair.b,
                    "left": v.left, "right": v.right, "choice": v.choice, "winner": v.winner,
                    "client_ms": None if v.client_ms is None else round(v.client_ms, 1),
                    "server_ms": round(v.server_ms, 1), "watched_left": v.watched_left,
                    "watched_right": v.watched_right, "fast": is_fast(v, store.protocol.fast_vote_s),
                    "created": v.created})
    return out


def votes_jsonl(store: StudyStore) -> str:
    return "".join(json.dumps(v, ensure_ascii=False) + "\n" for v in raw_votes(store))


def votes_csv(store: StudyStore) -> str:
    rows = raw_votes(store)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["annotator"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
