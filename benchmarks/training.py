"""Training benchmarks (CPU by default), printed as medians of ratios measured in one run.

    python benchmarks/training.py                  # P3 and P4 on the toy One-Forcing recipe
    python benchmarks/training.py --recipe tests/recipes/tiny_distill.yaml
    python benchmarks/training.py --memory         # P5 at the real 1.3B width (2 ranks, ~5 GiB in all)

P3  share of a distillation iteration spent inside model forward/backward (target >= 0.85):
    forward time is the time inside any module call of a role's model (generator, critic, real
    score; hooks on every submodule, outermost call timed), backward time around the engine's
    backward; the rest is the trainer's own work (data, noise, loss arithmetic, sampler
    bookkeeping, optimizer step, EMA, logging).
P4  per-rank model+optimizer state with ZeRO-3 on 2 ranks / 1 rank (target <= 0.55), from the
    trainer's "model+optimizer state on this rank" line after the first update.
P5  peak memory per rank (RSS high-water mark) of a One-Forcing iteration at the real Wan2.1-1.3B
    width (dim 1536 = 12 heads x 128, FFN 8960, text dim 4096; `--layers` blocks per model) for
    generator, register critic and frozen real score, fp32 ZeRO-3 on 2 CPU ranks, beside the
    analytic expectation; once with the gather limits the trainer derives from the model size
    and once with DeepSpeed's defaults. See benchmarks/memory.py.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_iteration(trainer, sync=lambda: None) -> float:
    """One training iteration as the trainer runs it (the generator's phase every
    `generator_every` steps, then the critic's); returns its wall seconds (`sync`: wait for the
    device first, e.g. torch.cuda.synchronize)."""
    sync()
    t0 = time.perf_counter()
    if trainer.losses["generator"] and trainer.step % trainer.generator_every == 0:
        trainer._phase("generator")
    if trainer.losses["critic"]:
        trainer._phase("critic")
    sync()
    trainer.step += 1
    return time.perf_counter() - t0


def measure_p3(recipe: str, overrides: list[str], steps: int, warmup: int) -> list[float]:
    """In-process, one rank: per-iteration share of time inside model forward/backward."""
    import torch

    from oneforcing.distributed import init_distributed
    from oneforcing.jobs.base import prepare
    from oneforcing.trainer import build_trainer

    run_dir = tempfile.mkdtemp(prefix="of-bench-")
    recipe_dict, meta, job = prepare(recipe, [*overrides, f"run_dir={run_dir}", f"steps={steps}",
                                              "export=null", "loggers=[]", f"checkpoint_every={10**9}"])
    ctx = init_distributed(meta.get("seed", 0), recipe_dict, recipe)
    trainer = build_trainer(job.config, ctx)
    model_time = [0.0]
    depth = [0]

    def pre(module, args, kwargs=None):
        if depth[0] == 0:
            pre.t0 = time.perf_counter()
        depth[0] += 1

    def post(module, args, out, kwargs=None):
        depth[0] -= 1
        if depth[0] == 0:
            model_time[0] += time.perf_counter() - pre.t0

    modules = [r.module for r in trainer.roles.values() if r is not None]
    if trainer.real_score is not None:
        modules.append(trainer.real_score.module)
    # Hooks on every submodule, not only the top-level ones: losses call methods such as
    # `critic.denoise(...)`, which enter the critic's inner Wan without the critic's own __call__.
    # The depth counter makes the outermost module call the one that is timed.
    for m in modules:
        for sub in m.modules():
            sub.register_forward_pre_hook(pre)
            sub.register_forward_hook(post)
    for role in (r for r in trainer.roles.values() if r is not None):
        original = role.backward

        def timed(loss, last: bool = True, original=original):  # the engine's backward(loss, last)
            t0 = time.perf_counter()
            original(loss, last=last)
            model_time[0] += time.perf_counter() - t0
        role.backward = timed

    shares = []
    trainer.checkpoints.clean_partial()
    while trainer.step < steps:
        model_time[0] = 0.0
        total = run_iteration(trainer)
        if trainer.step > warmup:
            shares.append(model_time[0] / total)
    torch.distributed.destroy_process_group()
    return shares


def state_mib(recipe: str, overrides: list[str], ranks: int) -> dict[str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tempfile.mkdtemp(prefix="of-bench-")
    launcher = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", str(ranks),
                "--master_port", str(port)] if ranks > 1 else [sys.executable]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "OF_RUN_DIR": run_dir}
    # ZeRO-3 on both sides (a recipe's `zero_stage: auto` would leave the 1-rank run unsharded).
    proc = subprocess.run([*launcher, str(ROOT / "recipes/run.py"), recipe, *overrides, f"run_dir={run_dir}",
                           "steps=1", "export=null", "loggers=[]", "deepspeed.zero_stage=3"],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    found = re.findall(r"\] (\w+): model\+optimizer state on this rank: ([\d.]+) MiB", proc.stderr)
    return {role: float(mib) for role, mib in found}


def main() -> None:
    toy = ROOT / "recipes/toy/one_forcing_framewise.yaml"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(toy))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--memory", action="store_true", help="P5 only: peak memory per rank at the real width")
    parser.add_argument("--layers", type=int, default=1, help="P5: transformer blocks per model")
    parser.add_argument("--heads", type=int, default=12, help="P5: attention heads (12 = the real width)")
    parser.add_argument("--compare-defaults", action="store_true",
                        help="P5: also run with DeepSpeed's default gather limits (more memory)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("OF_RUN_DIR", tempfile.mkdtemp(prefix="of-bench-"))
    if args.memory:
        from benchmarks.memory import report_p5

        report_p5(args.layers, args.heads, args.compare_defaults)
        return

    one = state_mib(args.recipe, args.overrides, 1)
    two = state_mib(args.recipe, args.overrides, 2)
    shares = measure_p3(args.recipe, args.overrides, args.steps, args.warmup)
    print(f"recipe: {args.recipe}")
    print(f"P3 model forward/backward share of an iteration: median {statistics.median(shares):.3f} "
          f"over {len(shares)} iterations (min {min(shares):.3f}, max {max(shares):.3f}; target >= 0.85)")
    for role in one:
        print(f"P4 {role}: {two[role]:.3f} MiB per rank on 2 ranks / {one[role]:.3f} MiB on 1 rank = "
              f"{two[role] / one[role]:.3f} (target <= 0.55)")


if __name__ == "__main__":
    main()
