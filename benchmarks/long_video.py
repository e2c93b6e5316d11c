"""Long toy videos with a rolling KV cache: ToyBench per 21-frame window of a 3x-long video.

    python benchmarks/long_video.py                                   # shipped toy ODE init
    python benchmarks/long_video.py --checkpoint runs/demo/export      # the `make demo` student

A causal toy student (trained on 21-frame clips) generates --windows x 21 latent frames per test
prompt (first-frame enhancement as in recipes/toy/eval_student.yaml, noise seeded as toy_eval's)
under four caches, and ToyBench scores each 21-frame window of the decoded videos against the
prompts (window k = frames [21k, 21k + 21)):
  unbounded        every earlier frame (the cache grows with the video; beyond 21 frames the model
                   attends further back than it ever did in training)
  window           local_attn_size 21, no sink: the 20 latest frames and the frame itself
  window + sink    local_attn_size 21, sink_size 1 (frame 0 kept), "adjacent" sink RoPE (Causal Forcing)
  window + sink (absolute RoPE)   the same with the sink at its own position (Self Forcing)
Window 1 is the same video under every cache (nothing is dropped before frame 21).
Prints a markdown table (ToyBench % total / quality / semantic per window, sampling time, KV-cache MiB).
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
                                    resolve_model_dir, rollout)
from oneforcing.registry import SAMPLERS, TEXT_ENCODERS, VAES, build  # noqa: E402
from oneforcing.schedulers.flow_match import FlowMatchScheduler  # noqa: E402
from oneforcing.toy.bench.toybench import ToyBench  # noqa: E402
from oneforcing.toy.jobs.eval import EVAL_SEED  # noqa: E402
from oneforcing.toy.world import ToyWorld  # noqa: E402

TRAINED_FRAMES = 21
SAMPLER = {"type": "causal_inference", "steps": [1000], "first_block_steps": [1000, 750, 500, 250]}  # shift 5: the default scheduler
CACHES = {
    "unbounded": {},
    "window 21": {"local_attn_size": 21},
    "window 21 + sink 1": {"local_attn_size": 21, "sink_size": 1},
    "window 21 + sink 1, absolute RoPE": {"local_attn_size": 21, "sink_size": 1, "sink_rope": "absolute"},
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="oneforcing/assets/toy_causvid_ode_init")
    ap.add_argument("--videos", type=int, default=128)
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weights", default="ema", choices=["ema", "raw", "auto"],
                    help="which weights of a training export (default ema; auto = what the export declares)")
    ap.add_argument("--caches", nargs="+", choices=list(CACHES), default=list(CACHES), metavar="NAME",
                    help=f"which of {list(CACHES)} (default: all)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    frames = args.windows * TRAINED_FRAMES
    prompts = ToyWorld("test", num_examples=args.videos, seed=EVAL_SEED).prompts()
    codec = build({"type": "toy_codec"}, VAES)
    shape = (frames, *codec.latent_shape(TRAINED_FRAMES, 32, 32)[1:])
    with torch.no_grad():
        text = build(dict(DEFAULT_TEXT_ENCODER), TEXT_ENCODERS).encode(prompts).float()
    weights = resolve_model_dir(args.checkpoint, args.weights)
    scheduler = FlowMatchScheduler()
    model = load_generator_model(model_config({"frames_per_block": 1}), weights, None, scheduler).float().eval()
    model.requires_grad_(False)
    bench = ToyBench(fd=True)
    print(f"{weights}: {args.videos} test prompts x {frames} latent frames, CPU {args.threads} thread(s)")

    rows = []
    for name, cache in ((n, CACHES[n]) for n in args.caches):
        sampler = build({**SAMPLER, **cache}, SAMPLERS, scheduler=scheduler)
        t0 = time.process_time()
        latents = []
        for k in range(0, args.videos, args.batch_size):
            idx = range(k, min(k + args.batch_size, args.videos))
            noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(
                derive_seed(0, "toy_eval", i))) for i in idx])
            renoise = torch.Generator().manual_seed(derive_seed(0, "toy_eval", "renoise", k // args.batch_size))
            with torch.no_grad():
                emb = text[idx.start:idx.stop]
                latents.append(rollout(sampler, model, noise, emb, torch.device("cpu"), renoise)[0])
        cpu_s = time.process_time() - t0
        with torch.no_grad():
            videos = codec.decode(torch.cat(latents)).clamp(-1, 1)
        scores = [bench(videos[:, w * TRAINED_FRAMES:(w + 1) * TRAINED_FRAMES], prompts) for w in range(args.windows)]
        probe = model.new_kv_cache(1, frames, *shape[2:], **cache)  # allocated now: its size
        rows.append((name, scores, cpu_s, probe.nbytes / 2**20))
        print(f"  {name}: " + " | ".join(f"w{w + 1} {100 * s['total']:.2f}" for w, s in enumerate(scores))
              + f" ({cpu_s:.0f} s CPU)", flush=True)

    head = " | ".join(f"window {w + 1} total (quality / semantic)" for w in range(args.windows))
    print(f"\n| KV cache | {head} | sampling CPU time | KV cache (batch 1) |")
    print("|---|" + "---|" * args.windows + "---|---|")
    for name, scores, cpu_s, mib in rows:
        cells = " | ".join(f"{100 * s['total']:.2f} ({100 * s['quality']:.2f} / {100 * s['semantic']:.2f})"
                           for s in scores)
        print(f"| {name} | {cells} | {cpu_s:.0f} s | {mib:.2f} MiB |")


if __name__ == "__main__":
    main()
