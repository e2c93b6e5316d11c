"""bf16 vs fp32 training speed of toy recipes on this machine's CPU, side by side.

    python benchmarks/precision.py [--steps 6] [--repeats 2] [--recipes causvid_ode_init one_forcing_framewise]

Per recipe and precision: CPU seconds of one training step (one thread), measured as the CPU time
of a run of 1 + `steps` steps minus that of a 1-step run (start-up, model loading, the first step
and the final checkpoint cancel out); the median over `repeats` interleaved pairs. CPU time because
the machine may be shared: wall time there mostly measures the neighbours. The wall-clock figure
beside it is the median of the trainer's own `time/step_s` over the long runs' steps 2..1+steps.
Inputs: a few toy examples and 4-step ODE pairs written into a temporary folder first.
First, for scale: one matmul at a toy layer's size and at the 1.3B model's (1560 tokens x 1536),
fp32 vs bf16, CPU time with one thread (bf16 matmuls use the CPU's AMX / AVX512-BF16 units).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def cpu_seconds(args: list[str], cwd: Path) -> float:
    """CPU time (user + system) of `recipes/run.py args` in a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, str(ROOT / "recipes/run.py"), *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit("\n".join(proc.stderr.splitlines()[-20:]))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def toy_inputs(root: Path) -> list[str]:
    """Recipe overrides that point the toy recipes at small fresh inputs under `root`."""
    cpu_seconds([str(ROOT / "recipes/toy/data.yaml"), f"out={root}/data", "num_examples=32",
                 "examples_per_shard=32"], root)
    cpu_seconds([str(ROOT / "recipes/toy/ode_pairs.yaml"), f"prompts_from={root}/data", f"out={root}/ode",
                 "num_examples=16", "examples_per_shard=16", "batch_size=16",
                 "sampler={type: teacher_ode, num_steps: 4, keep_indices: [0, 1, 2, 3]}"], root)
    return [f"_paths.data={root}/data", f"_paths.ode_pairs={root}/ode", "export=null", "generator_every=1",
            "loggers=[jsonl]", "checkpoint_every=1000"]


def step_seconds(recipe: str, precision: str, steps: int, inputs: list[str], root: Path) -> tuple[float, list]:
    """(CPU seconds per step, the long run's wall seconds of steps 2..1+steps)."""
    args = [str(ROOT / "recipes/toy" / f"{recipe}.yaml"), f"deepspeed.precision={precision}", "log_every=1", *inputs]
    short = cpu_seconds([*args, f"run_dir={root}/run_short", "steps=1", "resume=none"], root)
    long = cpu_seconds([*args, f"run_dir={root}/run_long", f"steps={1 + steps}", "resume=none"], root)
    rows = [json.loads(line) for line in (root / "run_long/metrics.jsonl").read_text().splitlines()]
    return (long - short) / steps, [r["time/step_s"] for r in rows if r["step"] > 1]


def matmul_speedups() -> None:
    import torch

    torch.set_num_threads(1)

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    for m, k, n, reps in ((256, 128, 512, 400), (1560, 1536, 1536, 4)):
        best = {}
        for dtype in (torch.float32, torch.bfloat16):
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            a @ b  # warm-up
            times = []
            for _ in range(3):
                t0 = cpu()
                for _ in range(reps):
                    a @ b
                times.append((cpu() - t0) / reps)
            best[dtype] = min(times)
        print(f"matmul [{m}, {k}] x [{k}, {n}]: fp32 {best[torch.float32] * 1e3:.2f} ms, bf16 "
              f"{best[torch.bfloat16] * 1e3:.2f} ms: bf16 {best[torch.float32] / best[torch.bfloat16]:.2f}x "
              "(CPU time, 1 thread, best of 3)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--recipes", nargs="+", default=["causvid_ode_init", "one_forcing_framewise"])
    args = parser.parse_args()
    matmul_speedups()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs = toy_inputs(root)
        print(f"| recipe | fp32 CPU s/step | bf16 CPU s/step | bf16 speed-up (CPU) | fp32 wall s/step | "
              f"bf16 wall s/step | bf16 speed-up (wall) |  (medians; {args.repeats} repeats)")
        print("|---|---|---|---|---|---|---|")
        for recipe in args.recipes:
            cpu: dict[str, list[float]] = {"fp32": [], "bf16": []}
            wall: dict[str, list[float]] = {"fp32": [], "bf16": []}
            for _ in range(args.repeats):  # interleaved, so a change in load hits both alike
                for precision in cpu:
                    per_step, walls = step_seconds(recipe, precision, args.steps, inputs, root)
                    cpu[precision].append(per_step)
                    wall[precision] += walls
            c32, c16 = (statistics.median(cpu[p]) for p in ("fp32", "bf16"))
            w32, w16 = (statistics.median(wall[p]) for p in ("fp32", "bf16"))
            print(f"| {recipe} | {c32:.3f} | {c16:.3f} | {c32 / c16:.2f}x | {w32:.3f} | {w16:.3f} | "
                  f"{w32 / w16:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
