"""What the shard-writing jobs (toy_data, prepare_data) share: the work plan, resumption, encoding.

Work is cut into shards of consecutive examples; shard j goes to rank j % world_size, so the
assignment depends only on the data and resumption works at any world size. A shard file that
exists is complete (atomic writes), so a restarted job skips it. Claiming the output folder
(job.json, overwrite without losing the old set) is data/output.py.
"""

from __future__ import annotations

import torch

from oneforcing.data.shards import mask_from_embedding
from oneforcing.errors import UserError


def shard_name(j: int) -> str:
    return f"shard-{j:05d}.safetensors"


def all_shard_names(num_examples: int, per_shard: int) -> list[str]:
    """Every shard file a job of this size writes (over all ranks)."""
    return [shard_name(j) for j in range(-(-num_examples // per_shard))]


def plan_shards(num_examples: int, per_shard: int, rank: int, world_size: int) -> list[tuple[int, int, int]]:
    """This rank's (shard number, first example, end example) triples."""
    n_shards = -(-num_examples // per_shard)
    return [(j, j * per_shard, min((j + 1) * per_shard, num_examples))
            for j in range(rank, n_shards, world_size)]


def encode_text(encoder, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """prompts -> (embed [B, L, D] float32 on CPU, mask [B, L] bool). An encoder may return the
    embedding alone (padding zeroed, the contract) or (embedding, mask)."""
    with torch.no_grad():
        out = encoder.encode(list(prompts))
    pair = isinstance(out, tuple) and len(out) == 2 and all(torch.is_tensor(o) for o in out)
    embed = out[0] if pair else out
    if not (torch.is_tensor(embed) and embed.dim() == 3 and embed.shape[0] == len(prompts)):
        # a plugin's encoder returning a list or a pooled [B, D] would otherwise fail deep in a model
        kind = type(encoder)
        got = f"a tensor {list(embed.shape)}" if torch.is_tensor(embed) else type(out).__name__
        raise UserError(f"text encoder {kind.__module__}.{kind.__qualname__} returned {got} for {len(prompts)} "
                        "prompt(s); encode(prompts) returns an embedding [B, L, D] (docs/plugins.md)",
                        key="text_encoder")
    mask = out[1].bool() if pair else mask_from_embedding(embed)
    embed = embed.detach().float().cpu() * mask.cpu()[..., None]
    return embed, mask.cpu()


def encode_video(codec, video: torch.Tensor) -> torch.Tensor:
    """video [B, T, 3, H, W] in [-1, 1] -> latents [B, F, C, h, w] float32 on CPU."""
    device = getattr(codec, "device", torch.device("cpu"))
    dtype = getattr(codec, "dtype", torch.float32)
    with torch.no_grad():
        latents = codec.encode(video.to(device=device, dtype=dtype))
    return latents.detach().float().cpu()
