"""`generate`: prompts -> 16 fps mp4 files from a causal student (diffusers dir or training checkpoint).

    job: generate
    checkpoint: runs/framewise/checkpoint-000200     # or a diffusers transformer dir
    text_encoder: {type: umt5, path: Wan2.1-T2V-1.3B-Diffusers}
    vae: {type: wan_vae, path: Wan2.1-T2V-1.3B-Diffusers}
    prompts_file: prompts.txt
    out_dir: videos/framewise
    weights: auto                                   # raw | ema | auto (the default: what the export declares)
    # scheduler: {type: flow_match, shift: 5.0}     # the default: the shift that warps the step lists

Weights (oneforcing/weights.py): `auto` samples what the training export declares in its
export.json (the recipe's export.inference_weights: raw for One-Forcing, whose official inference
loads the generator; EMA for Self Forcing and Causal Forcing, run with --use_ema), raw without
one; `raw` / `ema` force a choice. The job logs which it used and records it in generate_manifest.json.

Prompt schedules (oneforcing/streaming): `prompt_schedule: [{frame: 0, prompt: A}, {frame: 40,
prompt: B}]` instead of prompt(s) renders each sample as one video whose prompt switches at the
given video frames; `prompt_switch: recache` (the default: the cached frames' K/V re-computed under
the new prompt) or `keep` (only cross-attention switches). Needs the causal_inference sampler.

Every rank builds the same plan (the list of (prompt, sample) videos, their seeds and file
names) and renders its share, videos n = rank, rank + world_size, ... No communication is
needed, so any launcher and any number of ranks give byte-identical noise per video: the
noise of video n is drawn on the CPU from a generator seeded by (recipe seed, n) or by
`seeds[n]`, never from a shared stream.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from oneforcing.data.output import is_plain_name
from oneforcing.data.shards import atomic_write_text
from oneforcing.errors import UserError
from oneforcing.jobs.base import Job, RunContext, check_seed, derive_seed
from oneforcing.jobs.shared import build_sampler, load_generator_model, resolve_model_dir, rollout
from oneforcing.models.text_encoder import parse_dtype
from oneforcing.registry import JOBS, TEXT_ENCODERS, VAES, build
from oneforcing.runtime import device_memory
from oneforcing.samplers.common import PlansItsCache
from oneforcing.samplers.causal_inference import CausalInference
from oneforcing.speed import Timing, sync
from oneforcing.streaming.live import scheduled_rollout
from oneforcing.streaming.schedule import PlannedSchedule, block_starts, check_switch_mode, parse_schedule
from oneforcing.video import DEFAULT_FPS, DEFAULT_QUALITY, write_mp4
from oneforcing.weights import WEIGHTS_RENAMED, check_weights, weights_kind

log = logging.getLogger("oneforcing")

VBENCH_FILENAME = "{prompt}-{index}.mp4"
MANIFEST = "generate_manifest.json"


def slugify(text: str, max_len: int = 80) -> str:
    """'A cat, jumping!' -> 'a-cat-jumping' (filesystem- and shell-safe, bounded length)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "video"


def load_prompts(prompt: str | None, prompts: list[str] | None, prompts_file: str | None) -> list[str]:
    """Exactly one source; a file has one prompt per line (blank lines and '#' lines skipped)."""
    given = [k for k, v in (("prompt", prompt), ("prompts", prompts), ("prompts_file", prompts_file)) if v]
    if len(given) != 1:
        raise UserError("generate: give exactly one of 'prompt', 'prompts' or 'prompts_file'"
                        + (f" (got {', '.join(given)})" if given else ""))
    if prompt:
        out = [prompt]
    elif prompts:
        out = list(prompts)
    else:
        path = Path(prompts_file).expanduser()
        if not path.is_file():
            raise UserError(f"prompts_file not found: {path}")
        lines = path.read_text(encoding="utf-8").splitlines()
        out = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    out = [p.strip() for p in out]
    if not out or not all(out):
        raise UserError(f"generate: empty prompt list from '{given[0]}'")
    return out


@dataclass(frozen=True)
class Item:
    n: int               # global video number: the seed and rank assignment depend on it only
    prompt_index: int
    sample: int          # 0 .. samples_per_prompt-1 (VBench's "index")
    prompt: str
    seed: int
    path: Path


@JOBS.register("generate")
class Generate(Job):
    """Render prompts to mp4 with a one-step (or few-step) causal student.

    filename: template with {slug}, {prompt} (the text, '/' replaced), {index} (sample number
    within the prompt), {prompt_index}, {n} (global video number) and {seed};
    "{prompt}-{index}.mp4" is VBench's naming (use samples_per_prompt: 5 for VBench).
    dtype "auto" = bfloat16 on CUDA, float32 on CPU.
    """

    renamed_keys = {"ema": WEIGHTS_RENAMED}

    def __init__(
        self,
        checkpoint: str,
        text_encoder: dict,
        vae: dict,
        out_dir: str,
        model: dict | None = None,
        sampler: dict | None = None,
        scheduler: dict | None = None,
        prompt: str | None = None,
        prompts: list[str] | None = None,
        prompts_file: str | None = None,
        names_file: str | None = None,
        samples_per_prompt: int = 1,
        seeds: list[int] | None = None,
        num_frames: int = 81,
        height: int = 480,
        width: int = 832,
        fps: int = DEFAULT_FPS,
        filename: str = "{slug}-{index}.mp4",
        weights: str = "auto",
        dtype: str = "auto",
        batch_size: int = 1,
        skip_existing: bool = True,
        quality: float = DEFAULT_QUALITY,
        progress: bool = True,
        prompt_schedule: list | None = None,
        prompt_switch: str = "recache",
    ):
        self.schedule = None if prompt_schedule is None else parse_schedule(prompt_schedule, num_frames)
        self.prompt_switch = check_switch_mode(prompt_switch)
        if self.schedule is not None and (prompt or prompts or prompts_file):
            raise UserError("generate: give either 'prompt_schedule' or prompt/prompts/prompts_file, not both",
                            key="prompt_schedule")
        self.prompts = ([self.schedule[0].prompt] if self.schedule is not None  # it names the files
                        else load_prompts(prompt, prompts, prompts_file))
        # What {prompt}/{slug} name the files by: the prompts themselves, or (names_file) VBench's
        # original prompts while the model reads their LLM-extended versions, line for line.
        self.names = self.prompts if names_file is None else load_prompts(None, None, names_file)
        if len(self.names) != len(self.prompts):
            raise UserError(f"generate: names_file has {len(self.names)} lines for {len(self.prompts)} prompts")
        for key, value in (("samples_per_prompt", samples_per_prompt), ("batch_size", batch_size),
                           ("num_frames", num_frames), ("height", height), ("width", width), ("fps", fps)):
            if value < 1:
                raise UserError(f"generate: '{key}' must be >= 1, got {value}")
        n_videos = len(self.prompts) * samples_per_prompt
        for i, seed in enumerate(seeds or ()):
            check_seed(seed, f"seeds[{i}]")
        if seeds is not None and len(seeds) != n_videos:
            raise UserError(f"generate: 'seeds' has {len(seeds)} entries for {n_videos} videos "
                            f"({len(self.prompts)} prompts x {samples_per_prompt} samples)")
        try:
            filename.format(slug="s", prompt="p", index=0, prompt_index=0, n=0, seed=0)
        except (KeyError, IndexError, ValueError) as exc:
            raise UserError(f"generate: bad 'filename' template {filename!r}: {exc!r}") from None
        if not filename.endswith(".mp4"):
            raise UserError(f"generate: 'filename' must end in .mp4, got {filename!r}")
        self.weights_dir = resolve_model_dir(checkpoint, check_weights(weights))  # fail early, before any model loads
        self.checkpoint = checkpoint
        self.text_encoder_cfg, self.vae_cfg = text_encoder, vae
        self.model_cfg = model or {"type": "causal_wan"}
        self.sampler_cfg = sampler or {"type": "causal_inference"}
        # Built now (cheap), with the recipe's flow-matching convention (`scheduler:`, its shift).
        self.sampler = build_sampler(self.sampler_cfg, scheduler)
        if self.schedule is not None and not isinstance(self.sampler, CausalInference):
            raise UserError("generate: a prompt_schedule needs the causal_inference sampler (a block loop the "
                            "prompt can change in)", key="sampler.type")
        self.planned: PlannedSchedule | None = None  # the schedule on the clip's blocks, once the model is known
        self.samples_per_prompt, self.seeds = samples_per_prompt, seeds
        self.num_frames, self.height, self.width, self.fps = num_frames, height, width, fps
        self.filename, self.out_dir = filename, Path(out_dir).expanduser()
        self.dtype, self.batch_size = dtype, batch_size
        self.skip_existing, self.quality, self.progress = skip_existing, quality, progress
        self.timing: Timing | None = None  # this rank's speed figures, once it has rendered

    # --- the plan ---------------------------------------------------------------------------
    def plan(self, recipe_seed: int) -> list[Item]:
        items, seen = [], set()
        for p_idx, (text, label) in enumerate(zip(self.prompts, self.names)):
            for s in range(self.samples_per_prompt):
                n = p_idx * self.samples_per_prompt + s
                seed = self.seeds[n] if self.seeds is not None else derive_seed(recipe_seed, "generate", n)
                name = self.filename.format(slug=slugify(label), prompt=label.replace("/", "_"), index=s,
                                            prompt_index=p_idx, n=n, seed=seed)
                if not is_plain_name(name) or name.startswith("."):
                    raise UserError(f"generate: 'filename' gives {name[:80]!r} for prompt {p_idx}: a video's "
                                    "name must be a plain file name inside out_dir (no '/', no leading '.')")
                if name in seen:  # e.g. a repeated prompt, or a template without {index}
                    raise UserError(f"generate: two videos would both be written to '{name}'; "
                                    "add {prompt_index} or {n} to 'filename'")
                if len(name.encode()) > 255:  # the usual file-system limit on one name
                    raise UserError(f"generate: file name for prompt {p_idx} is over 255 bytes; use {{slug}} "
                                    "or a names_file with shorter names")
                seen.add(name)
                items.append(Item(n, p_idx, s, text, seed, self.out_dir / name))
        return items

    # --- building ---------------------------------------------------------------------------
    def compute_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return parse_dtype(self.dtype, key="generate.dtype")

    def run(self, ctx: RunContext) -> None:
        items = self.plan(ctx.seed)
        mine = items[ctx.rank::ctx.world_size]
        if self.skip_existing:
            mine = [it for it in mine if not it.path.is_file()]
        device, dtype = ctx.device, self.compute_dtype(ctx.device)
        log.info("generate: %d videos (%d on this rank, %d ranks) from %s (%s weights) -> %s",
                 len(items), len(mine), ctx.world_size, self.weights_dir, self.weights_kind, self.out_dir)
        if mine:
            # Everything is built and checked before out_dir is touched.
            vae = build(self.vae_cfg, VAES, path="vae", file=ctx.recipe_file)
            vae.to(device)
            latent_shape = _latent_shape(vae, self.num_frames, self.height, self.width)
            model = load_generator_model(self.model_cfg, self.weights_dir, ctx.recipe_file, self.sampler.scheduler)
            _check_model_fits(model, latent_shape, self.height, self.width, ctx.recipe_file)
            if self.schedule is not None:
                starts = block_starts(self.schedule, model.block_ranges(latent_shape[0]), vae.temporal_factor)
                self.planned = PlannedSchedule(self.schedule, starts, self.prompt_switch, vae.temporal_factor)
            sampler = self.sampler
            self._check_memory(model, sampler, latent_shape, device, dtype)
            wanted = {it.prompt for it in mine} | {sw.prompt for sw in self.schedule or ()}
            text = self._encode_prompts(ctx, sorted(wanted))  # before the model moves
            model = model.to(device, dtype)
            model.eval().requires_grad_(False)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._render(ctx, mine, vae, model, sampler, text, latent_shape, dtype)
        ctx.barrier()
        if ctx.is_main:  # last: the manifest lists only videos that were written
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out_dir / MANIFEST, json.dumps(self.manifest(items), indent=1, ensure_ascii=False))

    def _check_memory(self, model, sampler, latent_shape: tuple[int, int, int, int], device: torch.device,
                      dtype: torch.dtype) -> None:
        """Refuse, before anything is allocated, a batch whose decoded video or KV cache is larger
        than the device's whole memory (an absurd num_frames, size or window), and a window no
        block fits."""
        limit, batch = device_memory(device), min(self.batch_size, len(self.prompts) * self.samples_per_prompt)
        frame = batch * 3 * self.height * self.width * 4  # decoded float32 pixels of one frame of the batch
        size = f"{self.height}x{self.width} (batch of {batch})"
        for key, need, what in (("height", frame, f"one decoded frame at {size}"),
                                ("num_frames", frame * self.num_frames,
                                 f"a decoded video of {self.num_frames} frames at {size}")):
            if need > limit:
                raise UserError(f"generate: {what} needs {_size(need)} as float32, more than the "
                                f"{_size(limit)} of {device}", key=key)
        if isinstance(sampler, PlansItsCache):
            f_lat, _, h_lat, w_lat = latent_shape
            try:
                cache = sampler.new_cache(model, batch, f_lat)
            except ValueError as exc:
                raise UserError(f"generate: {exc}", key="sampler.local_attn_size") from None
            need = cache.planned_nbytes(model.tokens_per_frame(h_lat, w_lat), dtype)
            if need > limit:
                raise UserError(f"generate: the KV cache of {cache.max_frames} latent frames needs {_size(need)}, "
                                f"more than the {_size(limit)} of {device}: lower local_attn_size (or num_frames)",
                                key="sampler.local_attn_size" if self.sampler_cfg.get("local_attn_size") else "num_frames")

    def _render(self, ctx: RunContext, mine: list[Item], vae, model, sampler, text: dict,
                latent_shape: tuple[int, int, int, int], dtype: torch.dtype) -> None:
        from tqdm.auto import tqdm

        device = ctx.device
        f_lat, c_lat, h_lat, w_lat = latent_shape
        timing = self.timing = Timing(device)
        bar = tqdm(total=len(mine), desc="generate", unit="video", disable=not (self.progress and ctx.is_main))
        for start in range(0, len(mine), self.batch_size):
            batch = mine[start:start + self.batch_size]
            noise = torch.stack([
                torch.randn(f_lat, c_lat, h_lat, w_lat, generator=torch.Generator().manual_seed(it.seed))
                for it in batch
            ]).to(device, dtype)
            emb = torch.stack([text[it.prompt] for it in batch]).to(device, dtype)
            # Fresh noise between the steps of a multi-step block (first-frame enhancement) comes
            # from the batch's first video's seed, so it too is reproducible per video at batch 1.
            renoise = torch.Generator().manual_seed(derive_seed(batch[0].seed, "renoise"))
            if self.planned is not None:  # every video of the batch follows the schedule
                emb = [torch.stack([text[sw.prompt]] * len(batch)).to(device, dtype) for sw in self.schedule]
            video, first, dit, total = render(sampler, model, vae, noise, emb, device, renoise,
                                              schedule=self.planned)
            timing.add(len(batch), video.shape[1], first, dit, total)
            for it, clip in zip(batch, video):
                write_mp4(it.path, clip, fps=self.fps, quality=self.quality)
            bar.update(len(batch))
        bar.close()
        if ctx.is_main:
            print(timing.summary(f"generate (rank 0 of {ctx.world_size}, batch {self.batch_size})"),
                  flush=True)

    def _encode_prompts(self, ctx: RunContext, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Encode this rank's prompts up front, then free the encoder: UMT5-XXL is ~11 GB and has
        no business sharing the GPU with the generator while it renders."""
        encoder = build(self.text_encoder_cfg, TEXT_ENCODERS, path="text_encoder", file=ctx.recipe_file)
        encoder.to(ctx.device)
        out = {}
        for i in range(0, len(prompts), 16):
            chunk = prompts[i:i + 16]
            for p, e in zip(chunk, encoder.encode(chunk)):
                out[p] = e.cpu()
        del encoder
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
        return out

    @property
    def weights_kind(self) -> str:
        """'ema', 'generator' (raw) or 'diffusers' (a plain transformer folder: its own weights)."""
        return weights_kind(self.weights_dir)

    def manifest(self, items: list[Item]) -> dict:
        """Which file holds which prompt and seed (every video, all ranks)."""
        schedule = {} if self.planned is None else self.planned.manifest()
        return {"checkpoint": str(self.checkpoint), "weights": str(self.weights_dir),
                "weights_kind": self.weights_kind, "fps": self.fps,
                "num_frames": self.num_frames, "height": self.height, "width": self.width, **schedule,
                "videos": [{"file": it.path.name, "prompt": it.prompt, "prompt_index": it.prompt_index,
                            "index": it.sample, "seed": it.seed} for it in items]}


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**40:.1f} TiB" if nbytes >= 2**40 else f"{nbytes / 2**30:.1f} GiB"


def _latent_shape(vae, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    try:
        s = vae.spatial_factor
        if height % s or width % s:  # checked here: a codec may floor the size silently
            raise ValueError(f"height x width {height}x{width} is not a multiple of the VAE's spatial factor {s}")
        return tuple(vae.latent_shape(frames, height, width))
    except ValueError as exc:  # a bad num_frames / size is the recipe's fault
        raise UserError(f"generate: {exc}") from None


def _check_model_fits(model, latent_shape: tuple[int, int, int, int], height: int, width: int,
                      file: str | None) -> None:
    """The VAE's latents must be what the model reads: same channels, whole patches."""
    _, channels, h, w = latent_shape
    wanted = model.config.get("in_channels")  # the models contract: `config` (maybe empty)
    if wanted is not None and wanted != channels:
        raise UserError(f"generate: the VAE gives {channels}-channel latents, the model reads {wanted} "
                        "(a VAE from another model family?)", file=file, key="vae")
    patch = model.config.get("patch_size")
    if patch is not None and (h % patch[1] or w % patch[2]):
        step_h, step_w = height // h * patch[1], width // w * patch[2]
        raise UserError(f"generate: height x width {height}x{width} gives {h}x{w} latents, not whole "
                        f"{patch[1]}x{patch[2]} patches: use multiples of {step_h} x {step_w}",
                        file=file, key="height")


# --- rollout and timing ----------------------------------------------------------------------
def render(sampler, model, vae, noise: torch.Tensor, text: torch.Tensor | list[torch.Tensor], device: torch.device,
           rng: torch.Generator | None = None, clock=time.perf_counter,
           schedule: PlannedSchedule | None = None) -> tuple[torch.Tensor, float, float, float]:
    """Generate and decode one batch: (video [B, T, 3, H, W], first, dit, total) with seconds to
    the first decoded frames, in the generator alone, and in all (`clock`: wall time unless a
    benchmark asks for another). With a VAE that streams (`stream_decoder()` not None) each block is
    decoded as soon as the sampler yields it, so frame 0 is ready before the last block is
    generated; otherwise (or with a sampler that reports no blocks) the clip is decoded at the end
    and frame 0 arrives with the rest. With a `schedule`, `text` holds one embedding per switch."""
    decoder = vae.stream_decoder()  # None: this VAE decodes whole clips only
    chunks, spent = [], {"decode": 0.0, "first": float("nan")}
    t0 = sync(device, clock)

    def decode_block(_a, _b, x0) -> None:
        t = sync(device, clock)
        chunks.append(decoder(x0.float()))
        done = sync(device, clock)
        spent["decode"] += done - t
        if spent["first"] != spent["first"]:
            spent["first"] = done - t0

    on_block = decode_block if decoder is not None else None
    with torch.no_grad():
        if schedule is None:
            latents, _ = rollout(sampler, model, noise, text, device, rng, on_block=on_block)
        else:
            latents = scheduled_rollout(sampler, model, noise, text, schedule.starts, switch=schedule.mode,
                                        rng=rng, on_block=on_block)
    t1 = sync(device, clock)
    if not chunks:
        video = vae.decode(latents.float())
        t2 = sync(device, clock)
        return video, t2 - t0, t1 - t0, t2 - t0
    return torch.cat(chunks, dim=1), spent["first"], (t1 - t0) - spent["decode"], t1 - t0
