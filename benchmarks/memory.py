"""Memory at real scale: P5, measured on CPU ranks, and the plan for the paper's 8-GPU setting.

    python benchmarks/training.py --memory [--layers 1] [--heads 12] [--compare-defaults]   # P5
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


def width_config(layers: int, heads: int = 12) -> dict:
    """Wan2.1-1.3B's transformer config with `layers` blocks; `heads` < 12 narrows it (FFN in
    proportion) for runs that need depth more than width."""
    from oneforcing.testing.real_layout import wan_config

    cfg = {k: v for k, v in wan_config("1.3B", layers).items() if k != "_class_name"}
    return {**cfg, "num_attention_heads": heads, "ffn_dim": cfg["ffn_dim"] * heads // 12}


def real_width_overrides(layers: int, heads: int = 12) -> list[str]:
    wan = _flow({k: v for k, v in width_config(layers, heads).items()
                 if k in ("num_layers", "num_attention_heads", "attention_head_dim", "in_channels",
                          "out_channels", "text_dim", "freq_dim", "ffn_dim")})
    return [f"models.generator.config={wan}", f"models.real_score.config={wan}",
            f"models.critic.config={wan}", f"models.critic.layers={list(range(layers))}",
            f"models.critic.heads={heads}", "models.critic.ffn_dim=2048",  # recipes/one_forcing_framewise.yaml
            "data={type: random_latents, frames: 3, channels: 16, height: 8, width: 8, text_len: 32, text_dim: 4096}",
            "steps=2", "generator_every=1", "checkpoint_every=1000000", "export=null", "loggers=[]"]


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


class GatheredProbe:
    """Peak number of ZeRO-3 parameters gathered (AVAILABLE) at once on this rank, over all
    engines, sampled at every module call through torch's global module hooks."""

    def __init__(self):
        import torch
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        self.available, self.params, self.peak = ZeroParamStatus.AVAILABLE, {}, 0
        self.total, self.first_forward_rss = 0, None  # RSS when every role is built
        torch.nn.modules.module.register_module_forward_pre_hook(self.sample)
        torch.nn.modules.module.register_module_forward_hook(lambda m, a, o: self.sample(m, a))

    def sample(self, module, args) -> None:
        if self.first_forward_rss is None:
            self.first_forward_rss = rss_mib()
        for p in module.parameters(recurse=False):
            if hasattr(p, "ds_id") and id(p) not in self.params:
                self.params[id(p)] = p
                self.total += p.ds_numel
        now = sum(p.ds_numel for p in self.params.values() if p.ds_status == self.available)
        self.peak = max(self.peak, now)


def worker(args: list[str]) -> int:
    """One rank (under torchrun): RSS before any model, after the models are built (at the first
    module call), the high-water mark, and the most ZeRO-3 parameters gathered at once."""
    import torch

    torch.set_num_threads(1)
    import deepspeed  # noqa: F401 - in the baseline, as in any training process

    from oneforcing.runner import run

    baseline = rss_mib()
    probe = GatheredProbe()
    code = run(args[0], args[1:])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rank = int(os.environ.get("RANK", "0"))
    print(f"P5 rank {rank}: " + json.dumps({"baseline_mib": baseline, "built_mib": probe.first_forward_rss,
                                            "peak_mib": peak, "gathered_peak": probe.peak,
                                            "partitioned_total": probe.total}), flush=True)
    return code


def measure(layers: int, heads: int, extra: list[str], ranks: int = 2) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tempfile.mkdtemp(prefix="of-bench-p5-")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "OF_RUN_DIR": run_dir,
           "PYTHONPATH": str(ROOT)}
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", str(ranks), "--master_port",
           str(port), str(Path(__file__)), "worker", str(RECIPE), *real_width_overrides(layers, heads), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    log = proc.stdout + proc.stderr
    ranks_seen = {int(r): json.loads(j) for r, j in re.findall(r"P5 rank (\d+): (\{.*\})", log)}
    held = {role: int(h.replace(",", "")) for role, h in
            re.findall(r"(\w+): [\d,]+ parameters, this rank holds ([\d,]+)", log)}
    total = {role: int(n.replace(",", "")) for role, n in re.findall(r"(\w+): ([\d,]+) parameters, this rank", log)}
    state = {role: float(m) for role, m in re.findall(r"(\w+): model\+optimizer state on this rank: ([\d.]+) MiB", log)}
    return {"ranks": ranks_seen, "held": held, "total": total, "state_mib": state}


def block_params(layers: int, heads: int = 12) -> int:
    import torch

    from oneforcing.models.causal_wan import CausalWan
    from oneforcing.trainer.engines import zero3_limits

    with torch.device("meta"):
        model = CausalWan(config=width_config(layers, heads))
    return zero3_limits(model)["stage3_max_reuse_distance"]


def report_p5(layers: int, heads: int = 12, compare_defaults: bool = False) -> None:
    block = block_params(layers, heads)
    settings = [("limits from the model size", [])]
    if compare_defaults:
        settings.append(("DeepSpeed defaults", [DS_DEFAULTS]))
    width = "real 1.3B width" if heads == 12 else f"{heads} heads x 128 (narrowed)"
    print(f"P5 {width}, {layers} block(s) per model (block {block / 1e6:.1f}M parameters), fp32 ZeRO-3, "
          "2 CPU ranks, 2 iterations (generator + critic updates each)")
    print("| setting | rank | peak RSS MiB | before models | after building | expected: model states "
          "| + may stay gathered | = expected peak | most parameters gathered at once |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, extra in settings:
        m = measure(layers, heads, extra)
        held = m["held"]
        states = sum(m["state_mib"].values()) * MIB
        states += 4 * (held.get("generator", 0) + held.get("critic", 0))  # fp32 gradient shards
        states += 4 * held.get("real_score", 0) + 4 * held.get("generator", 0)  # frozen shard + EMA
        live = 4 * min(3 * 2 * block, sum(m["total"].values())) if not extra else 4 * sum(m["total"].values())
        print(f"raw {label}: {json.dumps(m)}", flush=True)
        for rank, r in sorted(m["ranks"].items()):
            expected = r["baseline_mib"] + (states + live) / MIB
            print(f"| {label} | {rank} | **{r['peak_mib']:.0f}** | {r['baseline_mib']:.0f} | {r['built_mib']:.0f} "
                  f"| {states / MIB:.0f} | {live / MIB:.0f} | {expected:.0f} | {r['gathered_peak'] / 1e6:.1f}M "
                  f"of {r['partitioned_total'] / 1e6:.1f}M |", flush=True)
    print("parameters: " + ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in m["total"].items()))


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
