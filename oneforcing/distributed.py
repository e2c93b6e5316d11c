"""Process-group set-up and tear-down, the same under python, torchrun and the deepspeed launcher.

All three launchers export RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT (the
deepspeed launcher also passes `--local_rank=N`, which the CLI strips). We initialise the
torch process group ourselves (gloo on CPU, nccl on CUDA); DeepSpeed then reuses it, which
also avoids deepspeed.init_distributed JIT-building its shared-memory op on CPU.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from datetime import timedelta

import torch

from oneforcing.runtime import RunContext, derive_seed, env_int

log = logging.getLogger("oneforcing")


def detect_launcher() -> str:
    if os.environ.get("ONEFORCING_LAUNCHER"):
        return os.environ["ONEFORCING_LAUNCHER"]
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return "torchrun"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return "deepspeed"
    return "python"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at each record, not the stream of the first setup (which an
    embedding program, or a test's capture, may since have replaced and closed)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(rank: int) -> None:
    logger = logging.getLogger("oneforcing")
    if not logger.handlers:
        handler = _StderrHandler()
        prefix = "[oneforcing]" if rank == 0 else f"[oneforcing rank {rank}]"
        handler.setFormatter(logging.Formatter(f"{prefix} %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    # Only rank 0 speaks, except for warnings and errors.
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)


def seed_everything(seed: int, rank: int) -> None:
    s = derive_seed(seed, "global", rank)
    random.seed(s)
    torch.manual_seed(s)
    try:
        import numpy as np

        np.random.seed(s % (2**32))
    except ImportError:  # pragma: no cover
        pass


def init_distributed(seed: int, recipe: dict | None = None, recipe_file: str | None = None) -> RunContext:
    rank = env_int("RANK", 0)
    world_size = env_int("WORLD_SIZE", 1)
    local_rank = env_int("LOCAL_RANK", 0)
    setup_logging(rank)
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = timedelta(seconds=env_int("ONEFORCING_DIST_TIMEOUT", 1800))
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=timeout)
    seed_everything(seed, rank)
    return RunContext(recipe=recipe or {}, recipe_file=recipe_file, seed=seed, rank=rank,
                      world_size=world_size, local_rank=local_rank, device=device,
                      launcher=detect_launcher())


def teardown_distributed() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        try:
            torch.distributed.barrier()
        except Exception:  # noqa: BLE001 - a peer already gone must not mask the real exit status
            pass
        torch.distributed.destroy_process_group()


def exit_process(code: int) -> None:
    """Leave the process with `code`. A worker of a multi-rank launch (WORLD_SIZE > 1) whose process
    group is already torn down leaves with os._exit after flushing: interpreter finalization there
    can abort in C++ ("terminate called without an active exception", SIGABRT, seen on 2-rank gloo
    runs under load after a completed job: pytorch/pytorch#190489, #179291), turning a finished run
    into a failed one. Everything a job writes is closed before this (atomic writes, the loggers'
    close); only atexit handlers are skipped. Alone, a normal sys.exit."""
    if env_int("WORLD_SIZE", 1) > 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed or broken pipe: nothing more to say
                pass
        os._exit(code)
    sys.exit(code)
