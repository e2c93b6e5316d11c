"""Switching the prompt mid-video on the toy: ToyBench per segment against its own prompt, with and
without re-cache, and the frames until the new prompt shows.

    python benchmarks/prompt_switch.py                                  # shipped toy causal ODE init
    python benchmarks/prompt_switch.py --checkpoint runs/demo/export    # the `make demo` student

Each of --videos test prompts A (ToyWorld "test", seeded as toy_eval) is paired with prompt B, the
next test prompt whose colours differ from A's. A causal toy student generates 2 x 21 latent frames
(first-frame enhancement as in recipes/toy/eval_student.yaml, noise seeded per video as toy_eval's)
with a rolling cache (local_attn_size 21, sink 1, as for long videos; --unbounded: every earlier frame), the prompt switching from A to
B at frame 21 (oneforcing/streaming/live.py):
  A throughout     no switch: segment 2 scored against B is the floor
  switch, keep     cross-attention switched, the cached K/V left under A
  switch, recache  the sink and the window re-computed under B (the default)
  B from scratch   B alone for 21 frames (from the segment's own noise): the ceiling
Segment 1 = frames [0, 21) scored against A, segment 2 = [21, 42) against B (ToyBench, FD off:
semantic and quality of the segment). Transition, from the toy detectors per frame: a frame "shows B"
when all of B's colours are visible and none of A's that B lacks; reported as the share of videos
whose frame +k after the switch shows B (k = 0, 2, 5, 10, 20), and per video the frames until B
shows for 3 frames in a row ("never" when not within the segment; counted as 21 in the mean).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oneforcing.jobs.base import derive_seed  # noqa: E402
from oneforcing.jobs.shared import (DEFAULT_TEXT_ENCODER, load_generator_model, model_config,  # noqa: E402
                                    resolve_model_dir)
from oneforcing.registry import SAMPLERS, TEXT_ENCODERS, VAES, build  # noqa: E402
from oneforcing.schedulers.flow_match import FlowMatchScheduler  # noqa: E402
from oneforcing.streaming.live import scheduled_rollout  # noqa: E402
from oneforcing.toy.bench.detectors import PALETTE_NAMES, detect  # noqa: E402
from oneforcing.toy.bench.toybench import ToyBench  # noqa: E402
from oneforcing.toy.jobs.eval import EVAL_SEED  # noqa: E402
from oneforcing.toy.world import ToyWorld, parse_prompt  # noqa: E402

SEG = 21  # latent frames per segment (the training length)
SAMPLER = {"type": "causal_inference", "steps": [1000], "first_block_steps": [1000, 750, 500, 250]}
STABLE = 3  # frames in a row that must show B


def colours(prompt: str) -> set[int]:
    return {PALETTE_NAMES.index(o["colour"]) for o in parse_prompt(prompt)["objects"]}


def pair_prompts(prompts: list[str]) -> list[str]:
    """B for each A: the next prompt (cyclically) with a different colour set (the next one if none has)."""
    out = []
    for i, a in enumerate(prompts):
        j = next((j for j in range(1, len(prompts)) if colours(prompts[(i + j) % len(prompts)]) != colours(a)), 1)
        out.append(prompts[(i + j) % len(prompts)])
    return out


def shows_b(videos: torch.Tensor, prompts_a: list[str], prompts_b: list[str]) -> torch.Tensor:
    """[N, T] bool: frame t shows all of B's colours and none of the colours only A has."""
    seen = detect(videos)["valid"]  # [N, K, T]: colour k seen in frame t
    out = []
    for i, (a, b) in enumerate(zip(prompts_a, prompts_b)):
        want, gone = list(colours(b)), list(colours(a) - colours(b))
        out.append(seen[i, want].all(dim=0) & ~seen[i, gone].any(dim=0))
    return torch.stack(out)


def frames_until_shown(ok: torch.Tensor) -> list[int | None]:
    """Per video: the first frame from which B shows STABLE frames in a row."""
    rows = ok.tolist()
    return [next((t for t in range(len(r) - STABLE + 1) if all(r[t:t + STABLE])), None) for r in rows]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="oneforcing/assets/toy_causal_ode_init")
    ap.add_argument("--videos", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--unbounded", action="store_true", help="an unbounded KV cache instead of window 21 + sink 1 "
                    "(a re-cache then re-computes every earlier frame, exactly)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    prompts_a = ToyWorld("test", num_examples=args.videos, seed=EVAL_SEED).prompts()
    prompts_b = pair_prompts(prompts_a)
    codec = build({"type": "toy_codec"}, VAES)
    shape = (2 * SEG, *codec.latent_shape(SEG, 32, 32)[1:])
    with torch.no_grad():
        encoder = build(dict(DEFAULT_TEXT_ENCODER), TEXT_ENCODERS)
        text_a, text_b = (encoder.encode(p).float() for p in (prompts_a, prompts_b))
    weights = resolve_model_dir(args.checkpoint, "auto")  # what the export declares, as generate
    scheduler = FlowMatchScheduler()
    model = load_generator_model(model_config({"frames_per_block": 1}), weights, None, scheduler).float().eval()
    model.requires_grad_(False)
    window = {} if args.unbounded else {"local_attn_size": 21, "sink_size": 1}
    sampler = build({**SAMPLER, **window}, SAMPLERS, scheduler=scheduler)
    bench = ToyBench(fd=False)
    print(f"{weights}: {args.videos} test prompts, 2 x {SEG} latent frames, switch at {SEG}, "
          f"{'unbounded cache' if args.unbounded else 'window 21 + sink 1'}, CPU {args.threads} thread(s), noise seeds derive_seed(0, 'toy_eval', i)")

    conditions = {"A throughout": ([text_a], [0], "keep", 2 * SEG),
                  "switch, keep": ([text_a, text_b], [0, SEG], "keep", 2 * SEG),
                  "switch, recache": ([text_a, text_b], [0, SEG], "recache", 2 * SEG),
                  "B from scratch": ([text_b], [0], "keep", SEG)}
    rows = []
    for name, (texts, starts, mode, frames) in conditions.items():
        t0, latents = time.process_time(), []
        for k in range(0, args.videos, args.batch_size):
            idx = range(k, min(k + args.batch_size, args.videos))
            noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(
                derive_seed(0, "toy_eval", i))) for i in idx])[:, -frames:]
            renoise = torch.Generator().manual_seed(derive_seed(0, "toy_eval", "renoise", k // args.batch_size))
            with torch.no_grad():
                latents.append(scheduled_rollout(sampler, model, noise, [t[idx.start:idx.stop] for t in texts],
                                                 starts, switch=mode, rng=renoise))
        cpu_s = time.process_time() - t0
        with torch.no_grad():
            videos = codec.decode(torch.cat(latents)).clamp(-1, 1)
        seg1 = bench(videos[:, :SEG], prompts_a) if frames > SEG else None
        seg2 = videos[:, -SEG:]
        score2 = bench(seg2, prompts_b)
        ok = shows_b(seg2, prompts_a, prompts_b)
        rows.append((name, seg1, score2, ok, cpu_s))
        print(f"  {name}: segment 2 semantic {100 * score2['semantic']:.2f} ({cpu_s:.0f} s CPU)", flush=True)

    ks = (0, 2, 5, 10, 20)
    print("\n| condition | segment 1 vs A: semantic (total) | segment 2 vs B: semantic (total) | videos showing B at "
          + " / ".join(f"+{k}" for k in ks) + " | frames until B shows: median / mean | never | sampling CPU time |")
    print("|---|---|---|---|---|---|---|")
    for name, seg1, seg2, ok, cpu_s in rows:
        shown = frames_until_shown(ok)
        curve = " / ".join(f"{100 * ok[:, k].float().mean():.0f}%" for k in ks)
        s1 = "—" if seg1 is None else f"{100 * seg1['semantic']:.2f} ({100 * seg1['total']:.2f})"
        done = sorted(s for s in shown if s is not None)
        never = len(shown) - len(done)
        mean = sum(done + [SEG] * never) / len(shown)
        median = sorted(s if s is not None else SEG for s in shown)[len(shown) // 2]
        med = f"{median}" if median < SEG else "never"
        print(f"| {name} | {s1} | {100 * seg2['semantic']:.2f} ({100 * seg2['total']:.2f}) | {curve} | {med} / {mean:.1f} | "
              f"{never}/{len(shown)} | {cpu_s:.0f} s |")


if __name__ == "__main__":
    main()
