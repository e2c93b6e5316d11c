"""A trivial job that exercises the launcher: every rank reports, rank 0 writes what it saw."""

from __future__ import annotations

import json
import os

import torch

from oneforcing.jobs.base import Job, RunContext
from oneforcing.registry import JOBS


@JOBS.register("dist_check")
class DistCheck(Job):
    """Check the process group: all-reduce the ranks and gather a per-rank random draw."""

    def __init__(self, out: str | None = None, message: str = "hello"):
        self.out = out
        self.message = message

    def run(self, ctx: RunContext) -> None:
        rank_sum = torch.tensor([float(ctx.rank)])
        if ctx.distributed:
            torch.distributed.all_reduce(rank_sum)
        # Same-on-every-rank draw (per_rank=False) and a per-rank draw, to show seeding works.
        shared = torch.rand(1, generator=ctx.rng("check", per_rank=False)).item()
        own = torch.rand(1, generator=ctx.rng("check")).item()
        draws = [own]
        if ctx.distributed:  # tensors, not all_gather_object: nothing is pickled between ranks
            gathered = [torch.zeros(1, dtype=torch.float64) for _ in range(ctx.world_size)]
            torch.distributed.all_gather(gathered, torch.tensor([own], dtype=torch.float64))
            draws = [t.item() for t in gathered]
        report = {
            "message": self.message, "world_size": ctx.world_size, "rank_sum": rank_sum.item(),
            "launcher": ctx.launcher, "backend": torch.distributed.get_backend() if ctx.distributed else None,
            "shared_draw": ctx.broadcast_numbers([shared], dtype=torch.float64)[0], "per_rank_draws": draws,
        }
        if ctx.is_main:
            print(json.dumps(report))
            if self.out:
                tmp = f"{self.out}.tmp{os.getpid()}"
                with open(tmp, "w") as f:
                    json.dump(report, f)
                os.replace(tmp, self.out)
