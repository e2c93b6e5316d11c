"""Data: the toy world, the toy codec and text-encoder asset, latent / ODE-pair shards."""

from oneforcing.data.batch import Batch
from oneforcing.data.loader import LatentShards, OdePairShards, collate, resolve_rank
from oneforcing.data.shards import (
    KINDS, ShardWriter, mask_from_embedding, read_index, read_shard_header, write_index, write_shard,
)
from oneforcing.data.toy_codec import ToyCodec
from oneforcing.data.toy_text_encoder import TOY_MAX_LENGTH, TOY_TEXT_ENCODER_PATH
from oneforcing.data.toy_world import ToyWorld, parse_prompt, render_scenes, sample_scene
from oneforcing.data.toy_analytic_teacher import ToyAnalyticTeacher
from oneforcing.data import videos  # noqa: F401  (registers nothing; video file I/O helpers)

__all__ = [
    "Batch", "KINDS", "LatentShards", "OdePairShards", "ShardWriter", "TOY_MAX_LENGTH", "ToyAnalyticTeacher", "TOY_TEXT_ENCODER_PATH",
    "ToyCodec", "ToyWorld", "collate", "mask_from_embedding", "parse_prompt",
    "read_index", "read_shard_header", "render_scenes", "resolve_rank", "sample_scene", "write_index",
    "write_shard",
]
