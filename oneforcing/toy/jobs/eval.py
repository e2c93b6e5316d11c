"""`toy_eval`: sample a model on toy-world prompts and score it with ToyBench, in latent space.

    job: toy_eval
    checkpoint: runs/toy/one_forcing/export        # diffusers folder, or a training export
    weights: auto                                  # raw | ema | auto: what the export declares (oneforcing/weights.py)
    out: runs/toy/eval/one_forcing                 # toybench.json, toybench.md, videos/*.mp4, samples.gif
    name: one_forcing_framewise                    # the markdown row's label
    # sampler: {type: teacher_ode, num_steps: 50, cfg_scale: 6.0}  # the bidirectional teacher, with CFG
    # scheduler: {type: flow_match, shift: 5.0}                     # the flow-matching convention (default)

Latents are decoded with the toy codec and scored as tensors: no lossy mp4 between the model and
ToyBench (the mp4s and the GIF are for eyeballing only). The prompts are ToyWorld(split,
num_videos, seed=EVAL_SEED): a fixed seed, independent of the recipe's, so every model is scored on
the same prompts. Video i's noise is drawn from derive_seed(recipe seed, "toy_eval", i); videos go
in fixed batches of `batch_size` and batch k runs on rank k % world_size, so any number of ranks
gives the same numbers. Each rank leaves its latents in out/.parts/; rank 0 scores and writes.
"""

from __future__ import annotations

import functools

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from oneforcing.data.shards import atomic_write_text
from oneforcing.errors import UserError
from oneforcing.jobs.base import Job, RunContext, derive_seed
from oneforcing.jobs.shared import (DEFAULT_TEXT_ENCODER, build_sampler, load_generator_model,
                                    model_config, resolve_model_dir, rollout)
from oneforcing.registry import JOBS, TEXT_ENCODERS, VAES, build, validate
from oneforcing.toy.bench.toybench import ToyBench, markdown_header, markdown_row
from oneforcing.toy.world import REF_FRAMES, REF_SIZE, ToyWorld
from oneforcing.weights import WEIGHTS_RENAMED, check_weights, weights_label

log = logging.getLogger("oneforcing")

EVAL_SEED = 1234  # the toy world's seed for eval prompts: the same for every model and recipe
GIF_VIDEOS = 4


def sample(sampler, model, noise: torch.Tensor, text: torch.Tensor, negative: torch.Tensor | None,
           device: torch.device, rng: torch.Generator | None) -> torch.Tensor:
    """Clean latents from any sampler: the teacher ODE guides against `negative` (CFG), a causal
    sampler re-noises between steps from `rng`."""
    neg = None if negative is None else negative.expand(noise.shape[0], *negative.shape[1:])
    with torch.no_grad():
        return rollout(sampler, model, noise, text, device, rng, negative_text=neg)[0]


@JOBS.register("toy_eval")
class ToyEvalJob(Job):
    """Sample a model on toy-world prompts and score it with ToyBench in latent space (json + md row)."""

    renamed_keys = {"use_ema": WEIGHTS_RENAMED}

    def __init__(self, checkpoint: str, out: str, name: str | None = None, weights: str = "auto",
                 model: dict | None = None, sampler: dict | None = None, scheduler: dict | None = None,
                 text_encoder: dict | None = None,
                 negative_prompt: str = "", codec: dict | None = None, split: str = "test",
                 num_videos: int = 64, batch_size: int = 8, frames: int = REF_FRAMES, size: int = REF_SIZE,
                 max_objects: int = 2, start_positions: int | None = None, fd: bool = True, save_mp4: int = 8, gif: bool = True, markdown: str | None = None,
                 progress: bool = True):
        for key, value, low in (("num_videos", num_videos, 1), ("batch_size", batch_size, 1),
                                ("save_mp4", save_mp4, 0)):
            if value < low:
                raise UserError(f"toy_eval: '{key}' must be >= {low}, got {value}")
        # The world's tier (toy_data's max_objects / start_positions): the prompts and FD's reference.
        self.tier = {"max_objects": max_objects, "start_positions": start_positions}
        self.world = ToyWorld(split, num_examples=num_videos, seed=EVAL_SEED, frames=frames, size=size, **self.tier)
        self.model_cfg = model_config(model)
        self.sampler_cfg = dict(sampler or {"type": "causal_inference"})
        if self.sampler_cfg.get("type") == "teacher_ode":
            self.sampler_cfg.setdefault("keep_indices", [])  # only the endpoint is scored
        self.scheduler_cfg = scheduler
        self.sampler = build_sampler(self.sampler_cfg, scheduler)
        if self.sampler.needs_context:
            raise UserError("toy_eval: sampler.teacher_forcing needs real latents as context (ODE pairs "
                            "only); evaluate with teacher_forcing off")
        self.text_cfg = text_encoder or dict(DEFAULT_TEXT_ENCODER)
        validate(self.text_cfg, TEXT_ENCODERS, path="text_encoder")
        self.codec_cfg = codec or {"type": "toy_codec"}
        validate(self.codec_cfg, VAES, path="codec")
        self.checkpoint, self.weights, self.negative_prompt = checkpoint, check_weights(weights), negative_prompt
        self.name = name or Path(checkpoint).name
        self.num_videos, self.batch_size, self.fd = num_videos, batch_size, fd
        self.out = Path(out).expanduser()
        self.save_mp4, self.gif, self.progress = save_mp4, gif, progress
        self.markdown = Path(markdown).expanduser() if markdown else self.out / "toybench.md"

    @functools.cached_property
    def weights_dir(self):
        """Resolved when first needed (run time), so `oneforcing show` works without weights."""
        return resolve_model_dir(self.checkpoint, self.weights)

    def settings(self, seed: int) -> dict:
        return {"checkpoint": str(self.checkpoint), "weights": str(self.weights_dir), "weights_label": weights_label(self.weights_dir),
                "model": self.model_cfg, "sampler": self.sampler_cfg, "shift": self.sampler.scheduler.shift,
                "text_encoder": self.text_cfg,
                "negative_prompt": self.negative_prompt, "codec": self.codec_cfg, "split": self.world.split,
                "eval_seed": EVAL_SEED, "seed": seed, "num_videos": self.num_videos, "frames": self.world.frames,
                "size": self.world.size, "batch_size": self.batch_size, "fd": self.fd,
                # only when not the default world, so existing results keep their cache keys
                **({"tier": self.tier} if self.tier != {"max_objects": 2, "start_positions": None} else {})}

    # --- sampling (every rank) ---------------------------------------------------------------
    def run(self, ctx: RunContext) -> dict | None:
        from tqdm.auto import tqdm

        t_start = time.perf_counter()
        settings = self.settings(ctx.seed)
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        parts = self.out / ".parts"
        parts.mkdir(parents=True, exist_ok=True)
        n_batches = -(-self.num_videos // self.batch_size)
        mine = list(range(ctx.rank, n_batches, ctx.world_size))
        prompts = self.world.prompts()
        codec = build(self.codec_cfg, VAES, path="codec", file=ctx.recipe_file)
        shape = tuple(codec.latent_shape(self.world.frames, self.world.size, self.world.size))

        encoder = build(self.text_cfg, TEXT_ENCODERS, path="text_encoder", file=ctx.recipe_file)
        with torch.no_grad():
            text = encoder.encode(prompts).float().cpu()
            negative = encoder.encode([self.negative_prompt]).float().cpu()
        del encoder
        model = load_generator_model(self.model_cfg, self.weights_dir, ctx.recipe_file,
                                     self.sampler.scheduler).to(ctx.device, torch.float32)
        model.eval().requires_grad_(False)
        sampler = self.sampler
        log.info("toy_eval: %d %s videos in %d batches (%d on this rank) from %s", self.num_videos,
                 self.world.split, n_batches, len(mine), self.weights_dir)

        t_sample = time.perf_counter()
        bar = tqdm(total=len(mine), desc=f"toy_eval {self.name}", unit="batch",
                   disable=not (self.progress and ctx.is_main))
        for k in mine:
            idx = range(k * self.batch_size, min((k + 1) * self.batch_size, self.num_videos))
            noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(
                derive_seed(ctx.seed, "toy_eval", i))) for i in idx]).to(ctx.device)
            renoise = torch.Generator().manual_seed(derive_seed(ctx.seed, "toy_eval", "renoise", k))
            latents = sample(sampler, model, noise, text[idx.start:idx.stop].to(ctx.device),
                             negative.to(ctx.device), ctx.device, renoise)
            path = parts / f"batch-{k:05d}.safetensors"
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            save_file({"latents": latents.float().cpu().contiguous()}, str(tmp), metadata={"key": key})
            os.replace(tmp, path)
            bar.update(1)
        bar.close()
        sample_s = time.perf_counter() - t_sample
        del model
        ctx.barrier()
        result = None
        if ctx.is_main:
            latents = self._gather(parts, n_batches, key)
            timing = {"sample_s_rank0": sample_s, "videos_rank0": sum(
                min((k + 1) * self.batch_size, self.num_videos) - k * self.batch_size for k in mine),
                "world_size": ctx.world_size, "device": ctx.device.type}
            result = self._score(codec, latents, prompts, settings, timing, t_start)
        ctx.barrier()
        return result

    def _gather(self, parts: Path, n_batches: int, key: str) -> torch.Tensor:
        out = []
        for k in range(n_batches):
            path = parts / f"batch-{k:05d}.safetensors"
            try:
                with safe_open(str(path), framework="pt") as f:
                    if (f.metadata() or {}).get("key") != key:
                        raise UserError(f"toy_eval: {path} belongs to another run (did a rank fail?)")
                    out.append(f.get_tensor("latents"))
            except UserError:
                raise
            except Exception as exc:  # noqa: BLE001 - missing or truncated part
                raise UserError(f"toy_eval: cannot read {path} ({str(exc).splitlines()[0]})") from None
        return torch.cat(out)

    # --- scoring and writing (rank 0) ----------------------------------------------------------
    def _score(self, codec, latents: torch.Tensor, prompts: list[str], settings: dict, timing: dict,
               t_start: float) -> dict:
        t0 = time.perf_counter()
        with torch.no_grad():
            videos = codec.decode(latents.to(codec.device, codec.dtype)).float().cpu().clamp(-1, 1)
        scores = ToyBench(fd=self.fd, **self.tier)(videos, prompts)
        timing.update(score_s=time.perf_counter() - t0, total_s=time.perf_counter() - t_start)
        result = {"name": self.name, "weights": settings["weights_label"], **scores, "config": settings, "timing": timing}
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "toybench.json", json.dumps(result, indent=1) + "\n")
        row = markdown_row(result, self.name)
        self.markdown.parent.mkdir(parents=True, exist_ok=True)
        text = self.markdown.read_text(encoding="utf-8") if self.markdown.exists() else markdown_header()
        atomic_write_text(self.markdown, upsert_row(text, row))
        self._write_media(videos, prompts)
        for p in (self.out / ".parts").glob("batch-*.safetensors"):
            p.unlink(missing_ok=True)
        try:
            (self.out / ".parts").rmdir()
        except OSError:
            pass
        print(markdown_header() + row, end="", flush=True)
        return result

    def _write_media(self, videos: torch.Tensor, prompts: list[str]) -> None:
        from oneforcing.video import write_mp4

        seen: dict[str, int] = {}
        for v, p in zip(videos[:self.save_mp4], prompts[:self.save_mp4]):
            i = seen.get(p, 0)
            seen[p] = i + 1
            write_mp4(self.out / "videos" / f"{p}-{i}.mp4", v)  # VBench naming: `eval` can read them
        if self.gif:
            n = min(GIF_VIDEOS, len(prompts))
            write_grid_gif(self.out / "samples.gif", videos[:n], self.world.render(range(n)))


def upsert_row(table: str, row: str) -> str:
    """`table` with `row` in place of the row of the same name (a re-evaluated model keeps one
    row), or appended."""
    name = row.split(" | ", 1)[0]
    lines = table.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.split(" | ", 1)[0] == name:
            lines[i] = row
            return "".join(lines)
    return table + row


def write_grid_gif(path: str | Path, generated: torch.Tensor, real: torch.Tensor, scale: int = 2,
                   fps: int = 8) -> Path:
    """A looping GIF: generated videos on the top row, the real ones (same prompts) below."""
    import imageio.v3 as iio

    from oneforcing.video import to_uint8_frames

    def row(vids: torch.Tensor):  # [n, T, 3, H, W] -> [T, H+2, n*(W+2), 3] with a white gutter
        frames = [torch.from_numpy(to_uint8_frames(v)) for v in vids]
        frames = [torch.nn.functional.pad(f, (0, 0, 1, 1, 1, 1), value=255) for f in frames]
        return torch.cat(frames, dim=2)

    grid = torch.cat([row(generated), row(real)], dim=1)
    grid = grid.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.gif")
    iio.imwrite(tmp, grid.numpy(), extension=".gif", duration=int(1000 / fps), loop=0)
    os.replace(tmp, path)
    return path
