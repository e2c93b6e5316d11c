"""The preference study without a browser: design checks, the committed SQLite store, each annotator's
order and sides, the web API (tokens, path escapes, no side channel in headers, owner-only results),
and votes surviving a kill -9 of the server."""

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
from oneforcing.study.app import create_app
from oneforcing.study.design import build_design
from oneforcing.study.protocol import annotator_token, build_protocol, owner_token
from oneforcing.study.store import StudyStore
from oneforcing.testing.study_videos import PROMPTS, open_study, write_prompts, write_study_folders


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
    assert "line 4: 'a cat' repeats line 1" in cli_error(capsys, [*base[:2], f"prompts={bad}"])


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



def test_samples_per_prompt_and_pairing(tmp_path):
    folders = write_study_folders(tmp_path / "v", systems=("ours", "a", "b"), samples=2, encode=False)
    design = build_design(folders, str(write_prompts(tmp_path / "p.txt")), samples_per_prompt=2)
    assert [(p.prompt, p.sample, p.a, p.b) for p in design.pairs] == \
        [(p, i, "ours", b) for p in PROMPTS for i in range(2) for b in ("a", "b")]
    every = build_design(folders, str(tmp_path / "p.txt"), pairing="all")
    assert {(p.a, p.b) for p in every.pairs} == {("ours", "a"), ("ours", "b"), ("a", "b")}
    with pytest.raises(UserError, match="missing '.*-2.mp4'"):
        build_design(folders, str(tmp_path / "p.txt"), samples_per_prompt=3)


def test_sides_and_order_are_drawn_per_annotator_seeded_and_recorded(tmp_path):
    prompts = [f"prompt number {i}" for i in range(24)]
    store, _ = open_study(tmp_path, ("ours", "base"), prompts, encode=False, repeats=3)
    people = [f"annotator{i}" for i in range(30)]
    ours_left = [[store.sides(who, pid, 0)[0] == "ours" for pid in store.pairs] for who in people]
    per_pair = [sum(col) / len(people) for col in zip(*ours_left)]
    assert all(0.1 < share < 0.9 for share in per_pair), per_pair  # no pair has ours on one side for everyone
    assert 0.4 < sum(map(sum, ours_left)) / (len(people) * len(store.pairs)) < 0.6
    assert store.sides("a", 1, 0) == store.sides("a", 1, 0) and store.sides("a", 1, 1) == store.sides("a", 1, 0)[::-1]
    seq = store.sequence("a")
    assert seq == store.sequence("a") != store.sequence("b")
    assert sorted(p for p, r in seq if r == 0) == sorted(store.pairs) and sum(r for _, r in seq) == 3
    for pid, rep in seq:  # a repeat comes after its first showing, at least two pairs later
        if rep:
            assert seq.index((pid, 1)) >= seq.index((pid, 0)) + 3
    slot = next(i for i, (_, r) in enumerate(seq) if r == 1)
    store.show("a", slot)
    assert store.vote("a", slot, "left") == "recorded"
    vote = store.votes()[0]
    assert (vote.left, vote.right) == store.sides("a", seq[slot][0], 1) and vote.winner == vote.left


def test_a_symlink_out_of_its_folder_is_refused(study, tmp_path, capsys):
    folders, prompts = study
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"TOPSECRET")
    victim = os.path.join(folders["sf1"], f"{PROMPTS[0]}-0.mp4")
    os.remove(victim)
    os.symlink(outside, victim)
    err = cli_error(capsys, ["study", systems_arg(folders), f"prompts={prompts}", f"db={tmp_path}/db.sqlite"])
    assert "systems.sf1" in err and "leads outside the folder" in err



# --- store -------------------------------------------------------------------------------------------
def test_votes_once_per_slot_only_when_shown_and_survive_reopening(tmp_path):
    store, design = open_study(tmp_path, ("ours", "sf1", "asd"), encode=False, seed=3, lock_s=2.0)
    assert len(store.pairs) == len(PROMPTS) * 2  # one pair per prompt and baseline
    assert store.next_slot("alice") == (0, 0)
    assert store.vote("alice", 0, "left") == "not shown"  # never sent to alice: refused
    store.show("alice", 0)
    assert store.vote("alice", 0, "left", min_ms=60_000) == "too early"
    assert store.vote("alice", 0, "left", client_ms=2500.0, watched=(1.0, 0.5)) == "recorded"
    assert store.vote("alice", 0, "right") == "already"  # a second vote on the same slot changes nothing
    store.show("bob", 0)
    assert store.vote("bob", 0, "tie") == "recorded"
    reopened = StudyStore.open(tmp_path / "study.sqlite", design, store.protocol, seed=3)
    votes = reopened.votes()
    assert [(v.annotator, v.slot, v.choice, v.client_ms, v.watched_left, v.watched_right) for v in votes] == \
        [("alice", 0, "left", 2500.0, 1.0, 0.5), ("bob", 0, "tie", None, None, None)]
    assert votes[0].winner == votes[0].left == store.sides("alice", *store.sequence("alice")[0])[0]
    assert reopened.next_slot("alice") == (1, 1)


def test_a_changed_prompt_file_video_or_protocol_is_refused(study, tmp_path):
    folders, prompts = study
    db = tmp_path / "s.sqlite"
    design = build_design(folders, str(prompts))
    store = StudyStore.open(db, design)
    store.show("alice", 0)
    store.vote("alice", 0, "left")
    prompts.write_text(prompts.read_text().replace("left", "right"))
    folders2 = write_study_folders(tmp_path / "other", systems=("ours", "sf1", "asd"),
                                   prompts=[p.replace("left", "right") for p in PROMPTS], encode=False)
    with pytest.raises(UserError, match="the prompt file changed since the study began"):
        StudyStore.open(db, build_design(folders2, str(prompts)))

    write_prompts(prompts)  # restored: the study opens again, until a video or the protocol changes
    StudyStore.open(db, design)
    with pytest.raises(UserError, match="repeats: changed since the study began .0 committed, 2 now"):
        StudyStore.open(db, design, build_protocol(repeats=2))
    with pytest.raises(UserError, match="exclude: changed since the study began"):
        StudyStore.open(db, design, build_protocol(exclude={"min_gold_accuracy": 0.5}))
    with pytest.raises(UserError, match="instructions: changed since the study began .the text changed"):
        StudyStore.open(db, design, build_protocol(instructions="Other words."))
    write_study_folders(tmp_path / "videos", systems=("asd",), prompts=PROMPTS[:1])  # asd's clip re-encoded
    with pytest.raises(UserError, match="systems.asd: .* changed since the study began"):
        StudyStore.open(db, build_design(folders, str(prompts)))
    with pytest.raises(UserError, match="created with seed=0, not 1"):
        StudyStore.open(db, design, seed=1)


# --- the web API -------------------------------------------------------------------------------------
def enrol(client, name):
    reply = client.post("/api/enrol", json={"name": name})
    assert reply.status_code == 200, reply.text
    token = reply.json()["token"]
    return client.post("/api/consent", json={"t": token}).json()


def test_api_tokens_consent_path_escapes_and_stale_votes(tmp_path):
    store, design = open_study(tmp_path, ("ours", "sf1", "asd"), encode=False, lock_s=0.0)
    (tmp_path / "videos" / "secret.txt").write_text("TOPSECRET")  # beside the system folders
    client = TestClient(create_app(store, design))
    page = client.get("/")
    assert page.status_code == 200 and not any(s in page.text for s in ("ours", "sf1", "asd"))
    assert client.post("/api/enrol", json={"name": "  "}).status_code == 400
    assert client.post("/api/enrol", json={"name": "a\x07b"}).status_code == 400
    first = client.post("/api/enrol", json={"name": " Alice "}).json()
    assert (first["annotator"], first["consented"], first["pair"]) == ("alice", False, None)  # consent first
    state = enrol(client, "ALICE")  # names ignore case: the same annotator, the same token
    token = state["token"]
    assert token == first["token"] == annotator_token(store.secret, "alice") and state["consented"]
    assert (state["rated"], state["total"], state["done"]) == (0, 6, False)
    assert not any(s in json.dumps(state) for s in ("ours", "sf1", "asd"))  # the API names no system
    assert client.get("/api/state", params={"t": "forged"}).status_code == 403

    slot = state["pair"]["slot"]
    pair_id, repeat = store.sequence("alice")[slot]
    left_system = store.sides("alice", pair_id, repeat)[0]
    pair = store.pairs[pair_id]
    expected = design.video(left_system, pair.prompt, pair.sample).read_bytes()
    left = client.get(state["pair"]["left"])
    assert left.status_code == 200 and left.headers["content-type"] == "video/mp4"
    assert left.content[:len(expected)] == expected and left.content[len(expected) + 4:len(expected) + 8] == b"free"
    right = client.get(state["pair"]["right"])
    assert len(left.content) == len(right.content) == int(left.headers["content-length"])  # sizes tell nothing
    for response in (left, right):
        assert not {"etag", "last-modified"} & set(response.headers) and response.headers["cache-control"] == "no-store"
    part = client.get(state["pair"]["left"], headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == expected[:100]
    assert part.headers["content-range"] == f"bytes 0-99/{len(left.content)}"
    assert client.get(f"/video/{slot + 1}/left", params={"t": token}).status_code == 404  # not reached yet

    for url in ["/video/0/left", "/video/99/left?t=" + token, "/video/0/up?t=" + token,
                "/video/0/../../secret.txt", "/video/..%2f..%2fsecret.txt/left", "/videos/secret.txt",
                "/../videos/secret.txt", "/video/%2e%2e/%2e%2e/secret.txt"]:
        response = client.get(url)
        assert response.status_code in (403, 404, 422) and b"TOPSECRET" not in response.content, url
    victim = design.video(store.sides("alice", pair_id, repeat)[1], pair.prompt, pair.sample)
    victim.unlink()
    victim.symlink_to(tmp_path / "videos" / "secret.txt")  # swapped for a link out after start-up
    assert client.get(state["pair"]["right"]).status_code == 404

    vote = {"t": token, "slot": slot, "choice": "left", "client_ms": 4000, "watched_left": 1, "watched_right": 2}
    assert client.post("/api/vote", json={**vote, "choice": "up"}).status_code == 422
    assert client.post("/api/vote", json={**vote, "slot": 99}).status_code == 404
    assert client.post("/api/vote", json={**vote, "slot": slot + 1}).status_code == 409  # never shown
    assert client.post("/api/vote", json={**vote, "t": "forged"}).status_code == 403
    reply = client.post("/api/vote", json=vote).json()
    assert reply["status"] == "recorded" and reply["rated"] == 1
    assert store.votes()[0].watched_right == 1.0  # clamped
    stale = client.post("/api/vote", json={**vote, "choice": "right"}).json()  # a second tab's old pair
    assert stale["status"] == "already" and stale["rated"] == 1 and store.votes()[0].choice == "left"


def test_results_are_the_owners_until_the_study_closes(tmp_path, capsys):
    store, design = open_study(tmp_path, encode=False, lock_s=0.0)
    client = TestClient(create_app(store, design))
    state = enrol(client, "bob")
    client.post("/api/vote", json={"t": state["token"], "slot": state["pair"]["slot"], "choice": "tie"})
    for name in ("table2.md", "table2.csv", "annotators.csv", "votes.csv", "votes.jsonl"):
        assert client.get(f"/export/{name}").status_code == 403
        assert client.get(f"/export/{name}", params={"owner": state["token"]}).status_code == 403
        assert client.get(f"/export/{name}", params={"owner": owner_token(store.secret)}).status_code == 200
    assert client.get("/export/../study.sqlite").status_code == 404
    assert client.get("/export/study.sqlite", params={"owner": owner_token(store.secret)}).status_code == 404
    assert main(["study-report", f"db={store.path}", "close=true"]) == 0
    assert "closed" in capsys.readouterr().out
    assert client.get("/export/votes.jsonl").text.count("\n") == 1  # public once closed
    state = client.get("/api/state", params={"t": state["token"]}).json()
    reply = client.post("/api/vote", json={"t": state["token"], "slot": state["pair"]["slot"], "choice": "tie"})
    assert reply.status_code == 403 and "closed" in reply.json()["detail"]


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
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
            return proc
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not start in 60 s")


def test_kill_9_mid_session_loses_no_vote_and_doubles_none(tmp_path):
    prompts = [f"clip {i}" for i in range(6)]
    folders = write_study_folders(tmp_path / "v", systems=("ours", "a", "b"), prompts=prompts)
    file = write_prompts(tmp_path / "p.txt", prompts)
    db = tmp_path / "votes.sqlite"
    args = [systems_arg(folders), f"prompts={file}", f"db={db}", "lock_s=0"]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(tmp_path / "server.log", "w") as log:
        server = start_server(args, port, log)
        token = call(f"{base}/api/enrol", {"name": "ann"})["token"]
        call(f"{base}/api/consent", {"t": token})
        acked, attempted, stop = [], [], threading.Event()

        def voter():  # votes as fast as the server answers, until the server dies under it
            choices = ["left", "right", "tie"]
            try:
                while not stop.is_set():
                    state = call(f"{base}/api/state?t={token}")
                    vote = (state["pair"]["slot"], choices[len(attempted) % 3])
                    attempted.append(vote)
                    reply = call(f"{base}/api/vote", {"t": token, "slot": vote[0], "choice": vote[1]})
                    assert reply["status"] == "recorded"
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
            stored = conn.execute("SELECT slot, choice FROM votes WHERE annotator='ann' ORDER BY id").fetchall()
        assert stored[:len(acked)] == acked  # every answered vote is on disk, in order
        assert len(stored) <= len(acked) + 1 and stored == attempted[:len(stored)]

        server = start_server(args, port, log)
        try:
            for slot, choice in attempted:  # the client retries everything it is unsure of
                reply = call(f"{base}/api/vote", {"t": token, "slot": slot, "choice": choice})
                assert reply["status"] == ("recorded" if (slot, choice) not in stored else "already")
            state = call(f"{base}/api/state?t={token}")
            assert state["rated"] == len(set(attempted))
            while not state["done"]:
                state = call(f"{base}/api/vote", {"t": token, "slot": state["pair"]["slot"], "choice": "left"})
            assert state["rated"] == state["total"] == 12 and len(state["code"]) == 8
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT slot, COUNT(*) FROM votes GROUP BY annotator, slot").fetchall()
    assert len(rows) == 12 and all(n == 1 for _, n in rows)
