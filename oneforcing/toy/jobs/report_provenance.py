"""What a toy-report task was made from, and the lock that keeps two reports out of one runs folder.

A task's cache key hashes what decides its numbers: its resolved recipes, the oneforcing/ source
files, the contents of the packaged assets it reads, the torch version and the CPU architecture.
Its record (task.json) adds what identifies the run without deciding it: the git commit (or
"uncommitted" and a hash of the diff against HEAD), the platform and the CPU count
(oneforcing/provenance.py, shared with the VBench export's manifest). The commit is
not in the key, so committing the code a report ran on does not re-run it; the source hash is.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
from pathlib import Path

from oneforcing.config.assets import ASSETS
from oneforcing.errors import UserError
from oneforcing.provenance import code_version, machine

PACKAGE = Path(__file__).resolve().parents[2]           # oneforcing/
# The report's own text-writing modules: they build the commands (hashed via the resolved recipes)
# and write the markdown, and never change what a task computes, so editing them re-runs nothing.
REPORT_ONLY = ("toy/jobs/report.py", "toy/jobs/report_doc.py", "toy/jobs/report_claims.py",
               "toy/jobs/report_stats.py", "toy/jobs/report_provenance.py")


def _hash_files(files: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def source_hash() -> str:
    """sha256 over the package's Python sources (path and bytes), the report's own modules left out."""
    files = [f for f in PACKAGE.rglob("*.py") if "__pycache__" not in f.parts
             and ASSETS not in f.parents and f.relative_to(PACKAGE).as_posix() not in REPORT_ONLY]
    return _hash_files(files, PACKAGE)


@functools.lru_cache(maxsize=None)
def asset_hash(name: str) -> str:
    """sha256 of one packaged asset (a file, or every file of a folder)."""
    path = ASSETS / name
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return _hash_files(files, ASSETS)


def assets_read(resolved: list, implicit: tuple[Path, ...] = ()) -> dict[str, str]:
    """{asset name: hash} for every packaged asset a task's resolved recipes name (any string
    under the assets folder), plus `implicit` ones its jobs read by default."""
    root = str(ASSETS) + os.sep
    names = {Path(p).relative_to(ASSETS).parts[0] for p in implicit}

    def walk(value):
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, str) and root in value:
            names.add(value.split(root, 1)[1].split(os.sep, 1)[0].split("/", 1)[0])

    walk(resolved)
    return {n: asset_hash(n) for n in sorted(names) if (ASSETS / n).exists()}


def provenance(resolved: list, implicit: tuple[Path, ...] = ()) -> tuple[str, dict]:
    """(cache key, record) of a task with these resolved recipes."""
    m = machine()
    keyed = {"recipes": resolved, "source_sha256": source_hash(), "assets": assets_read(resolved, implicit),
             "torch": m["torch"], "arch": m["arch"]}
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]
    record = {"source_sha256": keyed["source_sha256"], "assets": keyed["assets"], "code": code_version(),
              "machine": m}
    return key, record


# --- the lock ---------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's live process
        return True
    return True


class RunsLock:
    """An O_EXCL lock file holding {pid, host}. A lock whose process is gone (same host) is stale
    and taken over; a live one makes a second report stop with one line naming the lock."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.held = False

    def acquire(self) -> "RunsLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        for _ in range(2):  # the second try follows the removal of a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner.get("host") == socket.gethostname() and not _alive(owner["pid"]):
                    self.path.unlink(missing_ok=True)
                    continue
                who = f"pid {owner['pid']} on {owner.get('host')}" if owner else "an unreadable lock"
                raise UserError(f"toy_report: {self.path} is held by {who}: another report is running in this "
                                "runs_dir (remove the file if that process is gone)") from None
            with os.fdopen(fd, "w") as fh:
                fh.write(me + "\n")
            self.held = True
            return self
        raise UserError(f"toy_report: could not take {self.path} (another report took it first)")

    def _owner(self) -> dict | None:
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
            return owner if isinstance(owner.get("pid"), int) else None
        except (OSError, ValueError, AttributeError):
            return None

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunsLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
