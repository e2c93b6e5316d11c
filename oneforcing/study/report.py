"""Table 2 from a study's votes: per baseline, our wins / ties / losses, the decided votes, and the
win rate (share of decided votes we win) with a Wilson score 95 % interval, as markdown and CSV."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass

from oneforcing.study.store import StudyStore

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


@dataclass
class ComparisonRow:
    ours: str
    baseline: str
    wins: int = 0
    ties: int = 0
    losses: int = 0

    @property
    def decided(self) -> int:
        return self.wins + self.losses

    @property
    def votes(self) -> int:
        return self.decided + self.ties

    @property
    def win_rate(self) -> float | None:
        return self.wins / self.decided if self.decided else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson_interval(self.wins, self.decided) if self.decided else None


def tally(store: StudyStore) -> list[ComparisonRow]:
    """One row per baseline, in the order the systems were given."""
    systems = list(json.loads(store.meta["systems"]))
    rows = {name: ComparisonRow(systems[0], name) for name in systems[1:]}
    for _, pair_id, _, winner in store.votes():
        pair = store.pairs[pair_id]
        row = rows[pair.baseline]
        if winner == "tie":
            row.ties += 1
        elif winner == pair.ours:
            row.wins += 1
        else:
            row.losses += 1
    return list(rows.values())


def _percent(x: float) -> str:
    return f"{100 * x:.1f}"


def markdown(store: StudyStore) -> str:
    rows = tally(store)
    meta = store.meta
    prompts = len(json.loads(meta["prompts"]))
    annotators = len({v[0] for v in store.votes()})
    lines = [f"Pairwise preference for **{rows[0].ours}** against each baseline: {annotators} annotator(s), "
             f"{prompts} prompts x {meta['samples_per_prompt']} sample(s), {len(store.pairs)} pairs; prompt file "
             f"sha256 `{meta['prompts_sha256'][:16]}`. Win rate = share of decided votes (ties excluded) that "
             f"{rows[0].ours} wins; 95 % Wilson score interval.", "",
             "| comparison | wins | ties | losses | decided | win rate | 95 % interval |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        rate = f"{_percent(r.win_rate)} %" if r.decided else "–"
        ci = f"[{_percent(r.interval[0])}, {_percent(r.interval[1])}]" if r.decided else "–"
        lines.append(f"| {r.ours} vs {r.baseline} | {r.wins} | {r.ties} | {r.losses} | {r.decided} | {rate} | {ci} |")
    return "\n".join(lines) + "\n"


def csv_text(store: StudyStore) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["ours", "baseline", "wins", "ties", "losses", "decided", "votes", "win_rate",
                     "wilson95_low", "wilson95_high"])
    for r in tally(store):
        lo, hi = r.interval or ("", "")
        rate = "" if r.win_rate is None else f"{r.win_rate:.6f}"
        writer.writerow([r.ours, r.baseline, r.wins, r.ties, r.losses, r.decided, r.votes, rate,
                         lo if lo == "" else f"{lo:.6f}", hi if hi == "" else f"{hi:.6f}"])
    return out.getvalue()
