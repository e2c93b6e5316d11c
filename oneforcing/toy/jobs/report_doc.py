"""The toy report's text and figures, from the finished tasks of a `toy_report` job.

Every number is read back from the tasks' files (eval/toybench.json, metrics.jsonl,
curvature.json, task.json); nothing is typed in. The claims are tested in report_claims.py: one
Holm-corrected family at the recipe's alpha, equivalence by TOST at its margin; a claim the
corrected tests do not establish is "not resolved" at this number of seeds, which the report says as
plainly as a confirmation.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path

from oneforcing.data.shards import atomic_write_text
from oneforcing.jobs.plot import plot_metrics, read_metrics
from oneforcing.jobs.shared import save_png
from oneforcing.provenance import describe_code
from oneforcing.toy.jobs.report_claims import CLAIM_TEXT, PAPER, Claims, metric
from oneforcing.toy.jobs.report_stats import mean_ci

# (column title, path into toybench.json)
TABLE = (("total", ("total",)), ("quality", ("quality",)), ("semantic", ("semantic",)),
         ("dynamic degree", ("raw", "dynamic_degree")), ("subject consistency", ("raw", "subject_consistency")),
         ("count", ("raw", "count")), ("shape", ("raw", "shape")), ("direction", ("raw", "direction")))


def load(tasks) -> dict[str, dict[int, dict]]:
    """{name: {seed: toybench result}} of the method and reference tasks."""
    out: dict[str, dict[int, dict]] = {}
    for t in tasks:
        if t.kind in ("method", "reference"):
            path = t.dir / "eval" / "toybench.json"
            out.setdefault(t.name, {})[t.seed] = json.loads(path.read_text(encoding="utf-8"))
    return out


def load_curvature(tasks) -> dict | None:
    for t in tasks:
        if t.kind == "curvature":
            return json.loads((t.dir / "curvature.json").read_text(encoding="utf-8"))
    return None


def weights_of(per_seed: dict[int, dict]) -> str:
    """Which weights a row scored (toy_eval's 'weights': raw, EMA, folder); one word per row."""
    kinds = sorted({r.get("weights", "not recorded") for r in per_seed.values()})
    return kinds[0] if len(kinds) == 1 else "mixed: " + ", ".join(kinds)


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
    ax.set_xlabel("ToyBench total (mean ± 95 % descriptive t-interval over seeds)")
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
    for t in tasks:   # the curvature job's own Figure 3 analogue, copied beside the others
        if t.kind == "curvature" and (t.dir / "curvature.png").exists():
            made["curvature"] = str(shutil.copyfile(t.dir / "curvature.png", job.figures / "curvature.png"))
    return made


def _timing(tasks, timing: dict, compute: float) -> str:
    cached = sum(t.cached for t in tasks)
    text = (f"This invocation took {timing['wall_s'] / 60:.1f} min (data and pairs {timing['prepare_s'] / 60:.1f} "
            f"min); the tasks' own times sum to {compute / 60:.1f} min")
    if cached:
        text += (f", {cached} of {len(tasks)} tasks having been finished by earlier invocations of the same "
                 "command (their times are in the per-task table)")
    return text + "."


def _code_line(tasks) -> str:
    """The commits the tasks were made at (a resumed report can span several) and the source hash."""
    codes = sorted({describe_code(t.record["code"]) for t in tasks if "code" in t.record})
    sources = sorted({t.record["source_sha256"] for t in tasks if "source_sha256" in t.record})
    where = codes[0] if len(codes) == 1 else f"{len(codes)} code versions ({'; '.join(codes)})"
    return (f"tasks made at commit {where}, oneforcing/ source sha256 {', '.join(sources) or 'not recorded'} "
            "(each task's task.json also records the hashes of the packaged assets it read, the machine and torch)")


def _statistics(claims: Claims, seeds: list, margin: float) -> list[str]:
    family = claims.family
    testable = [t for t in family if t.p is not None]
    return [
        "## Statistics", "",
        f"Seeds {seeds}: seed k trains each method and draws its evaluation noise, so methods are compared "
        "paired by seed (a test of a difference is a one-sample t-test of the per-seed differences). "
        "ToyBench numbers are percentages (points).", "",
        f"**The family.** Every test written under the claims below, {len(testable)} in all "
        f"({len(family) - len(testable)} more could not be tested: fewer than two seeds), is one family, corrected "
        f"with Holm's step-down procedure at family-wise alpha = {claims.alpha:g}. Each claim's interval is drawn "
        "at the per-test level that matches its Holm decision (alpha / (m − i + 1) for the i-th smallest p-value "
        "while Holm rejects, then the level of the first test it keeps), so an interval excludes the null exactly "
        "where the corrected test rejects; the adjusted p-value is given beside it.", "",
        f"**Equivalence.** A claim of '≈' (or 'no worse') is tested with TOST on the paired per-seed differences at "
        f"margin ±{margin:g} ToyBench points (the recipe's `equivalence_margin`): it reads 'equivalent at margin "
        f"±{margin:g}' only where both one-sided tests reject after the correction (the interval shown is the "
        "(1 − 2 level) interval, inside the margin exactly then); otherwise 'not resolved'. 'Supported' is written "
        "only where the corrected tests the claim needs reject in the claimed direction.", "",
        "**Descriptive intervals.** Table 1 and the totals figure show each run's mean ± a 95 % Student-t "
        "interval over seeds: descriptive, no claim is read from them, and they are not corrected.", ""]


def _claims_section(claims: Claims) -> list[str]:
    lines = ["## The paper's claims, measured", "",
             "Marks: `>` / `<` the corrected two-sided test rejects a zero difference in that direction; "
             "`≈ within ±m` TOST rejects; `> b` / `< b` the one-sided test against b rejects; `n.s.` not "
             "significant after the correction.", ""]
    for letter, text in CLAIM_TEXT.items():
        verdict, evidence = claims.verdict(letter)
        lines.append(f"**({letter}) {text}.** {verdict}.  ")
        lines += [f"  {e}.  " for e in evidence]
        lines += [f"  Paper: {PAPER[letter]}.", ""]
    return lines


def write_report(job, tasks, timing: dict) -> Path:
    """Write job.out (markdown) and its figures; returns the markdown's path."""
    import torch

    from oneforcing.speed import device_name

    results = load(tasks)
    curvature = load_curvature(tasks)
    gaps = logit_gaps(tasks)
    labels = {t.name: t.label for t in tasks}
    steps = {t.name: t.steps for t in tasks if t.kind == "method"}
    figures = _figures(job, tasks, results, gaps, labels)
    claims = Claims(results, gaps, steps, labels, margin=job.margin, alpha=job.alpha, curvature=curvature)
    rel = lambda p: os.path.relpath(p, job.out.parent)  # noqa: E731
    seeds = sorted({t.seed for t in tasks if t.seed is not None})
    compute = sum(v for t in tasks for v in t.seconds.values())
    lines = [f"# {job.title}", "",
             f"Generated by `{job.command or 'python recipes/run.py RECIPE'}` on {datetime.date.today()}; "
             f"{_code_line(tasks)}. Every number below is read from the runs' own files. "
             "Do not edit by hand: run the command again.", "",
             f"Machine: {device_name(torch.device('cpu')).split(' (')[0]} ({os.cpu_count()} cores), torch "
             f"{torch.__version__}; {job.workers} runs at a time with {job.threads} torch thread(s) each. "
             f"{_timing(tasks, timing, compute)}", "",
             *_statistics(claims, seeds, job.margin),
             "## Table 1 analogue", "",
             "Weights: what ToyBench scored (raw generator, EMA, or a plain weights folder), as each training "
             "recipe's `export.inference_weights` declares (oneforcing/weights.py).", "",
             "| run | weights | iterations | seeds | " + " | ".join(c for c, _ in TABLE) + " |",
             "|---|---|---|---|" + "---|" * len(TABLE)]
    for name, per_seed in results.items():
        cells = [mean_ci([metric(r, path) for r in per_seed.values()]).format(100) for _, path in TABLE]
        lines.append(f"| {labels[name]} | {weights_of(per_seed)} | {steps.get(name, '—')} | {len(per_seed)} | "
                     + " | ".join(cells) + " |")
    lines += ["", *_claims_section(claims), "## Figures", ""]
    captions = {"totals": "ToyBench total per run (mean ± 95 % descriptive interval; grey: references)",
                "logit_gap": "Discriminator logit gap during training (the paper's Figure 4), one line per seed",
                "curves": "One-Forcing framewise: generator (DMD, GAN-G) and critic losses, per seed",
                "curvature": "Teacher ODE curvature profiles, each normalised by its peak (the paper's Figure 3)"}
    for key, path in figures.items():
        lines += [f"![{captions[key]}]({rel(path)})", "", f"*{captions[key]}.*", ""]
    lines += ["## Per task", "", "| run | seed | weights | total | dynamic degree | subject consistency | count | "
              "time | commit |", "|---|---|---|---|---|---|---|---|---|"]
    for t in tasks:
        took = " + ".join(f"{v / 60:.1f}" for v in t.seconds.values()) + " min" + (" (cached)" * t.cached)
        code = describe_code(t.record["code"]) if "code" in t.record else "not recorded"
        if t.kind == "curvature":
            lines.append(f"| {t.label} | — | — | — | — | — | — | {took} | {code} |")
            continue
        r = results[t.name][t.seed]
        lines.append(f"| {t.label} | {t.seed} | {r.get('weights', 'not recorded')} | {100 * r['total']:.2f} | "
                     f"{100 * r['raw']['dynamic_degree']:.2f} | {100 * r['raw']['subject_consistency']:.2f} | "
                     f"{100 * r['raw']['count']:.2f} | {took} | {code} |")
    job.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(job.out, "\n".join(lines) + "\n")
    return job.out
