"""A simulated 20-annotator study driven through the web API (no browser), then `study-report`:
Table 2 in the paper's form from the included annotators only, agreement, a Bradley-Terry ranking,
and the exclusions the study's committed rules call for -- careless annotators caught by attention
checks, repeats, speed, an unfinished session and one who consented but never voted."""

import csv
import io
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from oneforcing.cli import main
from oneforcing.study.app import create_app
from oneforcing.study.design import GOLD
from oneforcing.study.protocol import annotator_token, owner_token
from oneforcing.study.report import analyse
from oneforcing.testing.study_videos import open_study

PROMPTS = [f"shape {i} moving left" for i in range(6)]
# P(the first system wins) for a careful annotator, per comparison; ties take a fixed 10 %
PREFERS = {("ours", "sf1"): 0.75, ("ours", "asd"): 0.65}


def careful(rng, pair_a, pair_b, left, right):
    """An opinion per pair (`rng` is seeded by annotator and pair: a repeat gets the same one)."""
    if pair_b == GOLD:
        winner = pair_a
    elif rng.random() < 0.10:
        return "tie"
    else:
        winner = pair_a if rng.random() < PREFERS[(pair_a, pair_b)] else pair_b
    return "left" if winner == left else "right"


BEHAVIOUR = {"careful": careful,
             "random": lambda rng, a, b, left, right: rng.choice(["left", "right", "tie"]),
             "always_left": lambda rng, a, b, left, right: "left"}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    # in memory where there is a tmpfs: 300 votes, each fsynced twice, take 20 s on a slow shared disk
    shm = Path("/dev/shm")
    in_memory = shm.is_dir() and os.access(shm, os.W_OK)
    root = Path(tempfile.mkdtemp(dir=shm)) if in_memory else tmp_path_factory.mktemp("sim")
    store, design = open_study(root, ("ours", "sf1", "asd"), PROMPTS, attention_checks=2, repeats=2, lock_s=0.0,
                               fast_vote_s=2.0)
    client = TestClient(create_app(store, design))
    people = {f"careful{i:02d}": "careful" for i in range(16)}
    people.update({"random1": "random", "random2": "random", "lefty": "always_left", "quitter": "careful",
                   "noshow": "careful"})
    rng = random.Random(1)
    for name, kind in people.items():
        token = client.post("/api/enrol", json={"name": name}).json()["token"]
        state = client.post("/api/consent", json={"t": token}).json()
        fast = kind == "random"
        while not state["done"] and not (name == "quitter" and state["rated"] == 6) and name != "noshow":
            pair_id, repeat = store.sequence(name)[state["pair"]["slot"]]
            pair = store.pairs[pair_id]
            left, right = store.sides(name, pair_id, repeat)
            choice = BEHAVIOUR[kind](random.Random(f"{name}{pair_id}"), pair.a, pair.b, left, right)
            state = client.post("/api/vote", json={
                "t": token, "slot": state["pair"]["slot"], "choice": choice,
                "client_ms": rng.uniform(400, 900) if fast else rng.uniform(3000, 9000),
                "watched_left": 0.3 if fast else 1.0, "watched_right": 0.3 if fast else 1.0}).json()
            assert state["status"] == "recorded"
    yield store, client, people, root
    if in_memory:
        shutil.rmtree(root)


def test_the_report_has_table2_agreement_and_exclusions(simulated, capsys):
    store, client, people, root = simulated
    an = analyse(store)
    excluded = {p.id: p.reasons for p in an.annotators.values() if p.reasons}
    assert set(excluded) == {"random1", "random2", "lefty", "quitter", "noshow"}, excluded
    assert all(any(r.startswith("fast votes") for r in excluded[r]) for r in ("random1", "random2"))
    assert any(r.startswith("consistency 0%") for r in excluded["lefty"])  # repeats swap sides
    assert excluded["quitter"] == [f"done {6 / 16:.0%} < 100%"] and excluded["noshow"] == ["done 0% < 100%"]
    careful_ones = [p for p in an.annotators.values() if p.id.startswith("careful")]
    assert all(p.gold_accuracy is not None and p.consistency is not None and p.code for p in careful_ones)
    assert an.annotators["quitter"].code == ""  # no completion code for an unfinished session

    # Table 2 counts: each included annotator's first vote on each main pair, recounted here
    votes = [v for v in store.votes() if people[v.annotator] == "careful" and v.annotator != "quitter"
             and v.repeat == 0 and store.pairs[v.pair_id].kind == "main"]
    for row in an.rows:
        mine = [v for v in votes if store.pairs[v.pair_id].b == row.b]
        assert (row.wins, row.ties, row.losses) == (sum(v.winner == "ours" for v in mine),
                                                    sum(v.winner == "tie" for v in mine),
                                                    sum(v.winner == row.b for v in mine))
        assert row.votes == 16 * len(PROMPTS) and row.annotators == 16 and row.prompts == len(PROMPTS)
        for k in range(3):
            lo, hi = row.intervals[k]
            assert 0 <= lo <= row.share(k) <= hi <= 1
    sf1, asd = an.rows
    assert sf1.share(0) > 0.55 and sf1.intervals[0][0] > 0.5  # the simulated preference shows
    assert an.alpha is not None and 0 < an.alpha < 0.5  # modest agreement: each careful vote is a coin flip
    assert an.kappa is not None and an.kappa == pytest.approx(an.alpha, abs=0.05)  # equal raters per pair
    assert max(an.strengths, key=an.strengths.get) == "ours"

    out = root / "report"
    assert main(["study-report", f"db={store.path}", f"out={out}"]) == 0
    md = (out / "table2.md").read_text()
    assert md in capsys.readouterr().out
    assert "| comparison | wins % | ties % | losses % | votes | annotators |" in md
    w, t, l_ = (f"{100 * sf1.share(k):.1f} [{100 * sf1.intervals[k][0]:.1f}, {100 * sf1.intervals[k][1]:.1f}]"
                for k in range(3))
    assert f"| ours vs sf1 | {w} | {t} | {l_} | 96 | 16 |" in md
    assert "16 of the 21 annotator(s) who began included" in md and f"Krippendorff's alpha (nominal) {an.alpha:.3f}" in md
    assert "Bradley-Terry strengths" in md and "| lefty |" in md and "consistency 0% < 50%" in md
    table = list(csv.DictReader(io.StringIO((out / "table2.csv").read_text())))
    assert [(r["a"], r["b"], int(r["wins"]), int(r["votes"])) for r in table] == \
        [(r.a, r.b, r.wins, r.votes) for r in an.rows]
    raw = [json.loads(line) for line in (out / "votes.jsonl").read_text().splitlines()]
    assert len(raw) == len(store.votes()) == 19 * 16 + 6
    assert {r["kind"] for r in raw} == {"main", "gold"} and all(r["left"] != r["right"] for r in raw)
    assert sum(r["fast"] for r in raw) == 2 * 16
    assert len(list(csv.DictReader(io.StringIO((out / "votes.csv").read_text())))) == len(raw)
    people_csv = list(csv.DictReader(io.StringIO((out / "annotators.csv").read_text())))
    assert {r["annotator"] for r in people_csv if r["excluded"]} == set(excluded)

    # the same report, live, for the owner only
    assert client.get("/export/table2.md").status_code == 403
    assert client.get("/export/table2.md", params={"owner": owner_token(store.secret)}).text == md
    assert annotator_token(store.secret, "careful00") != owner_token(store.secret)
