"""Honest speed figures: what ran where, how long to the first frame, frames/s, peak memory.

    timing = Timing(device)              # resets the peak-memory counter
    timing.add(videos, frames, first, dit, total)
    print(timing.summary("generate"))

Every figure names its device (GPU model, or CPU model and threads). Peak memory is the CUDA
allocator's peak on a GPU and the process's peak resident set on a CPU (everything the process
holds: weights, text encoder, buffers), and says which.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time

import torch


def sync(device: torch.device, clock=time.perf_counter) -> float:
    """clock() (wall time by default) after the device has finished its queued work (CUDA is
    asynchronous). Benchmarks on a shared CPU pass time.process_time: the process's own CPU time."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock()


def device_name(device: torch.device) -> str:
    """'NVIDIA H100 80GB HBM3 (cuda:0)' or 'CPU Intel(R) Xeon(R) ... (2 cores, 1 torch thread)'."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f"CPU {model} ({os.cpu_count()} cores, {threads} torch thread{'s' * (threads != 1)})"


def reset_peak_memory(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> str:
    """'3.21 GiB peak GPU memory (allocated)' or '0.85 GiB peak process RSS' (the CPU figure cannot
    be reset: it is the whole process's peak so far)."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB peak GPU memory (allocated)"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return f"{rss / 2**30:.2f} GiB peak process RSS"


class Timing:
    """Per-batch timings; the summary drops the first batch when there are more (warm-up).

    first: seconds from the start of the batch until its first video frames were decoded;
    dit: seconds in the generator (sampler) only; total: generation and VAE decode."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.rows: list[tuple[int, int, float, float, float]] = []
        reset_peak_memory(self.device)

    def add(self, videos: int, frames: int, first: float, dit: float, total: float) -> None:
        self.rows.append((videos, frames, first, dit, total))

    def summary(self, what: str) -> str:
        rows = self.rows[1:] if len(self.rows) > 1 else self.rows
        if not rows:
            return f"{what}: nothing was generated"
        frames = sum(v * f for v, f, *_ in rows)
        t_dit = sum(r[3] for r in rows)
        t_all = sum(r[4] for r in rows)
        firsts = sorted(r[2] for r in rows if r[2] == r[2])  # NaN when no frame was timed
        first = f"{firsts[len(firsts) // 2]:.3f} s" if firsts else "n/a"
        warm = ", first batch excluded as warm-up" if len(self.rows) > 1 else ""
        return (f"{what} on {device_name(self.device)}: latency to first frame {first} | DiT "
                f"{frames / max(t_dit, 1e-9):.2f} frames/s | with VAE decode {frames / max(t_all, 1e-9):.2f} "
                f"frames/s | {peak_memory(self.device)} ({sum(r[0] for r in rows)} videos x {rows[0][1]} "
                f"frames{warm})")
