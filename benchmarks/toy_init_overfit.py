"""Can the toy student fit the exact teacher's ODE pairs at all? (docs/toy_world.md, issue 19 item 0)

    OMP_NUM_THREADS=1 python benchmarks/toy_init_overfit.py PAIRS_DIR [--examples 8] [--lr 1e-3] [--steps 300]

Teacher-forced ODE regression (the loss of recipes/toy/analytic_ode_init.yaml: a kept state per
sample, the pair's own clean endpoint as context) of the toy student base on the first
`--examples` pairs of PAIRS_DIR, in a plain loop. Prints the loss and the x0 error from pure noise
(t = 1000) for frame 0 and for frames 1-20, which the clean context fixes in a deterministic tier.
If this does not fall towards 0, the regression path is broken; if it does while the recipe's run
on all pairs does not, the recipe is under-trained.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from oneforcing.config.assets import packaged_asset
from oneforcing.jobs.shared import load_generator_model
from oneforcing.registry.plugins import load_builtins
from oneforcing.schedulers import FlowMatchScheduler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", help="an ode_pairs folder, e.g. data/toy_s1/ode_pairs")
    ap.add_argument("--examples", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    load_builtins()
    torch.manual_seed(0)
    shard = load_file(str(sorted(Path(args.pairs).glob("shard-*.safetensors"))[0]))
    n = args.examples
    x0, text = shard["clean"][:n].float(), shard["prompt_embed"][:n].float()
    states, times = shard["states"][:n].float(), shard["timesteps"][:n].float()
    model = load_generator_model({"type": "causal_wan", "frames_per_block": 1}, packaged_asset("toy_student_base"),
                                 None, FlowMatchScheduler()).float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    flow, rows, t0 = FlowMatchScheduler(), torch.arange(n), time.perf_counter()
    for step in range(args.steps):
        k = torch.randint(0, states.shape[1], (n,))
        x_t, t = states[rows, k], times[rows, k]
        loss = ((flow.x0_from_v(x_t, model(x_t, t, text, clean_x=x0, causal=True), t) - x0) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            with torch.no_grad():
                x_t, t = states[:, 0], times[:, 0]
                err = ((flow.x0_from_v(x_t, model(x_t, t, text, clean_x=x0, causal=True), t) - x0) ** 2)
                err = err.mean(dim=(0, 2, 3, 4))
            print(f"step {step:4d}  loss {loss.item():.4f}  x0 error at t=1000: frame 0 {err[0].item():.3f}, "
                  f"frames 1+ {err[1:].mean().item():.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
