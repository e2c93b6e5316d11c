"""ToyBench against generator updates: train a toy recipe in stages and score the raw student at each.

    OMP_NUM_THREADS=1 python benchmarks/toy_convergence.py RECIPE --points 50,100,200,400 --out DIR
        [--tier 1,1] [--videos 128] [--eval KEY=VALUE ...] [-- OVERRIDE ...]

One run in DIR/run: for each point P (trainer iterations, ascending) the recipe trains to P
(`steps=P`, resuming from the previous point's checkpoint, so the curve is one training run, not
several) and exports to DIR/export_P; `recipes/toy/eval_student.yaml` then scores that export (the
weights its recipe declares for inference) on the tier's test prompts (`--tier MAX_OBJECTS,
START_POSITIONS`, e.g. 1,1 for the one-object tier; default: the whole world). Point 0 scores the
recipe's generator init. Writes DIR/curve.md (one ToyBench row per point), DIR/curve.json and prints
the table: total, subject consistency and count against generator updates (P / generator_every, less a
`generator_start` warm-up).
Where the curve flattens sets a report's iteration budget (issue 19, item 3).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oneforcing.config.recipe import load_recipe  # noqa: E402


def generator_updates(iterations: int, every: int, start: int = 0) -> int:
    """Generator updates in trainer steps 0..iterations-1: at each step >= `generator_start` that is a
    multiple of `generator_every` past it (trainer/loop.py); a critic-only warm-up counts none."""
    return 0 if iterations <= start else -(-(iterations - start) // every)


def run(args: list[str]) -> None:
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "run.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"toy_convergence: `recipes/run.py {' '.join(args)}` failed ({proc.returncode}):\n"
                 + (proc.stderr or proc.stdout)[-2000:])


def score(checkpoint: str, out: Path, name: str, evaluation: list[str]) -> dict:
    run([str(ROOT / "recipes" / "toy" / "eval_student.yaml"), f"checkpoint={checkpoint}", f"out={out}",
         f"markdown={out.parent / 'curve.md'}", f"name={name}", "save_mp4=0", "gif=false", *evaluation])
    return json.loads((out / "toybench.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("--points", default="50,100,200,400", help="trainer iterations, ascending")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tier", default=None, help="MAX_OBJECTS,START_POSITIONS of the world's tier (e.g. 1,1)")
    ap.add_argument("--videos", type=int, default=128)
    ap.add_argument("--eval", action="append", default=[], metavar="KEY=VALUE",
                    help="an override of recipes/toy/eval_student.yaml (e.g. fd=false); repeatable")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = ap.parse_args(argv[:cut])
    args.overrides = argv[cut + 1:]  # recipe overrides, after --
    points = [int(p) for p in args.points.split(",")]
    if points != sorted(set(points)) or points[0] < 1:
        ap.error("--points: distinct positive iteration counts, ascending")
    tier = []
    if args.tier:
        objects, starts = args.tier.split(",")
        tier = [f"max_objects={int(objects)}", f"start_positions={int(starts)}"]
    evaluation = [f"num_videos={args.videos}", *tier, *args.eval]
    recipe = load_recipe(args.recipe, args.overrides)
    every, start = int(recipe.get("generator_every", 1)), int(recipe.get("generator_start", 0))
    init = recipe["models"]["generator"]["pretrained"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, t0 = [], time.perf_counter()
    rows.append({"iterations": 0, "updates": 0, **score(init, out / "eval_0", "0 updates (init)", evaluation)})
    for p in points:
        run([args.recipe, *args.overrides, f"run_dir={out / 'run'}", f"steps={p}", f"checkpoint_every={p}",
             f"export={{dir: {out / f'export_{p}'}}}", "resume=auto"])
        n = generator_updates(p, every, start)
        res = score(str(out / f"export_{p}"), out / f"eval_{p}", f"{n} updates", evaluation)
        rows.append({"iterations": p, "updates": n, **res})
        print(f"{p} iterations ({n} generator updates): total {100 * res['total']:.2f}  "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    (out / "curve.json").write_text(json.dumps({"recipe": args.recipe, "overrides": args.overrides, "tier": tier,
                                                "machine": platform.processor() or platform.machine(),
                                                "rows": rows}, indent=1) + "\n")
    print("\n| generator updates | total | subject consistency | count |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['updates']} | {100 * r['total']:.2f} | {100 * r['normalized']['subject_consistency']:.2f} | "
              f"{100 * r['normalized']['count']:.1f} % |")


if __name__ == "__main__":
    main()
