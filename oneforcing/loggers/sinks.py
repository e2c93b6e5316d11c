"""Metric sinks. Every sink takes `start(run_dir, config, total_steps, start_step)`,
`log(step, metrics)` and `close()`; `MetricLoggers` fans out to several and is a no-op on
ranks other than 0, so the training loop can call it unconditionally."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from oneforcing.registry import LOGGERS, build


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@LOGGERS.register("console")
class ConsoleLogger:
    """A tqdm progress bar over the steps, with chosen metrics in its postfix."""

    def __init__(self, keys: list[str] | None = None, every: int = 1, description: str = "train"):
        self.keys = keys
        self.every = max(1, every)
        self.description = description
        self.bar = None

    def start(self, run_dir: str | None, config: dict, total_steps: int | None, start_step: int = 0) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total_steps, initial=start_step, desc=self.description, dynamic_ncols=True,
                        mininterval=1.0)

    def log(self, step: int, metrics: dict) -> None:
        if self.bar is None:
            return
        self.bar.update(max(0, step - self.bar.n))
        if step % self.every == 0:
            keys = self.keys or [k for k in metrics if not k.startswith("time/")][:6]
            self.bar.set_postfix({k: _fmt(metrics[k]) for k in keys if k in metrics}, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@LOGGERS.register("jsonl")
class JsonlLogger:
    """One JSON object per logged step in `run_dir/metrics.jsonl` (appended across resumes)."""

    def __init__(self, filename: str = "metrics.jsonl"):
        self.filename = filename
        self.file = None

    def start(self, run_dir: str | None, config: dict, total_steps: int | None, start_step: int = 0) -> None:
        if run_dir is None:
            return
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        # Always appended, never rewritten: a resumed or restarted run adds its lines after the old
        # ones (readers take the last line logged for a step), so no earlier run's metrics are lost.
        path = Path(run_dir) / self.filename
        torn = False
        if path.exists() and path.stat().st_size > 0:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        self.file = open(path, "a", encoding="utf-8")
        if torn:  # a run killed mid-line: start ours on a fresh one
            self.file.write("\n")

    def log(self, step: int, metrics: dict) -> None:
        if self.file is None:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        self.file.write(json.dumps({"step": step, "time": time.time(), **clean}) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


@LOGGERS.register("wandb")
class WandbLogger:
    """Weights & Biases. Offline unless the user sets WANDB_MODE or gives a project."""

    def __init__(self, project: str | None = None, name: str | None = None, entity: str | None = None,
                 tags: list[str] | None = None):
        self.project, self.name, self.entity, self.tags = project, name, entity, tags
        self.run = None

    def start(self, run_dir: str | None, config: dict, total_steps: int | None, start_step: int = 0) -> None:
        import wandb

        if "WANDB_MODE" not in os.environ and self.project is None:
            os.environ["WANDB_MODE"] = "offline"
        self.run = wandb.init(project=self.project or "oneforcing", name=self.name, entity=self.entity,
                              tags=self.tags, config=config, dir=run_dir, resume="allow")

    def log(self, step: int, metrics: dict) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


class MetricLoggers:
    """Fan-out to the configured sinks, on rank 0 only."""

    def __init__(self, sinks: list, rank: int = 0):
        self.sinks = sinks if rank == 0 else []

    def start(self, run_dir, config, total_steps, start_step=0):
        for s in self.sinks:
            s.start(run_dir, config, total_steps, start_step)

    def log(self, step: int, metrics: dict) -> None:
        for s in self.sinks:
            s.log(step, metrics)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


def build_loggers(cfgs: list, rank: int, *, file: str | None = None, path: str = "loggers") -> MetricLoggers:
    """Build from recipe configs: `[{type: console}, {type: jsonl}]` or names `[console, jsonl]`."""
    sinks = []
    for i, cfg in enumerate(cfgs):
        cfg = {"type": cfg} if isinstance(cfg, str) else cfg
        sinks.append(build(cfg, LOGGERS, path=f"{path}[{i}]", file=file))
    return MetricLoggers(sinks, rank)
