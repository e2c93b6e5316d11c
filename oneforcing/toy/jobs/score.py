"""`eval`: ToyBench on a folder (or .safetensors file) of generated toy videos.

    job: eval
    videos: runs/toy/samples          # "{prompt}-{index}.mp4" files, VBench's layout
    out: runs/toy/eval                # writes toybench.json and appends a row to toybench.md
    name: one_forcing_framewise       # the row's label (default: the videos folder's name)

Scoring is cheap (256 videos in seconds), so it runs on rank 0 alone; other ranks wait.
"""

from __future__ import annotations

import json
from pathlib import Path

from oneforcing.data.shards import atomic_write_text
from oneforcing.eval.io import load_videos
from oneforcing.jobs.base import Job, RunContext
from oneforcing.registry import JOBS
from oneforcing.toy.bench.toybench import ToyBench, markdown_header, markdown_row


@JOBS.register("eval")
class EvalJob(Job):
    """Score a folder of toy videos ({prompt}-{i}.mp4 or a .safetensors) with ToyBench (json + md row)."""

    def __init__(self, videos: str, out: str, name: str | None = None, fd: bool = True,
                 per_video: bool = False, max_videos: int | None = None):
        self.videos, self.out, self.fd, self.per_video = videos, out, fd, per_video
        self.name = name or Path(videos).stem
        self.max_videos = max_videos

    def run(self, ctx: RunContext) -> dict | None:
        result = None
        if ctx.is_main:
            videos, prompts = load_videos(self.videos, self.max_videos)
            result = ToyBench(fd=self.fd, per_video=self.per_video)(videos, prompts)
            result = {"name": self.name, "videos": str(self.videos), **result}
            out = Path(self.out)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "toybench.json", json.dumps(result, indent=1) + "\n")
            table = out / "toybench.md"
            text = table.read_text(encoding="utf-8") if table.exists() else markdown_header()
            atomic_write_text(table, text + markdown_row(result, self.name))
            print(markdown_header() + markdown_row(result, self.name), end="")
        ctx.barrier()
        return result
