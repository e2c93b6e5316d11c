"""The study's SQLite file: its committed design and every vote.

The design (the prompt file's sha256, every video's sha256, the pairs and their sides) is written in
one transaction when the study is created, before the first vote can exist; reopening the study
recomputes it and refuses to go on if the prompt file or a video changed. Votes are one INSERT each
in autocommit mode (a committed transaction before the server answers; WAL with synchronous=FULL),
and UNIQUE(annotator, pair_id) makes a repeated vote -- a retry after a killed server, a second
tab -- a no-op: no vote is lost, none is counted twice.
"""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from oneforcing.errors import UserError
from oneforcing.runtime import derive_seed
from oneforcing.study import CHOICES
from oneforcing.study.design import StudyDesign, file_sha256

SCHEMA_VERSION = "1"
# What every study's meta table holds (created by _create), and how each value must parse.
META = {"prompts_sha256": "text", "prompts_file": "text", "prompts": "a JSON list", "systems": "a JSON object",
        "seed": "an integer", "samples_per_prompt": "an integer"}
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE videos (system TEXT NOT NULL, file TEXT NOT NULL, sha256 TEXT NOT NULL, PRIMARY KEY (system, file));
CREATE TABLE pairs (id INTEGER PRIMARY KEY, prompt TEXT NOT NULL, sample INTEGER NOT NULL, ours TEXT NOT NULL,
                    baseline TEXT NOT NULL, left_system TEXT NOT NULL, right_system TEXT NOT NULL);
CREATE TABLE annotators (name TEXT PRIMARY KEY, created REAL NOT NULL);
CREATE TABLE votes (id INTEGER PRIMARY KEY AUTOINCREMENT, annotator TEXT NOT NULL,
                    pair_id INTEGER NOT NULL REFERENCES pairs(id),
                    choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'tie')),
                    winner TEXT NOT NULL, created REAL NOT NULL, UNIQUE (annotator, pair_id));
"""


@dataclass(frozen=True)
class PairRow:
    id: int
    prompt: str
    sample: int
    ours: str
    baseline: str
    left: str
    right: str


class StudyStore:
    """One study file. Every method opens its own connection: the web server calls from threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.meta = self._read_meta()
        with self._connect() as conn:
            rows = conn.execute("SELECT id, prompt, sample, ours, baseline, left_system, right_system "
                                "FROM pairs ORDER BY id").fetchall()
        self.pairs = {row[0]: PairRow(*row) for row in rows}
        self.seed = int(self.meta["seed"])

    # --- opening ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _connect(self):
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            conn.execute("PRAGMA synchronous=FULL")
            yield conn
        finally:
            conn.close()

    def _read_meta(self) -> dict:
        if not self.path.is_file():
            raise UserError(f"no such study database: {self.path}", key="db")
        try:
            with self._connect() as conn:
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError:
            raise UserError(f"not a study database: {self.path}", key="db") from None
        if "schema" not in meta:
            raise UserError(f"not a study database: {self.path} (its meta table names no schema)", key="db")
        if meta["schema"] != SCHEMA_VERSION:
            raise UserError(f"{self.path}: study schema {meta.get('schema')!r}, expected {SCHEMA_VERSION}", key="db")
        for key, kind in META.items():
            if not _parses(meta.get(key), kind):
                what = "missing" if key not in meta else f"not {kind}"
                raise UserError(f"{self.path}: damaged study: meta key {key!r} is {what}", key="db")
        return meta

    def _check_writable(self) -> None:
        """A vote must be saved: try a write that changes nothing, and roll it back."""
        try:
            with self._connect() as conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("UPDATE meta SET value = value WHERE key = 'schema'")
                conn.execute("ROLLBACK")
        except sqlite3.OperationalError as err:
            raise UserError(f"{self.path}: votes cannot be saved ({err}); make it writable, with its folder",
                            key="db") from None

    @classmethod
    def open(cls, path: str | Path, design: StudyDesign) -> "StudyStore":
        """Create the study from `design`, or reopen it after checking that nothing it committed changed."""
        path = Path(path).expanduser()
        hashes = {(name, file.name): file_sha256(file) for name, file in design.videos()}
        if not _has_meta(path):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                _create(path, design, hashes)
            except (OSError, sqlite3.OperationalError) as err:
                raise UserError(f"cannot create the study database {path}: {err}", key="db") from None
        store = cls(path)
        store._check(design, hashes)
        store._check_writable()
        return store

    def _check(self, design: StudyDesign, hashes: dict) -> None:
        meta = self.meta
        if meta["prompts_sha256"] != design.prompts_sha256:
            raise UserError(f"the prompt file changed since the study began (sha256 {meta['prompts_sha256'][:12]} "
                            f"committed in {self.path}, {design.prompts_sha256[:12]} now): restore it or start a "
                            f"new db", file=str(design.prompts_file), key="prompts")
        systems = json.loads(meta["systems"])
        if list(systems) != list(design.systems):
            raise UserError(f"{self.path} holds a study of {list(systems)}, not {list(design.systems)}",
                            key="systems")
        for key, now in (("seed", design.seed), ("samples_per_prompt", design.samples_per_prompt)):
            if int(meta[key]) != now:
                raise UserError(f"{self.path} was created with {key}={meta[key]}, not {now}", key=key)
        with self._connect() as conn:
            stored = {(s, f): h for s, f, h in conn.execute("SELECT system, file, sha256 FROM videos")}
        for (system, file), digest in hashes.items():
            if stored.get((system, file)) != digest:
                raise UserError(f"{design.systems[system]}: '{file}' changed since the study began "
                                f"(its sha256 is committed in {self.path})", key=f"systems.{system}")
        wanted = [(p.prompt, p.sample, p.ours, p.baseline, p.left) for p in design.pairs]
        if wanted != [(p.prompt, p.sample, p.ours, p.baseline, p.left) for p in self.pairs.values()]:
            raise UserError(f"{self.path} holds other pairs than this design makes", key="db")

    # --- annotators and votes ----------------------------------------------------------------------
    def add_annotator(self, name: str) -> None:
        with self._connect() as conn:
            conn.execute("INSERT OR IGNORE INTO annotators (name, created) VALUES (?, ?)", (name, time.time()))

    def order(self, name: str) -> list[int]:
        """The order in which `name` sees the pairs: shuffled per annotator, fixed by the seed."""
        ids = sorted(self.pairs)
        random.Random(derive_seed(self.seed, "study-order", name)).shuffle(ids)
        return ids

    def rated(self, name: str) -> set[int]:
        with self._connect() as conn:
            return {r[0] for r in conn.execute("SELECT pair_id FROM votes WHERE annotator = ?", (name,))}

    def next_pair(self, name: str) -> tuple[PairRow | None, int]:
        """(the first pair in `name`'s order not yet rated or None, how many are rated)."""
        done = self.rated(name)
        pending = [i for i in self.order(name) if i not in done]
        return (self.pairs[pending[0]] if pending else None), len(done)

    def vote(self, name: str, pair_id: int, choice: str) -> bool:
        """Record a vote; False if this annotator had already rated this pair (nothing changes)."""
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}, got {choice!r}")
        pair = self.pairs[pair_id]
        winner = {"left": pair.left, "right": pair.right, "tie": "tie"}[choice]
        with self._connect() as conn:
            cur = conn.execute("INSERT OR IGNORE INTO votes (annotator, pair_id, choice, winner, created) "
                               "VALUES (?, ?, ?, ?, ?)", (name, pair_id, choice, winner, time.time()))
            return cur.rowcount == 1

    def votes(self) -> list[tuple[str, int, str, str]]:
        """(annotator, pair_id, choice, winner) for every vote, in the order they were cast."""
        with self._connect() as conn:
            return conn.execute("SELECT annotator, pair_id, choice, winner FROM votes ORDER BY id").fetchall()

    def annotators(self) -> list[str]:
        with self._connect() as conn:
            return [r[0] for r in conn.execute("SELECT name FROM annotators ORDER BY created")]


def _parses(value, kind: str) -> bool:
    """Whether a meta value is `kind` (one of META's)."""
    if not isinstance(value, str):
        return False
    try:
        if kind == "an integer":
            int(value)
        elif kind != "text":
            return isinstance(json.loads(value), list if kind == "a JSON list" else dict)
    except ValueError:
        return False
    return True


def _has_meta(path: Path) -> bool:
    """Whether `path` holds a study (its meta table); False for no file or an empty database.
    An SQLite file of another application is refused: the study never adds its tables to it."""
    if not path.exists():
        return False
    try:
        conn = sqlite3.connect(path)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        raise UserError(f"not a study database: {path}", key="db") from None
    if tables and "meta" not in tables:
        shown = ", ".join(sorted(tables)[:5])
        raise UserError(f"not a study database: {path} holds another application's tables ({shown}); "
                        "give the study a file of its own", key="db")
    return "meta" in tables


def _create(path: Path, design: StudyDesign, hashes: dict) -> None:
    """Every table and the whole design in one transaction: a kill leaves no half-made study."""
    meta = {"schema": SCHEMA_VERSION, "prompts_sha256": design.prompts_sha256,
            "prompts_file": str(design.prompts_file), "prompts": json.dumps(design.prompts),
            "systems": json.dumps({k: str(v) for k, v in design.systems.items()}), "seed": str(design.seed),
            "samples_per_prompt": str(design.samples_per_prompt), "created": str(time.time())}
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")  # persistent: readers never block the writer
        conn.execute("BEGIN IMMEDIATE")
        for statement in SCHEMA.strip().split(";\n"):
            conn.execute(statement)
        conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        conn.executemany("INSERT INTO videos VALUES (?, ?, ?)", [(s, f, h) for (s, f), h in hashes.items()])
        conn.executemany("INSERT INTO pairs VALUES (?, ?, ?, ?, ?, ?, ?)",
                         [(i, p.prompt, p.sample, p.ours, p.baseline, p.left, p.right)
                          for i, p in enumerate(design.pairs, 1)])
        conn.execute("COMMIT")
    finally:
        conn.close()
