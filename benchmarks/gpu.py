"""The parts of benchmarks/gpu.sh (run that script; each part is its own process so that each
peak-memory figure is its own). Random weights in the exact Wan2.1 layout (real widths and
configs; oneforcing/testing/real_layout.py), since the released weights are not needed for speed,
memory or numerical agreement.

    python benchmarks/gpu.py build WORK [--smoke] [--real-score-layers N]
        WORK/Wan2.1-T2V-1.3B-Diffusers (30 blocks; UMT5-XXL width, 1 layer; Wan2.1's VAE),
        WORK/Wan2.1-T2V-14B-Diffusers (N blocks of the 14B; auto: all 40 on a GPU with >= 120 GiB,
        else 10, since an 80 GB card cannot hold the whole 14B beside two trained 1.3B models and
        their Adam states: the paper shards them over 8 GPUs), WORK/data (2 latent examples at the
        real shape), WORK/prompts.txt
    python benchmarks/gpu.py speed MANIFEST [...]      the speed records of vbench_export manifests
    python benchmarks/gpu.py train WORK [--smoke]      One-Forcing framewise iterations at the real shape
    python benchmarks/gpu.py attention WORK [--smoke]  flash-attn vs SDPA, max |difference|

--smoke: the same code paths at toy sizes on a CPU (narrow folders of the same layout, 9 frames of
64x64, one block): what tests/test_benchmarks.py runs. No figure of a smoke run means anything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oneforcing.speed import device_name, peak_memory_bytes  # noqa: E402

# Latent shapes (Wan's VAE: 4x in time, 8x in space): 81 frames of 832x480 -> 21 x 60 x 104.
REAL = {"frames": 81, "height": 480, "width": 832, "latent": (21, 16, 60, 104), "layers": 30, "narrow": False}
SMOKE = {"frames": 9, "height": 64, "width": 64, "latent": (3, 16, 8, 8), "layers": 1, "narrow": True}
TEXT_LEN = 512  # the real recipes' UMT5 max_length
PROMPTS = ["a red circle moving left quickly on a gray background",
           "a small blue square moving up slowly on a white background",
           "a large green triangle moving right quickly on a black background"]


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def folders(work: Path) -> tuple[Path, Path]:
    from oneforcing.testing.real_layout import FOLDER

    return work / FOLDER["1.3B"], work / FOLDER["14B"]


def real_score_layers(requested: str, smoke: bool) -> int:
    if smoke:
        return 1
    if requested != "auto":
        return int(requested)
    dev = device()
    total = torch.cuda.get_device_properties(dev).total_memory if dev.type == "cuda" else 0
    return 40 if total >= 120 * 2**30 else 10


def build(work: Path, smoke: bool, layers_14b: str) -> None:
    from oneforcing.data.shards import ShardWriter
    from oneforcing.testing.real_layout import save_real_layout
    from oneforcing.testing.tiny_encoders import DEFAULT_WORDS

    size = SMOKE if smoke else REAL
    words = sorted(set(DEFAULT_WORDS) | {w for p in PROMPTS for w in p.split()})
    n14 = real_score_layers(layers_14b, smoke)
    small = save_real_layout(work, "1.3B", layers=size["layers"], words=words, narrow=size["narrow"],
                             device=device())
    big = save_real_layout(work, "14B", layers=n14, words=words, transformer_only=True, narrow=size["narrow"],
                           device=device())
    for sub in ("text_encoder", "tokenizer", "vae"):  # the same files in both released folders
        (big / sub).symlink_to(small / sub)
    text_dim = json.loads((small / "transformer" / "config.json").read_text())["text_dim"]
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(TEXT_LEN, dtype=torch.bool)
    mask[:16] = True  # 16 real tokens, the rest padding (as prepare-data stores a short caption)
    with ShardWriter(work / "data", kind="latents", examples_per_shard=2, info={"source": "gpu.py random"}) as w:
        for prompt in PROMPTS[:2]:
            w.add(prompt=prompt, latent=torch.randn(*size["latent"], generator=g).to(torch.bfloat16),
                  prompt_embed=(torch.randn(TEXT_LEN, text_dim, generator=g) * mask[:, None]).to(torch.bfloat16),
                  prompt_mask=mask)
    (work / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    print(f"build: {small.name} ({size['layers']} blocks), {big.name} ({n14} of 40 blocks), 2 latent examples "
          f"{list(size['latent'])}, on {device_name(device())}", flush=True)


def speed(manifests: list[str]) -> None:
    for path in manifests:
        m = json.loads(Path(path).read_text())
        s, v, sampler = m["speed"], m["video"], m["sampler"]
        steps = "one step per block" + (" after a 4-step first block (first-frame enhancement)"
                                        if sampler["first_frame_enhancement"] else ", the first block too")
        first = s["latency_to_first_frame_s"]
        print(f"speed, 1.3B framewise, {steps}: {v['num_frames']} frames {v['width']}x{v['height']} {s['dtype']}, "
              f"DiT only {s['dit_frames_per_s']:.1f} frames/s, with VAE decode {s['end_to_end_frames_per_s']:.1f} "
              f"frames/s, first frame after {first:.3f} s, {s['peak_memory_gib']:.2f} GiB peak "
              f"{s['peak_memory_of']} ({s['videos_timed']} videos timed after a warm-up) on {s['device']}",
              flush=True)


def train(work: Path, smoke: bool) -> None:
    """Two One-Forcing framewise iterations of the real recipe (generator and critic update each,
    bf16, ZeRO-3, EMA on) through the trainer; the second is timed, the first is warm-up."""
    from benchmarks.training import run_iteration
    from oneforcing.distributed import init_distributed
    from oneforcing.runner import prepare
    from oneforcing.trainer import build_trainer

    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                       ("MASTER_PORT", os.environ.get("MASTER_PORT", "29517"))):
        os.environ.setdefault(key, value)
    small, big = folders(work)
    recipe = str(ROOT / "recipes/one_forcing_framewise.yaml")
    overrides = [f"_paths.wan_1_3b={small}", f"_paths.wan_14b={big}", f"_paths.cf_ode_init={small / 'transformer'}",
                 f"_paths.data={work / 'data'}", f"run_dir={work / 'train'}", "steps=2", "generator_every=1",
                 "ema.start_step=0", "export=null", "loggers=[]", "checkpoint_every=1000000"]
    if smoke:  # the critic's registers and heads on what a narrow one-block folder has
        overrides += ["models.critic.layers=[0]", "models.critic.heads=2", "models.critic.ffn_dim=64",
                      "sampler.grad_frames=2"]
    recipe_dict, meta, job = prepare(recipe, overrides)
    ctx = init_distributed(meta.get("seed", 0), recipe_dict, recipe)
    trainer = build_trainer(job.config, ctx)
    sync = torch.cuda.synchronize if ctx.device.type == "cuda" else (lambda: None)
    warm = run_iteration(trainer, sync)
    timed = run_iteration(trainer, sync)
    nbytes, what = peak_memory_bytes(ctx.device)
    layers = json.loads((big / "transformer" / "config.json").read_text())["num_layers"]
    f, c, h, w = SMOKE["latent"] if smoke else REAL["latent"]
    print(f"train, One-Forcing framewise iteration (generator + critic update, DMD + GAN, EMA), latent "
          f"{f}x{h}x{w}, {job.config.deepspeed.precision} ZeRO-{job.config.deepspeed.zero_stage} on 1 device: "
          f"{timed:.2f} s (warm-up iteration {warm:.2f} s), {nbytes / 2**30:.2f} GiB peak {what}; real score "
          f"{layers} of the 14B's 40 blocks, on {device_name(ctx.device)}", flush=True)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@torch.no_grad()
def attention(work: Path, smoke: bool) -> None:
    """flash-attn against SDPA on the 1.3B: one attention call at the real shape (a clip's tokens,
    bidirectional) and the model's block-causal forward of a whole clip (as in training), bf16.
    Without flash-attn (a CPU), SDPA's dense-mask path is compared with its per-block path instead,
    so the smoke run goes through the same code."""
    from oneforcing.attention import FlashAttention, SDPAAttention
    from oneforcing.models.causal_wan import CausalWan

    dev = device()
    small, _ = folders(work)
    model = CausalWan.from_pretrained(str(small / "transformer"), dtype=torch.bfloat16, device=dev,
                                      frames_per_block=1, attention="sdpa").eval()
    reason = FlashAttention.unavailable_reason(dev)
    pair = (("flash-attn", FlashAttention()), ("SDPA", SDPAAttention())) if reason is None else \
        (("SDPA dense mask", SDPAAttention()), ("SDPA per block", SDPAAttention(dense_mask_limit=0)))
    if reason is not None:
        print(f"attention: flash-attn unavailable here ({reason}); comparing {pair[0][0]} with {pair[1][0]}")
    f, c, h, w = SMOKE["latent"] if smoke else REAL["latent"]
    g = torch.Generator().manual_seed(0)
    tokens = f * model.tokens_per_frame(h, w)
    q, k, v = (torch.randn(1, tokens, model.heads, model.head_dim, generator=g).to(dev, torch.bfloat16)
               for _ in range(3))
    a, b = (backend.full(q, k, v).float() for _, backend in pair)
    print(f"attention op, [1, {tokens}, {model.heads}, {model.head_dim}] bf16: max |{pair[0][0]} - {pair[1][0]}| "
          f"{(a - b).abs().max().item():.3e} (outputs' std {b.std().item():.3e})", flush=True)
    x = torch.randn(1, f, c, h, w, generator=g).to(dev, torch.bfloat16)
    text = torch.randn(1, TEXT_LEN, model.config["text_dim"], generator=g).to(dev, torch.bfloat16)
    t = torch.full((1,), 500.0, device=dev)
    outs = []
    for _, backend in pair:
        model.attn = backend
        outs.append(model(x, t, text).float())
    diff = (outs[0] - outs[1]).abs()
    print(f"attention in the 1.3B's block-causal forward of {f} latent frames {h}x{w}: max |{pair[0][0]} - "
          f"{pair[1][0]}| {diff.max().item():.3e}, mean {diff.mean().item():.3e} (outputs' std "
          f"{outs[1].std().item():.3e}) on {device_name(dev)}", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=("build", "speed", "train", "attention"))
    ap.add_argument("paths", nargs="+", help="WORK (speed: vbench_manifest.json files)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--real-score-layers", default="auto")
    args = ap.parse_args(argv)
    if args.part == "speed":
        return speed(args.paths)
    work = Path(args.paths[0]).resolve()
    if args.part == "build":
        work.mkdir(parents=True, exist_ok=True)
        return build(work, args.smoke, args.real_score_layers)
    return {"train": train, "attention": attention}[args.part](work, args.smoke)


if __name__ == "__main__":
    main()
