"""Which code and machine produced an output: one record for every job that writes one (the toy
report's task.json, the VBench export's manifest).

    code_version()   {"commit": sha} or {"commit": "uncommitted", "head": sha, "diff_sha256": ...}
    describe_code()  the same as one short phrase
    machine()        platform, CPU architecture and count, Python, torch, host
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import socket
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]   # the checkout that holds oneforcing/


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.decode(errors="replace") if proc.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """{"commit": sha or "uncommitted" or "unknown", "head": sha, "diff_sha256": hash of the diff
    against HEAD (tracked files) and of the untracked files when uncommitted}."""
    head = (_git("rev-parse", "HEAD") or "").strip()
    if not head:
        return {"commit": "unknown"}
    h = hashlib.sha256((_git("diff", "HEAD", "--binary") or "").encode())
    untracked = sorted((_git("ls-files", "--others", "--exclude-standard", "-z") or "").split("\0"))
    for name in filter(None, untracked):   # new files are part of the working tree's state too
        path = REPO / name
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b""))
    if h.hexdigest() == hashlib.sha256(b"").hexdigest():
        return {"commit": head}
    return {"commit": "uncommitted", "head": head, "diff_sha256": h.hexdigest()[:16]}


def describe_code(version: dict) -> str:
    if version["commit"] != "uncommitted":
        return version["commit"][:12]
    return f"uncommitted (on {version['head'][:12]}, diff sha256 {version['diff_sha256']})"


@functools.lru_cache(maxsize=1)
def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "arch": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "host": socket.gethostname()}
