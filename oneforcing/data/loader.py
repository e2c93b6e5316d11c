"""Streaming, rank-aware, resumable readers of shard folders ("latent_shards", "ode_pairs").

Each epoch draws one permutation of all examples from (seed, epoch); rank r takes every
world_size-th example of it, so ranks read disjoint parts and all ranks get the same count
(ZeRO-3 needs every rank to run the same number of steps). Examples are read one by one from
memory-mapped safetensors slices, so no shard is ever loaded whole. `state_dict()` is
(epoch, position within this rank's list); `load_state_dict` resumes at exactly the next example.

Every shard header is checked against index.json when the dataset is built, and every example
as it is read (finite values, shapes): a bad shard is a UserError naming the file and example,
never a silent skip.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors import safe_open

from oneforcing.data.batch import Batch
from oneforcing.data.shards import KINDS, TRIMMED, dtype_from_name, read_index, read_shard_header
from oneforcing.errors import UserError
from oneforcing.registry import DATASETS


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values win; then torch.distributed; then the RANK / WORLD_SIZE environment."""
    if rank is not None and world_size is not None:
        pass
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is outside world_size {world_size}")
    return rank, world_size


def collate(items: list[dict]) -> dict:
    """Stack tensor fields; prompts, metadata stay lists; index becomes a LongTensor."""
    out: dict = {}
    for key, value in items[0].items():
        if torch.is_tensor(value):
            out[key] = torch.stack([it[key] for it in items])
        elif key == "index":
            out[key] = torch.tensor([it[key] for it in items], dtype=torch.long)
        else:
            out[key] = [it[key] for it in items]
    return out


@DATASETS.register("latent_shards")
class LatentShards:
    """Item = {"latent" [F, C, H, W], "prompt_embed" [L, D], "prompt_mask" [L] bool, "prompt" str,
    "metadata" dict ({} if none), "index" int (position in the whole folder)}; extra fields too.

    Iterate items (`for item in ds`), or `ds.batches(batch_size)` for training `Batch`es.
    `infinite=True` runs epoch after epoch; `dtype` casts float fields on read. `frames: N` keeps
    the first N latent frames of every example (an image stage: `frames: 1` trains on first frames)."""

    kind = "latents"

    def __init__(self, path: str, seed: int = 0, shuffle: bool = True, rank: int | None = None,
                 world_size: int | None = None, drop_last: bool = True, infinite: bool = False,
                 check_finite: bool = True, dtype: str | None = None, max_open: int = 8,
                 frames: int | None = None):
        self.path = Path(path)
        self.index = read_index(self.path)
        if self.index.get("kind") != self.kind:
            raise UserError(f"{self.path / 'index.json'}: kind {self.index.get('kind')!r}, "
                            f"but this dataset reads {self.kind!r} shards")
        self.fields = self.index["fields"]
        missing = [k for k in KINDS[self.kind] if k not in self.fields]
        if missing:
            raise UserError(f"{self.path / 'index.json'}: {self.kind} shards need fields {missing}")
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.seed, self.shuffle, self.drop_last, self.infinite = seed, shuffle, drop_last, infinite
        self.check_finite, self.max_open = check_finite, max_open
        self.dtype = dtype_from_name(dtype, what="latent_shards.dtype") if dtype else None
        self.frames = self.check_frames(frames)
        self.shards = self.index["shards"]
        self.offsets = [0]
        for s in self.shards:
            self.verify_shard_header(s)
            self.offsets.append(self.offsets[-1] + s["num_examples"])
        self.num_examples = self.offsets[-1]
        if self.num_examples != self.index["num_examples"]:
            raise UserError(f"{self.path / 'index.json'}: num_examples {self.index['num_examples']} "
                            f"but the shards hold {self.num_examples}")
        if self.num_examples < self.world_size:
            raise UserError(f"{self.path}: {self.num_examples} examples cannot feed {self.world_size} ranks")
        self.epoch, self.position = 0, 0
        self._handles: OrderedDict[int, object] = OrderedDict()
        self._prompts: dict[int, tuple[list, list | None]] = {}
        self._order: tuple[int, list[int]] | None = None

    # --- checks ---------------------------------------------------------------------------
    # the fields that hold latent frames, and the position of their frame axis (per example)
    frame_axis: dict[str, int] = {"latent": 0}

    def check_frames(self, frames: int | None) -> int | None:
        if frames is None:
            return None
        key, axis = next(iter(self.frame_axis.items()))  # every frame field stores the same frames
        stored = self.fields[key]["shape"][axis]
        if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= stored:
            raise UserError(f"{self.path}: frames must be an integer in 1..{stored} (the stored frames), "
                            f"got {frames!r}", key="data.frames")
        return frames

    def verify_shard_header(self, shard: dict) -> None:
        file = self.path / shard["file"]
        header = read_shard_header(file)
        if header["kind"] != self.kind:
            raise UserError(f"{file}: shard kind {header['kind']!r}, expected {self.kind!r}")
        if header["num_examples"] != shard["num_examples"]:
            raise UserError(f"{file}: holds {header['num_examples']} examples, index.json says "
                            f"{shard['num_examples']}")
        for key, spec in self.fields.items():
            got = header["fields"].get(key)
            if got is None:
                raise UserError(f"{file}: missing field {key!r}")
            if got != spec:
                raise UserError(f"{file}: field {key!r} is {got['dtype']}{got['shape']}, index.json says "
                                f"{spec['dtype']}{spec['shape']}")

    def verify(self) -> None:
        """Read every example once (finite, readable): a full integrity check of the folder."""
        for g in range(self.num_examples):
            self.read(g)

    # --- order and state ------------------------------------------------------------------
    def __len__(self) -> int:
        """Examples per rank per epoch."""
        n, w = self.num_examples, self.world_size
        return n // w if self.drop_last else -(-n // w)

    def epoch_order(self, epoch: int) -> list[int]:
        """This rank's global example indices for `epoch`."""
        if self._order is not None and self._order[0] == epoch:
            return self._order[1]
        if self.shuffle:
            digest = hashlib.sha256(f"latent_shards:{self.seed}:{epoch}".encode()).digest()
            g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
            perm = torch.randperm(self.num_examples, generator=g).tolist()
        else:
            perm = list(range(self.num_examples))
        per_rank = len(self)
        total = per_rank * self.world_size
        perm = (perm * 2)[:total]  # drop_last truncates; otherwise wrap around to pad
        order = perm[self.rank::self.world_size]
        self._order = (epoch, order)
        return order

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = int(epoch), 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "shuffle": self.shuffle,
                "rank": self.rank, "world_size": self.world_size, "num_examples": self.num_examples}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "shuffle", "world_size", "num_examples"):
            if state.get(key) != getattr(self, key):
                raise UserError(f"{self.path}: cannot resume: saved {key}={state.get(key)!r}, "
                                f"now {getattr(self, key)!r}")
        if not 0 <= state["position"] <= len(self):
            raise UserError(f"{self.path}: saved position {state['position']} outside 0..{len(self)}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    # --- reading --------------------------------------------------------------------------
    def _handle(self, s: int):
        if s in self._handles:
            self._handles.move_to_end(s)
            return self._handles[s]
        file = self.path / self.shards[s]["file"]
        try:
            handle = safe_open(str(file), framework="pt")
            meta = handle.metadata() or {}
            prompts = json.loads(meta["prompts"])
            metadata = json.loads(meta["metadata"]) if "metadata" in meta else None
        except Exception as exc:  # noqa: BLE001 - truncated file, bad header, bad JSON
            raise UserError(f"{file}: cannot read shard ({str(exc).splitlines()[0]})") from None
        if len(prompts) != self.shards[s]["num_examples"]:
            raise UserError(f"{file}: header lists {len(prompts)} prompts for "
                            f"{self.shards[s]['num_examples']} examples")
        self._handles[s] = handle
        self._prompts[s] = (prompts, metadata)
        while len(self._handles) > self.max_open:
            old, _ = self._handles.popitem(last=False)
            self._prompts.pop(old, None)
        return handle

    def read(self, g: int) -> dict:
        """Example `g` of the whole folder (0 <= g < num_examples), checked."""
        s = bisect.bisect_right(self.offsets, g) - 1
        i = g - self.offsets[s]
        file = self.path / self.shards[s]["file"]
        handle = self._handle(s)
        item: dict = {}
        for key, spec in self.fields.items():
            try:
                t = handle.get_slice(key)[i:i + 1][0]
            except Exception as exc:  # noqa: BLE001
                reason = str(exc).splitlines()[0]
                raise UserError(f"{file}: example {i}: cannot read {key!r} ({reason})") from None
            if key in TRIMMED and t.dim() and t.shape[0] < spec["shape"][0]:
                # stored up to the shard's longest real token: zero padding back to the full length
                t = torch.nn.functional.pad(t, (0, 0) * (t.dim() - 1) + (0, spec["shape"][0] - t.shape[0]))
            if list(t.shape) != spec["shape"]:
                raise UserError(f"{file}: example {i}: {key!r} has shape {list(t.shape)}, "
                                f"expected {spec['shape']}")
            if t.is_floating_point():
                # A NaN or inf anywhere makes the float64 sum non-finite; much faster than isfinite(t).all().
                if self.check_finite and not torch.isfinite(t.double().sum()):
                    raise UserError(f"{file}: example {i}: {key!r} holds NaN or inf")
                if self.dtype is not None:
                    t = t.to(self.dtype)
            if self.frames is not None and key in self.frame_axis:
                t = t.narrow(self.frame_axis[key], 0, self.frames)
            item[key] = t
        prompts, metadata = self._prompts[s]
        item["prompt"] = prompts[i]
        item["metadata"] = metadata[i] if metadata is not None else {}
        item["index"] = g
        return item

    def __getitem__(self, g: int) -> dict:
        if not 0 <= g < self.num_examples:
            raise IndexError(g)
        return self.read(g)

    def __iter__(self):
        while True:
            order = self.epoch_order(self.epoch)
            while self.position < len(order):
                item = self.read(order[self.position])
                self.position += 1  # counted before yielding: a state saved now resumes after it
                yield item
            self.epoch, self.position = self.epoch + 1, 0
            if not self.infinite:
                return

    def batches(self, batch_size: int):
        """`Batch`es of this rank's items; a last partial batch is kept (same on every rank)."""
        buf = []
        for item in self:
            buf.append(item)
            if len(buf) == batch_size:
                yield self.to_batch(collate(buf))
                buf = []
        if buf:
            yield self.to_batch(collate(buf))

    def to_batch(self, fields: dict) -> Batch:
        """Collated stored fields -> the training Batch (shard field names -> what losses read)."""
        return Batch(text=fields["prompt_embed"], latents=fields["latent"], prompts=fields["prompt"],
                     dataset="latent_shards")


@DATASETS.register("ode_pairs")
class OdePairShards(LatentShards):
    """Item = {"states" [K, F, C, H, W] (ODE states at the kept step indices), "timesteps" [K],
    "clean" [F, C, H, W] (the endpoint), "prompt_embed", "prompt_mask", "prompt", "metadata", "index"}."""

    kind = "ode_pairs"
    frame_axis = {"states": 1, "clean": 0, "context": 0}

    def to_batch(self, fields: dict) -> Batch:
        t = fields["timesteps"]
        return Batch(text=fields["prompt_embed"], ode_states=fields["states"],
                     ode_t=t[0] if t.dim() == 2 else t,  # the same kept timesteps for every example
                     ode_x0=fields["clean"], ode_context=fields.get("context"), prompts=fields["prompt"],
                     dataset="ode_pairs")
