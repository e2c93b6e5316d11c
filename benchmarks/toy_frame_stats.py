"""Per-frame latent std of toy samplers against the real toy latents (docs/toy_world.md, issue 19 item 0).

    OMP_NUM_THREADS=1 python benchmarks/toy_frame_stats.py [--prompts 16] [--steps 20]

Prints one row per sampler: the real latents of the test prompts, the learned teacher at CFG 6
and 1, the student base at CFG 3, and the shipped causal ODE init's one-step rollout (4-step first
frame, as toy_eval samples it). A sampler whose std is far from the real one's is not sampling the
data distribution, whatever its loss says.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from oneforcing.config.assets import packaged_asset as asset_path
from oneforcing.jobs.shared import build_sampler, load_generator_model, rollout
from oneforcing.registry import TEXT_ENCODERS, VAES, build
from oneforcing.registry.plugins import load_builtins
from oneforcing.schedulers import FlowMatchScheduler
from oneforcing.toy.world import ToyWorld

SHIFT = {"type": "flow_match", "shift": 5.0}


def per_frame_std(z: torch.Tensor) -> str:
    return " ".join(f"{v:.2f}" for v in z.transpose(0, 1).reshape(z.shape[1], -1).std(1)[::2].tolist())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    load_builtins()
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    world = ToyWorld("test", num_examples=args.prompts, seed=1234)
    prompts = world.prompts()
    encoder = build({"type": "umt5", "path": str(asset_path("toy_text_encoder")), "max_length": 32}, TEXT_ENCODERS)
    text, empty = encoder.encode(prompts).float(), encoder.encode([""]).float()
    real = build({"type": "toy_codec"}, VAES).encode(world.render(range(args.prompts))).float()
    noise = torch.randn(real.shape)
    t0 = time.perf_counter()
    print(f"per-frame latent std (frames 0, 2, ..., {real.shape[1] - 1}), {args.prompts} test prompts, "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}")
    print(f"{'real toy latents':<44} {per_frame_std(real)}")
    for name, cfg_scale in (("toy_teacher", 6.0), ("toy_teacher", 1.0), ("toy_student_base", 3.0)):
        model = load_generator_model({"type": "causal_wan", "causal": False}, asset_path(name), None,
                                     FlowMatchScheduler()).float().eval()
        sampler = build_sampler({"type": "teacher_ode", "num_steps": args.steps, "cfg_scale": cfg_scale,
                                 "keep_indices": []}, SHIFT)
        x, _ = rollout(sampler, model, noise, text, cpu, None, negative_text=empty.expand(len(prompts), -1, -1))
        print(f"{f'{name}, CFG {cfg_scale:g}, {args.steps} steps':<44} {per_frame_std(x)}")
    init = load_generator_model({"type": "causal_wan", "frames_per_block": 1}, asset_path("toy_causal_ode_init"),
                                None, FlowMatchScheduler()).float().eval()
    sampler = build_sampler({"type": "causal_inference", "steps": [1000], "first_block_steps": [1000, 750, 500, 250]},
                            SHIFT)
    x, _ = rollout(sampler, init, noise, text, cpu, torch.Generator().manual_seed(0))
    print(f"{'toy_causal_ode_init, one-step rollout':<44} {per_frame_std(x)}")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
