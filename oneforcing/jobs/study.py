"""`study` and `study_report`: a pairwise human-preference study (the paper's Table 2) in a browser.

    oneforcing study systems='{ours: out/one_forcing, self_forcing: out/self_forcing}' \
        prompts=study_prompts.txt db=runs/study/votes.sqlite        # then open http://127.0.0.1:8765
    oneforcing study-report db=runs/study/votes.sqlite out=runs/study/report   # table2.md, table2.csv

`systems` are folders of `{prompt}-{i}.mp4` (ours first; a list of folders names each by its folder),
`prompts` the committed prompt sample, one a line. The recipe's `seed` fixes the sides. The study is
created in `db` on first start (prompt-file and video hashes, pairs) and reopened on later starts
only if nothing committed changed. Needs `pip install -e .[study]` (FastAPI, uvicorn).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from pathlib import Path

from oneforcing.data.shards import atomic_write_text
from oneforcing.errors import UserError
from oneforcing.jobs.base import Job, RunContext
from oneforcing.registry import JOBS
from oneforcing.study.design import build_design
from oneforcing.study.report import csv_text, markdown
from oneforcing.study.store import StudyStore

log = logging.getLogger("oneforcing")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            raise UserError(f"cannot listen on {host}:{port}: {err.strerror}", key="port") from None


@JOBS.register("study")
class StudyJob(Job):
    """Serve a blind A/B preference study of folders of {prompt}-{i}.mp4 on a local page (SQLite votes)."""

    def __init__(self, systems, prompts: str, db: str = "runs/study/study.sqlite", samples_per_prompt: int = 1,
                 host: str = "127.0.0.1", port: int = 8765):
        if not isinstance(port, int) or not 0 < port < 65536:
            raise UserError(f"must be a TCP port (1-65535), got {port!r}", key="port")
        build_design(systems, prompts, samples_per_prompt)  # every folder, prompt and video checked now
        self.systems, self.prompts, self.samples_per_prompt = systems, prompts, samples_per_prompt
        self.db, self.host, self.port = Path(db).expanduser(), str(host), port

    def run(self, ctx: RunContext) -> None:
        if not ctx.is_main:
            return
        try:
            import uvicorn

            from oneforcing.study.app import create_app
        except ImportError as err:
            raise UserError(f"the study needs FastAPI and uvicorn ({err.name} is missing): "
                            "pip install -e .[study]") from None

        design = build_design(self.systems, self.prompts, self.samples_per_prompt, seed=ctx.seed)
        _check_port_free(self.host, self.port)
        store = StudyStore.open(self.db, design)
        if not _is_loopback(self.host):
            log.warning("study: listening on %s: anyone who can reach it can vote", self.host)
        shown = f"[{self.host}]" if ":" in self.host else self.host
        print(f"study: {len(store.pairs)} pairs ({len(design.prompts)} prompts x {design.samples_per_prompt} "
              f"sample(s) x {len(design.systems) - 1} baseline(s)), {len(store.annotators())} annotators so far, "
              f"{len(store.votes())} votes in {self.db}; prompt file sha256 {design.prompts_sha256[:16]}\nstudy: open http://{shown}:{self.port}/  (Ctrl-C stops; "
              f"votes are saved as they are cast)", flush=True)
        uvicorn.run(create_app(store, design), host=self.host, port=self.port, log_level="warning",
                    access_log=False)


@JOBS.register("study_report")
class StudyReportJob(Job):
    """Table 2 of a study's votes: wins / ties / losses / decided / win rate (Wilson 95 %), md + CSV."""

    def __init__(self, db: str, out: str | None = None):
        self.store = StudyStore(db)  # checked now: a missing or foreign file fails before anything is written
        self.out = Path(out).expanduser() if out else None
        if self.out is not None and self.out.exists() and not self.out.is_dir():
            raise UserError(f"{out} exists and is not a folder (the report writes table2.md and table2.csv "
                            "into a folder)", key="out")

    def run(self, ctx: RunContext) -> None:
        if not ctx.is_main:
            return
        text = markdown(self.store)
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "table2.md", text)
            atomic_write_text(self.out / "table2.csv", csv_text(self.store))
            print(f"study-report: wrote {self.out / 'table2.md'} and {self.out / 'table2.csv'}")
        print(text, end="")
