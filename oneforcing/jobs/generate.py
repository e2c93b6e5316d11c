"""`generate`: prompts -> 16 fps mp4 files from a causal student (diffusers dir or training checkpoint).

    job: generate
    checkpoint: runs/framewise/checkpoint-000200     # or a diffusers transformer dir
    text_encoder: {type: umt5, path: Wan2.1-T2V-1.3B-Diffusers}
    vae: {type: wan_vae, path: Wan2.1-T2V-1.3B-Diffusers}
    prompts_file: prompts.txt
    out_dir: videos/framewise
    ema: false                                      # the default: the raw generator (generator/)

Weights: the raw generator unless `ema: true` (the official inference script's default is
USE_EMA=0); the job logs which it used and records it in generate_manifest.json.

Every rank builds the same plan (the list of (prompt, sample) videos, their seeds and file
names) and renders its share, videos n = rank, rank + world_size, ... No communication is
needed, so any launcher and any number of ranks give byte-identical noise per video: the
noise of video n is drawn on the CPU from a generator seeded by (recipe seed, n) or by
`seeds[n]`, never from a shared stream.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from oneforcing.errors import UserError
from oneforcing.jobs.base import Job, RunContext, derive_seed
from oneforcing.registry import JOBS, MODELS, SAMPLERS, TEXT_ENCODERS, VAES, build, check_kwargs

log = logging.getLogger("oneforcing")

VBENCH_FILENAME = "{prompt}-{index}.mp4"


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

    def __init__(
        self,
        checkpoint: str,
        text_encoder: dict,
        vae: dict,
        out_dir: str,
        model: dict | None = None,
        sampler: dict | None = None,
        prompt: str | None = None,
        prompts: list[str] | None = None,
        prompts_file: str | None = None,
        names_file: str | None = None,
        samples_per_prompt: int = 1,
        seeds: list[int] | None = None,
        num_frames: int = 81,
        height: int = 480,
        width: int = 832,
        fps: int = 16,
        filename: str = "{slug}-{index}.mp4",
        ema: bool = False,
        dtype: str = "auto",
        batch_size: int = 1,
        skip_existing: bool = True,
        quality: float = 8.0,
        progress: bool = True,
    ):
        self.prompts = load_prompts(prompt, prompts, prompts_file)
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
        if seeds is not None and len(seeds) != n_videos:
            raise UserError(f"generate: 'seeds' has {len(seeds)} entries for {n_videos} videos "
                            f"({len(self.prompts)} prompts x {samples_per_prompt} samples)")
        try:
            filename.format(slug="s", prompt="p", index=0, prompt_index=0, n=0, seed=0)
        except (KeyError, IndexError, ValueError) as exc:
            raise UserError(f"generate: bad 'filename' template {filename!r}: {exc!r}") from None
        if not filename.endswith(".mp4"):
            raise UserError(f"generate: 'filename' must end in .mp4, got {filename!r}")
        self.weights_dir = resolve_model_dir(checkpoint, ema)  # fail early, before any model loads
        self.checkpoint, self.ema = checkpoint, bool(ema)
        self.text_encoder_cfg, self.vae_cfg = text_encoder, vae
        self.model_cfg = model or {"type": "causal_wan"}
        self.sampler_cfg = sampler or {"type": "causal_inference"}
        self.samples_per_prompt, self.seeds = samples_per_prompt, seeds
        self.num_frames, self.height, self.width, self.fps = num_frames, height, width, fps
        self.filename, self.out_dir = filename, Path(out_dir).expanduser()
        self.dtype, self.batch_size = dtype, batch_size
        self.skip_existing, self.quality, self.progress = skip_existing, quality, progress

    # --- the plan ---------------------------------------------------------------------------
    def plan(self, recipe_seed: int) -> list[Item]:
        items, seen = [], set()
        for p_idx, (text, label) in enumerate(zip(self.prompts, self.names)):
            for s in range(self.samples_per_prompt):
                n = p_idx * self.samples_per_prompt + s
                seed = self.seeds[n] if self.seeds is not None else derive_seed(recipe_seed, "generate", n)
                name = self.filename.format(slug=slugify(label), prompt=label.replace("/", "_"), index=s,
                                            prompt_index=p_idx, n=n, seed=seed)
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
    def _dtype(self, device: torch.device) -> torch.dtype:
        from oneforcing.models.text_encoder import parse_dtype

        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return parse_dtype(self.dtype, key="generate.dtype")

    def run(self, ctx: RunContext) -> None:
        from tqdm.auto import tqdm

        from oneforcing.video import write_mp4

        items = self.plan(ctx.seed)
        mine = items[ctx.rank::ctx.world_size]
        if self.skip_existing:
            mine = [it for it in mine if not it.path.is_file()]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if ctx.is_main:
            self._write_manifest(items)
        device, dtype = ctx.device, self._dtype(ctx.device)
        log.info("generate: %d videos (%d on this rank, %d ranks) from %s (%s weights) -> %s",
                 len(items), len(mine), ctx.world_size, self.weights_dir, self.weights_kind, self.out_dir)
        if not mine:
            ctx.barrier()
            return

        vae = build(self.vae_cfg, VAES, path="vae", file=ctx.recipe_file)
        vae.to(device)
        f_lat, c_lat, h_lat, w_lat = _latent_shape(vae, self.num_frames, self.height, self.width)
        text = self._encode_prompts(ctx, sorted({it.prompt for it in mine}))
        model = load_generator_model(self.model_cfg, self.weights_dir, ctx.recipe_file).to(device, dtype)
        model.eval().requires_grad_(False)
        sampler = build(self.sampler_cfg, SAMPLERS, path="sampler", file=ctx.recipe_file)

        timing = Timing()
        bar = tqdm(total=len(mine), desc="generate", unit="video", disable=not (self.progress and ctx.is_main))
        for start in range(0, len(mine), self.batch_size):
            batch = mine[start:start + self.batch_size]
            noise = torch.stack([
                torch.randn(f_lat, c_lat, h_lat, w_lat, generator=torch.Generator().manual_seed(it.seed))
                for it in batch
            ]).to(device, dtype)
            emb = torch.stack([text[it.prompt] for it in batch]).to(device, dtype)
            t0 = sync(device)
            # Fresh noise between the steps of a multi-step block (first-frame enhancement) comes
            # from the batch's first video's seed, so it too is reproducible per video at batch 1.
            renoise = torch.Generator().manual_seed(derive_seed(batch[0].seed, "renoise"))
            with torch.no_grad():
                latents, t_first = rollout(sampler, model, noise, emb, device, renoise)
            t1 = sync(device)
            video = vae.decode(latents.float())
            t2 = sync(device)
            # Streaming latency = first block + decoding its first frame alone (the causal VAE
            # can show frame 0 before the rest exists); timed here as a separate, small decode.
            vae.decode(latents[:, :1].float())
            first = (t_first - t0) + (sync(device) - t2)
            timing.add(len(batch), video.shape[1], first, t1 - t0, t2 - t0)
            for it, clip in zip(batch, video):
                write_mp4(it.path, clip, fps=self.fps, quality=self.quality)
            bar.update(len(batch))
        bar.close()
        if ctx.is_main:
            print(timing.summary(f"generate (rank 0 of {ctx.world_size}, batch {self.batch_size}, {device.type})"),
                  flush=True)
        ctx.barrier()

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
        name = self.weights_dir.name
        return name if name in ("ema", "generator") else "diffusers"

    def _write_manifest(self, items: list[Item]) -> None:
        """Which file holds which prompt and seed (every video, all ranks), written atomically."""
        data = {"checkpoint": str(self.checkpoint), "weights": str(self.weights_dir),
                "weights_kind": self.weights_kind, "fps": self.fps,
                "num_frames": self.num_frames, "height": self.height, "width": self.width,
                "videos": [{"file": it.path.name, "prompt": it.prompt, "prompt_index": it.prompt_index,
                            "index": it.sample, "seed": it.seed} for it in items]}
        path = self.out_dir / "generate_manifest.json"
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)


def _latent_shape(vae, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    try:
        if hasattr(vae, "latent_shape"):
            return tuple(vae.latent_shape(frames, height, width))
        s = vae.spatial_factor
        if height % s or width % s:
            raise ValueError(f"frame size {height}x{width} is not a multiple of {s}")
        return (vae.num_latent_frames(frames), vae.latent_channels, height // s, width // s)
    except ValueError as exc:  # a bad num_frames / size is the recipe's fault
        raise UserError(f"generate: {exc}") from None


# --- model loading ---------------------------------------------------------------------------
def _diffusers_dir(d: Path) -> Path | None:
    if (d / "config.json").is_file():
        return d
    if (d / "transformer" / "config.json").is_file():  # a whole Wan pipeline folder
        return d / "transformer"
    return None


def resolve_model_dir(checkpoint: str, use_ema: bool) -> Path:
    """The diffusers transformer folder to load: `checkpoint` itself (or its transformer/), or a
    training checkpoint's ema/ (use_ema) or generator/ sub-folder. A checkpoint saved before the
    EMA started has no ema/: then the generator is used, with a warning."""
    root = Path(checkpoint).expanduser()
    if not root.is_dir():
        raise UserError(f"generate: checkpoint directory not found: {root}")
    subs = ("ema", "generator") if use_ema else ("generator",)
    for sub in subs:
        found = _diffusers_dir(root / sub) if (root / sub).is_dir() else None
        if found is not None:
            if use_ema and sub == "generator":
                log.warning("generate: %s has no ema/ weights; using generator/", root)
            return found
    found = _diffusers_dir(root)
    if found is None:
        raise UserError(f"generate: {root} is neither a diffusers transformer folder (config.json) "
                        f"nor a checkpoint with {' or '.join(s + '/' for s in subs)}")
    return found


def load_generator_model(cfg: dict, weights_dir: Path, file: str | None):
    """The recipe's `model:` config with the weights folder as its `pretrained`. A class with a
    `from_pretrained` (CausalWan) is loaded through it: built on the meta device and filled from
    the file, instead of a random init of every parameter that the weights then overwrite."""
    for key in ("pretrained", "load_weights"):
        if key in cfg:
            raise UserError(f"generate: set the weights with 'checkpoint', not 'model.{key}'", file=file)
    cfg = dict(cfg)
    name = cfg.pop("type", None)
    if not isinstance(name, str):
        return build(cfg, MODELS, path="model", file=file)  # build's own error for a missing type
    obj = MODELS.get(name)
    if hasattr(obj, "from_pretrained"):
        kwargs = check_kwargs(obj, cfg, what=f"models '{name}'", path="model", file=file, provided=("pretrained",))
        return obj.from_pretrained(str(weights_dir), **kwargs)
    return build({"type": name, **cfg}, MODELS, path="model", file=file, pretrained=str(weights_dir))


# --- rollout and timing ----------------------------------------------------------------------
def sync(device: torch.device) -> float:
    """perf_counter after the device has finished its queued work (CUDA is asynchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class Timing:
    """Per-batch timings; the summary drops the first batch when there are more (warm-up)."""

    def __init__(self):
        self.rows: list[tuple[int, int, float, float, float]] = []

    def add(self, videos: int, frames: int, first: float, transformer: float, total: float) -> None:
        self.rows.append((videos, frames, first, transformer, total))

    def summary(self, what: str) -> str:
        rows = self.rows[1:] if len(self.rows) > 1 else self.rows
        frames = sum(v * f for v, f, *_ in rows)
        t_tr = sum(r[3] for r in rows)
        t_all = sum(r[4] for r in rows)
        firsts = sorted(r[2] for r in rows if r[2] == r[2])  # NaN when the sampler gives no blocks
        first = f"{firsts[len(firsts) // 2]:.3f} s" if firsts else "n/a"
        warm = ", first batch excluded as warm-up" if len(self.rows) > 1 else ""
        return (f"{what}: latency to first frame {first} | transformer {frames / max(t_tr, 1e-9):.2f} frames/s"
                f" | with VAE decode {frames / max(t_all, 1e-9):.2f} frames/s"
                f" ({sum(r[0] for r in rows)} videos x {rows[0][1]} frames{warm})")


def _takes(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def rollout(sampler, model, noise: torch.Tensor, text: torch.Tensor, device: torch.device,
            generator: torch.Generator | None = None):
    """Run the sampler; returns (latents [B, F, C, h, w], perf_counter when the first block was
    ready, or NaN if the sampler cannot say). A sampler with `stream(model, noise, text)`
    (causal_inference) yields (first frame, end frame, x0 block); any other is called as
    `sampler(model, noise, text)` and is told of blocks through `on_block` if it takes one.
    `generator` (the re-noising between steps of multi-step blocks) is passed if accepted."""
    first = [float("nan")]

    def on_block(*_args, **_kwargs) -> None:
        if first[0] != first[0]:
            first[0] = sync(device)

    if hasattr(sampler, "stream"):
        kwargs = {"generator": generator} if _takes(sampler.stream, "generator") else {}
        out = torch.empty_like(noise)
        for a, b, x0 in sampler.stream(model, noise, text, **kwargs):
            out[:, a:b] = x0
            on_block()
        return out, first[0]
    kwargs = {"generator": generator} if _takes(sampler, "generator") else {}
    if _takes(sampler, "on_block"):
        kwargs["on_block"] = on_block
    return sampler(model, noise, text, **kwargs), first[0]
