"""What the shard-writing jobs (toy_data, prepare_data) share: the work plan, resumption, encoding.

Work is cut into shards of consecutive examples; shard j goes to rank j % world_size, so the
assignment depends only on the data and resumption works at any world size. A shard file that
exists is complete (atomic writes), so a restarted job skips it. `job.json` records the settings
that shape the output; a restart with different settings is refused unless `overwrite`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from oneforcing.data.shards import INDEX, atomic_write_text, mask_from_embedding, shard_files
from oneforcing.errors import UserError

JOB_FILE = "job.json"


def shard_name(j: int) -> str:
    return f"shard-{j:05d}.safetensors"


def plan_shards(num_examples: int, per_shard: int, rank: int, world_size: int) -> list[tuple[int, int, int]]:
    """This rank's (shard number, first example, end example) triples."""
    n_shards = -(-num_examples // per_shard)
    return [(j, j * per_shard, min((j + 1) * per_shard, num_examples))
            for j in range(rank, n_shards, world_size)]


def prepare_output(out: str, settings: dict, overwrite: bool, ctx, what: str) -> Path:
    """Create `out`, or check it belongs to a run with the same settings (then resume).
    Rank 0 decides and writes; every rank waits for it."""
    out_dir = Path(out)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        job_file = out_dir / JOB_FILE
        if overwrite:
            for p in [*shard_files(out_dir), out_dir / INDEX]:
                p.unlink(missing_ok=True)
        elif job_file.exists():
            old = json.loads(job_file.read_text(encoding="utf-8"))
            if old != settings:
                changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                raise UserError(f"{job_file}: '{out}' holds a {what} run with other settings "
                                f"({', '.join(changed)}); set overwrite=true or pick another out")
        elif shard_files(out_dir):
            raise UserError(f"{out}: folder holds shards but no {JOB_FILE}; "
                            "set overwrite=true or pick another out")
        atomic_write_text(job_file, json.dumps(settings, indent=1, sort_keys=True) + "\n")
    ctx.barrier()
    out_dir.mkdir(parents=True, exist_ok=True)  # no-op after rank 0; lets ranks run one by one in tests
    return out_dir


def encode_text(encoder, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """prompts -> (embed [B, L, D] float32 on CPU, mask [B, L] bool). An encoder may return the
    embedding alone (padding zeroed, the contract) or (embedding, mask)."""
    with torch.no_grad():
        out = encoder.encode(list(prompts))
    if isinstance(out, (tuple, list)):
        embed, mask = out[0], out[1].bool()
    else:
        embed, mask = out, mask_from_embedding(out)
    embed = embed.detach().float().cpu() * mask.cpu()[..., None]
    return embed, mask.cpu()


def encode_video(codec, video: torch.Tensor) -> torch.Tensor:
    """video [B, T, 3, H, W] in [-1, 1] -> latents [B, F, C, h, w] float32 on CPU."""
    device = getattr(codec, "device", torch.device("cpu"))
    dtype = getattr(codec, "dtype", torch.float32)
    with torch.no_grad():
        latents = codec.encode(video.to(device=device, dtype=dtype))
    return latents.detach().float().cpu()
