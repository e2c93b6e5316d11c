"""The distribution-matching unit world over seeds: each objective, then a study of DMD's fake score.

    python benchmarks/unit_world.py                     # both parts, 5 seeds (~70 min, 2-core CPU)
    python benchmarks/unit_world.py --part objectives   # or: --part fake_score
    python benchmarks/unit_world.py --quick             # 2 seeds, 60 updates: a smoke run (~3 min)

Every run trains a one-step MLP generator onto the 8-mode ring (oneforcing/unit_world) with the
registered losses and scores the raw generator's 4096 samples: sliced W2 to fresh target samples,
modes captured (>= half their fair share within 3 std), the on-mode fraction and the mode
balance (TV distance of the on-mode histogram to uniform). Tables give the mean and the 95 %
t-interval over seeds (oneforcing/eval/report_stats.py). Results go to --out (results.json, one
record per run, reused on a rerun with the same configuration; tables.md; unit_world.png: seed 0's
samples and each objective's mean per-mode share). One thread: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oneforcing.toy.jobs.report_stats import mean_ci  # noqa: E402
from oneforcing.unit_world import MixtureOfGaussians, UnitConfig, UnitWorld, score  # noqa: E402
from oneforcing.unit_world.fidelity import BANDS, gradient_fidelity  # noqa: E402

OBJECTIVES = [  # (row, UnitConfig overrides, what it is)
    ("dmd", {"objective": "dmd"}, "DMD, exact real score, learned fake score"),
    ("dmd_exact_fake", {"objective": "dmd_exact_fake"}, "DMD, fake score exact for 2048 current samples (control)"),
    ("dmd_gan", {"objective": "dmd_gan"}, "DMD + GAN on real samples (weight 0.03)"),
    ("dmd_gan w0.3", {"objective": "dmd_gan", "gan_weight": 0.3}, "DMD + GAN on real samples, GAN weight 0.3"),
    ("gan", {"objective": "gan"}, "GAN alone on real samples"),
    ("fkl", {"objective": "fkl"}, "forward-KL surrogate alone (regression onto the 48-step teacher ODE)"),
    ("dmd_fkl", {"objective": "dmd_fkl"}, "DMD + forward-KL surrogate"),
    ("dmd_gan_fkl", {"objective": "dmd_gan_fkl"}, "DMD + GAN + forward-KL surrogate"),
    ("asd", {"objective": "asd"}, "ASD: DMD + GAN whose real side is the 2-step student"),
    ("dmd_flipped", {"objective": "dmd_flipped"}, "DMD with its gradient sign flipped (must diverge)"),
]
FAKE_SCORE = [  # DMD with a learned fake score: (row, overrides, what changes)
    ("ratio 1", {"generator_every": 1}, "1 critic update per generator update"),
    ("ratio 5", {}, "5 (the recipes)"),
    ("ratio 20", {"generator_every": 20}, "20"),
    ("critic lr 1e-4", {"lr_critic": 1e-4}, "critic 10x slower than the generator (lags)"),
    ("generator lr 3e-3", {"lr_generator": 3e-3}, "generator 3x faster than the critic"),
    ("both lr 1e-4", {"lr_generator": 1e-4, "lr_critic": 1e-4}, "the toy recipes' learning rate"),
    ("critic init: target", {"critic_init": "target"}, "critic pre-trained on the target (as a teacher init)"),
    ("critic init: far", {"critic_init": "far"}, "critic pre-trained on the target moved by (4, 4)"),
    ("batch 64", {"batch": 64}, "64 samples per update instead of 1024"),
    ("batch 8", {"batch": 8}, "8 samples per update"),
]
HALF = {"generator_init": "half"}
DROPPED = [  # from a generator that covers modes 0-3 only: (row, overrides, what)
    ("init", {**HALF, "objective": "dmd", "steps": 0}, "the half-ring init itself (no training)"),
    ("dmd", {**HALF, "objective": "dmd"}, "DMD"),
    ("dmd_gan", {**HALF, "objective": "dmd_gan"}, "DMD + GAN on real samples (0.03)"),
    ("dmd_gan w0.3", {**HALF, "objective": "dmd_gan", "gan_weight": 0.3}, "DMD + GAN on real samples (0.3)"),
    ("dmd_fkl", {**HALF, "objective": "dmd_fkl"}, "DMD + forward-KL surrogate (full-target ODE pairs)"),
    ("asd", {**HALF, "objective": "asd"}, "ASD"),
]
PARTS = {  # part -> (title, rows, budget argument, fidelity column, figure)
    "objectives": ("Objectives", OBJECTIVES, "updates", False, True),
    "fake_score": ("DMD's fake score", FAKE_SCORE, "study_updates", True, False),
    "dropped_modes": ("From a generator that dropped modes 4-7", DROPPED, "study_updates", False, False),
}


def run_key(fields: dict) -> str:
    """A run's cache key: its seed and every UnitConfig field (a record written before a field
    existed gets that field's default, so adding a field keeps the earlier records)."""
    return json.dumps({**asdict(UnitConfig()), **fields}, sort_keys=True)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, 1 thread, "
            f"load average {os.getloadavg()[0]:.1f}")


def record(world: UnitWorld, seconds: float, fidelity: bool) -> dict:
    s = world.score()
    out = {"sw2": s.sw2, "floor": s.floor, "captured": s.modes.captured, "on_mode": s.modes.on_mode,
           "balance": s.modes.balance, "fractions": s.modes.fractions, "seconds": seconds,
           "updates": world.generator_updates}
    if fidelity:
        out["fidelity"] = {f"{lo}-{hi}": f.cosine for f, (lo, hi) in
                           zip(gradient_fidelity(world, n=2048, bank=4096), BANDS)}
    return out


def run_one(cfg: UnitConfig, seed: int) -> dict:
    t0 = time.perf_counter()
    world = UnitWorld(cfg, seed)
    while world.step < cfg.steps:
        world.train_step()
    rec = record(world, time.perf_counter() - t0, fidelity=cfg.objective == "dmd")
    if seed == 0:  # for the figure
        rec["samples"] = [[round(v, 4) for v in p] for p in world.sample(2048, seed=-1).tolist()]
    return rec


def fmt(values: list[float], digits: int = 3) -> str:
    if not values:
        return "-"
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < len(values):
        return "diverged (non-finite)"
    return mean_ci(finite).format(digits=digits)


def table(rows: list[tuple[str, str, list[dict]]], with_fidelity: bool = False) -> str:
    head = "| row | what | sliced W2 | modes captured (of 8) | on-mode | balance (TV) | min / run |"
    sep = "|---|---|---|---|---|---|---|"
    if with_fidelity:
        head += " DMD-gradient cosine to exact fake, sigma <0.3 / 0.3-0.7 / >0.7 |"
        sep += "---|"
    lines = [head, sep]
    for name, what, recs in rows:
        line = (f"| {name} | {what} | {fmt([r['sw2'] for r in recs])} | {fmt([r['captured'] for r in recs], 1)} | "
                f"{fmt([r['on_mode'] for r in recs], 2)} | {fmt([r['balance'] for r in recs], 2)} | "
                f"{sum(r['seconds'] for r in recs) / len(recs) / 60:.1f} |")
        if with_fidelity:
            bands = [f"{lo}-{hi}" for lo, hi in BANDS]
            line += " " + " / ".join(fmt([r["fidelity"][b] for r in recs if "fidelity" in r], 2) for b in bands) + " |"
        lines.append(line)
    return "\n".join(lines)


def references(cfg: UnitConfig, seeds: list[int]) -> list[tuple[str, str, list[dict]]]:
    """What the figures read for the target itself, a uniform ring (modes merged) and the init."""
    target = MixtureOfGaussians.ring(cfg.modes, cfg.radius, cfg.std)
    rows = {"target": [], "uniform ring": [], "untrained generator": []}
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        angle = torch.rand(cfg.eval_samples, generator=g) * 2 * math.pi
        r = cfg.radius + cfg.std * torch.randn(cfg.eval_samples, generator=g)
        points = {"target": target.sample(cfg.eval_samples, g),
                  "uniform ring": torch.stack([r * angle.cos(), r * angle.sin()], dim=-1),
                  "untrained generator": UnitWorld(cfg, seed).sample(cfg.eval_samples, seed=-1)}
        for name, x in points.items():
            s = score(x, target, seed)
            rows[name].append({"sw2": s.sw2, "captured": s.modes.captured, "on_mode": s.modes.on_mode,
                               "balance": s.modes.balance, "seconds": 0.0})
    what = {"target": "fresh target samples (the metric's floor)",
            "uniform ring": "radius 2, radial std 0.1: the 8 modes merged",
            "untrained generator": "the initial one-step generator"}
    return [(name, what[name], recs) for name, recs in rows.items()]


def figure(out: Path, samples: dict[str, torch.Tensor], fractions: dict[str, list[list[float]]], cfg: UnitConfig):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from oneforcing.jobs.shared import save_png

    names = list(samples)
    fig, axes = plt.subplots(2, len(names), figsize=(2.2 * len(names), 4.6))
    target = MixtureOfGaussians.ring(cfg.modes, cfg.radius, cfg.std)
    for i, name in enumerate(names):
        ax = axes[0, i]
        x = samples[name].clamp(-3.5, 3.5)
        ax.scatter(x[:, 0], x[:, 1], s=0.5, alpha=0.3)
        ax.scatter(target.means[:, 0], target.means[:, 1], s=8, c="red", marker="x")
        ax.set_xlim(-3.5, 3.5), ax.set_ylim(-3.5, 3.5), ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(name, fontsize=8)
        mean = torch.tensor(fractions[name]).mean(0)
        axes[1, i].bar(range(cfg.modes), mean.tolist())
        axes[1, i].axhline(1 / cfg.modes, color="red", lw=0.8)
        axes[1, i].set_ylim(0, max(0.2, float(mean.max()) * 1.1)), axes[1, i].set_xticks(range(cfg.modes))
        axes[1, i].tick_params(labelsize=6)
    axes[1, 0].set_ylabel("share per mode\n(mean over seeds)", fontsize=7)
    fig.tight_layout()
    save_png(fig, out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["all", *PARTS], default="all")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--updates", type=int, default=1000, help="generator updates per objective run")
    p.add_argument("--study-updates", type=int, default=600, help="generator updates per run of the other parts")
    p.add_argument("--quick", action="store_true", help="2 seeds, 60 updates (a smoke run)")
    p.add_argument("--out", default="runs/unit_world")
    p.add_argument("--figure", default=None, help="where the PNG goes (default: OUT/unit_world.png)")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.updates, args.study_updates = 2, 60, 60
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache_file = out / "results.json"
    cache = {run_key(json.loads(k)): v for k, v in json.loads(cache_file.read_text()).items()} \
        if cache_file.exists() else {}
    seeds = list(range(args.seeds))
    print(f"machine: {machine()}", flush=True)
    t_start = time.perf_counter()

    def runs(cfg: UnitConfig) -> list[dict]:
        recs = []
        for seed in seeds:
            key = run_key({"seed": seed, **asdict(cfg)})
            if key not in cache:
                cache[key] = run_one(cfg, seed)
                cache_file.write_text(json.dumps(cache))
            recs.append(cache[key])
        return recs

    sections = [f"machine: {machine()}"]
    base = UnitConfig()
    for part in (PARTS if args.part == "all" else [args.part]):
        title, spec, budget, with_fidelity, with_figure = PARTS[part]
        updates = getattr(args, budget)
        rows = references(base, seeds) if part == "objectives" else []
        samples, fractions = {}, {}
        for name, overrides, what in spec:
            every = overrides.get("generator_every", base.generator_every)
            cfg = replace(base, **{"steps": updates * every, **overrides})
            recs = runs(cfg)
            rows.append((name, what, recs))
            samples[name], fractions[name] = torch.tensor(recs[0]["samples"]), [r["fractions"] for r in recs]
            print(f"{part} / {name}: sw2 {fmt([r['sw2'] for r in recs])}, modes {fmt([r['captured'] for r in recs], 1)} "
                  f"({time.perf_counter() - t_start:.0f} s)", flush=True)
        if with_figure:
            figure(Path(args.figure) if args.figure else out / "unit_world.png", samples, fractions, base)
        sections.append(f"### {title} ({updates} generator updates, {len(seeds)} seeds)\n\n"
                        + table(rows, with_fidelity=with_fidelity))
    sections.append(f"total {(time.perf_counter() - t_start) / 60:.1f} min")
    text = "\n\n".join(sections)
    (out / "tables.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
