"""`ode_pairs`: the teacher's ODE trajectories as `ode_pairs` shards (ODE-regression initialisation).

    job: ode_pairs
    teacher: Wan2.1-T2V-14B-Diffusers/transformer     # or a training export (weights: auto | raw | ema)
    prompts_from: data/latents                       # a latent_shards folder: its prompts + embeddings
    # or prompts_file: captions.txt + latent_shape: [21, 16, 60, 104]  (one prompt a line, no latents;
    # Self Forcing's pair script, recipes/self_forcing_ode_pairs.yaml)
    text_encoder: {type: umt5, path: Wan2.1-T2V-1.3B-Diffusers}   # for the negative prompt only
    out: data/ode_pairs
    # Causal Forcing: ODE pairs from the AR-diffusion model WITH TEACHER FORCING on each sample's
    # real latents (official get_causal_ode_data_framewise.py): block i's context = real frames < i
    # model: {causal: true, frames_per_block: 1}
    # sampler: {type: teacher_ode, teacher_forcing: true}

Per prompt: noise -> `num_steps` (48) Euler steps, the recipe scheduler's shift 5, cfg_scale 6
(v_u + 6 (v_c - v_u)), keeping the states at step indices [0, 12, 24, 36] (t = 1000, 937.5,
833.3, 625) and the clean endpoint: fields states [K, F, C, H, W], timesteps [K], clean, prompt_embed,
prompt_mask. Without `prompts_from`, the prompts are a toy-world `split` (world seed = recipe seed),
encoded with `text_encoder` (default: the toy UMT5 asset, negative prompt "").
With a teacher-forcing sampler the real latents of `prompts_from` are the clean context of every
step and are stored too, as `context` [F, C, H, W]: the causal ODE regression gives the student
the same clean context (losses/ode_regression.py, `teacher_forcing: true`).

Example g's noise comes from derive_seed(recipe seed, "ode_pairs", g); shard j holds examples
[j n, (j+1) n), computed in batches of `batch_size` that do not depend on the number of ranks: the
batches are dealt round-robin over the ranks (so a few prompts still keep every rank busy) and
rank j % world_size gathers and writes shard j, so any world size writes the same files. A shard
that exists is complete (atomic writes), so a killed run restarts where it stopped; job.json
refuses a restart with other settings.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import safetensors.torch
import torch

from oneforcing.data.output import claim_output
from oneforcing.data.pipeline import all_shard_names, encode_text, plan_shards, shard_name
from oneforcing.data.shards import ShardWriter, dtype_from_name, write_index
from oneforcing.errors import UserError
from oneforcing.weights import WEIGHTS_RENAMED, check_weights
from oneforcing.jobs.base import Job, RunContext, derive_seed, missing_path
from oneforcing.data.prompts import check_latent_shape, file_sha256
from oneforcing.jobs.shared import (DEFAULT_ODE_TEXT_ENCODER, PromptFile, ShardPrompts, ToyPrompts, build_sampler,
                                    check_teacher_paths, check_teacher_shapes,
                                    load_generator_model, model_config, resolve_model_dir)
from oneforcing.models.text_encoder import parse_dtype
from oneforcing.registry import JOBS, TEXT_ENCODERS, build, validate
from oneforcing.runtime import gather_bytes
from oneforcing.samplers.teacher_ode import TeacherODE

log = logging.getLogger("oneforcing")

@JOBS.register("ode_pairs")
class OdePairsJob(Job):
    """Teacher ODE trajectories (states at kept steps + clean endpoint) as ode_pairs shards."""

    renamed_keys = {"use_ema": WEIGHTS_RENAMED}

    def __init__(self, teacher: str, out: str, prompts_from: str | None = None, split: str | None = None,
                 num_examples: int | None = None, examples_per_shard: int = 64, batch_size: int = 4,
                 model: dict | None = None, sampler: dict | None = None, scheduler: dict | None = None,
                 text_encoder: dict | None = None,
                 negative_prompt: str | None = None, weights: str = "auto", frames: int = 21, size: int = 32,
                 latent_dtype: str = "float16", dtype: str = "auto", overwrite: bool = False,
                 progress: bool = True, prompts_file: str | None = None, latent_shape: list[int] | None = None):
        if sum(x is not None for x in (prompts_from, prompts_file, split)) != 1:
            raise UserError("ode_pairs: give exactly one of 'prompts_from' (a latent_shards folder), 'prompts_file' "
                            "(one prompt a line) or 'split' (a toy-world split)")
        if (prompts_file is None) != (latent_shape is None):
            raise UserError("ode_pairs: 'latent_shape' [F, C, H, W] goes with 'prompts_file' (the noise shape of "
                            "prompts without latents), and only with it", key="latent_shape")
        if latent_shape is not None:
            check_latent_shape(latent_shape, "latent_shape")
        for key, value in (("examples_per_shard", examples_per_shard), ("batch_size", batch_size),
                           ("num_examples", 1 if num_examples is None else num_examples)):
            if value < 1:
                raise UserError(f"ode_pairs: '{key}' must be >= 1, got {value}")
        dtype_from_name(latent_dtype, what="ode_pairs.latent_dtype")
        if split is not None:
            ToyPrompts(split, num_examples, 0, frames, size)  # validate now
        self.model_cfg = model_config({"causal": False, **(model or {})})
        self.sampler_cfg = sampler or {"type": "teacher_ode"}
        self.sampler = build_sampler(self.sampler_cfg, scheduler)
        if not isinstance(self.sampler, TeacherODE) or not self.sampler.keep_indices:
            raise UserError(f"ode_pairs: sampler '{self.sampler_cfg.get('type')}' keeps no ODE states; "
                            "use {type: teacher_ode, ...} with non-empty keep_indices")
        self.teacher_forcing = self.sampler.needs_context
        if self.teacher_forcing and prompts_from is None:
            raise UserError("ode_pairs: sampler.teacher_forcing needs the real latents: set 'prompts_from' "
                            "(a latent_shards folder), not a 'prompts_file' or a toy-world 'split'")
        self.text_cfg = text_encoder or dict(DEFAULT_ODE_TEXT_ENCODER)
        validate(self.text_cfg, TEXT_ENCODERS, path="text_encoder")
        self.teacher, self.weights, self.prompts_from, self.split = teacher, check_weights(weights), prompts_from, split
        self.num_examples, self.per_shard, self.batch_size = num_examples, examples_per_shard, batch_size
        self.negative_prompt, self.frames, self.size = negative_prompt, frames, size
        self.latent_dtype, self.dtype, self.overwrite = latent_dtype, dtype, overwrite
        self.out, self.progress = out, progress
        self.prompts_file, self.latent_shape = prompts_file, latent_shape
        self._dtype(torch.device("cpu"))  # validate now


    @functools.cached_property
    def weights_dir(self):
        """Resolved when first needed (run time), so `oneforcing show` works without weights."""
        return resolve_model_dir(self.teacher, self.weights)

    def settings(self, seed: int) -> dict:
        """What shapes the output: a restart with other values is refused (unless overwrite)."""
        return {"job": "ode_pairs", "seed": seed, "teacher": str(self.weights_dir), "model": self.model_cfg,
                "sampler": self.sampler_cfg, "shift": self.sampler.scheduler.shift,
                "prompts_from": self.prompts_from, "split": self.split,
                "num_examples": self.num_examples, "frames": self.frames, "size": self.size,
                "examples_per_shard": self.per_shard, "text_encoder": self.text_cfg,
                "negative_prompt": self.negative_prompt, "latent_dtype": self.latent_dtype,
                **({"prompts_file": self.prompts_file, "latent_shape": list(self.latent_shape)}
                   if self.prompts_file is not None else {})}

    def _dtype(self, device: torch.device) -> torch.dtype:
        """The teacher's compute dtype; "auto" = bfloat16 on CUDA, float32 on CPU."""
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return parse_dtype(self.dtype, key="ode_pairs.dtype")

    def _source(self, seed: int):
        if self.prompts_from is not None:
            return ShardPrompts(self.prompts_from, self.num_examples)
        if self.prompts_file is not None:
            return PromptFile(self.prompts_file, self.num_examples, self.latent_shape)
        return ToyPrompts(self.split, self.num_examples, seed, self.frames, self.size)

    def check_paths(self, recipe_file: str | None) -> None:
        check_teacher_paths(self.teacher, self.weights, self.prompts_from, recipe_file)
        if self.prompts_file is not None and not Path(self.prompts_file).expanduser().exists():
            raise missing_path(self.prompts_file, "prompts_file", recipe_file)

    def run(self, ctx: RunContext) -> None:
        from tqdm.auto import tqdm

        self.check_paths(ctx.recipe_file)
        settings = self.settings(ctx.seed)
        source = self._source(ctx.seed)
        shards = all_shard_names(source.num, self.per_shard)
        # Every rank takes part in every shard: rank 0 decides which shards are still to be written.
        plan = plan_shards(source.num, self.per_shard, 0, 1)
        missing = set(ctx.broadcast_numbers([j for j, _, _ in plan
                                             if self.overwrite or not (Path(self.out) / shard_name(j)).exists()]))
        todo = [p for p in plan if p[0] in missing]
        built = self._build(ctx, source) if todo else None  # before the folder is claimed: a failed load leaves it
        with claim_output(self.out, settings, self.overwrite, ctx, "ode_pairs", shards) as out:
            log.info("ode_pairs: %d examples in shards of %d -> %s (%d shards to write, batches split over "
                     "%d rank%s)", source.num, self.per_shard, out, len(todo), ctx.world_size,
                     "s" if ctx.world_size > 1 else "")
            if todo:
                self._write(ctx, source, out, todo, tqdm, *built)
            ctx.barrier()
            if ctx.is_main:
                write_index(out, info={"source": self._source_name(), **settings, **self._provenance()},
                            kind="ode_pairs", files=shards)
            ctx.barrier()

    def _source_name(self) -> str:
        return self.prompts_from or self.prompts_file or f"toy_world:{self.split}"

    def _provenance(self) -> dict:
        """The prompt file's hash: which prompt set the pairs were made from."""
        return {"prompts_sha256": file_sha256(self.prompts_file)} if self.prompts_file is not None else {}

    def _build(self, ctx: RunContext, source) -> tuple:
        """(text encoder, negative prompt embedding, teacher), shapes checked on every rank."""
        encoder = build(self.text_cfg, TEXT_ENCODERS, path="text_encoder", file=ctx.recipe_file)
        negative_text = encoder.negative_prompt if self.negative_prompt is None else self.negative_prompt
        negative = encode_text(encoder, [negative_text])[0]
        model = load_generator_model(self.model_cfg, self.weights_dir, ctx.recipe_file, self.sampler.scheduler)
        model = model.to(ctx.device, self._dtype(ctx.device))
        model.eval().requires_grad_(False)
        check_teacher_shapes(model, source.shape, source.batch(range(1), encoder).embed, negative,
                             self._source_name())  # every rank
        return encoder, negative, model

    def _write(self, ctx: RunContext, source, out, todo, tqdm, encoder, negative, model) -> None:
        """Batch k of shard j (examples [start + k batch_size, ...)) is computed by rank
        (j * batches_per_shard + k) % world_size; rank j % world_size gathers and writes shard j.
        Batches do not depend on the world size, so any number of ranks writes the same files."""
        device = ctx.device
        dtype = self._dtype(device)
        store = dtype_from_name(self.latent_dtype)
        per_shard_batches = -(-self.per_shard // self.batch_size)

        def my_batches(j: int, start: int, end: int) -> list[range]:
            firsts = range(start, end, self.batch_size)
            return [range(b, min(b + self.batch_size, end)) for k, b in enumerate(firsts)
                    if (j * per_shard_batches + k) % ctx.world_size == ctx.rank]

        mine = sum(len(idx) for shard in todo for idx in my_batches(*shard))
        log.info("ode_pairs: this rank computes %d of the %d missing examples", mine,
                 sum(e - s for _, s, e in todo))
        bar = tqdm(total=mine, desc="ode_pairs", unit="ex", disable=not (self.progress and ctx.is_main))
        for j, start, end in todo:
            parts = []
            for idx in my_batches(j, start, end):
                parts.append((idx.start, self._batch(ctx, model, source, encoder, negative, idx, dtype)))
                bar.update(len(idx))
            writer_rank = j % ctx.world_size
            parts = _gather(ctx, parts, writer_rank)
            if ctx.rank != writer_rank:
                continue
            writer = ShardWriter(out, kind="ode_pairs", examples_per_shard=end - start, start=j, index=False,
                                 dtypes={"states": store, "clean": store, "context": store, "prompt_embed": store})
            for _, batch in sorted(parts, key=lambda part: part[0]):
                writer.add_batch(**batch)
            writer.close()  # exactly shard j (the writer flushes when it holds end - start examples)
        bar.close()
        del model, encoder

    def _batch(self, ctx: RunContext, model, source, encoder, negative, idx: range, dtype) -> dict:
        """The ODE pairs of examples `idx` (CPU tensors, as ShardWriter.add_batch takes them)."""
        prompts, embed, mask, metadata, real = source.batch(idx, encoder)
        seeds = [derive_seed(ctx.seed, "ode_pairs", g) for g in idx]
        noise = torch.stack([torch.randn(source.shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
        neg = negative.expand(len(idx), *negative.shape[1:])
        device = ctx.device
        # Teacher forcing: the real latents are every step's clean context, and are stored.
        context = {"context": real.to(device, dtype)} if self.teacher_forcing else {}
        res = self.sampler(model, noise.to(device, dtype), embed.to(device, dtype), negative_text=neg.to(device, dtype),
                           **context)
        return {"prompts": prompts,
                "metadata": [{**m, "source_index": g, "noise_seed": s} for m, g, s in zip(metadata, idx, seeds)],
                "states": res.states.float().cpu(), "clean": res.x0.float().cpu(),
                "timesteps": res.timesteps.float().expand(len(idx), -1), "prompt_embed": embed, "prompt_mask": mask,
                **({"context": real} if self.teacher_forcing else {})}

def _gather(ctx: RunContext, parts: list, dst: int) -> list:
    """Every rank's `parts` ([(first example, batch dict)]) concatenated on rank `dst` (other ranks
    get []). Each rank packs its parts as JSON (strings, metadata) + safetensors (tensors) bytes."""
    if not ctx.distributed:
        return parts
    header = [{"start": start, **{k: v for k, v in batch.items() if not isinstance(v, torch.Tensor)}}
              for start, batch in parts]
    tensors = {f"{i}/{k}": v.contiguous() for i, (_, batch) in enumerate(parts)
               for k, v in batch.items() if isinstance(v, torch.Tensor)}
    text = json.dumps(header).encode()
    packed = len(text).to_bytes(8, "little") + text + (safetensors.torch.save(tensors) if tensors else b"")
    out = []
    for blob in gather_bytes(packed, dst):
        size = int.from_bytes(blob[:8], "little")
        loaded = safetensors.torch.load(blob[8 + size:]) if len(blob) > 8 + size else {}
        for i, item in enumerate(json.loads(blob[8:8 + size])):
            start = item.pop("start")
            item.update({k.split("/", 1)[1]: v for k, v in loaded.items() if k.split("/", 1)[0] == str(i)})
            out.append((start, item))
    return out
