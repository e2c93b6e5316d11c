"""Honest speed figures: what ran where, how long to the first frame, frames/s, peak memory.

    timing = Timing(device)              # resets the peak-memory counter
    timing.add(videos, frames, first, dit, total)
    print(timing.summary("generate"))
    timing.record()                      # the same figures as numbers (the VBench export's manifest)

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


def peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured): the CUDA allocator's peak on a GPU ("GPU memory (allocated)"),
    the process's peak resident set on a CPU ("process RSS": it cannot be reset, it is the whole
    process's peak so far)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "GPU memory (allocated)"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return rss, "process RSS"


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

    def record(self) -> dict | None:
        """The figures as numbers (None when nothing was timed): what a manifest stores and the
        summary prints. Frames/s count every frame of every timed video; the first batch is left
        out as warm-up when there are more."""
        rows = self.rows[1:] if len(self.rows) > 1 else self.rows
        if not rows:
            return None
        frames = sum(v * f for v, f, *_ in rows)
        firsts = sorted(r[2] for r in rows if r[2] == r[2])  # NaN when no frame was timed
        nbytes, what = peak_memory_bytes(self.device)
        return {"device": device_name(self.device),
                "latency_to_first_frame_s": firsts[len(firsts) // 2] if firsts else None,  # the median batch
                "dit_frames_per_s": frames / max(sum(r[3] for r in rows), 1e-9),
                "end_to_end_frames_per_s": frames / max(sum(r[4] for r in rows), 1e-9),
                "peak_memory_gib": nbytes / 2**30, "peak_memory_of": what,
                "videos_timed": sum(r[0] for r in rows), "frames_per_video": rows[0][1],
                "warmup_batches_excluded": len(self.rows) - len(rows)}

    def summary(self, what: str) -> str:
        rec = self.record()
        if rec is None:
            return f"{what}: nothing was generated"
        first = "n/a" if rec["latency_to_first_frame_s"] is None else f"{rec['latency_to_first_frame_s']:.3f} s"
        warm = ", first batch excluded as warm-up" if rec["warmup_batches_excluded"] else ""
        return (f"{what} on {rec['device']}: latency to first frame {first} | DiT "
                f"{rec['dit_frames_per_s']:.2f} frames/s | with VAE decode {rec['end_to_end_frames_per_s']:.2f} "
                f"frames/s | {rec['peak_memory_gib']:.2f} GiB peak {rec['peak_memory_of']} "
                f"({rec['videos_timed']} videos x {rec['frames_per_video']} frames{warm})")
