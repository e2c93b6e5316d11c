"""The study's SQLite file: its committed design and protocol, what each annotator was shown, every vote.

The design (the prompt file's sha256, every video's sha256, the pairs) and the protocol (instructions,
checks, exclusion rules) are written in
one transaction when the study is created, before the first vote can exist; reopening the study
recomputes it and refuses to go on if the prompt file or a video changed. Votes are one INSERT each
in autocommit mode (a committed transaction before the server answers; WAL with synchronous=FULL),
and UNIQUE(annotator, slot) makes a repeated vote -- a retry after a killed server, a second tab --
a no-op that the page is told about: no vote is lost, none is counted twice.
"""

from __future__ import annotations

import contextlib
import json
import random
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from oneforcing.errors import UserError
from oneforcing.runtime import derive_seed
from oneforcing.study import CHOICES
from oneforcing.study.design import GOLD, StudyDesign, file_sha256
from oneforcing.study.protocol import Protocol

SCHEMA_VERSION = "2"
# What every study's meta table holds (created by _create), and how each value must parse.
META = {"prompts_sha256": "text", "prompts_file": "text", "prompts": "a JSON list", "systems": "a JSON object",
        "seed": "an integer", "samples_per_prompt": "an integer", "protocol": "a JSON object", "secret": "text"}
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE videos (system TEXT NOT NULL, file TEXT NOT NULL, sha256 TEXT NOT NULL, PRIMARY KEY (system, file));
CREATE TABLE pairs (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, prompt TEXT NOT NULL, sample INTEGER NOT NULL,
                    a TEXT NOT NULL, b TEXT NOT NULL);
CREATE TABLE annotators (id TEXT PRIMARY KEY, created REAL NOT NULL, consented REAL);
CREATE TABLE shown (annotator TEXT NOT NULL, slot INTEGER NOT NULL, first_shown REAL NOT NULL,
                    PRIMARY KEY (annotator, slot));
CREATE TABLE votes (id INTEGER PRIMARY KEY AUTOINCREMENT, annotator TEXT NOT NULL, slot INTEGER NOT NULL,
                    pair_id INTEGER NOT NULL REFERENCES pairs(id), repeat INTEGER NOT NULL,
                    left_system TEXT NOT NULL, right_system TEXT NOT NULL,
                    choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'tie')), winner TEXT NOT NULL,
                    client_ms REAL, server_ms REAL NOT NULL, watched_left REAL, watched_right REAL,
                    created REAL NOT NULL, UNIQUE (annotator, slot));
"""


@dataclass(frozen=True)
class PairRow:
    id: int
    kind: str  # main | gold
    prompt: str
    sample: int
    a: str
    b: str


@dataclass(frozen=True)
class Vote:
    annotator: str
    slot: int
    pair_id: int
    repeat: int
    left: str
    right: str
    choice: str
    winner: str  # a system or "tie"
    client_ms: float | None  # since the pair appeared, as the page measured it
    server_ms: float  # since the server first sent the pair to this annotator
    watched_left: float | None  # share of each clip's length played before the vote
    watched_right: float | None
    created: float


class StudyStore:
    """One study file. Every method opens its own connection: the web server calls from threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.meta = self._read_meta()
        with self._connect() as conn:
            rows = conn.execute("SELECT id, kind, prompt, sample, a, b FROM pairs ORDER BY id").fetchall()
        self.pairs = {row[0]: PairRow(*row) for row in rows}
        self.seed = int(self.meta["seed"])
        self.systems = list(json.loads(self.meta["systems"]))
        self.protocol = Protocol(**json.loads(self.meta["protocol"]))
        self.secret = self.meta["secret"]

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
            raise UserError(f"{self.path}: study schema {meta.get('schema')!r}, expected {SCHEMA_VERSION} (made by "
                            "another version of oneforcing: report it with that version, or start a new db)", key="db")
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
    def open(cls, path: str | Path, design: StudyDesign, protocol: Protocol | None = None,
             seed: int = 0) -> "StudyStore":
        """Create the study from `design`, or reopen it after checking that nothing it committed changed."""
        path = Path(path).expanduser()
        protocol = protocol or Protocol()
        hashes = {(name, file.name): file_sha256(file) for name, file in design.videos()}
        if not _has_meta(path):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                _create(path, design, hashes, protocol, seed)
            except (OSError, sqlite3.OperationalError) as err:
                raise UserError(f"cannot create the study database {path}: {err}", key="db") from None
        store = cls(path)
        store._check(design, hashes, protocol, seed)
        store._check_writable()
        return store

    def _check(self, design: StudyDesign, hashes: dict, protocol: Protocol, seed: int) -> None:
        meta = self.meta
        if meta["prompts_sha256"] != design.prompts_sha256:
            raise UserError(f"the prompt file changed since the study began (sha256 {meta['prompts_sha256'][:12]} "
                            f"committed in {self.path}, {design.prompts_sha256[:12]} now): restore it or start a "
                            f"new db", file=str(design.prompts_file), key="prompts")
        systems = json.loads(meta["systems"])
        if list(systems) != list(design.systems):
            raise UserError(f"{self.path} holds a study of {list(systems)}, not {list(design.systems)}",
                            key="systems")
        for key, now in (("seed", seed), ("samples_per_prompt", design.samples_per_prompt)):
            if int(meta[key]) != now:
                raise UserError(f"{self.path} was created with {key}={meta[key]}, not {now}", key=key)
        for key, was in json.loads(meta["protocol"]).items():  # the rules were stated before the first vote
            now = protocol.committed()[key]
            if was != now:
                shown = "the text changed" if key == "instructions" else f"{was!r} committed, {now!r} now"
                raise UserError(f"changed since the study began ({shown} in {self.path}): restore it or start "
                                "a new db", key=key)
        with self._connect() as conn:
            stored = {(s, f): h for s, f, h in conn.execute("SELECT system, file, sha256 FROM videos")}
        for (system, file), digest in hashes.items():
            if stored.get((system, file)) != digest:
                key = "attention_checks" if system == GOLD else f"systems.{system}"
                raise UserError(f"{design.folder(system)}: '{file}' changed since the study began "
                                f"(its sha256 is committed in {self.path})", key=key)
        wanted = [(p.kind, p.prompt, p.sample, p.a, p.b) for p in design.pairs]
        if wanted != [(p.kind, p.prompt, p.sample, p.a, p.b) for p in self.pairs.values()]:
            raise UserError(f"{self.path} holds other pairs than this design makes", key="db")

    # --- what each annotator sees ---------------------------------------------------------------
    def sequence(self, annotator: str) -> list[tuple[int, int]]:
        """(pair id, repeat) in the order `annotator` sees them: every pair once, shuffled per annotator
        from the seed, then `repeats` main pairs of the first half again, each later than its first
        showing (sides swapped)."""
        rng = random.Random(derive_seed(self.seed, "study-order", annotator))
        ids = sorted(self.pairs)
        rng.shuffle(ids)
        seq = [(i, 0) for i in ids]
        half = [i for i in ids[: max(1, len(ids) // 2)] if self.pairs[i].kind == "main"]
        for pid in rng.sample(half, min(self.protocol.repeats, len(half))):
            first = seq.index((pid, 0))
            seq.insert(rng.randint(min(first + 3, len(seq)), len(seq)), (pid, 1))
        return seq

    def sides(self, annotator: str, pair_id: int, repeat: int) -> tuple[str, str]:
        """(left system, right system): drawn per annotator and pair, swapped on the repeat."""
        pair = self.pairs[pair_id]
        a_left = (derive_seed(self.seed, "study-side", annotator, pair_id) & 1 == 1) != bool(repeat)
        return (pair.a, pair.b) if a_left else (pair.b, pair.a)

    # --- annotators and votes ----------------------------------------------------------------------
    def add_annotator(self, annotator: str) -> None:
        with self._connect() as conn:
            conn.execute("INSERT OR IGNORE INTO annotators (id, created) VALUES (?, ?)", (annotator, time.time()))

    def consent(self, annotator: str) -> None:
        with self._connect() as conn:
            conn.execute("UPDATE annotators SET consented = ? WHERE id = ? AND consented IS NULL",
                         (time.time(), annotator))

    def consented(self, annotator: str) -> bool:
        with self._connect() as conn:
            row = conn.execute("SELECT consented FROM annotators WHERE id = ?", (annotator,)).fetchone()
        return row is not None and row[0] is not None

    def rated(self, annotator: str) -> set[int]:
        """The slots `annotator` has voted on."""
        with self._connect() as conn:
            return {r[0] for r in conn.execute("SELECT slot FROM votes WHERE annotator = ?", (annotator,))}

    def next_slot(self, annotator: str) -> tuple[int | None, int]:
        """(the first slot of `annotator`'s sequence not yet voted on, or None; how many are voted)."""
        done = self.rated(annotator)
        total = len(self.sequence(annotator))
        return next((s for s in range(total) if s not in done), None), len(done)

    def show(self, annotator: str, slot: int) -> float:
        """Note that `slot` was sent to `annotator` (the first time counts); -> that time."""
        with self._connect() as conn:
            conn.execute("INSERT OR IGNORE INTO shown VALUES (?, ?, ?)", (annotator, slot, time.time()))
            return conn.execute("SELECT first_shown FROM shown WHERE annotator = ? AND slot = ?",
                                (annotator, slot)).fetchone()[0]

    def vote(self, annotator: str, slot: int, choice: str, client_ms: float | None = None,
             watched: tuple[float | None, float | None] = (None, None), min_ms: float = 0.0) -> str:
        """Record a vote on a slot that was shown; -> "recorded", "already" (this slot was voted on:
        nothing changes), "not shown" or "too early" (sooner than `min_ms` after it was shown)."""
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}, got {choice!r}")
        pair_id, repeat = self.sequence(annotator)[slot]
        left, right = self.sides(annotator, pair_id, repeat)
        winner = {"left": left, "right": right, "tie": "tie"}[choice]
        now = time.time()
        with self._connect() as conn:
            if conn.execute("SELECT 1 FROM votes WHERE annotator = ? AND slot = ?", (annotator, slot)).fetchone():
                return "already"
            shown = conn.execute("SELECT first_shown FROM shown WHERE annotator = ? AND slot = ?",
                                 (annotator, slot)).fetchone()
            if shown is None:
                return "not shown"
            server_ms = 1000 * (now - shown[0])
            if server_ms < min_ms:
                return "too early"
            cur = conn.execute("INSERT OR IGNORE INTO votes (annotator, slot, pair_id, repeat, left_system, "
                               "right_system, choice, winner, client_ms, server_ms, watched_left, watched_right, "
                               "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               (annotator, slot, pair_id, repeat, left, right, choice, winner, client_ms,
                                server_ms, *watched, now))
            return "recorded" if cur.rowcount == 1 else "already"

    def votes(self) -> list[Vote]:
        """Every vote, in the order they were cast."""
        with self._connect() as conn:
            rows = conn.execute("SELECT annotator, slot, pair_id, repeat, left_system, right_system, choice, "
                                "winner, client_ms, server_ms, watched_left, watched_right, created "
                                "FROM votes ORDER BY id").fetchall()
        return [Vote(*row) for row in rows]

    def annotators(self, consented: bool = False) -> list[str]:
        """Everyone who opened their link (or enrolled), in that order; `consented`: who also began."""
        where = " WHERE consented IS NOT NULL" if consented else ""
        with self._connect() as conn:
            return [r[0] for r in conn.execute(f"SELECT id FROM annotators{where} ORDER BY created")]

    # --- closing -------------------------------------------------------------------------------------
    def closed(self) -> bool:
        """Closed studies take no votes, and their results are public (read fresh: another process closes)."""
        with self._connect() as conn:
            return conn.execute("SELECT 1 FROM meta WHERE key = 'closed'").fetchone() is not None

    def close(self) -> None:
        with self._connect() as conn:
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('closed', ?)", (str(time.time()),))


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


def _create(path: Path, design: StudyDesign, hashes: dict, protocol: Protocol, seed: int) -> None:
    """Every table and the whole design in one transaction: a kill leaves no half-made study."""
    meta = {"schema": SCHEMA_VERSION, "prompts_sha256": design.prompts_sha256,
            "prompts_file": str(design.prompts_file), "prompts": json.dumps(design.prompts),
            "systems": json.dumps({k: str(v) for k, v in design.systems.items()}), "seed": str(seed),
            "samples_per_prompt": str(design.samples_per_prompt), "created": str(time.time()),
            "protocol": json.dumps(protocol.committed()), "secret": secrets.token_hex(16)}
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")  # persistent: readers never block the writer
        conn.execute("BEGIN IMMEDIATE")
        for statement in SCHEMA.strip().split(";\n"):
            conn.execute(statement)
        conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        conn.executemany("INSERT INTO videos VALUES (?, ?, ?)", [(s, f, h) for (s, f), h in hashes.items()])
        conn.executemany("INSERT INTO pairs VALUES (?, ?, ?, ?, ?, ?)",
                         [(i, p.kind, p.prompt, p.sample, p.a, p.b) for i, p in enumerate(design.pairs, 1)])
        conn.execute("COMMIT")
    finally:
        conn.close()
