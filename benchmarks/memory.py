"""Memory at real scale: P5, measured on CPU ranks, and the plan for the paper's 8-GPU setting.

    python benchmarks/training.py --memory [--layers 1]   # P5: peak RSS per rank, 2 CPU ranks
    python benchmarks/memory.py plan                       # per-GPU plan from DeepSpeed's estimators

P5 runs tests/recipes/tiny_distill.yaml (generator, register critic, frozen real score; DMD + GAN)
with every model at the real Wan2.1-1.3B width and `--layers` blocks, fp32, ZeRO-3 on 2 ranks,
2 iterations; each rank reports its RSS high-water mark. Expected per rank =
  the process before any model (torch + DeepSpeed imported, measured)
  + each trained role's model+optimizer state (the trainer's own figure) + its fp32 gradient shard
  + the frozen role's shard + the EMA shard (fp32)
  + what ZeRO-3 may keep gathered: stage3_max_live_parameters x 4 B per engine (all three at once,
    an upper bound)
and the rest (activations at latent 3x8x8, communication buffers, allocator slack) is the residual.
"""

from __future__ import annotations

import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RECIPE = ROOT / "tests/recipes/tiny_distill.yaml"
DS_DEFAULTS = ("deepspeed.extra={zero_optimization: {stage3_max_live_parameters: 1000000000, "
               "stage3_max_reuse_distance: 1000000000, stage3_prefetch_bucket_size: 50000000, "
               "reduce_bucket_size: 500000000}}")
MIB = 2**20


def _flow(d: dict) -> str:
    return "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in d.items()) + "}"


def real_width_overrides(layers: int) -> list[str]:
    from oneforcing.testing.real_layout import wan_config

    wan = _flow({k: v for k, v in wan_config("1.3B", layers).items()
                 if k in ("num_layers", "num_attention_heads", "attention_head_dim", "in_channels",
                          "out_channels", "text_dim", "freq_dim", "ffn_dim")})
    return [f"models.generator.config={wan}", f"models.real_score.config={wan}",
            f"models.critic.config={wan}", f"models.critic.layers={list(range(layers))}",
            "models.critic.heads=12", "models.critic.ffn_dim=2048",  # recipes/one_forcing_framewise.yaml
            "data={type: random_latents, frames: 3, channels: 16, height: 8, width: 8, text_len: 32, text_dim: 4096}",
            "steps=2", "generator_every=1", "checkpoint_every=1000000", "export=null", "loggers=[]"]


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def worker(args: list[str]) -> int:
    """One rank (under torchrun): baseline RSS, the run, then the high-water mark."""
    import torch

    torch.set_num_threads(1)
    from oneforcing.runner import run
    from oneforcing.trainer.engines import import_deepspeed

    import deepspeed  # noqa: F401 - in the baseline, as in any training process

    baseline = rss_mib()
    code = run(args[0], args[1:])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rank = int(os.environ.get("RANK", "0"))
    print(f"P5 rank {rank}: " + json.dumps({"baseline_mib": baseline, "peak_mib": peak}), flush=True)
    del import_deepspeed
    return code


def measure(layers: int, extra: list[str], ranks: int = 2) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tempfile.mkdtemp(prefix="of-bench-p5-")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "OF_RUN_DIR": run_dir,
           "PYTHONPATH": str(ROOT)}
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", str(ranks), "--master_port",
           str(port), str(Path(__file__)), "worker", str(RECIPE), *real_width_overrides(layers), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    log = proc.stdout + proc.stderr
    ranks_seen = {int(r): json.loads(j) for r, j in re.findall(r"P5 rank (\d+): (\{.*\})", log)}
    held = {role: int(h.replace(",", "")) for role, h in
            re.findall(r"\[rank0\].*?(\w+): [\d,]+ parameters, this rank holds ([\d,]+)", log)}
    if not held:
        held = {role: int(h.replace(",", "")) for role, h in
                re.findall(r"(\w+): [\d,]+ parameters, this rank holds ([\d,]+)", log)}
    total = {role: int(n.replace(",", "")) for role, n in re.findall(r"(\w+): ([\d,]+) parameters, this rank", log)}
    state = {role: float(m) for role, m in re.findall(r"(\w+): model\+optimizer state on this rank: ([\d.]+) MiB", log)}
    return {"ranks": ranks_seen, "held": held, "total": total, "state_mib": state}


def block_params(layers: int) -> int:
    import torch

    from oneforcing.models.causal_wan import CausalWan
    from oneforcing.testing.real_layout import wan_config
    from oneforcing.trainer.engines import zero3_limits

    with torch.device("meta"):
        model = CausalWan(config={k: v for k, v in wan_config("1.3B", layers).items() if k != "_class_name"})
    return zero3_limits(model)["stage3_max_reuse_distance"]


def report_p5(layers: int) -> None:
    block = block_params(layers)
    rows = []
    for label, extra in (("gather limits from the model size", []), ("DeepSpeed defaults (1e9 live)", [DS_DEFAULTS])):
        m = measure(layers, extra)
        held = m["held"]
        states = sum(m["state_mib"].values()) * MIB
        states += 4 * (held.get("generator", 0) + held.get("critic", 0))  # fp32 gradient shards
        states += 4 * held.get("real_score", 0) + 4 * held.get("generator", 0)  # frozen shard + EMA
        live = 4 * 3 * 2 * block if not extra else 4 * sum(m["total"].values())
        for rank, r in sorted(m["ranks"].items()):
            expected = r["baseline_mib"] + (states + live) / MIB
            rows.append((label, rank, r["peak_mib"], r["baseline_mib"], states / MIB, live / MIB, expected))
        params = ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in m["total"].items())
    print(f"P5 real 1.3B width, {layers} block(s) per model ({params}; block {block / 1e6:.1f}M), "
          "fp32 ZeRO-3, 2 ranks, 2 iterations")
    print("| setting | rank | peak RSS MiB | process before models | model states | may stay gathered | expected |")
    print("|---|---|---|---|---|---|---|")
    for label, rank, peak, base, states, live, expected in rows:
        print(f"| {label} | {rank} | **{peak:.0f}** | {base:.0f} | {states:.0f} | <= {live:.0f} | {expected:.0f} |")


def _counts(model) -> tuple[int, int]:
    """(parameters, largest layer = most parameters one module owns itself), as DeepSpeed's
    model_to_params counts them (which cannot be used on the meta device: it dedups by data_ptr)."""
    return (sum(p.numel() for p in model.parameters()),
            max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()))


def plan() -> None:
    """Per-GPU model-state memory for the paper's setting, from DeepSpeed's own estimator:
    generator and register critic trained (bf16, fp32 master + AdamW), 14B teacher frozen in bf16."""
    import torch
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    from oneforcing.critics.register_gan import RegisterGANCritic
    from oneforcing.models.causal_wan import CausalWan
    from oneforcing.testing.real_layout import wan_config

    def cfg(size):
        return {k: v for k, v in wan_config(size).items() if k != "_class_name"}

    with torch.device("meta"):
        gen = _counts(CausalWan(config=cfg("1.3B")))
        critic = _counts(RegisterGANCritic(config=cfg("1.3B"), layers=[21, 29], heads=12, ffn_dim=2048))
        teacher = _counts(CausalWan(config=cfg("14B"), causal=False))
    gib = 2**30
    print(f"generator {gen[0] / 1e9:.3f}B (largest layer {gen[1] / 1e6:.1f}M), critic {critic[0] / 1e9:.3f}B, "
          f"teacher {teacher[0] / 1e9:.3f}B (largest layer {teacher[1] / 1e6:.1f}M)")
    print("| GPUs | offload | generator | critic | EMA | 14B teacher | model states per GPU | CPU RAM per node |")
    print("|---|---|---|---|---|---|---|---|")
    for gpus in (8, 1):
        for opt, par in ((False, False), (True, False), (True, True)):
            gpu_mem, cpu_mem = {}, 0.0
            for name, (total, largest) in (("generator", gen), ("critic", critic)):
                cpu, gpu, _ = estimate_zero3_model_states_mem_needs(total, largest, num_gpus_per_node=gpus,
                                                                   cpu_offload=opt, cpu_offload_params=par)
                gpu_mem[name], cpu_mem = gpu, cpu_mem + cpu
            # EMA: an fp32 shard of the generator, kept where the generator's partition lives.
            gpu_mem["ema"] = 0 if par else 4 * gen[0] / gpus
            cpu_mem += 4 * gen[0] / gpus * gpus if par else 0
            # Frozen bf16 teacher: its shard (or, offloaded, on the CPU) plus one gathered layer.
            gpu_mem["teacher"] = (0 if par else 2 * teacher[0] / gpus) + 2 * teacher[1]
            cpu_mem += 2 * teacher[0] if par else 0
            label = "none" if not opt else ("optimizer" if not par else "optimizer + params")
            print(f"| {gpus} | {label} | {gpu_mem['generator'] / gib:.1f} | {gpu_mem['critic'] / gib:.1f} | "
                  f"{gpu_mem['ema'] / gib:.1f} | {gpu_mem['teacher'] / gib:.1f} | "
                  f"**{sum(gpu_mem.values()) / gib:.1f} GiB** | {cpu_mem / gib:.0f} GiB |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        sys.exit(worker(sys.argv[2:]))
    if sys.argv[1:2] == ["plan"]:
        plan()
    else:
        print(__doc__)
