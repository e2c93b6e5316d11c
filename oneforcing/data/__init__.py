"""Data: the Batch, latent / ODE-pair shards and their loaders, prompt lists, video file I/O. The toy world's
data (world, codec, text encoder) is in oneforcing/toy/."""

from oneforcing.data.batch import Batch
from oneforcing.data.loader import LatentShards, OdePairShards, collate, resolve_rank
from oneforcing.data.prompts import PromptList, read_prompt_file
from oneforcing.data.shards import (
    KINDS, ShardWriter, mask_from_embedding, read_index, read_shard_header, write_index, write_shard,
)
from oneforcing.data import videos  # noqa: F401  (registers nothing; video file I/O helpers)

__all__ = [
    "Batch", "KINDS", "LatentShards", "OdePairShards", "PromptList", "ShardWriter", "collate", "mask_from_embedding",
    "read_index", "read_prompt_file", "read_shard_header", "resolve_rank", "write_index", "write_shard",
]
