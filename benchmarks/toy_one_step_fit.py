"""Can a toy causal Wan learn a toy world's one-step map (pure noise -> video), and generalise it?

    OMP_NUM_THREADS=1 python benchmarks/toy_one_step_fit.py FOLDER [--frames 21] [--lr 1e-3] [--steps 600]
        [--batch 8] [--layers 3 --heads 3 --ffn 384 | --pretrained] [--context clean|none] [--fixed-noise]
        [--absolute-position] [--patch 1]
    OMP_NUM_THREADS=1 python benchmarks/toy_one_step_fit.py fresh --max-objects 1 --start-positions 1 ...

FOLDER is either a toy_data folder of a tier with one start position per object (`toy_data
start_positions: 1`: the video is a function of the prompt, so the exact teacher's ODE endpoint from
any noise IS the data latent) or an ode_pairs folder (each pair's own start noise -> the teacher's
endpoint). The model predicts x0 from t = 1000, teacher-forced on the clean earlier frames
(`--context clean`, the causal ODE init's set-up) or from noise alone (`--context none`). It trains
on all but the last 200 examples (a quarter, for small folders) and prints the x0 error per latent
coordinate (the latents have unit variance) for frame 0 and frames 1+, on train and held-out examples.

`--fixed-noise` feeds one noise tensor to every example. The Wan patch embedding and 3-D RoPE make
the network translation-equivariant (nothing in it says where a token is except relative offsets), so
on fresh noise it cannot put an object at a position the prompt fixes; a fixed noise tensor hands it
absolute positions. The pair of runs measures that (docs/toy_world.md, issue 19).
`--absolute-position` gives the model learned absolute positions instead (CausalWan's
`absolute_position_grid`, what the one-object tier's toy models use).

FOLDER `fresh` renders new train-split examples of the world's tier (`--max-objects`,
`--start-positions`, as toy_data) for every step: unlimited prompts, so the train figure is on
examples never seen before too; held-out is 200 test-split examples.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from oneforcing.config.assets import packaged_asset
from oneforcing.jobs.shared import load_generator_model
from oneforcing.models.causal_wan import CausalWan
from oneforcing.registry.plugins import load_builtins
from oneforcing.schedulers import FlowMatchScheduler

HELD_OUT = 200


class FreshTier:
    """x0 / text rendered on demand: train-split index i (any i < 10^7) or the 200 held-out test examples."""

    def __init__(self, frames: int, max_objects: int, start_positions: int | None):
        from oneforcing.config.assets import TOY_TEXT_ENCODER
        from oneforcing.models.text_encoder import UMT5TextEncoder
        from oneforcing.toy.codec import ToyCodec
        from oneforcing.toy.world import ToyWorld

        tier = dict(max_objects=max_objects, start_positions=start_positions)
        self.train, self.test = ToyWorld("train", 10**7, **tier), ToyWorld("test", HELD_OUT, **tier)
        self.codec, self.frames = ToyCodec(), frames
        self.encoder = UMT5TextEncoder(**{k: v for k, v in TOY_TEXT_ENCODER.items() if k != "type"})

    @torch.no_grad()
    def render(self, world, idx) -> tuple[torch.Tensor, torch.Tensor]:
        idx = [int(i) for i in idx]
        x0 = self.codec.encode(world.render(idx)[:, :self.frames]).float()
        return x0, self.encoder.encode([world.scene(i)["prompt"] for i in idx]).float()


def load_tier(folder: str, frames: int):
    """(x0, text, noise): a toy_data folder (noise None: fresh per draw) or an ode_pairs folder (each
    pair's own start state at t = 1000 and the teacher's ODE endpoint from it)."""
    shards = [load_file(str(p)) for p in sorted(Path(folder).glob("shard-*.safetensors"))]
    text = torch.cat([s["prompt_embed"] for s in shards]).float()
    if "clean" in shards[0]:
        x0 = torch.cat([s["clean"] for s in shards]).float()[:, :frames]
        return x0, text, torch.cat([s["states"][:, 0] for s in shards]).float()[:, :frames]
    return torch.cat([s["latent"] for s in shards]).float()[:, :frames], text, None


def build_model(args) -> torch.nn.Module:
    if args.pretrained:
        return load_generator_model({"type": "causal_wan", "frames_per_block": 1},
                                    packaged_asset("toy_student_base"), None, FlowMatchScheduler()).float().train()
    grid = 8 // args.patch
    cfg = dict(patch_size=[1, args.patch, args.patch], in_channels=16, out_channels=16, text_dim=32, freq_dim=64,
               num_attention_heads=args.heads, attention_head_dim=32, ffn_dim=args.ffn, num_layers=args.layers,
               rope_max_seq_len=64, absolute_position_grid=[grid, grid] if args.absolute_position else None)
    torch.manual_seed(args.seed)
    return CausalWan(config=cfg, frames_per_block=1).float().train()


def noise_source(shape: tuple[int, ...], pairs: torch.Tensor | None, fixed: bool):
    """(example indices, rng) -> noise at t = 1000: each pair's own start state, one fixed tensor for
    every example, or fresh noise per draw."""
    if pairs is not None:
        return lambda idx, rng: pairs[idx]
    if fixed:
        one = torch.randn((1, *shape), generator=torch.Generator().manual_seed(7))
        return lambda idx, rng: one.expand(len(idx), *shape)
    return lambda idx, rng: torch.randn((len(idx), *shape), generator=rng)


def x0_error(model, flow, x0, text, idx: torch.Tensor, noise, context: str) -> torch.Tensor:
    """Per-frame x0 error [F] from t = 1000 over the examples `idx` (the same noise draws every call)."""
    rng, errs = torch.Generator().manual_seed(123), []
    with torch.no_grad():
        for chunk in idx.split(25):
            x = x0[chunk]
            t = torch.full((len(chunk),), 1000.0)
            pred = predict(model, flow, noise(chunk, rng), t, text[chunk], x, context)
            errs.append(((pred - x) ** 2).mean(dim=(2, 3, 4)))
    return torch.cat(errs).mean(0)


def predict(model, flow, x_t, t, text, x0, context):
    clean = x0 if context == "clean" else None
    return flow.x0_from_v(x_t, model(x_t, t, text, clean_x=clean, causal=True), t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="a toy_data folder of a start_positions: 1 tier, e.g. data/toy_s1/train, "
                    "an ode_pairs folder, or `fresh` (new renders of the tier every step)")
    ap.add_argument("--max-objects", type=int, default=2, help="with `fresh`: the tier's objects per scene")
    ap.add_argument("--start-positions", type=int, default=None, help="with `fresh`: starts per coordinate")
    ap.add_argument("--frames", type=int, default=21)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--ffn", type=int, default=384)
    ap.add_argument("--patch", type=int, default=2, choices=[1, 2], help="spatial patch (Wan: 2; 1: a token per latent)")
    ap.add_argument("--pretrained", action="store_true", help="start from the shipped toy student base")
    ap.add_argument("--context", choices=["clean", "none"], default="clean")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--absolute-position", action="store_true",
                    help="a learned absolute position per token (the toy models' absolute_position_grid)")
    ap.add_argument("--fixed-noise", action="store_true",
                    help="one noise tensor for every example: it gives the tokens their absolute positions")
    args = ap.parse_args()
    load_builtins()
    fresh = FreshTier(args.frames, args.max_objects, args.start_positions) if args.data == "fresh" else None
    if fresh is not None:  # evaluation sets: 200 train-split examples (never trained on) and 200 test ones
        (a, ta), (b, tb) = fresh.render(fresh.train, range(HELD_OUT)), fresh.render(fresh.test, range(HELD_OUT))
        x0, text, pairs = torch.cat([a, b]), torch.cat([ta, tb]), None
    else:
        x0, text, pairs = load_tier(args.data, args.frames)
    if pairs is not None and args.fixed_noise:
        ap.error("--fixed-noise needs a toy_data folder (an ode_pairs folder brings each pair's own noise)")
    noise = noise_source(tuple(x0.shape[1:]), pairs, args.fixed_noise)
    held_out = HELD_OUT if fresh is not None else min(HELD_OUT, x0.shape[0] // 4)
    train_idx, held_idx = torch.arange(x0.shape[0] - held_out), torch.arange(x0.shape[0] - held_out, x0.shape[0])
    model = build_model(args)
    params = sum(p.numel() for p in model.parameters())
    n_train = "fresh renders of the tier (scored on 200 unseen)" if fresh is not None else len(train_idx)
    print(f"{params / 1e6:.2f} M parameters, {n_train} train / {held_out} held-out examples, "
          f"{args.frames} frames, lr {args.lr}, batch {args.batch}, context {args.context}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    flow, rng, t0 = FlowMatchScheduler(), torch.Generator().manual_seed(args.seed), time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.every == 0:
            model.eval()
            tr = x0_error(model, flow, x0, text, train_idx[:held_out], noise, args.context)
            he = x0_error(model, flow, x0, text, held_idx, noise, args.context)
            model.train()
            print(f"step {step:5d}  x0 error train: frame 0 {tr[0]:.3f} frames 1+ {tr[1:].mean():.3f} | "
                  f"held-out: frame 0 {he[0]:.3f} frames 1+ {he[1:].mean():.3f}  ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
        if step == args.steps:
            break
        idx = train_idx[torch.randint(0, len(train_idx), (args.batch,), generator=rng)]
        if fresh is not None:
            xb, tb = fresh.render(fresh.train, torch.randint(HELD_OUT, 10**7, (args.batch,), generator=rng))
        else:
            xb, tb = x0[idx], text[idx]
        t = torch.full((args.batch,), 1000.0)
        loss = ((predict(model, flow, noise(idx, rng), t, tb, xb, args.context) - xb) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()


if __name__ == "__main__":
    main()
