"""What a viewer of `oneforcing serve` gets, without the browser: latency to the first frame, generator
frames/s (DiT + decode + PNG), and the cost of a prompt switch (the block that re-caches).

    python benchmarks/serve_speed.py                                   # toy world, shipped causal ODE init
    python benchmarks/serve_speed.py recipes/serve.yaml checkpoint=runs/one_forcing_framewise/export  # GPU

Opens one stream (seed 0), generates --frames frames with the prompt switched at the middle, and
prints the figures for recache and keep. Frames are not paced (the page paces them to 16 frames/s).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oneforcing.jobs.base import RunContext, prepare  # noqa: E402

A = "a large red circle moving right slowly on a black background"
B = "a large blue square moving up slowly on a white background"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", nargs="?", default=None)
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--frames", type=int, default=160)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    overrides = args.overrides or ["checkpoint=oneforcing/assets/toy_causal_ode_init"]
    for switch in ("recache", "keep"):
        _, _, job = prepare(args.recipe, [*overrides, f"prompt_switch={switch}"], job_name="serve")
        engine = job.build_engine(RunContext(device=torch.device("cuda" if torch.cuda.is_available() else "cpu")))
        engine.open(A, 1).next_frames()  # warm-up (allocations, kernels)
        t0 = time.perf_counter()
        stream = engine.open(A, 0)
        frames = stream.next_frames()
        first = time.perf_counter() - t0
        per_block, switch_block = [], None
        while stream.frames < args.frames:
            if stream.frames >= args.frames // 2 and switch_block is None:
                stream.set_prompt(B)
                t = time.perf_counter()
                n = len(stream.next_frames())
                switch_block = (time.perf_counter() - t) / n
                continue
            t = time.perf_counter()
            n = len(stream.next_frames())
            per_block.append((time.perf_counter() - t) / n)
        per_frame = statistics.median(per_block)
        print(f"{switch}: {engine.device}, {job.height}x{job.width}: latency to first frame {1000 * first:.0f} ms | "
              f"generator {1 / per_frame:.1f} frames/s (median) | the switch's block {1000 * switch_block:.1f} ms "
              f"per frame vs {1000 * per_frame:.1f} ms | {len(frames)} frame(s) per block")


if __name__ == "__main__":
    main()
