"""The bottom layer every other layer may import: the run context (rank, device, seeds, the
resolved recipe), seed derivation, and the two collectives jobs use (numbers broadcast, bytes
gathered; neither pickles). Imports nothing from oneforcing but `errors`.

    jobs/ and trainer/ -> runtime        (never trainer -> jobs)
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from oneforcing.errors import UserError


MAX_SEED = 2**64 - 1  # torch's generators take seeds of 64 bits


def check_seed(value: Any, key: str) -> int:
    """A seed as a recipe gives it: an integer in [0, 2^64) (a generator would refuse any other
    with a traceback, at the first video or example that uses it)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise UserError(f"'{key.rpartition('.')[2]}' must be an integer, got {value!r}", key=key)
    if not 0 <= value <= MAX_SEED:
        raise UserError(f"a seed is an integer in [0, 2^64), got {value}", key=key)
    return value


def device_memory(device: torch.device) -> int:
    """Bytes of memory on `device` (a GPU's whole memory; the machine's RAM for the CPU): what no
    single job can exceed, whatever else runs."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def derive_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed derived from the recipe seed and any labels (rank, purpose, step ...)."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


@dataclass
class RunContext:
    recipe: dict = field(default_factory=dict)   # the resolved recipe, for saving beside outputs
    recipe_file: str | None = None
    seed: int = 0                                # the recipe's `seed` when it has none (written here only)
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    launcher: str = "python"                     # python | torchrun | deepspeed

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def rng(self, *purpose: Any, per_rank: bool = True, device: str | torch.device = "cpu") -> torch.Generator:
        """A torch.Generator seeded from the recipe seed and `purpose` (and the rank, unless
        per_rank=False: then every rank draws the same numbers)."""
        parts = (*purpose, f"rank{self.rank}") if per_rank else purpose
        g = torch.Generator(device=device)
        g.manual_seed(derive_seed(self.seed, *parts))
        return g

    def barrier(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.barrier()

    def broadcast_numbers(self, values: list, src: int = 0, dtype: torch.dtype = torch.int64) -> list:
        """Rank `src`'s list of numbers on every rank, as tensors (nothing is pickled)."""
        if not (self.distributed and torch.distributed.is_initialized()):
            return list(values)
        return broadcast_numbers(values if self.rank == src else None, src=src, dtype=dtype)


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def broadcast_numbers(values: list | None, src: int = 0, dtype: torch.dtype = torch.int64) -> list:
    """Rank `src`'s list of numbers on every rank (others pass None), sent as tensors: the
    length, then the values. Unlike broadcast_object_list nothing is pickled, so no rank runs
    code it receives. A no-op outside torch.distributed."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    mine = dist.get_rank() == src
    length = torch.tensor([len(values) if mine else 0], dtype=torch.int64)
    dist.broadcast(length, src=src)
    data = torch.tensor(list(values), dtype=dtype) if mine else torch.zeros(int(length.item()), dtype=dtype)
    dist.broadcast(data, src=src)
    return data.tolist()


def gather_bytes(data: bytes, dst: int = 0) -> list[bytes]:
    """Every rank's `data` on rank `dst`, in rank order (other ranks get []), sent as uint8 tensors
    (sizes first, then padded payloads): like broadcast_numbers, nothing is pickled."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [data]
    world, rank = dist.get_world_size(), dist.get_rank()
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(data)], dtype=torch.int64))
    width = max(1, max(int(n) for n in sizes))
    payload = torch.zeros(width, dtype=torch.uint8)
    if data:
        payload[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    box = [torch.zeros(width, dtype=torch.uint8) for _ in range(world)] if rank == dst else None
    dist.gather(payload, box, dst=dst)
    return [bytes(t[:int(n)].numpy()) for t, n in zip(box, sizes)] if rank == dst else []
