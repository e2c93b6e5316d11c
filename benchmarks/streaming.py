"""Streaming benchmark: what the KV cache buys, measured side by side in one run.

    python benchmarks/streaming.py            # CPU, a small Wan-shaped model (< 5 min on 2 cores)
    python benchmarks/streaming.py --real     # GPU, the real Wan2.1-1.3B shape (random weights),
                                              # 832x480 -> latent 60x104, 21 latent frames, bf16

Figures (medians of --repeats runs; CPU: process CPU time with 1 thread, GPU: wall time):
  P1   per-frame cost of KV-cache streaming (the denoising forward of one frame over its cached
       context, averaged over the 21 frames) / one single-frame forward with no context.
  P1b  one-step generation of the clip with the KV cache (a forward + a cache write per frame) vs
       recomputing the whole prefix for each new frame (one block-causal forward of frames 0..f).
  P2   one-step causal generation of the clip vs the bidirectional 50-step CFG sampler (teacher_ode).
  mem  the cache's bytes vs 2 x layers x frames x tokens x dim x bytes.
  speed  what a viewer gets from `generate`'s path (its default sampler, one step per block after
       a 4-step first block, and a random-weight Wan VAE decoding block by block as frames are
       generated): latency to the first decoded frame (vs decoding the clip at the end), video
       frames/s of the DiT alone and with VAE decode, peak memory, with the device named (GPU:
       wall time; CPU: process CPU time, one thread; one timed run after a warm-up). The CPU run uses a narrow VAE (base_dim 8, z_dim 16;
       Wan's is 96) and a latent of 8x16 (64x128 pixels), since Wan's decoder costs seconds per
       frame on one core; --real uses Wan2.1's VAE architecture at 832x480. --speed-only runs
       this figure alone.
--real also prints the DiT-only frame rate of one-step streaming and peak GPU memory; there the
50-step sampler is timed over --teacher-steps steps and extrapolated to 50 (said so in the output).
The CPU model keeps Wan's proportions where they matter for these ratios: tokens per frame ~ dim
(1560 ~ 1536 in the real model), FFN ~ 5.8 x dim, 2x2 patches, head dim 64.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oneforcing.jobs.generate import render  # noqa: E402
from oneforcing.models.causal_wan import CausalWan  # noqa: E402
from oneforcing.models.wan_vae import WanVAE  # noqa: E402
from oneforcing.samplers import CausalInference, TeacherODE  # noqa: E402
from oneforcing.schedulers.flow_match import FlowMatchScheduler  # noqa: E402
from oneforcing.speed import Timing, device_name  # noqa: E402

CPU_CONFIG = dict(patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=64, in_channels=16,
                  out_channels=16, text_dim=64, freq_dim=64, ffn_dim=768, num_layers=4)
CPU_SHAPE = dict(frames=21, height=16, width=32, text_len=64)  # 8x16 = 128 tokens per frame ~ dim 128

REAL_CONFIG = dict(patch_size=[1, 2, 2], num_attention_heads=12, attention_head_dim=128, in_channels=16,
                   out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30)
REAL_SHAPE = dict(frames=21, height=60, width=104, text_len=512)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int) -> float:
    """Median time of fn() over `repeats` runs (after one warm-up): wall time on CUDA; on CPU the
    process's CPU time, single-threaded, which stays meaningful on a machine shared with other jobs
    (wall time there mostly measures the neighbours)."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = clock()
        fn()
        sync(device)
        times.append(clock() - t0)
    return statistics.median(times)


def random_wan_vae(real: bool, device, dtype) -> WanVAE:
    """A Wan VAE with random weights (the timing does not depend on them), through the library's
    wrapper: Wan2.1's architecture for --real, a narrow one on the CPU."""
    import tempfile

    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    raw = AutoencoderKLWan() if real else AutoencoderKLWan(base_dim=8, z_dim=16)
    with tempfile.TemporaryDirectory() as tmp:
        raw.save_pretrained(tmp)
        del raw
        vae = WanVAE(tmp, dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
    return vae.to(device)


class DecodeAtTheEnd:
    """The VAE without streaming: the clip is decoded once the last block is generated."""

    def __init__(self, vae):
        self.decode = vae.decode

    def stream_decoder(self):
        return None  # the VAE contract: None = this codec decodes whole clips only


def speed_report(model, noise, text, device, dtype, real: bool) -> None:
    vae = random_wan_vae(real, device, dtype)
    sampler = CausalInference(scheduler=FlowMatchScheduler())  # generate's default: 4-step first block, then one step per block
    # As the other figures: wall time on a GPU, the process's CPU time (one thread) on a shared CPU.
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    for name, codec in (("streaming VAE decode", vae), ("VAE decode at the end", DecodeAtTheEnd(vae))):
        timing = Timing(device)
        for _ in range(2):  # Timing drops the first (warm-up) batch
            video, first, dit, total = render(sampler, model, codec, noise, text, device,
                                              torch.Generator().manual_seed(0), clock=clock)
            timing.add(1, video.shape[1], first, dit, total)
        print(f"    {name}: " + timing.summary(f"{video.shape[1]} frames {video.shape[-1]}x{video.shape[-2]}"),
              flush=True)


@torch.no_grad()
def speed(model, noise, text, device, dtype, real: bool) -> None:
    if not real:
        noise = noise[..., :8, :16]  # 8x16 latent: see the module doc
    print(f"speed (generate's path: default sampler, random-weight Wan VAE, latent {tuple(noise.shape[-2:])}; "
          f"{'wall' if real else 'process CPU'} time)", flush=True)
    speed_report(model, noise, text, device, dtype, real)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", action="store_true", help="real 1.3B shape on CUDA (bf16, random weights)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per figure (median)")
    ap.add_argument("--teacher-steps", type=int, default=None, help="steps of the 50-step sampler actually run")
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--speed-only", action="store_true", help="only the speed figure (generate's path)")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (default 1: stable medians on a shared machine)")
    ap.add_argument("--smoke", action="store_true",
                    help="every figure's code path at a toy size in seconds (the test suite's run; no figures)")
    args = ap.parse_args(argv)
    if not args.real:
        torch.set_num_threads(args.threads)

    if args.real:
        if not torch.cuda.is_available():
            sys.exit("--real needs a CUDA GPU")
        device, dtype, cfg, shape = torch.device("cuda"), torch.bfloat16, REAL_CONFIG, REAL_SHAPE
        repeats, teacher_steps = args.repeats or 3, args.teacher_steps or 3
    else:
        device, dtype, cfg, shape = torch.device("cpu"), torch.float32, CPU_CONFIG, CPU_SHAPE
        repeats, teacher_steps = args.repeats or 5, args.teacher_steps or 50
    if args.smoke:
        cfg, shape = {**cfg, "num_layers": 1, "ffn_dim": 64}, dict(frames=3, height=8, width=16, text_len=8)
        repeats, teacher_steps = 1, 1
    torch.manual_seed(0)
    with torch.device(device):
        model = CausalWan.from_config(cfg, frames_per_block=1, attention=args.attention)
    model = model.to(dtype).eval().requires_grad_(False)
    F, H, W, L = shape["frames"], shape["height"], shape["width"], shape["text_len"]
    g = torch.Generator(device="cpu").manual_seed(0)
    noise = torch.randn(1, F, cfg["in_channels"], H, W, generator=g).to(device, dtype)
    text = torch.randn(1, L, cfg["text_dim"], generator=g).to(device, dtype)
    neg = torch.randn(1, L, cfg["text_dim"], generator=g).to(device, dtype)
    S, D, n_layers = model.tokens_per_frame(H, W), model.dim, cfg["num_layers"]
    t1, t0 = torch.full((1,), 1000.0, device=device), torch.zeros(1, device=device)
    print(f"device {device_name(device)}, dtype {dtype}, model dim {D}, "
          f"{n_layers} layers, latent {F}x{H}x{W} = {S} tokens/frame, attention {type(model.attn).__name__}")

    results = {}
    if args.speed_only:
        return speed(model, noise, text, device, dtype, args.real)
    with torch.no_grad():
        # P1: single-frame forward with no context vs the streaming forward of each frame.
        single = timed(lambda: model(noise[:, :1], t1, text), device, repeats)
        empty = model.new_kv_cache(1, F, H, W)  # no frames, text K/V cached: only the context differs
        model(noise[:, :1], t1, text, kv_cache=empty)
        single_cached_text = timed(lambda: model(noise[:, :1], t1, text, kv_cache=empty), device, repeats)
        cache = model.new_kv_cache(1, F, H, W)
        per_frame = []
        for f in range(F):  # in rollout order: frame f's forward over the cached frames [0, f)
            per_frame.append(timed(lambda f=f: model(noise[:, f:f + 1], t1, text, kv_cache=cache, frame_offset=f),
                                   device, repeats))
            model(noise[:, f:f + 1], t0, text, kv_cache=cache, frame_offset=f, write_cache=True)
        results["P1"] = statistics.mean(per_frame) / single
        print(f"P1  single-frame forward, no context      {single * 1e3:9.2f} ms")
        print(f"    same, text K/V precomputed            {single_cached_text * 1e3:9.2f} ms")
        print(f"    streaming forward, mean over {F} frames {statistics.mean(per_frame) * 1e3:9.2f} ms "
              f"(frame 0: {per_frame[0] * 1e3:.2f}, frame {F - 1}: {per_frame[-1] * 1e3:.2f})")
        print(f"    ratio {results['P1']:.2f}  (target <= 1.3); vs the text-cached single frame "
              f"{statistics.mean(per_frame) / single_cached_text:.2f}, last frame "
              f"{per_frame[-1] / single_cached_text:.2f}")

        # P1b: one-step streaming generation vs recomputing the prefix for every new frame.
        one_step = CausalInference(steps=[1000], first_frame_enhancement=False, scheduler=FlowMatchScheduler())
        stream = timed(lambda: one_step(model, noise, text), device, repeats)

        def recompute():
            clip = noise.clone()
            for f in range(F):
                tf = torch.cat([torch.zeros(1, f, device=device), torch.full((1, 1), 1000.0, device=device)], 1)
                v = model(clip[:, :f + 1], tf, text)[:, f:f + 1]
                clip[:, f:f + 1] = noise[:, f:f + 1] - v  # x0 = x_t - sigma v, sigma = 1
            return clip

        recomp = timed(recompute, device, max(1, repeats // 2))
        results["P1b"] = recomp / stream
        print(f"P1b one-step clip, KV-cache streaming     {stream * 1e3:9.1f} ms  ({F} frames)")
        print(f"    one-step clip, recompute prefix       {recomp * 1e3:9.1f} ms")
        print(f"    speed-up {results['P1b']:.1f}x  (target >= 8x)")
        if args.real:
            print(f"    DiT-only one-step streaming: {F / stream:.1f} latent frames/s "
                  f"= {4 * F / stream:.1f} video frames/s (4x temporal VAE)")
        ffe = timed(lambda: CausalInference(scheduler=FlowMatchScheduler())(model, noise, text), device, repeats)
        print(f"    with first-frame enhancement (4 steps on block 0): {ffe * 1e3:.1f} ms")

        # P2: one-step causal vs bidirectional 50-step CFG (batched cond/uncond).
        teacher = TeacherODE(num_steps=50, cfg_scale=6.0, keep_indices=[], scheduler=FlowMatchScheduler())
        steps_run = min(teacher_steps, 50)

        def run_teacher():
            t_list = teacher.timesteps
            x = noise
            for i in range(steps_run):
                t, tn = torch.full((1,), t_list[i], device=device), torch.full((1,), t_list[i + 1], device=device)
                x = x + (tn - t).view(-1, 1, 1, 1, 1) / 1000 * teacher._v(model, x, t, text, neg)
            return x

        teach = timed(run_teacher, device, 1) * 50 / steps_run
        results["P2"] = teach / stream
        note = "" if steps_run == 50 else f" (extrapolated from {steps_run} steps)"
        print(f"P2  bidirectional 50-step CFG sampler     {teach * 1e3:9.1f} ms{note}")
        print(f"    one-step causal streaming             {stream * 1e3:9.1f} ms")
        print(f"    speed-up {results['P2']:.1f}x  (target >= 40x)")

        speed(model, noise, text, device, dtype, args.real)

    formula = 2 * n_layers * F * S * D * torch.finfo(dtype).bits // 8
    print(f"mem KV cache {cache.nbytes / 2**20:.2f} MiB; formula 2 x {n_layers} x {F} x {S} x {D} x "
          f"{torch.finfo(dtype).bits // 8} B = {formula / 2**20:.2f} MiB (batch 1)")
    if device.type == "cuda":
        print(f"    peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB "
              f"(weights {sum(p.numel() for p in model.parameters()) * 2 / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
