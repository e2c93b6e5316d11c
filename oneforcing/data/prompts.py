"""`prompt_list`: a prompt-only training set for the data-free DMD recipes (Self Forcing, Causal Forcing).

    data: {type: prompt_list, path: prompts/vidprom_filtered_extended.txt,
           latent_shape: [21, 16, 60, 104], text_encoder: {type: umt5, path: ..., dtype: bfloat16}}

The file is the VidProM-extended format the official trainers read (SF/CF `utils/dataset.py`
`TextDataset`: one prompt a line, UTF-8, trailing whitespace dropped). Stricter than the official
reader, which would train on an empty prompt: a missing or empty file, or an empty line, is one
error naming the file, the line and the recipe key (`read_prompt_file`).

A batch is the prompts' embeddings (`Batch.text`, by the dataset's `text_encoder`, built on first
use on this rank's device) and `Batch.noise_shape` = `latent_shape` [F, C, H, W], the shape of the
generator's noise (official `image_or_video_shape`): no latents, so no loss that reads real data.
Order: each epoch one permutation of all prompts from (seed, epoch), rank r takes every
world_size-th (every rank the same count, as ZeRO-3 needs); `state_dict()` = (epoch, position), and
a resumed run continues with the next prompt.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from oneforcing.data.batch import Batch
from oneforcing.data.pipeline import encode_text
from oneforcing.errors import UserError
from oneforcing.registry import DATASETS, TEXT_ENCODERS, build, validate


def read_prompt_file(path: str | Path, key: str = "data.path") -> list[str]:
    """The prompts of a one-prompt-a-line UTF-8 file; a missing file, no prompts or an empty line
    is a UserError naming the file (and line) and the recipe `key`."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"'{path}' is not a prompt file (one prompt a line)", key=key)
    try:
        with open(file, encoding="utf-8") as f:  # universal newlines, as the official reader
            lines = [line.rstrip() for line in f]
    except UnicodeDecodeError:
        raise UserError(f"{file}: not UTF-8 text", key=key) from None
    if not lines:
        raise UserError(f"{file}: holds no prompts (one prompt a line)", key=key)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise UserError(f"{file}:{number}: empty line (one prompt a line; remove it)", key=key)
    return lines


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()


def check_latent_shape(shape, key: str) -> tuple[int, int, int, int]:
    """[F, C, H, W] of positive integers."""
    ok = (isinstance(shape, (list, tuple)) and len(shape) == 4
          and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape))
    if not ok:
        raise UserError(f"must be [frames, channels, height, width] of positive integers, got {shape!r}", key=key)
    return tuple(shape)


def encoder_device() -> torch.device:
    """This rank's CUDA device when there is one (the launcher sets it), else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


@DATASETS.register("prompt_list")
class PromptList:
    """Prompts of a text file, encoded per batch; see the module docstring."""

    def __init__(self, path: str, latent_shape: list[int], text_encoder: dict, seed: int = 0,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1, infinite: bool = True):
        self.path = str(path)
        self.prompts = read_prompt_file(path)
        self.noise_shape = check_latent_shape(latent_shape, "data.latent_shape")
        if not isinstance(text_encoder, dict):
            raise UserError("must be a text encoder config {type: ..., ...}", key="data.text_encoder")
        validate(text_encoder, TEXT_ENCODERS, path="data.text_encoder")
        if len(self.prompts) < world_size:
            raise UserError(f"{path}: {len(self.prompts)} prompts cannot feed {world_size} ranks", key="data.path")
        self.text_encoder_cfg = text_encoder
        self.seed, self.shuffle, self.infinite = seed, shuffle, infinite
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._encoder = None

    def __len__(self) -> int:
        """Prompts per rank per epoch (the remainder of an uneven split is dropped)."""
        return len(self.prompts) // self.world_size

    def epoch_order(self, epoch: int) -> list[int]:
        if self.shuffle:
            digest = hashlib.sha256(f"prompt_list:{self.seed}:{epoch}".encode()).digest()
            g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
            perm = torch.randperm(len(self.prompts), generator=g).tolist()
        else:
            perm = list(range(len(self.prompts)))
        return perm[:len(self) * self.world_size][self.rank::self.world_size]

    def __iter__(self):
        """This rank's prompts (str), epoch after epoch if `infinite`."""
        while True:
            order = self.epoch_order(self.epoch)
            while self.position < len(order):
                prompt = self.prompts[order[self.position]]
                self.position += 1  # counted before yielding: a state saved now resumes after it
                yield prompt
            self.epoch, self.position = self.epoch + 1, 0
            if not self.infinite:
                return

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """[B, L, D] embeddings (padding zeroed), on the CPU in fp32 as shards give them."""
        if self._encoder is None:
            encoder = build(self.text_encoder_cfg, TEXT_ENCODERS, path="data.text_encoder")
            if isinstance(encoder, torch.nn.Module):
                encoder = encoder.to(encoder_device())
            self._encoder = encoder
        return encode_text(self._encoder, prompts)[0]

    def batches(self, batch_size: int):
        buf: list[str] = []
        for prompt in self:
            buf.append(prompt)
            if len(buf) == batch_size:
                yield self.to_batch(buf)
                buf = []
        if buf:
            yield self.to_batch(buf)

    def to_batch(self, prompts: list[str]) -> Batch:
        return Batch(text=self.encode(prompts), noise_shape=self.noise_shape, prompts=list(prompts),
                     dataset="prompt_list")

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "shuffle": self.shuffle,
                "world_size": self.world_size, "num_prompts": len(self.prompts)}

    def load_state_dict(self, state: dict) -> None:
        now = {"seed": self.seed, "shuffle": self.shuffle, "world_size": self.world_size,
               "num_prompts": len(self.prompts)}
        for key, value in now.items():
            if state.get(key) != value:
                raise UserError(f"{self.path}: cannot resume: saved {key}={state.get(key)!r}, now {value!r}",
                                key="data")
        if not 0 <= int(state["position"]) <= len(self):
            raise UserError(f"{self.path}: saved position {state['position']} outside 0..{len(self)}", key="data")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
