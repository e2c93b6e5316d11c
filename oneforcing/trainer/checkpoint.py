"""Atomic, pickle-free, multi-rank checkpoints with a `latest` pointer and retention.

Layout under `run_dir/checkpoints/`:
    step_00000050/meta.json             step, world size, what each rank saved
    step_00000050/rank0/generator.{safetensors,json} ...   each rank's own shard of the state
    latest                               JSON naming the newest complete checkpoint
A checkpoint is written into `.tmp-step_N/` and renamed into place only once every rank has
finished writing, so `latest` can only ever name a complete checkpoint; a run killed mid-write
leaves a `.tmp-*` directory that the next run deletes.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from oneforcing.errors import UserError
from oneforcing.trainer.config import Schedule
from oneforcing.trainer.state_io import check_state, load_state, save_state, write_json_atomic

FORMAT = "oneforcing-checkpoint-v1"
_STEP_DIR = re.compile(r"step_\d{8}")
log = logging.getLogger("oneforcing")


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run resumes from, found and checked once, before any model is built."""

    path: Path
    meta: dict   # its meta.json, as `CheckpointManager.check` read it


class CheckpointManager:
    def __init__(self, root: str | Path, *, rank: int, world_size: int,
                 keep_last: int | None = Schedule.keep_last, barrier: Callable[[], None] = lambda: None):
        self.root = Path(root)
        self.rank, self.world_size = rank, world_size
        self.keep_last = keep_last
        self.barrier = barrier

    @staticmethod
    def dirname(step: int) -> str:
        return f"step_{step:08d}"

    def clean_partial(self) -> None:
        """Remove directories left by a run killed while writing (rank 0 only)."""
        if self.rank == 0 and self.root.exists():
            for tmp in [*self.root.glob(".tmp-step_*"), *self.root.glob(".old-step_*")]:
                shutil.rmtree(tmp, ignore_errors=True)
        self.barrier()

    def save(self, step: int, states: dict[str, Any], extra: dict | None = None) -> Path:
        """Every rank calls this with its own `states` ({name: nested state})."""
        final = self.root / self.dirname(step)
        tmp = self.root / f".tmp-{self.dirname(step)}"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.barrier()
        for name, state in states.items():
            save_state(tmp / f"rank{self.rank}" / name, state)
        self.barrier()
        if self.rank == 0:
            meta = {"format": FORMAT, "step": step, "world_size": self.world_size,
                    "states": sorted(states), "time": time.time(), **(extra or {})}
            write_json_atomic(tmp / "meta.json", meta)
            old = self.root / f".old-{final.name}"
            if final.exists():  # the same step saved again (e.g. re-running a finished schedule)
                final.rename(old)  # deleted only once the new one is in place: back to back renames
            tmp.rename(final)
            write_json_atomic(self.root / "latest", {"checkpoint": final.name, "step": step})
            shutil.rmtree(old, ignore_errors=True)
            self._prune()
        self.barrier()
        return final

    def _prune(self) -> None:
        if not self.keep_last or self.keep_last <= 0:
            return
        done = sorted(p for p in self.root.glob("step_*") if (p / "meta.json").exists())
        for old in done[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    def latest(self) -> Path | None:
        """The checkpoint `latest` names, or None for a fresh run. A pointer that is unreadable,
        names anything but a `step_*` folder directly inside this folder, or names a checkpoint
        that is gone is an error: starting over would overwrite this run's checkpoints."""
        pointer = self.root / "latest"
        if not pointer.exists():
            # A run killed between renaming its first checkpoint into place and writing the
            # pointer: that checkpoint is complete (renamed only once whole), so resume from it
            # rather than start over and overwrite it.
            done = sorted(p for p in self.root.glob("step_*")
                          if _STEP_DIR.fullmatch(p.name) and (p / "meta.json").is_file())
            if done:
                log.warning("%s has no 'latest' pointer; resuming from the newest complete checkpoint, %s",
                            self.root, done[-1].name)
                return done[-1]
            return None
        try:
            data = json.loads(pointer.read_text())
            name = data["checkpoint"]
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"{pointer}: unreadable checkpoint pointer; delete it or pass resume=PATH") from None
        if not isinstance(name, str) or not _STEP_DIR.fullmatch(name):
            raise UserError(f"{pointer}: names {str(name)[:80]!r}, not a step_NNNNNNNN folder inside "
                            f"{self.root}; fix it or pass resume=PATH")
        path = self.root / name
        if not (path / "meta.json").is_file():
            raise UserError(f"{pointer}: names checkpoint {path}, which is missing or incomplete; "
                            "pass resume=PATH to another checkpoint (nothing was overwritten)")
        return path

    def resolve(self, resume: str | None) -> Path | None:
        """`auto` -> latest if any; `none`/None -> fresh start; otherwise a checkpoint directory."""
        if resume in (None, "none", "never", False):
            return None
        if resume == "auto":
            return self.latest()
        path = Path(resume)
        if path.is_dir() and (path / "latest").exists():  # a checkpoints/ root or a run dir
            path = CheckpointManager(path, rank=self.rank, world_size=self.world_size).latest() or path
        elif path.is_dir() and (path / "checkpoints" / "latest").exists():
            path = CheckpointManager(path / "checkpoints", rank=0, world_size=1).latest() or path
        if not (path / "meta.json").exists():
            raise UserError(f"resume: '{resume}' is not a complete oneforcing checkpoint (no meta.json)")
        return path

    def resume_point(self, resume: str | None, names: list[str], recipe: dict) -> ResumePoint | None:
        """The recipe's `resume` (auto | never | a path) resolved and checked, once per run: None
        for a fresh start; a resume that cannot work is a UserError here."""
        path = self.resolve(resume)
        return ResumePoint(path, self.check(path, names, recipe)) if path is not None else None

    def read_meta(self, path: Path) -> dict:
        """meta.json of a checkpoint, checked for what resuming needs."""
        file = path / "meta.json"
        try:
            meta = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{file}: unreadable checkpoint metadata ({type(exc).__name__})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise UserError(f"{file}: format {str(got)[:60]!r}, expected {FORMAT!r}")
        if not isinstance(meta.get("world_size"), int) or not isinstance(meta.get("states"), list):
            raise UserError(f"{file}: checkpoint metadata lacks world_size / states")
        return meta

    def check(self, path: Path, names: list[str], recipe: dict) -> dict:
        """Everything about a checkpoint that can be checked without loading its tensors, so a
        resume that cannot work fails before any model is built: metadata, the recipe's models,
        rank count, states, and each of this rank's files (safetensors header, JSON skeleton)."""
        meta = self.read_meta(path)
        changed = model_recipe_changes(meta.get("recipe"), recipe)
        if changed:
            raise UserError(f"resume: {path} was trained with different models ({', '.join(changed[:3])}"
                            f"{' ...' if len(changed) > 3 else ''}); resume with that recipe or start a new run_dir")
        self._check_fit(path, names, meta)
        for name in names:
            check_state(path / f"rank{self.rank}" / name)
        return meta

    def _check_fit(self, path: Path, names: list[str], meta: dict) -> None:
        if meta["world_size"] != self.world_size:
            raise UserError(f"resume: {path} was written by {meta['world_size']} ranks; this run has "
                            f"{self.world_size} (resume with the same number of ranks)")
        missing = [n for n in names if n not in meta["states"]]
        if missing:
            raise UserError(f"resume: {path} has no state for {', '.join(missing)} "
                            f"(it holds {', '.join(map(str, meta['states']))}); is it from a different recipe?")

    def load(self, path: Path, names: list[str], meta: dict | None = None) -> tuple[dict[str, Any], dict]:
        meta = meta or self.read_meta(path)
        self._check_fit(path, names, meta)
        states = {n: load_state(path / f"rank{self.rank}" / n) for n in names}
        return states, meta


def model_recipe_changes(saved: Any, current: dict) -> list[str]:
    """Dotted keys under `models` that shape a model (`type`, anything in a `config`) and differ
    between a checkpoint's recipe and this one. Other keys (weights paths, attention backend) may
    change between runs; a different shape that they cause is caught on load."""
    if not isinstance(saved, dict) or not isinstance(saved.get("models"), dict):
        return []  # an older checkpoint without its recipe: the load itself checks shapes

    def walk(a: Any, b: Any, where: str) -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            return [d for k in sorted(set(a) | set(b), key=str) if k != "pretrained"
                    for d in walk(a.get(k), b.get(k), f"{where}.{k}")]
        shaping = ".config" in where or where.endswith(".type")
        return [where] if a != b and shaping else []

    return walk(saved["models"], current.get("models", {}), "models")
