"""Claiming a data job's output folder, and replacing an old data set without ever losing it.

The jobs that write data sets (toy_data, prepare_data, ode_pairs) wrap their writing in
`claim_output(...)`, which yields the folder to write into:

- a new or empty `out`, or one an earlier run with the same settings wrote (its `job.json`):
  `out` itself; an interrupted job resumes there (every shard file is written atomically);
- `overwrite=true` over an earlier run's `out`: a staging folder beside it, `.NAME.overwrite`.
  The old data set stays whole and readable until the new one is complete; only then are the
  two folders swapped (one atomic rename exchange where the system has one) and the old set's
  own files removed. Files in `out` that the old job.json does not list move to the new set. A
  job that fails removes its staging folder, so a failed overwrite leaves `out` as it was; a
  killed one leaves it, and the next run with the same settings resumes in it.

A folder that holds anything but no job.json is never written into; `overwrite` only ever
removes files a job.json lists. Rank 0 decides and writes; every rank writes into the same folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

from oneforcing.data.shards import INDEX, atomic_write_text
from oneforcing.errors import UserError

JOB_FILE = "job.json"
STAGING, OLD = ".{}.overwrite", ".{}.old"
log = logging.getLogger("oneforcing")


@contextlib.contextmanager
def claim_output(out: str, settings: dict, overwrite: bool, ctx, what: str, files: list[str]):
    """Claim `out` for this job (see the module doc) and yield the folder to write into; on a
    clean exit, a staged data set replaces the old one. `files` are the names the job will write
    (job.json records them with the settings). Enter it after every model the job needs has
    loaded, so a failed start leaves the folder as it was."""
    out_dir = Path(out)
    staged = False
    if ctx.is_main:
        staged = _claim(out_dir, settings, overwrite, what, files)
    staged = bool(ctx.broadcast_numbers([int(staged)])[0])
    target = _staging(out_dir) if staged else out_dir
    ctx.barrier()
    target.mkdir(parents=True, exist_ok=True)  # no-op after rank 0; lets ranks run one by one in tests
    try:
        yield target
    except Exception:
        if staged and ctx.is_main:
            _remove_set(target)  # a failed overwrite: the old set stays, the partial new one goes
        raise
    if staged:
        ctx.barrier()
        if ctx.is_main:
            _swap_in(target, out_dir)
        ctx.barrier()


def _claim(out_dir: Path, settings: dict, overwrite: bool, what: str, files: list[str]) -> bool:
    """Rank 0's decision: write into `out_dir` itself (False) or a staging folder (True); writes
    the job record into the folder chosen."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder")
    job_file = out_dir / JOB_FILE
    record = {**settings, "files": sorted({*files, INDEX})}
    if not job_file.exists():
        if out_dir.is_dir() and any(out_dir.iterdir()):
            raise UserError(f"{out_dir}: folder is not empty and has no {JOB_FILE}, so it was not written by "
                            f"{what}; pick another out (overwrite only removes files a job.json lists)")
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(job_file, json.dumps(record, indent=1, sort_keys=True) + "\n")
        return False
    old = _read_job_file(job_file)
    if not overwrite:
        old_settings = {k: v for k, v in old.items() if k != "files"}
        if old_settings != settings:
            changed = sorted(k for k in set(old_settings) | set(settings) if old_settings.get(k) != settings.get(k))
            raise UserError(f"{job_file}: '{out_dir}' holds a {what} run with other settings "
                            f"({', '.join(changed)}); set overwrite=true or pick another out")
        atomic_write_text(job_file, json.dumps(record, indent=1, sort_keys=True) + "\n")
        return False
    listed = set(_listed_files(job_file, old))
    clash = sorted(p.name for p in out_dir.iterdir() if p.name not in listed | {JOB_FILE} and p.name in record["files"])
    if clash:
        raise UserError(f"{out_dir}: holds {clash[0]!r}, which its {JOB_FILE} does not list and this job would "
                        "write; move it away first")
    if Path.cwd().resolve().is_relative_to(out_dir.resolve()):
        raise UserError(f"{out_dir}: overwrite replaces this folder, which holds the current folder; "
                        "run from outside it")
    staging = _staging(out_dir)
    if staging.exists() and not (staging / JOB_FILE).is_file() and (not staging.is_dir() or any(staging.iterdir())):
        raise UserError(f"{staging}: the staging folder of an overwrite holds files no job wrote; remove it by hand")
    if (staging / JOB_FILE).is_file():
        earlier = _read_job_file(staging / JOB_FILE)
        if {k: v for k, v in earlier.items() if k != "files"} != settings:
            _remove_set(staging)  # an interrupted overwrite with other settings: start over
    staging.mkdir(exist_ok=True)
    atomic_write_text(staging / JOB_FILE, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return True


def _staging(out_dir: Path) -> Path:
    return out_dir.parent / STAGING.format(out_dir.name)


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Put the complete new set (staging) where the old one is, keeping the old folder's files its
    job.json does not list; then remove the old set's own files."""
    listed = set(_listed_files(out_dir / JOB_FILE, _read_job_file(out_dir / JOB_FILE)))
    for p in out_dir.iterdir():
        if p.name not in listed | {JOB_FILE} and not _is_temporary(p.name):
            os.rename(p, staging / p.name)  # checked at the claim: no name a new file takes
    if not _exchange(staging, out_dir):
        old = out_dir.parent / OLD.format(out_dir.name)
        os.rename(out_dir, old)  # a crash here leaves the old set whole, under .NAME.old
        os.rename(staging, out_dir)
        staging = old
    _remove_set(staging, listed)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _remove_set(folder: Path, listed: set[str] | None = None) -> None:
    """Remove a data set this module wrote: the files its job.json lists (or `listed`), the job.json
    and temporary files of interrupted writes; then the folder, if nothing else is left in it."""
    if listed is None:
        try:
            listed = set(_listed_files(folder / JOB_FILE, _read_job_file(folder / JOB_FILE)))
        except UserError:
            listed = set()
    for p in folder.iterdir():
        if p.name in listed | {JOB_FILE} or _is_temporary(p.name):
            p.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        log.warning("%s: left in place: it holds files no job wrote", folder)


def _is_temporary(name: str) -> bool:
    """A file an atomic write had not yet renamed (shards.atomic_write_text, write_shard)."""
    return name.startswith(".") and ".tmp" in name


def _read_job_file(job_file: Path) -> dict:
    try:
        old = json.loads(job_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{job_file}: unreadable; delete the folder by hand or pick another out") from None
    if not isinstance(old, dict):
        raise UserError(f"{job_file}: not a job record (a JSON object); pick another out")
    return old


def _listed_files(job_file: Path, old: dict) -> list[str]:
    """The plain file names an earlier run recorded as its own (nothing outside the folder)."""
    names = old.get("files")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"{job_file}: lists no 'files' this job wrote, so overwrite cannot tell them "
                        "from others; delete them by hand or pick another out")
    bad = [n for n in names if not is_plain_name(n) or n == JOB_FILE]
    if bad:
        raise UserError(f"{job_file}: 'files' entry {bad[0][:80]!r} is not a plain file name")
    return names


def is_plain_name(name: str) -> bool:
    """A file name with no folder part: not '', '.', '..', and no '/' or '\\'."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name
