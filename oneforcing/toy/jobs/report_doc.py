"""The toy report's text and figures, from the finished tasks of a `toy_report` job.

Every number is read back from the tasks' files (eval/toybench.json, metrics.jsonl); nothing is
typed in. Claims compare methods paired by seed (oneforcing/toy/jobs/report_stats.py): a verdict is
drawn only where the 95 % interval of the per-seed difference excludes 0; otherwise the claim is
"not resolved" at this number of seeds, which the report says as plainly as a confirmation.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from oneforcing.data.shards import atomic_write_text
from oneforcing.jobs.plot import plot_metrics, read_metrics, save_png
from oneforcing.toy.jobs.report_stats import Estimate, direction, mean_ci, paired

# (column title, path into toybench.json, scale to percent)
TABLE = (("total", ("total",)), ("quality", ("quality",)), ("semantic", ("semantic",)),
         ("dynamic degree", ("raw", "dynamic_degree")), ("subject consistency", ("raw", "subject_consistency")),
         ("count", ("raw", "count")), ("shape", ("raw", "shape")), ("direction", ("raw", "direction")))
GAP_ZERO, GAP_ONE = 0.1, 1.0      # claim (e): "≈ 0" means a mean gap below 0.1; One-Forcing's must exceed 1
PAPER = {  # shared/reference/defaults.md (the paper's Table 1, Table 3, Figure 4)
    "a": "One-Forcing framewise 83.76 > ASD 79.12 > Self Forcing 77.18 (VBench total)",
    "b": "One-Forcing framewise 83.76 vs Self Forcing 4-step 83.46",
    "c": "framewise 83.76 > chunkwise 81.60",
    "d": "forward-KL surrogate (lambda 1): total 74.83, dynamic degree 1.30",
    "e": "logit gap: One-Forcing mean 1.53 (sd 1.20); ASD ~0.001",
    "f": "framewise with CD init 82.36, dynamic degree 23.61 vs 52.76",
}


def _get(result: dict, path: tuple[str, ...]) -> float:
    for part in path:
        result = result[part]
    return float(result)


def load(tasks) -> dict[str, dict[int, dict]]:
    """{name: {seed: toybench result}}."""
    out: dict[str, dict[int, dict]] = {}
    for t in tasks:
        path = t.dir / "eval" / "toybench.json"
        out.setdefault(t.name, {})[t.seed] = json.loads(path.read_text(encoding="utf-8"))
    return out


def logit_gaps(tasks) -> dict[str, dict[int, tuple[list[int], list[float]]]]:
    """{method: {seed: (steps, critic logit gaps)}} for the methods that log one."""
    out: dict[str, dict[int, tuple[list[int], list[float]]]] = {}
    for t in tasks:
        if t.kind != "method" or not (t.dir / "metrics.jsonl").exists():
            continue
        metrics = read_metrics(t.dir)
        keys = sorted(k for k in metrics if k.endswith("logit_gap") and k.startswith("critic/"))
        if keys:
            out.setdefault(t.name, {})[t.seed] = metrics[keys[0]]
    return out


def late_mean(curve: tuple[list[int], list[float]]) -> float:
    """Mean over the second half of training (the gap once the discriminator has settled)."""
    steps, values = curve
    half = steps[-1] / 2
    late = [v for s, v in zip(steps, values) if s >= half] or values
    return sum(late) / len(late)


class Claims:
    """The paper's claims (a)-(f) as paired comparisons over seeds."""

    def __init__(self, results: dict, gaps: dict, steps: dict[str, int], labels: dict[str, str]):
        self.results, self.gaps, self.steps, self.labels = results, gaps, steps, labels

    def values(self, name: str, path=("total",)) -> dict[int, float]:
        return {s: _get(r, path) for s, r in self.results.get(name, {}).items()}

    def diff(self, a: str, b: str, path=("total",)) -> Estimate | None:
        va, vb = self.values(a, path), self.values(b, path)
        seeds = sorted(set(va) & set(vb))
        return paired([va[s] for s in seeds], [vb[s] for s in seeds]) if seeds else None

    def _need(self, *names) -> str | None:
        missing = [n for n in names if n not in self.results]
        return f"not run (the report has no {', '.join(missing)})" if missing else None

    def cmp(self, a: str, b: str, path=("total",), what="total") -> str:
        d = self.diff(a, b, path)
        return (f"{self.labels[a]} − {self.labels[b]} ({what}): {d.format(100)} "
                f"[{direction(d)}]")

    def a(self):
        missing = self._need("one_forcing_framewise", "asd_1step", "self_forcing_1step")
        if missing:
            return missing, []
        d1 = direction(self.diff("one_forcing_framewise", "asd_1step"))
        d2 = direction(self.diff("asd_1step", "self_forcing_1step"))
        ev = [self.cmp("one_forcing_framewise", "asd_1step"), self.cmp("asd_1step", "self_forcing_1step")]
        return _order_verdict([d1, d2]), ev

    def b(self):
        missing = self._need("one_forcing_framewise", "self_forcing_4step")
        if missing:
            return missing, []
        d = direction(self.diff("one_forcing_framewise", "self_forcing_4step"))
        verdict = {"≈": "supported: within noise (the interval contains 0)",
                   ">": "exceeded: One-Forcing 1-step is better than Self Forcing 4-step",
                   "<": "contradicted: Self Forcing 4-step is better",
                   "?": "no verdict (one seed)"}[d]
        return verdict, [self.cmp("one_forcing_framewise", "self_forcing_4step")]

    def c(self):
        missing = self._need("one_forcing_framewise", "one_forcing_chunkwise")
        if missing:
            return missing, []
        d = direction(self.diff("one_forcing_framewise", "one_forcing_chunkwise"))
        it = f" ({self.steps.get('one_forcing_framewise')} vs {self.steps.get('one_forcing_chunkwise')} iterations)"
        verdict = {">": "supported: framewise is better" + it,
                   "≈": "consistent with ≥: within noise" + it,
                   "<": "contradicted: chunkwise is better" + it, "?": "no verdict (one seed)" + it}[d]
        return verdict, [self.cmp("one_forcing_framewise", "one_forcing_chunkwise")]

    def d(self):
        missing = self._need("one_forcing_fkl", "one_forcing_chunkwise")
        if missing:
            return missing, []
        path = ("raw", "dynamic_degree")
        d = direction(self.diff("one_forcing_fkl", "one_forcing_chunkwise", path))
        fkl = mean_ci(list(self.values("one_forcing_fkl", path).values()))
        base = mean_ci(list(self.values("one_forcing_chunkwise", path).values()))
        ratio = fkl.mean / base.mean if base.mean else float("nan")
        if d == "<":
            verdict = ("supported: dynamic degree collapses" if ratio <= 0.5 else
                       "partly: dynamic degree is lower, but not collapsed") + f" ({100 * ratio:.0f} % of chunkwise)"
        else:
            verdict = {"≈": "not supported: within noise", ">": "contradicted: the surrogate moves more",
                       "?": "no verdict (one seed)"}[d] + f" ({100 * ratio:.0f} % of chunkwise)"
        return verdict, [self.cmp("one_forcing_fkl", "one_forcing_chunkwise", path, "dynamic degree"),
                         self.cmp("one_forcing_fkl", "one_forcing_chunkwise")]

    def e(self):
        if "one_forcing_framewise" not in self.gaps or "asd_1step" not in self.gaps:
            return "not run (no logit gap logged for One-Forcing framewise or ASD)", []
        of = mean_ci([late_mean(c) for c in self.gaps["one_forcing_framewise"].values()])
        asd = mean_ci([late_mean(c) for c in self.gaps["asd_1step"].values()])
        if of.n < 2:
            verdict = "no verdict (one seed)"
        else:
            zero, above = asd.high < GAP_ZERO, of.low > GAP_ONE
            verdict = ("supported" if zero and above else "partly" if zero or above else "not supported") + \
                f": ASD's gap {'is' if zero else 'is not'} ≈ 0 (< {GAP_ZERO}); One-Forcing's {'stays' if above else 'does not stay'} > {GAP_ONE}"
        return verdict, [f"mean logit gap over the second half of training: One-Forcing framewise {of.format()}, "
                         f"ASD {asd.format(digits=3)}"]

    def f(self):
        missing = self._need("one_forcing_framewise", "one_forcing_framewise_causvid_init")
        if missing:
            return missing, []
        d = direction(self.diff("one_forcing_framewise", "one_forcing_framewise_causvid_init"))
        verdict = {">": "supported: the causal ODE init is better", "≈": "not resolved: within noise",
                   "<": "contradicted: the CausVid-style init is better", "?": "no verdict (one seed)"}[d]
        path = ("raw", "subject_consistency")
        return verdict, [self.cmp("one_forcing_framewise", "one_forcing_framewise_causvid_init"),
                         self.cmp("one_forcing_framewise", "one_forcing_framewise_causvid_init", path,
                                  "subject consistency"),
                         self.cmp("one_forcing_framewise", "one_forcing_framewise_causvid_init",
                                  ("raw", "dynamic_degree"), "dynamic degree")]


def _order_verdict(dirs: list[str]) -> str:
    if "?" in dirs:
        return "no verdict (one seed)"
    if all(d == ">" for d in dirs):
        return "supported: both orderings hold (each interval above 0)"
    if "<" in dirs:
        return "contradicted: at least one ordering is reversed (interval below 0)"
    return "not resolved: at least one ordering is within noise at this number of seeds"


CLAIM_TEXT = {
    "a": "One-Forcing 1-step framewise > ASD 1-step > Self Forcing 1-step",
    "b": "One-Forcing 1-step is within noise of Self Forcing 4-step",
    "c": "framewise ≥ chunkwise, at fewer iterations",
    "d": "the forward-KL surrogate collapses dynamic degree",
    "e": "ASD's discriminator logit gap ≈ 0 while One-Forcing's stays > 1",
    "f": "the causal ODE init beats the CausVid-style init (Table 3)",
}


def _figures(job, tasks, results, gaps, labels) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    job.figures.mkdir(parents=True, exist_ok=True)
    made = {}
    names = list(results)
    fig = Figure(figsize=(8, 0.45 * len(names) + 1.2), layout="constrained")
    ax = fig.subplots()
    ests = [mean_ci([r["total"] for r in results[n].values()]) for n in names]
    ax.barh(range(len(names)), [100 * e.mean for e in ests],
            xerr=[100 * (e.half_width or 0) for e in ests], color=["C0" if n in job.methods else "C7" for n in names])
    ax.set_yticks(range(len(names)), [labels[n] for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ToyBench total (mean ± 95 % CI over seeds)")
    made["totals"] = str(save_png(fig, job.figures / "totals.png"))
    if gaps:
        fig = Figure(figsize=(7, 3.6), layout="constrained")
        ax = fig.subplots()
        for i, (name, curves) in enumerate(gaps.items()):
            for k, (steps, values) in enumerate(curves.values()):
                ax.plot(steps, values, color=f"C{i}", alpha=0.6, linewidth=1,
                        label=labels[name] if k == 0 else None)
        ax.set_yscale("symlog", linthresh=0.01)
        ax.set_xlabel("step")
        ax.set_ylabel("|l_real − l_fake| (one line per seed)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        made["logit_gap"] = str(save_png(fig, job.figures / "logit_gap.png"))
    runs = [t.dir for t in tasks if t.name == "one_forcing_framewise" and (t.dir / "metrics.jsonl").exists()]
    if runs:
        made["curves"] = str(plot_metrics(runs, job.figures / "curves_one_forcing_framewise.png",
                                          labels=[f"seed {p.name[4:]}" for p in runs], smooth=5,
                                          title="One-Forcing framewise: generator and critic"))
    return made


def code_version() -> str:
    """The checkout's commit (and whether it had local changes), or 'unknown' outside git."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + (" with local changes" if dirty else "")) if head else "unknown"


def _timing(tasks, timing: dict, compute: float) -> str:
    cached = sum(t.cached for t in tasks)
    text = (f"This invocation took {timing['wall_s'] / 60:.1f} min (data and pairs {timing['prepare_s'] / 60:.1f} "
            f"min); the tasks' own times sum to {compute / 60:.1f} min")
    if cached:
        text += (f", {cached} of {len(tasks)} tasks having been finished by earlier invocations of the same "
                 "command (their times are in the per-seed table)")
    return text + "."


def write_report(job, tasks, timing: dict) -> Path:
    """Write job.out (markdown) and its figures; returns the markdown's path."""
    import torch

    from oneforcing.speed import device_name

    results = load(tasks)
    gaps = logit_gaps(tasks)
    labels = {t.name: t.label for t in tasks}
    steps = {t.name: t.steps for t in tasks if t.kind == "method"}
    figures = _figures(job, tasks, results, gaps, labels)
    claims = Claims(results, gaps, steps, labels)
    rel = lambda p: os.path.relpath(p, job.out.parent)  # noqa: E731
    seeds = sorted({t.seed for t in tasks})
    compute = sum(v for t in tasks for v in t.seconds.values())
    lines = [f"# {job.title}", "",
             f"Generated by `{job.command or 'python recipes/run.py RECIPE'}` on {datetime.date.today()}; "
             f"code at commit {code_version()}; every number below is read from the runs' own files. "
             "Do not edit by hand: run the command again.", "",
             f"Machine: {device_name(torch.device('cpu')).split(' (')[0]} ({os.cpu_count()} cores); "
             f"{job.workers} runs at a time with {job.threads} torch thread(s) each. {_timing(tasks, timing, compute)}",
             "", f"Seeds {seeds}: seed k trains each method and draws its evaluation noise, so methods are "
             "compared paired by seed. ToyBench on the same test prompts for every model; numbers are "
             "percentages, mean ± 95 % Student-t interval over seeds (no ± with one seed).", "",
             "## Table 1 analogue", "",
             "| run | iterations | seeds | " + " | ".join(c for c, _ in TABLE) + " |",
             "|---|---|---|" + "---|" * len(TABLE)]
    for name, per_seed in results.items():
        cells = [mean_ci([_get(r, path) for r in per_seed.values()]).format(100) for _, path in TABLE]
        it = steps.get(name, "—")
        lines.append(f"| {labels[name]} | {it} | {len(per_seed)} | " + " | ".join(cells) + " |")
    lines += ["", "## The paper's claims, measured", "",
              "Each verdict comes from the 95 % interval of the per-seed difference: `>` above 0, `<` below, "
              "`≈` contains 0 (not resolved at this number of seeds).", ""]
    for letter, text in CLAIM_TEXT.items():
        verdict, evidence = getattr(claims, letter)()
        lines.append(f"**({letter}) {text}.** {verdict}.  ")
        for e in evidence:
            lines.append(f"  {e}.  ")
        lines.append(f"  Paper: {PAPER[letter]}.")
        lines.append("")
    lines += ["## Figures", ""]
    captions = {"totals": "ToyBench total per run (mean ± 95 % CI; grey: references)",
                "logit_gap": "Discriminator logit gap during training (the paper's Figure 4), one line per seed",
                "curves": "One-Forcing framewise: generator (DMD, GAN-G) and critic losses, per seed"}
    for key, path in figures.items():
        lines += [f"![{captions[key]}]({rel(path)})", "", f"*{captions[key]}.*", ""]
    lines += ["## Per seed", "", "| run | seed | total | dynamic degree | subject consistency | count | time |",
              "|---|---|---|---|---|---|---|"]
    for t in tasks:
        r = results[t.name][t.seed]
        took = " + ".join(f"{v / 60:.1f}" for v in t.seconds.values()) + " min" + (" (cached)" * t.cached)
        lines.append(f"| {t.label} | {t.seed} | {100 * r['total']:.2f} | {100 * r['raw']['dynamic_degree']:.2f} | "
                     f"{100 * r['raw']['subject_consistency']:.2f} | {100 * r['raw']['count']:.2f} | {took} |")
    job.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(job.out, "\n".join(lines) + "\n")
    return job.out
