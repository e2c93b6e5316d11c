"""`prepare_data`: a folder of videos + captions -> latent shards (VAE latents + text embeddings).

    job: prepare_data
    videos: data/clips                  # the folder the captions' paths are relative to
    captions: data/clips/captions.csv   # CSV with a header, or JSON lines (.jsonl)
    out: data/shards/train
    vae: {type: wan_vae, path: checkpoints/Wan2.1-T2V-1.3B-Diffusers}
    text_encoder: {type: umt5, path: checkpoints/Wan2.1-T2V-1.3B-Diffusers}
    height: 480
    width: 832
    frames: 81                          # video frames per example (81 -> 21 Wan latents)
    overwrite: false                    # true: build the new set beside `out`, swap it in when complete

Each caption row names a video (column video | file | path | filename) and its text (caption |
prompt | text). A video is scaled to cover height x width (aspect kept), centre-cropped, and its
first `frames` frames (every `frame_stride`-th) are kept; a shorter video is an error naming it.
Rows are cut into shards of `examples_per_shard` in file order; shard j is written by rank
j % world_size and skipped when it already exists, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import torch
from tqdm import tqdm

from oneforcing.data.output import claim_output
from oneforcing.data.pipeline import all_shard_names, encode_text, encode_video, plan_shards, shard_name
from oneforcing.data.shards import dtype_from_name, write_index, write_shard
from oneforcing.data.videos import read_video, resize_center_crop
from oneforcing.errors import UserError
from oneforcing.jobs.base import Job, RunContext
from oneforcing.registry import JOBS, TEXT_ENCODERS, VAES, build

VIDEO_KEYS = ("video", "file", "path", "filename")
TEXT_KEYS = ("caption", "prompt", "text")


def read_captions(captions: str, videos: str) -> list[tuple[Path, str, str]]:
    """-> [(video path, relative name, caption)] in file order; every video must exist inside `videos`."""
    path = Path(captions)
    if not path.is_file():
        raise UserError(f"{captions}: captions file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{captions}: not UTF-8 text (byte {exc.start})") from None
    rows: list[tuple[int, object]] = []
    if path.suffix in (".jsonl", ".json"):
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((n, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise UserError(f"{captions}:{n}: invalid JSON ({exc.msg})") from None
    else:
        rows = [(n, row) for n, row in enumerate(csv.DictReader(io.StringIO(text, newline="")), 2)]
    out = []
    for n, row in rows:
        if not isinstance(row, dict):
            raise UserError(f"{captions}:{n}: a row must be a JSON object {{video: ..., caption: ...}}, "
                            f"got {type(row).__name__}")
        vkey = next((k for k in VIDEO_KEYS if row.get(k)), None)
        tkey = next((k for k in TEXT_KEYS if row.get(k) is not None), None)
        if vkey is None or tkey is None:
            raise UserError(f"{captions}:{n}: need a video column ({' | '.join(VIDEO_KEYS)}) and a "
                            f"caption column ({' | '.join(TEXT_KEYS)}); got {sorted(map(str, row))}")
        name = str(row[vkey])
        # Confined by name, not by link: a row cannot reach outside `videos` with '..' or an absolute
        # path, while a folder of links the user made (to another disk, say) still works.
        parts = Path(os.path.normpath(name)).parts
        if Path(name).is_absolute() or not parts or parts[0] == ".." or "\0" in name:
            raise UserError(f"{captions}:{n}: video {name[:80]!r} is not a path inside videos={videos}")
        video = Path(videos) / name
        try:
            found = video.is_file()
        except OSError as exc:  # a name too long for the file system, say
            raise UserError(f"{captions}:{n}: video {name[:80]!r}: {exc.strerror}") from None
        if not found:
            raise UserError(f"{captions}:{n}: video not found: {video}")
        out.append((video, name, str(row[tkey])))
    if not out:
        raise UserError(f"{captions}: no caption rows")
    return out


@JOBS.register("prepare_data")
class PrepareDataJob(Job):
    """Real videos + captions -> VAE latents + text embeddings in shards (rank-parallel, resumable)."""

    def __init__(self, videos: str, captions: str, out: str, vae: dict, text_encoder: dict,
                 height: int, width: int, frames: int, frame_stride: int = 1,
                 examples_per_shard: int = 64, batch_size: int = 4, latent_dtype: str = "bfloat16",
                 overwrite: bool = False, progress: bool = True):
        if min(height, width, frames, frame_stride, examples_per_shard, batch_size) < 1:
            raise UserError("prepare_data: height, width, frames, frame_stride, examples_per_shard and "
                            "batch_size must be >= 1")
        dtype_from_name(latent_dtype, what="prepare_data.latent_dtype")
        self.videos, self.captions, self.out = videos, captions, out
        self.vae_cfg, self.text_cfg = vae, text_encoder
        self.height, self.width, self.frames, self.stride = height, width, frames, frame_stride
        self.per_shard, self.batch_size = examples_per_shard, batch_size
        self.latent_dtype, self.overwrite, self.progress = latent_dtype, overwrite, progress

    def load(self, video: Path) -> torch.Tensor:
        need = (self.frames - 1) * self.stride + 1
        raw = read_video(video, max_frames=need)
        if raw.shape[0] < need:
            raise UserError(f"{video}: has {raw.shape[0]} frames, prepare_data needs {need} "
                            f"(frames={self.frames}, frame_stride={self.stride})")
        return resize_center_crop(raw[::self.stride][:self.frames], self.height, self.width)

    def run(self, ctx: RunContext) -> None:
        rows = read_captions(self.captions, self.videos)
        settings = {"job": "prepare_data", "captions": str(self.captions), "num_examples": len(rows),
                    "vae": self.vae_cfg, "text_encoder": self.text_cfg, "height": self.height,
                    "width": self.width, "frames": self.frames, "frame_stride": self.stride,
                    "examples_per_shard": self.per_shard, "latent_dtype": self.latent_dtype}
        vae = build(self.vae_cfg, VAES, file=ctx.recipe_file, path="vae")
        if vae.num_video_frames(vae.num_latent_frames(self.frames)) != self.frames:
            raise UserError(f"frames={self.frames} does not map to whole latent frames of this VAE "
                            f"(temporal_factor {vae.temporal_factor}: use 1 + {vae.temporal_factor} k)",
                            file=ctx.recipe_file, key="frames")
        encoder = build(self.text_cfg, TEXT_ENCODERS, file=ctx.recipe_file, path="text_encoder")
        # Claim the folder only now that everything it needs has loaded.
        with claim_output(self.out, settings, self.overwrite, ctx, "prepare_data",
                          all_shard_names(len(rows), self.per_shard)) as out:
            self.write(ctx, rows, out, vae, encoder)
            ctx.barrier()
            if ctx.is_main:
                write_index(out, info={"source": str(self.videos), **settings}, kind="latents",
                            files=all_shard_names(len(rows), self.per_shard))
            ctx.barrier()

    def write(self, ctx: RunContext, rows: list, out: Path, vae, encoder) -> None:
        """This rank's shards that `out` does not hold yet."""
        dtype = dtype_from_name(self.latent_dtype)
        todo = [p for p in plan_shards(len(rows), self.per_shard, ctx.rank, ctx.world_size)
                if not (out / shard_name(p[0])).exists()]
        bar = tqdm(total=sum(e - s for _, s, e in todo), desc="prepare_data", unit="video",
                   disable=not (self.progress and ctx.is_main))
        for j, start, end in todo:
            parts: dict[str, list] = {"latent": [], "prompt_embed": [], "prompt_mask": []}
            for b in range(start, end, self.batch_size):
                batch = rows[b:min(b + self.batch_size, end)]
                video = torch.stack([self.load(v) for v, _, _ in batch])
                embed, mask = encode_text(encoder, [c for _, _, c in batch])
                parts["latent"].append(encode_video(vae, video).to(dtype))
                parts["prompt_embed"].append(embed.to(dtype))  # stored like the latents
                parts["prompt_mask"].append(mask)
                bar.update(len(batch))
            rows_j = rows[start:end]
            write_shard(out / shard_name(j), {k: torch.cat(v) for k, v in parts.items()},
                        [c for _, _, c in rows_j], "latents", [{"source": name} for _, name, _ in rows_j])
        bar.close()
