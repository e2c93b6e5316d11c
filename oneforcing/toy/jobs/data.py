"""`toy_data`: render a toy-world split, encode it (toy codec + toy text encoder), write shards.

    job: toy_data
    out: runs/toy/data/train
    split: train            # train | validation | test | heldout
    num_examples: 2000

The world's seed is the recipe's `seed`. Shards are rank-parallel and resumable (see
oneforcing/data/pipeline.py); each example's scene (attributes, start, velocity) is stored as
its metadata, so ToyBench and later jobs know the ground truth.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from oneforcing.config.assets import TOY_TEXT_ENCODER
from oneforcing.data.output import claim_output
from oneforcing.data.pipeline import all_shard_names, encode_text, encode_video, plan_shards, shard_name
from oneforcing.data.shards import dtype_from_name, write_index, write_shard
from oneforcing.errors import UserError
from oneforcing.jobs.base import Job, RunContext
from oneforcing.registry import JOBS, TEXT_ENCODERS, VAES, build
from oneforcing.toy.world import REF_FRAMES, REF_SIZE, ToyWorld, render_scenes

DEFAULT_CODEC = {"type": "toy_codec"}


@JOBS.register("toy_data")
class ToyDataJob(Job):
    """Render toy-world videos and write their codec latents + prompt embeddings as shards."""

    def __init__(self, out: str, split: str = "train", num_examples: int = 2000,
                 examples_per_shard: int = 250, frames: int = REF_FRAMES, size: int = REF_SIZE, max_objects: int = 2,
                 start_positions: int | None = None,
                 codec: dict | None = None, text_encoder: dict | None = None,
                 latent_dtype: str = "float16", batch_size: int = 125, overwrite: bool = False):
        if examples_per_shard < 1 or batch_size < 1:
            raise UserError(f"toy_data: examples_per_shard and batch_size must be >= 1, "
                            f"got {examples_per_shard}, {batch_size}")
        dtype_from_name(latent_dtype, what="toy_data.latent_dtype")
        self.world_args = dict(split=split, num_examples=num_examples, frames=frames, size=size,
                               max_objects=max_objects)
        if start_positions is not None:  # only when set: the default world's job.json stays as it was
            self.world_args["start_positions"] = start_positions
        ToyWorld(**self.world_args)  # validate now, before any work
        self.out, self.per_shard, self.batch_size = out, examples_per_shard, batch_size
        self.codec_cfg = codec or dict(DEFAULT_CODEC)
        self.text_cfg = text_encoder or dict(TOY_TEXT_ENCODER)
        self.latent_dtype, self.overwrite = latent_dtype, overwrite

    def run(self, ctx: RunContext) -> None:
        world = ToyWorld(**self.world_args, seed=ctx.seed)
        settings = {"job": "toy_data", "seed": ctx.seed, **self.world_args, "codec": self.codec_cfg,
                    "text_encoder": self.text_cfg, "examples_per_shard": self.per_shard,
                    "latent_dtype": self.latent_dtype}
        codec = build(self.codec_cfg, VAES, file=ctx.recipe_file, path="codec")
        encoder = build(self.text_cfg, TEXT_ENCODERS, file=ctx.recipe_file, path="text_encoder")
        # Claim the folder only now that everything it needs has loaded.
        with claim_output(self.out, settings, self.overwrite, ctx, "toy_data",
                          all_shard_names(len(world), self.per_shard)) as out:
            self.write(ctx, world, out, codec, encoder)
            ctx.barrier()
            if ctx.is_main:
                write_index(out, info={"source": "toy_world", **settings}, kind="latents",
                            files=all_shard_names(len(world), self.per_shard))
            ctx.barrier()

    def write(self, ctx: RunContext, world: ToyWorld, out: Path, codec, encoder) -> None:
        """This rank's shards that `out` does not hold yet."""
        dtype = dtype_from_name(self.latent_dtype)
        todo = [p for p in plan_shards(len(world), self.per_shard, ctx.rank, ctx.world_size)
                if not (out / shard_name(p[0])).exists()]
        bar = tqdm(total=sum(e - s for _, s, e in todo), desc=f"toy_data {world.split}", unit="ex",
                   disable=not ctx.is_main)
        for j, start, end in todo:
            parts = {"latent": [], "prompt_embed": [], "prompt_mask": []}
            prompts, metadata = [], []
            for b in range(start, end, self.batch_size):
                scenes = world.scenes(range(b, min(b + self.batch_size, end)))
                batch_prompts = [s["prompt"] for s in scenes]
                embed, mask = encode_text(encoder, batch_prompts)
                parts["latent"].append(encode_video(codec, render_scenes(scenes)).to(dtype))
                parts["prompt_embed"].append(embed.to(dtype))  # stored like the latents
                parts["prompt_mask"].append(mask)
                prompts += batch_prompts
                metadata += scenes
                bar.update(len(scenes))
            tensors = {k: torch.cat(v) for k, v in parts.items()}
            write_shard(out / shard_name(j), tensors, prompts, "latents", metadata)
        bar.close()
