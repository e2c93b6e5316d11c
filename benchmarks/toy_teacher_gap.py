"""Where a learned toy teacher loses to the exact one: x0 error per noise level.

    python benchmarks/toy_teacher_gap.py [--teacher oneforcing/assets/toy_teacher] [--num 32]

Real test-split videos are encoded, noised at each t, and denoised by the learned teacher
(conditional, no CFG) and by the analytic teacher (the exact posterior mean, the MMSE optimum).
Because the posterior mean is optimal, E|x0_learned - z|^2 = E|x0_exact - z|^2 + E|x0_learned -
x0_exact|^2: the last column is the learned model's own excess error, per latent coordinate.
Also printed: the learned teacher's velocity loss against the exact model's (the floor of the
flow-matching loss at that t). One thread; a few minutes on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import time

import torch

from oneforcing.jobs.shared import load_generator_model, resolve_model_dir
from oneforcing.registry import load_builtins
from oneforcing.schedulers import FlowMatchScheduler
from oneforcing.toy import ToyAnalyticTeacher, ToyCodec, ToyWorld
from oneforcing.toy.jobs.eval import EVAL_SEED


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="oneforcing/assets/toy_teacher")
    ap.add_argument("--num", type=int, default=32)
    ap.add_argument("--t", default="50,150,300,500,700,850,950")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_builtins()
    exact = ToyAnalyticTeacher(FlowMatchScheduler())
    learned = load_generator_model({"type": "causal_wan", "causal": False}, resolve_model_dir(args.teacher, "ema"),
                                   None, FlowMatchScheduler())
    learned.eval().requires_grad_(False)
    world = ToyWorld("test", args.num, seed=EVAL_SEED)
    z = ToyCodec().encode(world.render(range(args.num)))
    text = exact.decoder.encoder.encode(world.prompts())
    gen = torch.Generator().manual_seed(0)
    print(f"{'t':>5} | {'exact x0 mse':>12} | {'learned x0 mse':>14} | {'learned - exact':>15} | "
          f"{'v loss learned':>14} | {'v loss exact':>12}")
    start = time.perf_counter()
    for t in (float(v) for v in args.t.split(",")):
        eps = torch.randn(z.shape, generator=gen)
        s = t / 1000
        x = (1 - s) * z + s * eps
        tt = torch.full((args.num,), t)
        with torch.no_grad():
            v_learned = learned(x, tt, text, causal=False)
            v_exact = exact(x, tt, text)
        x0_learned, x0_exact = x - s * v_learned, x - s * v_exact
        mse = lambda a, b: float(((a - b) ** 2).mean())  # noqa: E731
        print(f"{t:5.0f} | {mse(x0_exact, z):12.4f} | {mse(x0_learned, z):14.4f} | {mse(x0_learned, x0_exact):15.4f} | "
              f"{mse(v_learned, eps - z):14.4f} | {mse(v_exact, eps - z):12.4f}", flush=True)
    print(f"({args.num} test videos, {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
