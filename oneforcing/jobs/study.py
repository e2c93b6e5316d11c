"""`study` and `study_report`: a pairwise human-preference study (the paper's Table 2) in a browser.

    oneforcing study systems='{ours: out/one_forcing, self_forcing: out/self_forcing}' \
        prompts=study_prompts.txt db=runs/study/votes.sqlite        # then open http://127.0.0.1:8765
    oneforcing study-report db=runs/study/votes.sqlite out=runs/study/report   # table2.md, ... votes.jsonl

`systems` are folders of `{prompt}-{i}.mp4` (ours first; a list of folders names each by its folder),
`prompts` the committed prompt sample, one a line; the protocol keys (roster, instructions, attention
checks, repeats, exclusion rules) are oneforcing/study/protocol.py's. The recipe's `seed` fixes each
annotator's order and sides. The study is created in `db` on first start (prompt-file and video
hashes, pairs, protocol) and reopened on later starts only if nothing committed changed; docs/study.md
is the researcher's workflow. Needs `pip install -e .[study]` (FastAPI, uvicorn).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from pathlib import Path

from oneforcing.data.shards import atomic_write_text
from oneforcing.errors import UserError
from oneforcing.jobs.base import Job, RunContext
from oneforcing.registry import JOBS
from oneforcing.study.design import build_design
from oneforcing.study.media import check_media, gold_picks, make_gold
from oneforcing.study.protocol import annotator_token, build_protocol, owner_token, read_roster
from oneforcing.study.report import analyse, annotators_csv, markdown, table_csv, votes_csv, votes_jsonl
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


def _write_links(path: Path, base: str, secret: str, roster: list[str]) -> None:
    """annotator,link for every roster id, readable by the owner only (a link is a login)."""
    text = "annotator,link\n" + "".join(f"{a},{base}/?t={annotator_token(secret, a)}\n" for a in roster)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


@JOBS.register("study")
class StudyJob(Job):
    """Serve a blind A/B preference study of folders of {prompt}-{i}.mp4 on a local page (SQLite votes)."""

    def __init__(self, systems, prompts: str, db: str = "runs/study/study.sqlite", samples_per_prompt: int = 1,
                 host: str = "127.0.0.1", port: int = 8765, roster: str | None = None, instructions=None,
                 attention_checks: int = 0, repeats: int = 0, pairing: str = "ours", lock_s: float = 1.5,
                 fast_vote_s: float = 3.0, exclude: dict | None = None, url: str | None = None):
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise UserError(f"must be a TCP port (1-65535), got {port!r}", key="port")
        self.protocol = build_protocol(instructions, attention_checks, repeats, pairing, lock_s, fast_vote_s,
                                       exclude)
        self.roster = None if roster is None else read_roster(roster)
        build_design(systems, prompts, samples_per_prompt, pairing)  # every folder, prompt and video checked now
        self.systems, self.prompts, self.samples_per_prompt = systems, prompts, samples_per_prompt
        self.db, self.host, self.port = Path(db).expanduser(), str(host), port
        if url is not None and not (isinstance(url, str) and url.startswith(("http://", "https://"))):
            raise UserError(f"expected the page's public address (http://... or https://...), got {url!r}", key="url")
        self.url = url

    def run(self, ctx: RunContext) -> None:
        if not ctx.is_main:
            return
        try:
            import uvicorn

            from oneforcing.study.app import create_app
        except ImportError as err:
            raise UserError(f"the study needs FastAPI and uvicorn ({err.name} is missing): "
                            "pip install -e .[study]") from None

        design = build_design(self.systems, self.prompts, self.samples_per_prompt, self.protocol.pairing)
        _check_port_free(self.host, self.port)
        if self.protocol.attention_checks:
            picks = gold_picks(design, self.protocol.attention_checks, ctx.seed)
            gold = self.db.parent / f"{self.db.stem}_attention"
            make_gold(design, gold, picks, ctx.seed)
            design = design.with_gold(gold, picks)
        check_media(design)  # every clip decodes, and both clips of a pair match in length and size
        store = StudyStore.open(self.db, design, self.protocol, ctx.seed)
        if not _is_loopback(self.host):
            log.warning("study: listening on %s: anyone who can reach it can %s", self.host,
                        "vote" if self.roster is None else "try links")
        shown = f"[{self.host}]" if ":" in self.host else self.host
        base = (self.url or f"http://{shown}:{self.port}").rstrip("/")
        lines = [f"study: {len(store.pairs)} pairs ({len(design.prompts)} prompts x {design.samples_per_prompt} "
                 f"sample(s), {self.protocol.attention_checks} attention check(s)), {len(store.annotators())} "
                 f"annotators so far, {len(store.votes())} votes in {self.db}; prompt file sha256 "
                 f"{design.prompts_sha256[:16]}"]
        if self.roster is None:
            lines.append(f"study: open {base}/  (no roster: annotators enrol by name)")
        else:
            links = self.db.with_name(f"{self.db.stem}_links.csv")
            _write_links(links, base, store.secret, self.roster)
            lines.append(f"study: {len(self.roster)} annotator links in {links} (send each their own)")
        lines.append(f"study: results while it runs (yours only): {base}/export/table2.md?owner="
                     f"{owner_token(store.secret)}; Ctrl-C stops; votes are saved as they are cast")
        print("\n".join(lines), flush=True)
        uvicorn.run(create_app(store, design, self.roster), host=self.host, port=self.port, log_level="warning",
                    access_log=False)


@JOBS.register("study_report")
class StudyReportJob(Job):
    """Table 2 of a study's votes (% wins / ties / losses, clustered bootstrap), agreement, annotators, raw votes."""

    def __init__(self, db: str, out: str | None = None, close: bool = False):
        self.store = StudyStore(db)  # checked now: a missing or foreign file fails before anything is written
        self.out = Path(out).expanduser() if out else None
        if self.out is not None and self.out.exists() and not self.out.is_dir():
            raise UserError(f"{out} exists and is not a folder (the report writes table2.md and table2.csv "
                            "into a folder)", key="out")
        if not isinstance(close, bool):
            raise UserError(f"expected true or false, got {close!r}", key="close")
        self.close = close

    def run(self, ctx: RunContext) -> None:
        if not ctx.is_main:
            return
        if self.close:
            self.store.close()
            print(f"study-report: closed {self.store.path}: no more votes; the page's results are public")
        analysis = analyse(self.store)
        text = markdown(analysis)
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            files = {"table2.md": text, "table2.csv": table_csv(analysis), "annotators.csv": annotators_csv(analysis),
                     "votes.csv": votes_csv(self.store), "votes.jsonl": votes_jsonl(self.store)}
            for name, body in files.items():
                atomic_write_text(self.out / name, body)
            print(f"study-report: wrote {', '.join(files)} into {self.out}")
        print(text, end="")
