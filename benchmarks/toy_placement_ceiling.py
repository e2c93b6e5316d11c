"""How much of ToyBench can a generator reach that cannot tell where in the frame it is?

    OMP_NUM_THREADS=1 python benchmarks/toy_placement_ceiling.py [--videos 192] [--seed 11]

A Wan-shaped model has no absolute position within a frame (tests/test_causal_wan.py,
`test_no_absolute_position_within_a_frame`): from pure noise it can only put an object where the noise
breaks the symmetry. The toy world's starts depend on the prompt (a right-mover starts on the left so its
path stays in the frame; two objects take the two halves of the other axis). This renders the test split's
scenes with the same objects and motions but starts drawn as a position-blind generator would draw them,
and scores each with ToyBench beside the real videos: the ceiling of such a generator in this world.

  real          the world's starts
  blind_along   the start along the motion uniform over the whole lane, whatever the direction and speed
                (the path may leave the frame); across the motion as the world draws it
  blind_both    both coordinates uniform over the whole frame (lanes ignored too)
"""

from __future__ import annotations

import argparse
import copy
import platform
import random
import time

import torch

from oneforcing.registry import METRICS, build
from oneforcing.registry.plugins import load_builtins
from oneforcing.toy.world import DIRECTIONS, ToyWorld, object_geometry, render_scenes

GROUPS = ("total", "quality", "semantic")
RAW = ("subject_consistency", "count", "direction", "dynamic_degree", "fd")


def blind(scenes: list[dict], both: bool, seed: int) -> list[dict]:
    rng, out = random.Random(seed), []
    for scene in scenes:
        scene = copy.deepcopy(scene)
        size, frames = scene["size"], scene["frames"]
        for o in scene["objects"]:
            r, _, _, _ = object_geometry(o, (0.0, float(size)), frames, size)
            dx, _ = DIRECTIONS[o["direction"]]
            x, y = o["start"]
            along, across = (x, y) if dx else (y, x)
            along = rng.uniform(r, size - r)
            if both:
                across = rng.uniform(r, size - r)
            o["start"] = [along, across] if dx else [across, along]
        out.append(scene)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=192)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    load_builtins()
    world = ToyWorld("test", args.videos, seed=args.seed)
    scenes = [world.scene(i) for i in range(args.videos)]
    prompts = [s["prompt"] for s in scenes]
    bench = build({"type": "toybench"}, METRICS)
    t0 = time.perf_counter()
    print(f"ToyBench, {args.videos} test-split videos (seed {args.seed}), {platform.machine()} CPU, "
          f"{torch.get_num_threads()} torch thread(s)")
    print("| starts | " + " | ".join(GROUPS + RAW) + " |")
    print("|---" * (1 + len(GROUPS) + len(RAW)) + "|")
    for name, variant in (("real", scenes), ("blind_along", blind(scenes, False, args.seed)),
                          ("blind_both", blind(scenes, True, args.seed))):
        result = bench(render_scenes(variant), prompts)
        cells = [f"{100 * result[g]:.2f}" for g in GROUPS]
        cells += [f"{result['raw'][k]:.3f}" if k == "fd" else f"{100 * result['raw'][k]:.1f}" for k in RAW]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
