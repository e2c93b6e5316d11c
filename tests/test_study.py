"""The preference study without a browser: design checks, the committed SQLite store, the web API
(including path escapes), Table 2 with Wilson intervals, and votes surviving a kill -9 of the server."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from fastapi.testclient import TestClient

from oneforcing.cli import main
from oneforcing.errors import UserError
from oneforcing.study import QUESTION
from oneforcing.study.app import create_app
from oneforcing.study.design import build_design
from oneforcing.study.report import csv_text, tally, wilson_interval
from oneforcing.study.store import StudyStore
from oneforcing.testing.study_videos import PROMPTS, write_prompts, write_study_folders


@pytest.fixture
def study(tmp_path):
    folders = write_study_folders(tmp_path / "videos", systems=("ours", "sf1", "asd"), encode=False)
    prompts = write_prompts(tmp_path / "prompts.txt")
    return folders, prompts


def cli_error(capsys, args):
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), (code, err)
    return err


def systems_arg(folders):
    return "systems={" + ", ".join(f"{k}: {v}" for k, v in folders.items()) + "}"


# --- design ------------------------------------------------------------------------------------------
def test_bad_folders_and_files_are_one_line_exit_2(study, tmp_path, capsys):
    folders, prompts = study
    base = ["study", systems_arg(folders), f"prompts={prompts}", f"db={tmp_path}/db.sqlite"]
    err = cli_error(capsys, ["study", f"systems=[{folders['ours']}]", f"prompts={prompts}"])
    assert "systems: needs two or more video folders" in err
    err = cli_error(capsys, ["study", f"systems=[{folders['ours']}, {tmp_path}/nope]", f"prompts={prompts}"])
    assert "systems.nope: no such folder" in err
    err = cli_error(capsys, [*base[:2], f"prompts={tmp_path}/missing.txt"])
    assert "prompts: no such prompt file" in err
    os.remove(os.path.join(folders["asd"], f"{PROMPTS[1]}-0.mp4"))
    err = cli_error(capsys, base)
    assert "systems.asd" in err and f"missing '{PROMPTS[1]}-0.mp4'" in err
    assert not (tmp_path / "db.sqlite").exists()  # nothing written before every check passed

    bad = tmp_path / "bad.txt"
    bad.write_text("a cat\n../../secret\n")
    assert "line 2: a prompt cannot hold '/'" in cli_error(capsys, [*base[:2], f"prompts={bad}"])
    bad.write_text("a cat\n\na dog\na cat\n")
    assert "line 4: prompt repeats line 1" in cli_error(capsys, [*base[:2], f"prompts={bad}"])


def test_binds_loopback_by_default_and_a_busy_port_is_one_line(study, tmp_path, capsys):
    from oneforcing.jobs.study import StudyJob

    folders, prompts = study
    assert StudyJob(folders, str(prompts)).host == "127.0.0.1"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = cli_error(capsys, ["study", systems_arg(folders), f"prompts={prompts}", f"db={tmp_path}/db.sqlite",
                                 f"port={port}"])
    assert f"port: cannot listen on 127.0.0.1:{port}" in err and not (tmp_path / "db.sqlite").exists()
    assert "port: must be a TCP port" in cli_error(capsys, ["study", systems_arg(folders), f"prompts={prompts}",
                                                            "port=70000"])


def test_samples_per_prompt_makes_a_pair_per_sample(tmp_path):
    folders = write_study_folders(tmp_path / "v", systems=("ours", "a", "b"), samples=2, encode=False)
    design = build_design(folders, str(write_prompts(tmp_path / "p.txt")), samples_per_prompt=2)
    assert [(p.prompt, p.sample, p.baseline) for p in design.pairs] == \
        [(p, i, b) for p in PROMPTS for i in range(2) for b in ("a", "b")]
    with pytest.raises(UserError, match="missing '.*-2.mp4'"):
        build_design(folders, str(tmp_path / "p.txt"), samples_per_prompt=3)


def test_a_symlink_out_of_its_folder_is_refused(study, tmp_path, capsys):
    folders, prompts = study
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"TOPSECRET")
    victim = os.path.join(folders["sf1"], f"{PROMPTS[0]}-0.mp4")
    os.remove(victim)
    os.symlink(outside, victim)
    err = cli_error(capsys, ["study", systems_arg(folders), f"prompts={prompts}", f"db={tmp_path}/db.sqlite"])
    assert "systems.sf1" in err and "leads outside the folder" in err


def test_sides_are_fixed_by_the_seed_balanced_and_stable(tmp_path):
    prompts = [f"prompt number {i}" for i in range(40)]
    folders = write_study_folders(tmp_path / "v", systems=("ours", "base"), prompts=prompts, encode=False)
    file = write_prompts(tmp_path / "p.txt", prompts)
    a, b, c = (build_design(folders, str(file), seed=s) for s in (0, 0, 1))
    assert [p.left for p in a.pairs] == [p.left for p in b.pairs]
    assert [p.left for p in a.pairs] != [p.left for p in c.pairs]
    share = sum(p.left == "ours" for p in a.pairs) / len(a.pairs)
    assert 0.25 < share < 0.75, share
    assert {p.right for p in a.pairs if p.left == "ours"} == {"base"}
    # a pair's side depends on the pair, not on its position: dropping prompts keeps the others' sides
    fewer = write_prompts(tmp_path / "q.txt", prompts[::2])
    d = build_design(folders, str(fewer), seed=0)
    assert [p.left for p in d.pairs] == [p.left for p in a.pairs[::2]]


# --- store -------------------------------------------------------------------------------------------
def test_votes_are_once_per_annotator_and_survive_reopening(study, tmp_path):
    folders, prompts = study
    design = build_design(folders, str(prompts), seed=3)
    store = StudyStore.open(tmp_path / "s.sqlite", design)
    assert len(store.pairs) == len(PROMPTS) * 2  # one pair per prompt and baseline
    assert store.order("alice") == store.order("alice") and sorted(store.order("bob")) == sorted(store.pairs)
    first, rated = store.next_pair("alice")
    assert rated == 0 and first.id == store.order("alice")[0]
    assert store.vote("alice", first.id, "left") is True
    assert store.vote("alice", first.id, "right") is False  # a second vote on the same pair changes nothing
    assert store.vote("bob", first.id, "tie") is True
    reopened = StudyStore.open(tmp_path / "s.sqlite", design)
    assert reopened.votes() == [("alice", first.id, "left", first.left), ("bob", first.id, "tie", "tie")]
    second, rated = reopened.next_pair("alice")
    assert rated == 1 and second.id == store.order("alice")[1]


def test_a_changed_prompt_file_or_video_is_refused(study, tmp_path, capsys):
    folders, prompts = study
    db = tmp_path / "s.sqlite"
    design = build_design(folders, str(prompts))
    StudyStore.open(db, design).vote("alice", 1, "left")
    prompts.write_text(prompts.read_text().replace("left", "right"))
    folders2 = write_study_folders(tmp_path / "other", systems=("ours", "sf1", "asd"),
                                   prompts=[p.replace("left", "right") for p in PROMPTS], encode=False)
    with pytest.raises(UserError, match="the prompt file changed since the study began"):
        StudyStore.open(db, build_design(folders2, str(prompts)))
    args = ["study", systems_arg(folders2), f"prompts={prompts}", f"db={db}", f"port={free_port()}"]
    assert "prompts: the prompt file changed" in cli_error(capsys, args)

    write_prompts(prompts)  # restored: the study opens again, until a video changes
    StudyStore.open(db, design)
    write_study_folders(tmp_path / "videos", systems=("asd",), prompts=PROMPTS[:1])  # asd's clip re-encoded
    with pytest.raises(UserError, match="systems.asd: .* changed since the study began"):
        StudyStore.open(db, build_design(folders, str(prompts)))
    with pytest.raises(UserError, match="created with seed=0, not 1"):
        StudyStore.open(db, build_design(folders, str(prompts), seed=1))


# --- report ------------------------------------------------------------------------------------------
def test_wilson_interval_matches_newcombe_1998():
    # Newcombe (1998), Stat. Med. 17:857, Table I, method 3 (score interval without continuity correction)
    for (k, n), (lo, hi) in {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605),
                             (0, 20): (0.0, 0.1611), (1, 29): (0.0061, 0.1718)}.items():
        got = wilson_interval(k, n)
        assert got == pytest.approx((lo, hi), abs=5e-5), (k, n, got)


def test_table2_counts_wins_ties_losses_per_baseline(study, tmp_path, capsys):
    folders, prompts = study
    store = StudyStore.open(tmp_path / "s.sqlite", build_design(folders, str(prompts)))
    expected = {"sf1": [0, 0, 0], "asd": [0, 0, 0]}  # wins, ties, losses of ours
    for who, choice in (("a", "left"), ("b", "right"), ("c", "tie")):
        for pid, pair in store.pairs.items():
            store.vote(who, pid, choice)
            shown = pair.left if choice == "left" else pair.right
            expected[pair.baseline][1 if choice == "tie" else 0 if shown == "ours" else 2] += 1
    rows = {r.baseline: r for r in tally(store)}
    assert {k: [r.wins, r.ties, r.losses] for k, r in rows.items()} == expected
    assert main(["study-report", f"db={tmp_path}/s.sqlite", f"out={tmp_path}/report"]) == 0
    md = (tmp_path / "report/table2.md").read_text()
    assert md in capsys.readouterr().out
    lines = (tmp_path / "report/table2.csv").read_text().splitlines()
    assert lines == csv_text(store).splitlines() and len(lines) == 3
    sf1 = lines[1].split(",")
    wins, ties, losses = expected["sf1"]
    assert sf1[:7] == ["ours", "sf1", str(wins), str(ties), str(losses), str(wins + losses), "9"]
    lo, hi = wilson_interval(wins, wins + losses)
    assert float(sf1[7]) == pytest.approx(wins / (wins + losses), abs=1e-6)
    assert (float(sf1[8]), float(sf1[9])) == pytest.approx((lo, hi), abs=1e-6)
    assert f"| ours vs sf1 | {wins} | {ties} | {losses} | {wins + losses} | {100 * wins / (wins + losses):.1f} %" in md

    assert "db: no such study database" in cli_error(capsys, ["study-report", f"db={tmp_path}/none.sqlite"])
    assert "db: not a study database" in cli_error(capsys, ["study-report", f"db={prompts}"])


# --- the web API -------------------------------------------------------------------------------------
def test_api_flow_and_no_path_escapes(study, tmp_path):
    folders, prompts = study
    (tmp_path / "videos" / "secret.txt").write_text("TOPSECRET")  # beside the system folders
    design = build_design(folders, str(prompts))
    store = StudyStore.open(tmp_path / "s.sqlite", design)
    client = TestClient(create_app(store, design))
    page = client.get("/")
    assert page.status_code == 200 and QUESTION in page.text and "ours" not in page.text
    assert client.post("/api/annotator", json={"name": "  "}).status_code == 400
    assert client.post("/api/annotator", json={"name": "a\x07b"}).status_code == 400
    state = client.post("/api/annotator", json={"name": " alice "}).json()
    assert (state["name"], state["rated"], state["total"], state["done"]) == ("alice", 0, 6, False)
    pair = store.pairs[state["pair"]["id"]]
    left = client.get(state["pair"]["left"])
    expected = design.video(pair.left, pair.prompt, pair.sample).read_bytes()
    assert left.status_code == 200 and left.headers["content-type"] == "video/mp4" and left.content == expected
    part = client.get(state["pair"]["left"], headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == expected[:100]

    for url in ["/video/0/left", "/video/99/left", "/video/1/up", "/video/1/../../secret.txt",
                "/video/..%2f..%2fsecret.txt/left", "/video/1/left%2f..%2f..%2fsecret.txt",
                "/videos/secret.txt", "/../videos/secret.txt", "/video/%2e%2e/%2e%2e/secret.txt"]:
        response = client.get(url)
        assert response.status_code in (404, 422) and b"TOPSECRET" not in response.content, url
    response = client.get(f"/video/{pair.id}/left?path={tmp_path}/videos/secret.txt")  # no parameter names a file
    assert response.content == expected
    victim = design.video(pair.right, pair.prompt, pair.sample)
    victim.unlink()
    victim.symlink_to(tmp_path / "videos" / "secret.txt")  # swapped for a link out after start-up
    assert client.get(state["pair"]["right"]).status_code == 404

    assert client.post("/api/vote", json={"name": "alice", "pair_id": pair.id, "choice": "up"}).status_code == 422
    assert client.post("/api/vote", json={"name": "alice", "pair_id": 99, "choice": "left"}).status_code == 404
    for _ in range(6):
        reply = client.post("/api/vote", json={"name": "alice", "pair_id": state["pair"]["id"], "choice": "tie"})
        assert reply.json()["recorded"] is True
        state = reply.json()
    assert state["done"] and state["rated"] == 6 and state["pair"] is None
    again = client.post("/api/vote", json={"name": "alice", "pair_id": 1, "choice": "left"}).json()
    assert again["recorded"] is False and again["rated"] == 6
    assert "| ours vs sf1 | 0 | 3 | 0 | 0 | – | – |" in client.get("/export.md").text
    assert client.get("/export.csv").text.splitlines()[1] == "ours,sf1,0,3,0,0,3,,,"


# --- a real server, killed -------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(url, body=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def start_server(args, port, log):
    proc = subprocess.Popen([sys.executable, "-m", "oneforcing.cli", "study", *args, f"port={port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            call(f"http://127.0.0.1:{port}/api/state?name=probe", timeout=2)
            return proc
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not start in 60 s")


def test_kill_9_mid_session_loses_no_vote_and_doubles_none(tmp_path):
    prompts = [f"clip {i}" for i in range(8)]
    folders = write_study_folders(tmp_path / "v", systems=("ours", "a", "b"), prompts=prompts, encode=False)
    file = write_prompts(tmp_path / "p.txt", prompts)
    db = tmp_path / "votes.sqlite"
    args = [systems_arg(folders), f"prompts={file}", f"db={db}"]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(tmp_path / "server.log", "w") as log:
        server = start_server(args, port, log)
        acked, attempted, stop = [], [], threading.Event()

        def voter():  # votes as fast as the server answers, until the server dies under it
            choices = ["left", "right", "tie"]
            try:
                while not stop.is_set():
                    state = call(f"{base}/api/state?name=ann")
                    vote = (state["pair"]["id"], choices[len(attempted) % 3])
                    attempted.append(vote)
                    reply = call(f"{base}/api/vote", {"name": "ann", "pair_id": vote[0], "choice": vote[1]})
                    assert reply["recorded"] is True
                    acked.append(vote)
            except (urllib.error.URLError, ConnectionError, OSError):
                pass

        thread = threading.Thread(target=voter, daemon=True)
        thread.start()
        while len(acked) < 5 and thread.is_alive():
            time.sleep(0.005)
        os.kill(server.pid, signal.SIGKILL)  # mid-request, most likely
        server.wait(timeout=30)
        stop.set()
        thread.join(timeout=30)
        assert len(acked) >= 5, (tmp_path / "server.log").read_text()

        with sqlite3.connect(db) as conn:
            stored = conn.execute("SELECT pair_id, choice FROM votes WHERE annotator='ann' ORDER BY id").fetchall()
        assert stored[:len(acked)] == acked  # every answered vote is on disk, in order
        assert len(stored) <= len(acked) + 1 and stored == attempted[:len(stored)]

        server = start_server(args, port, log)
        try:
            for pair_id, choice in attempted:  # the client retries everything it is unsure of
                reply = call(f"{base}/api/vote", {"name": "ann", "pair_id": pair_id, "choice": choice})
                assert reply["recorded"] is ((pair_id, choice) not in stored)
            state = call(f"{base}/api/state?name=ann")
            assert state["rated"] == len(set(attempted))
            while not state["done"]:
                state = call(f"{base}/api/vote", {"name": "ann", "pair_id": state["pair"]["id"], "choice": "left"})
            assert state["rated"] == state["total"] == 16
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT pair_id, COUNT(*) FROM votes GROUP BY annotator, pair_id").fetchall()
    assert len(rows) == 16 and all(n == 1 for _, n in rows)
