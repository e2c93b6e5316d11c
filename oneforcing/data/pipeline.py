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

from oneforcing.data.shards import INDEX, atomic_write_text, mask_from_embedding
from oneforcing.errors import UserError

JOB_FILE = "job.json"


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


def prepare_output(out: str, settings: dict, overwrite: bool, ctx, what: str, files: list[str]) -> Path:
    """Claim `out` for this job, or check it already belongs to a run with the same settings
    (then resume). `files` are the names the job will write; `job.json` records them with the
    settings, and `overwrite` removes only the files an earlier run's job.json lists. A folder
    that holds anything but no job.json is never written into. Call it after every model the job
    needs has loaded, so a failed start leaves the folder as it was. Rank 0 decides and writes."""
    out_dir = Path(out)
    if ctx.is_main:
        job_file = out_dir / JOB_FILE
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"{out}: exists and is not a folder")
        if job_file.exists():
            old = _read_job_file(job_file)
            old_settings = {k: v for k, v in old.items() if k != "files"}
            if overwrite:
                for name in _listed_files(job_file, old):
                    (out_dir / name).unlink(missing_ok=True)
            elif old_settings != settings:
                changed = sorted(k for k in set(old_settings) | set(settings)
                                 if old_settings.get(k) != settings.get(k))
                raise UserError(f"{job_file}: '{out}' holds a {what} run with other settings "
                                f"({', '.join(changed)}); set overwrite=true or pick another out")
        elif out_dir.is_dir() and any(out_dir.iterdir()):
            raise UserError(f"{out}: folder is not empty and has no {JOB_FILE}, so it was not written by "
                            f"{what}; pick another out (overwrite only removes files a job.json lists)")
        out_dir.mkdir(parents=True, exist_ok=True)
        record = {**settings, "files": sorted({*files, INDEX})}
        atomic_write_text(job_file, json.dumps(record, indent=1, sort_keys=True) + "\n")
    ctx.barrier()
    out_dir.mkdir(parents=True, exist_ok=True)  # no-op after rank 0; lets ranks run one by one in tests
    return out_dir


def _read_job_file(job_file: Path) -> dict:
    try:
        old = json.loads(job_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{job_file}: unreadable; delete the folder by hand or pick another out") from None
    if not isinstance(old, dict):
        raise UserError(f"{job_file}: not a job record (a JSON object); pick another out")
    return old


def _listed_files(job_file: Path, old: dict) -> list[str]:
    """The plain file names an earlier run recorded as its own (nothing outside the folder)."""
    names = old.get("files")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"{job_file}: lists no 'files' this job wrote, so overwrite cannot tell them "
                        "from others; delete them by hand or pick another out")
    bad = [n for n in names if not is_plain_name(n) or n == JOB_FILE]
    if bad:
        raise UserError(f"{job_file}: 'files' entry {bad[0][:80]!r} is not a plain file name")
    return names


def is_plain_name(name: str) -> bool:
    """A file name with no folder part: not '', '.', '..', and no '/' or '\\'."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


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
