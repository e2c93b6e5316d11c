"""The study refuses, before serving, what would lose votes, damage files or unblind a pair: another
application's SQLite file, a database that cannot be written, a damaged study, a bad roster or
protocol key, a clip that does not decode or differs in length or size from its pair's other clip;
its API answers a NaN with a 400."""

import hashlib
import os
import socket
import sqlite3

import numpy as np
import pytest
from fastapi.testclient import TestClient

from oneforcing.cli import main
from oneforcing.errors import UserError
from oneforcing.study.app import create_app
from oneforcing.study.design import build_design
from oneforcing.study.store import StudyStore
from oneforcing.testing.study_videos import stub_mp4, write_prompts, write_study_folders
from oneforcing.video import write_mp4


@pytest.fixture
def study(tmp_path):
    folders = write_study_folders(tmp_path / "videos")  # real clips: the study decodes them before serving
    prompts = write_prompts(tmp_path / "prompts.txt")
    return folders, prompts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def never_serve(monkeypatch):
    """A study that gets as far as serving has failed these tests (and would not return)."""
    import uvicorn

    def serve(*args, **kwargs):
        raise AssertionError("the study started serving")

    monkeypatch.setattr(uvicorn, "run", serve)


def study_cli(capsys, folders, prompts, db, *extra) -> str:
    systems = "systems={" + ", ".join(f"{k}: {v}" for k, v in folders.items()) + "}"
    code = main(["study", systems, f"prompts={prompts}", f"db={db}", f"port={free_port()}", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), (code, err)
    return err


def digest(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_another_applications_sqlite_file_is_refused_untouched(study, tmp_path, capsys):
    folders, prompts = study
    (tmp_path / "app").mkdir()
    foreign = tmp_path / "app" / "app.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
        conn.execute("INSERT INTO users (email) VALUES ('a@example.org')")
    conn.close()
    before = digest(tmp_path / "app")
    err = study_cli(capsys, folders, prompts, foreign)
    assert "db: not a study database" in err and "another application's tables (users)" in err
    assert digest(tmp_path / "app") == before  # no table added, no WAL switch, no -wal file


def test_an_empty_file_becomes_a_study(study, tmp_path):
    folders, prompts = study
    (tmp_path / "new.sqlite").touch()  # e.g. made by `touch` or mktemp: no tables yet
    assert len(StudyStore.open(tmp_path / "new.sqlite", build_design(folders, str(prompts))).pairs) == 3


def test_a_database_that_cannot_be_written_is_refused_at_start(study, tmp_path, capsys, monkeypatch):
    folders, prompts = study
    db = tmp_path / "votes" / "s.sqlite"
    store = StudyStore.open(db, build_design(folders, str(prompts)))
    store.show("alice", 0)
    store.vote("alice", 0, "left")
    for p in [*db.parent.iterdir(), db.parent]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    if os.geteuid() == 0:  # root writes through file modes: open the file read-only, as they would
        connect = sqlite3.connect
        monkeypatch.setattr(sqlite3, "connect", lambda path, **kw: connect(f"file:{path}?mode=ro", uri=True, **kw))
    try:
        with pytest.raises(UserError, match="votes cannot be saved .*readonly"):
            StudyStore.open(db, build_design(folders, str(prompts)))
        assert "db: " in study_cli(capsys, folders, prompts, db)
    finally:
        db.parent.chmod(0o755)


@pytest.mark.parametrize("change,expect", [
    ("DELETE FROM meta WHERE key = 'seed'", "meta key 'seed' is missing"),
    ("UPDATE meta SET value = '{oops' WHERE key = 'systems'", "meta key 'systems' is not a JSON object"),
    ("UPDATE meta SET value = 'three' WHERE key = 'samples_per_prompt'", "'samples_per_prompt' is not an integer"),
    ("DELETE FROM meta WHERE key = 'schema'", "its meta table names no schema"),
    ("UPDATE meta SET value = '1' WHERE key = 'schema'", "study schema '1', expected 2 (made by another version"),
])
def test_a_damaged_study_is_one_line(study, tmp_path, capsys, change, expect):
    folders, prompts = study
    db = tmp_path / "s.sqlite"
    StudyStore.open(db, build_design(folders, str(prompts)))
    with sqlite3.connect(db) as conn:
        conn.execute(change)
    conn.close()
    code = main(["study-report", f"db={db}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "db: " in err and expect in err and len(err.splitlines()) == 1
    assert expect in study_cli(capsys, folders, prompts, db)


def test_nan_and_infinity_in_a_body_are_a_400_not_a_500(study, tmp_path):
    folders, prompts = study
    design = build_design(folders, str(prompts))
    store = StudyStore.open(tmp_path / "s.sqlite", design)
    client = TestClient(create_app(store, design), raise_server_exceptions=True)
    for url, body in [("/api/vote", '{"t": "a", "slot": NaN, "choice": "left"}'),
                      ("/api/vote", '{"t": "a", "slot": -Infinity, "choice": "left"}'),
                      ("/api/vote", '{"t": "a", "slot": 0, "choice": "left", "client_ms": NaN}'),
                      ("/api/enrol", '{"name": NaN}')]:
        reply = client.post(url, content=body, headers={"content-type": "application/json"})
        assert (reply.status_code, reply.json()) == (400, {"detail": "NaN and Infinity are not JSON numbers"}), body
    reply = client.post("/api/vote", json={"t": "a", "slot": 0, "choice": "up"})
    assert reply.status_code == 422 and reply.json()["detail"][0]["loc"] == ["body", "choice"]
    assert store.votes() == []


@pytest.mark.parametrize("damage,expect", [
    (lambda b: b[: len(b) // 2], "truncated: box 'mdat'"),
    (lambda b: b"<html>not found</html>" * 10, "not an mp4 file"),
    (lambda b: b[:-8] + b"\x00\x00\x00\x08", "truncated: box"),
], ids=["truncated", "an_html_page", "trailing_bytes"])
def test_a_corrupt_clip_is_refused_before_its_hash_is_committed(tmp_path, capsys, damage, expect):
    folders = write_study_folders(tmp_path / "videos", encode=True)  # real mp4s: they pass
    prompts = write_prompts(tmp_path / "prompts.txt")
    build_design(folders, str(prompts))
    clip = next(iter(sorted((tmp_path / "videos" / "baseline").iterdir())))
    clip.write_bytes(damage(clip.read_bytes()))
    err = study_cli(capsys, folders, prompts, tmp_path / "db.sqlite")
    assert "systems.baseline: " in err and "is not a playable mp4" in err and expect in err
    assert not (tmp_path / "db.sqlite").exists()


def test_a_clip_that_does_not_decode_or_differs_from_its_pair_is_refused(study, tmp_path, capsys):
    folders, prompts = study
    clip = sorted((tmp_path / "videos" / "baseline").iterdir())[0]
    good = clip.read_bytes()
    clip.write_bytes(stub_mp4(b"no stream here" * 40))  # whole mp4 boxes, nothing a player can decode
    err = study_cli(capsys, folders, prompts, tmp_path / "db.sqlite")
    assert "systems.baseline: " in err and "does not decode" in err and not (tmp_path / "db.sqlite").exists()
    clip.write_bytes(good)
    write_mp4(clip, np.zeros((12, 64, 64, 3), np.uint8))  # 12 frames against ours' 16
    err = study_cli(capsys, folders, prompts, tmp_path / "db.sqlite")
    assert "systems.baseline: " in err and "is 16 frames of 64x64 at 16 fps in ours but 12 frames of 64x64" in err
    write_mp4(clip, np.zeros((16, 48, 64, 3), np.uint8))
    assert "16 frames of 64x48 at 16 fps in baseline" in study_cli(capsys, folders, prompts, tmp_path / "db.sqlite")
    write_mp4(clip, np.zeros((16, 64, 64, 3), np.uint8), fps=8)  # the same frames, played twice as long
    assert "16 frames of 64x64 at 8 fps in baseline" in study_cli(capsys, folders, prompts, tmp_path / "db.sqlite")


@pytest.mark.parametrize("extra,expect", [
    (["roster=nope.txt"], "roster: no such roster file: nope.txt"),
    (["roster={roster}"], "{roster}: roster: line 3: 'ALICE' repeats line 1 (ids ignore case)"),
    (["exclude={{min_gold: 0.5}}"], "exclude.min_gold: unknown rule 'min_gold'"),
    (["exclude={{max_fast_share: 2}}"], "exclude.max_fast_share: must be a number in [0, 1], got 2"),
    (["lock_s=-1"], "lock_s: must be a number in [0, 60]"),
    (["repeats=two"], "repeats: job 'study': expected int, got str 'two'"),
    (["pairing=some"], "pairing: must be 'ours'"),
    (["instructions=missing.md"], "instructions: no such file: missing.md"),
    (["attention_checks=9"], "attention_checks: 9 attention checks, but the study has only 3 clips of ours"),
    (["url=example.org"], "url: expected the page's public address"),
], ids=["no_roster", "roster_duplicate", "exclude_unknown", "exclude_range", "lock", "repeats", "pairing",
        "instructions", "too_many_checks", "url"])
def test_a_bad_protocol_key_is_one_line_naming_it(study, tmp_path, capsys, extra, expect):
    folders, prompts = study
    roster = tmp_path / "roster.txt"
    roster.write_text("alice\nbob\nALICE\n")
    expect = expect.format(roster=roster)
    err = study_cli(capsys, folders, prompts, tmp_path / "db.sqlite", *[e.format(roster=roster) for e in extra])
    assert expect in err, err
    assert not (tmp_path / "db.sqlite").exists()
