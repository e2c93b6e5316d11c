"""`plot`: training curves from runs' metrics.jsonl, one panel per metric, runs overlaid.

    job: plot
    runs: [runs/toy/one_forcing, runs/toy/asd]      # run folders (holding metrics.jsonl) or .jsonl files
    labels: [One-Forcing, ASD]                      # default: the run folders' names
    metrics: [critic/gan_discriminator/logit_gap]   # default: every loss and every logit_gap
    smooth: 5                                       # trailing moving average over logged points
    out: runs/toy/curves.png

From Python: `plot_metrics(["runs/a", "runs/b"], "curves.png", smooth=5)`.
A metric is a loss by default when it is `ROLE/NAME` (e.g. generator/dmd, critic/flow_denoise,
generator/loss) other than ROLE/lr, ROLE/grad_norm and ROLE/step, outside time/; any key ending in
logit_gap is shown too, so the generator's DMD and GAN-G losses appear beside the critic's curves.
A row that carries `ROLE/step` (the trainer logs each phase's latest figures with the step of
their update) places that role's figures at that step, once: a generator value repeated over
several logged rows is one point. Non-finite values (logged as null) are skipped. Runs on rank 0;
other ranks wait.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from oneforcing.errors import UserError
from oneforcing.jobs.base import Job, RunContext
from oneforcing.jobs.shared import save_png
from oneforcing.registry import JOBS

NOT_LOSSES = ("lr", "grad_norm", "step")


def is_default_metric(key: str) -> bool:
    parts = key.split("/")
    if key.endswith("logit_gap"):
        return True
    return len(parts) == 2 and parts[0] != "time" and parts[1] not in NOT_LOSSES


def metrics_file(run: str | Path) -> Path:
    path = Path(run).expanduser()
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"plot: no metrics file at {path} (give a run folder holding metrics.jsonl or a .jsonl file)")
    return path


def read_metrics(run: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """{metric: (steps, values)} from one metrics.jsonl. Resumed runs append to the file, so a
    step logged twice takes its last value, and a line torn by a killed run is skipped."""
    path = metrics_file(run)
    lines = path.read_text(encoding="utf-8").splitlines()
    by_step: dict[str, dict[int, float]] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if line.startswith("{") and not line.rstrip().endswith("}"):
                continue  # an object torn by a kill (the next run starts a fresh line)
            raise UserError(f"plot: {path}:{n}: not a JSON line") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), (int, float)):
            raise UserError(f"plot: {path}:{n}: expected a JSON object with a numeric 'step'")
        for key, value in row.items():
            if key in ("step", "time") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            at = row.get(f"{key.split('/')[0]}/step", row["step"])  # the step of the figure's update
            if not isinstance(at, (int, float)) or isinstance(at, bool):
                at = row["step"]
            if math.isfinite(value):  # keyed by the update's step: an update logged again counts once
                by_step.setdefault(key, {})[int(at)] = float(value)
    return {key: (sorted(points), [points[s] for s in sorted(points)]) for key, points in by_step.items()}


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` points (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_metrics(runs: list[str | Path], out: str | Path, metrics: list[str] | None = None,
                 labels: list[str] | None = None, smooth: int = 1, title: str | None = None,
                 columns: int = 3) -> Path:
    """Write a PNG with one panel per metric, each run a line; returns its path."""
    if not runs:
        raise UserError("plot: 'runs' is empty")
    if labels is not None and len(labels) != len(runs):
        raise UserError(f"plot: {len(labels)} labels for {len(runs)} runs")
    if smooth < 1 or columns < 1:
        raise UserError(f"plot: 'smooth' and 'columns' must be >= 1, got {smooth}, {columns}")
    data = [read_metrics(r) for r in runs]
    labels = labels or [_label(r) for r in runs]
    available = list(dict.fromkeys(k for d in data for k in d))
    if metrics is None:
        metrics = [k for k in available if is_default_metric(k)]
        if not metrics:
            raise UserError(f"plot: no loss or logit_gap metrics in {', '.join(map(str, runs))}; "
                            f"name some in 'metrics' (available: {', '.join(available) or 'none'})")
    missing = [m for m in metrics if m not in available]
    if missing:
        raise UserError(f"plot: metric(s) {', '.join(missing)} in none of the runs "
                        f"(available: {', '.join(available) or 'none'})")

    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    cols = min(columns, len(metrics))
    rows = -(-len(metrics) // cols)
    fig = Figure(figsize=(4.8 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics):
        for n, (d, label) in enumerate(zip(data, labels)):
            if metric in d:
                steps, values = d[metric]
                ax.plot(steps, moving_average(values, smooth), label=label, linewidth=1.2,
                        color=f"C{n % 10}")  # one colour per run in every panel
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize=8)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    if title or smooth > 1:
        fig.suptitle((title or "") + (f" (moving average of {smooth})" if smooth > 1 else ""))
    return save_png(fig, out)


def _label(run: str | Path) -> str:
    path = Path(run)
    return path.parent.name if path.suffix == ".jsonl" else path.name


@JOBS.register("plot")
class PlotJob(Job):
    """Plot runs' metrics.jsonl (losses, logit gaps) to a PNG, one panel per metric, runs overlaid."""

    def __init__(self, runs: list[str], out: str, labels: list[str] | None = None,
                 metrics: list[str] | None = None, smooth: int = 1, title: str | None = None):
        if not runs:
            raise UserError("plot: 'runs' is empty")
        if labels is not None and len(labels) != len(runs):
            raise UserError(f"plot: {len(labels)} labels for {len(runs)} runs")
        if smooth < 1:
            raise UserError(f"plot: 'smooth' must be >= 1, got {smooth}")
        self.runs, self.out, self.labels, self.metrics = runs, out, labels, metrics
        self.smooth, self.title = smooth, title

    def run(self, ctx: RunContext) -> Path | None:
        path = None
        if ctx.is_main:
            path = plot_metrics(self.runs, self.out, self.metrics, self.labels, self.smooth, self.title)
            print(f"plot: wrote {path}", flush=True)
        ctx.barrier()
        return path
