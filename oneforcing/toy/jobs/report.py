"""`toy_report`: every toy method twin over seeds, scored with ToyBench, in one generated report.

    python recipes/run.py recipes/toy/report.yaml          # 5 seeds: docs/toy_report.md + figures
    python recipes/run.py recipes/toy/report_quick.yaml    # 1 seed, short schedules (CI-sized)

In order:
1. the runs folder is locked (RUNS_DIR/.toy_report.lock, created with O_EXCL and holding the pid):
   a second report on the same folder stops with exit 2 and one line naming the lock; a lock left
   by a process that is gone is taken over;
2. every stage, method, evaluation and curvature recipe is loaded and validated, with the overrides
   the report adds, before anything runs;
3. the `prepare` stages run (toy data, the teacher's ODE pairs) unless their output exists;
4. each method is trained once per seed and scored with ToyBench (the `evaluate` recipe, with the
   seed's noise; the weights the recipe's export.inference_weights declares), each reference
   (teacher, initialisations) is scored per seed, and the teacher's trajectory curvature is
   measured once (`curvature`): child processes, `workers` at a time with `threads` torch threads;
5. the report is written (oneforcing/toy/jobs/report_doc.py): the Table 1 analogue, the paper's
   claims as Holm-corrected tests at `alpha` with equivalence tests at `equivalence_margin`
   (report_claims.py), figures.

Each task lives in RUNS_DIR/NAME/seedK/ (train run, export/, eval/, log.txt) with a task.json
that records its cache key (a hash of its resolved recipes, the oneforcing/ sources, the packaged
assets it reads, torch and the CPU architecture: report_provenance.py) with the commit, the machine
and the asset hashes: a finished task with the same key is not run again, so a stopped report
resumes (an unfinished training resumes from its last checkpoint), and an edited method re-runs that
method only. A folder there without task.json is never touched.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from oneforcing.data.shards import atomic_write_text
from oneforcing.errors import UserError
from oneforcing.jobs.base import Job, RunContext, prepare
from oneforcing.jobs.pipeline import Pipeline
from oneforcing.registry import JOBS
from oneforcing.toy.jobs.report_doc import write_report
from oneforcing.toy.jobs.report_provenance import RunsLock, provenance

log = logging.getLogger("oneforcing")

ENTRY_KEYS = {"label", "recipe", "overrides", "eval_overrides", "seeds"}
LOCK = ".toy_report.lock"
# Launcher variables a child must not inherit: each child is a run of its own.
LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


@dataclass
class Task:
    """One method x seed (train, then evaluate), one reference x seed (evaluate), or the curvature
    measurement (one run; its recipe's seed draws the per-prompt noise)."""
    name: str                                  # method or reference key, or "curvature"
    label: str
    kind: str                                  # "method" | "reference" | "curvature"
    seed: int | None
    dir: Path
    commands: list[tuple[str, list[str]]]      # (recipe, overrides), run in order
    key: str = ""
    record: dict = field(default_factory=dict)  # provenance: commit, source and asset hashes, machine
    steps: int | None = None                   # the training recipe's iterations (methods)
    seconds: dict = field(default_factory=dict)
    cached: bool = False                       # finished by an earlier run of the report

    @property
    def title(self) -> str:
        return self.name if self.seed is None else f"{self.name}/seed{self.seed}"


def _entry(entry, key: str, *, need_recipe: bool = True) -> dict:
    """One method / reference / `evaluate` entry, checked: {label, recipe, overrides, ...}."""
    if not isinstance(entry, dict):
        raise UserError("must be a mapping {label, recipe, overrides, eval_overrides}", key=key)
    extra = set(entry) - ENTRY_KEYS
    if extra:
        raise UserError(f"unknown key '{sorted(extra)[0]}' ({', '.join(sorted(ENTRY_KEYS))})", key=key)
    if need_recipe and "recipe" not in entry:
        raise UserError("needs 'recipe'", key=key)
    for sub in ("overrides", "eval_overrides"):
        if not all(isinstance(o, str) for o in entry.get(sub, [])):
            raise UserError("must be a list of key=value strings", key=f"{key}.{sub}")
    return entry


def _entries(value, key: str, *, need_recipe: bool = True) -> dict[str, dict]:
    if not isinstance(value, dict) or not value:
        raise UserError("must map names to {label, recipe, overrides, eval_overrides}", key=key)
    for name, entry in value.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise UserError(f"'{name}' is not a plain name (letters, digits, _)", key=key)
        _entry(entry, f"{key}.{name}", need_recipe=need_recipe)
    return value


@JOBS.register("toy_report")
class ToyReport(Job):
    """Train every toy method over seeds, score with ToyBench, write the claims report."""

    def __init__(self, methods: dict, seeds: list[int], evaluate: dict, out: str, runs_dir: str,
                 references: dict | None = None, prepare: list[dict] | None = None,
                 train_overrides: list[str] | None = None, workers: int = 1, threads: int | None = None,
                 title: str = "Toy report", command: str | None = None, figures: str | None = None,
                 curvature: dict | None = None, alpha: float = 0.05, equivalence_margin: float = 2.0):
        if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) for s in seeds):
            raise UserError(f"must be a list of distinct integers, got {seeds!r}", key="seeds")
        if not 0 < alpha < 1:
            raise UserError(f"must be in (0, 1), got {alpha}", key="alpha")
        if not equivalence_margin > 0:
            raise UserError(f"must be > 0 (ToyBench points), got {equivalence_margin}", key="equivalence_margin")
        if workers < 1:
            raise UserError(f"must be >= 1, got {workers}", key="workers")
        if threads is not None and threads < 1:
            raise UserError(f"must be >= 1, got {threads}", key="threads")
        self.methods = _entries(methods, "methods")
        self.references = _entries(references, "references", need_recipe=False) if references else {}
        clash = set(self.methods) & set(self.references)
        if clash:
            raise UserError(f"'{sorted(clash)[0]}' is both a method and a reference", key="references")
        self.evaluate = _entry(evaluate, "evaluate")
        self.curvature = _entry(curvature, "curvature") if curvature is not None else None
        self.alpha, self.margin = float(alpha), float(equivalence_margin)
        try:  # the data the runs need: a pipeline of its own (stages skipped when their output exists)
            self.prepare = Pipeline(prepare) if prepare else None
        except UserError as err:
            raise UserError(err.message, key=(err.key or "").replace("stages", "prepare", 1)) from None
        for group, entries in (("methods", self.methods), ("references", self.references)):
            for name, entry in entries.items():
                extra = set(entry.get("seeds", [])) - set(seeds)
                if extra:  # an entry runs a subset of the report's seeds, so every pairing is by seed
                    raise UserError(f"seed {sorted(extra)[0]} is not one of the report's seeds {list(seeds)}",
                                    key=f"{group}.{name}.seeds")
        self.seeds, self.workers = list(seeds), workers
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        self.train_overrides = list(train_overrides or [])
        self.out, self.runs_dir = Path(out), Path(runs_dir)
        self.figures = Path(figures) if figures else self.out.with_suffix("")
        self.title, self.command = title, command

    # --- planning --------------------------------------------------------------------------
    def _recipe(self, base: Path, name: str) -> str:
        return str(base / name)

    def plan(self, base: Path) -> list[Task]:
        """Every task, with its commands (nothing runs)."""
        tasks = []
        ev = self.evaluate
        for name, entry in self.methods.items():
            for seed in entry.get("seeds", self.seeds):
                d = self.runs_dir / name / f"seed{seed}"
                # export.dir only: the recipe's export.inference_weights (what toy_eval scores) stays
                train = [f"run_dir={d}", f"seed={seed}", f"export.dir={d}/export",
                         *self.train_overrides, *entry.get("overrides", [])]
                evaluate = [f"checkpoint={d}/export", f"out={d}/eval", f"markdown={d}/eval/toybench.md",
                            f"seed={seed}", f"name={json.dumps(entry.get('label', name))}", "progress=false",
                            *ev.get("overrides", []), *entry.get("eval_overrides", [])]
                tasks.append(Task(name, entry.get("label", name), "method", seed, d,
                                  [(self._recipe(base, entry["recipe"]), train),
                                   (self._recipe(base, ev["recipe"]), evaluate)]))
        for name, entry in self.references.items():
            for seed in entry.get("seeds", self.seeds):
                d = self.runs_dir / name / f"seed{seed}"
                evaluate = [f"out={d}/eval", f"markdown={d}/eval/toybench.md", f"seed={seed}",
                            f"name={json.dumps(entry.get('label', name))}", "progress=false",
                            *ev.get("overrides", []), *entry.get("overrides", [])]
                tasks.append(Task(name, entry.get("label", name), "reference", seed, d,
                                  [(self._recipe(base, entry.get("recipe", ev["recipe"])), evaluate)]))
        if self.curvature is not None:
            d = self.runs_dir / "curvature"
            cmd = [f"out={d}", *self.curvature.get("overrides", [])]
            label = self.curvature.get("label", "teacher ODE curvature")
            # first: the longest single task starts while the short ones fill the other workers
            tasks.insert(0, Task("curvature", label, "curvature", None, d,
                                 [(self._recipe(base, self.curvature["recipe"]), cmd)]))
        return tasks

    def validate(self, tasks: list[Task]) -> None:
        """Load and build every task's recipes (raises UserError naming the task); give each task
        its cache key and provenance record (report_provenance.py)."""
        from oneforcing.jobs.shared import DEFAULT_TEXT_ENCODER
        from oneforcing.toy.codec import PCA_ASSET

        # assets the jobs read by default, without their recipes naming them: the toy codec's PCA
        # (toy_eval) and the toy text encoder (toy_eval, curvature)
        implicit = (PCA_ASSET, Path(DEFAULT_TEXT_ENCODER["path"]))

        for task in tasks:
            resolved = []
            for recipe, overrides in task.commands:
                try:
                    full, _, _ = prepare(recipe, overrides)
                except UserError as err:
                    raise UserError(f"{task.title}: {err}") from None
                resolved.append(full)
            if task.kind == "method":
                task.steps = resolved[0].get("steps")
            task.key, task.record = provenance(resolved, implicit)

    # --- running -----------------------------------------------------------------------------
    def _child_env(self, threads: int) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV}
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TQDM_MININTERVAL="30")
        env.setdefault("DS_ACCELERATOR", "cpu")
        return env

    def _call(self, recipe: str, overrides: list[str], log_path: Path, threads: int) -> float:
        t0 = time.perf_counter()
        with open(log_path, "ab") as fh:
            fh.write(f"\n$ python -m oneforcing run {recipe} {' '.join(overrides)}\n".encode())
            fh.flush()
            rc = subprocess.run([sys.executable, "-m", "oneforcing", "run", recipe, *overrides],
                                stdout=fh, stderr=subprocess.STDOUT, env=self._child_env(threads)).returncode
        if rc != 0:
            tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
            raise UserError(f"toy_report: {recipe} failed (exit {rc}): {tail[0]} (log: {log_path})")
        return time.perf_counter() - t0

    def run_task(self, task: Task) -> Task:
        """Run one task unless it finished before with the same key."""
        meta = task.dir / "task.json"
        if meta.exists():
            old = read_task_record(meta)
            if old.get("key") == task.key and old.get("state") == "done":
                task.seconds, task.cached = old.get("seconds", {}), True
                task.record = {k: old[k] for k in task.record if k in old}  # the commit it was made at
                return task
            if old.get("key") != task.key:  # our own folder, from another version of the recipes
                shutil.rmtree(task.dir)
        elif task.dir.exists() and any(task.dir.iterdir()):
            raise UserError(f"toy_report: {task.dir} exists and was not made by this report "
                            "(no task.json); move it or choose another runs_dir")
        task.dir.mkdir(parents=True, exist_ok=True)
        record = {"key": task.key, "state": "started", "commands": task.commands, **task.record}
        atomic_write_text(meta, json.dumps(record, indent=1) + "\n")
        steps = {"method": ("train", "eval"), "reference": ("eval",), "curvature": ("curvature",)}[task.kind]
        for step, (recipe, overrides) in zip(steps, task.commands):
            task.seconds[step] = self._call(recipe, overrides, task.dir / "log.txt", self.threads)
        record.update(state="done", seconds=task.seconds)
        atomic_write_text(meta, json.dumps(record, indent=1) + "\n")
        return task

    def check_task_dirs(self, tasks: list[Task]) -> None:
        """Before any work: every task folder is absent, empty, or this report's (a readable task.json)."""
        for task in tasks:
            meta = task.dir / "task.json"
            if meta.exists():
                read_task_record(meta)
            elif task.dir.exists() and (not task.dir.is_dir() or any(task.dir.iterdir())):
                raise UserError(f"toy_report: {task.dir} exists and was not made by this report "
                                "(no task.json); move it or choose another runs_dir")

    def run(self, ctx: RunContext) -> None:
        if ctx.distributed:
            raise UserError("toy_report runs on one process (it starts its own runs as child processes); "
                            "start it with python, not torchrun or deepspeed")
        self._run(ctx)

    def _run(self, ctx: RunContext) -> None:
        if self.runs_dir.exists() and not self.runs_dir.is_dir():
            raise UserError(f"toy_report: runs_dir {self.runs_dir} is a file, not a folder", key="runs_dir")
        # Locked from the start: a second report on this runs_dir stops at once, before any work.
        with RunsLock(self.runs_dir / LOCK):
            self._run_locked(ctx)

    def _run_locked(self, ctx: RunContext) -> None:
        from tqdm.auto import tqdm

        t_start = time.perf_counter()
        base = Path(ctx.recipe_file).parent if ctx.recipe_file else Path(".")
        tasks = self.plan(base)
        self.check_task_dirs(tasks)  # a folder it did not make stops it before data is rendered
        if self.prepare is not None:
            self.prepare.prepare_stages(base)
        self.validate(tasks)
        log.info("toy_report: %d tasks (%d methods x seeds %s, %d references%s), %d workers x %d threads",
                 len(tasks), len(self.methods), self.seeds, len(self.references),
                 ", curvature" if self.curvature else "", self.workers, self.threads)
        t_prepare = time.perf_counter()
        if self.prepare is not None:
            self.prepare.run(ctx)
        prepare_s = time.perf_counter() - t_prepare
        failures = []
        with ThreadPoolExecutor(self.workers) as pool, tqdm(total=len(tasks), desc="toy_report", unit="task") as bar:
            futures = {pool.submit(self.run_task, t): t for t in tasks}
            for fut in as_completed(futures):
                task = futures[fut]
                try:
                    fut.result()
                    bar.write(f"toy_report: {task.title} done "
                              f"({'cached' if task.cached else _fmt_seconds(task.seconds)})")
                except UserError as err:
                    failures.append(str(err))
                    bar.write(f"toy_report: {task.title} FAILED: {err}")
                bar.update()
        if failures:
            raise UserError(f"toy_report: {len(failures)} of {len(tasks)} tasks failed, no report written; "
                            f"first: {failures[0]}")
        timing = {"wall_s": time.perf_counter() - t_start, "prepare_s": prepare_s,
                  "workers": self.workers, "threads": self.threads}
        path = write_report(self, tasks, timing)
        print(f"toy_report: wrote {path}", flush=True)


def _fmt_seconds(seconds: dict) -> str:
    return ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items())


def read_task_record(meta: Path) -> dict:
    """A task folder's task.json; unreadable (damaged by hand, or by a crash of an older version)
    is one line: the folder is not deleted on a guess."""
    try:
        record = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"toy_report: {meta} is unreadable ({type(exc).__name__}); delete its folder to "
                        "run that task again") from None
    if not isinstance(record, dict):
        raise UserError(f"toy_report: {meta} is not a task record (a JSON object); delete its folder to "
                        "run that task again")
    return record
