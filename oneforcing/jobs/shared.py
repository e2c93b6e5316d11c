"""What several jobs share (generate, toy_eval, ode_pairs, curvature, eval, plot): the recipe's
flow-matching convention and samplers, weights folders, model configs, prompt sources, the rollout,
figures on disk.
One public place; no job imports another job's helpers."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple, Protocol

import torch

from oneforcing.config.assets import TOY_TEXT_ENCODER
from oneforcing.data.loader import LatentShards
from oneforcing.data.pipeline import encode_text
from oneforcing.data.prompts import check_latent_shape, read_prompt_file
from oneforcing.errors import UserError
from oneforcing.jobs.base import missing_path
from oneforcing.registry import DATASETS, MODELS, VAES, build, check_kwargs, declared, validate
from oneforcing.samplers.common import checked_rollout
from oneforcing.schedulers import FlowMatchScheduler
from oneforcing.schedulers.build import build_flow
from oneforcing.speed import sync
from oneforcing.weights import resolve_weights

DEFAULT_TEXT_ENCODER = TOY_TEXT_ENCODER
DEFAULT_ODE_TEXT_ENCODER = {**DEFAULT_TEXT_ENCODER, "negative_prompt": ""}  # the toy teacher's uncond text
# A toy-world `split:` of the teacher jobs: the toy package's registered dataset and codec, looked
# up by name so that the core never imports oneforcing.toy.
TOY_WORLD, TOY_CODEC = "toy_world", "toy_codec"


# --- the flow-matching convention and samplers ------------------------------------------------
def build_sampler(cfg: dict, scheduler: dict | None, *, key: str = "sampler", file: str | None = None):
    """Build a sampler now (they are cheap) with the recipe's flow-matching convention (its
    `scheduler:`, schedulers/build.py); its own checks (ValueError) become a UserError."""
    try:
        return build_flow(scheduler, cfg, file=file, sampler_key=key).sampler
    except ValueError as exc:
        raise UserError(f"{key}: {exc}") from None


def rollout(sampler, model, noise: torch.Tensor, text: torch.Tensor, device: torch.device,
            rng: torch.Generator | None = None, on_block=None, *,
            negative_text: torch.Tensor | None = None, context: torch.Tensor | None = None):
    """Run any sampler (one call signature, samplers/common.py); returns (latents [B, F, C, h, w],
    perf_counter when the first block was ready). `rng`: the re-noising between steps;
    `on_block(a, b, x0)`, if given, is called with each block as soon as it is ready."""
    first = [float("nan")]

    def block_ready(a, b, x0) -> None:
        if first[0] != first[0]:
            first[0] = sync(device)
        if on_block is not None:
            on_block(a, b, x0)

    out = checked_rollout(sampler(model, noise, text, rng=rng, negative_text=negative_text,
                                  context=context, on_block=block_ready), sampler)
    return out.x0, first[0]


# --- figures (plot, curvature, the toy report) -------------------------------------------------
def save_png(fig, out: str | Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure as a PNG atomically (a temporary file, then a rename): a reader
    never sees half a figure. Returns the path."""
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=dpi, format="png")
    os.replace(tmp, out)
    return out


# --- models and their weights ------------------------------------------------------------------
def model_config(model: dict | None, *, key: str = "model") -> dict:
    """`model:` as extra CausalWan kwargs ({frames_per_block: 3, causal: false}) or a full config
    with its own `type`; validated now. The weights come from the checkpoint, never from here."""
    cfg = {"type": "causal_wan", **(model or {})}
    # a model that declares `scheduler` gets the recipe's (load_generator_model)
    validate(cfg, MODELS, path=key, provided=("pretrained", *declared(cfg, MODELS, scheduler=None)))
    return cfg


def _diffusers_dir(d: Path) -> Path | None:
    if (d / "config.json").is_file():
        return d
    if (d / "transformer" / "config.json").is_file():  # a whole Wan pipeline folder
        return d / "transformer"
    return None


def resolve_model_dir(checkpoint: str, weights: str = "auto") -> Path:
    """The diffusers transformer folder to load: `checkpoint` itself (or its transformer/), or a
    training export's ema/ or generator/ sub-folder, as `weights` says (oneforcing/weights.py:
    auto = the export's declared inference weights). A checkpoint saved before the EMA started
    has no ema/: then the generator is used, with a warning."""
    root = Path(checkpoint).expanduser()
    if not root.is_dir():
        raise UserError(f"generate: checkpoint directory not found: {root}")
    use_ema = resolve_weights(root, weights) == "ema"
    subs = ("ema", "generator") if use_ema else ("generator",)
    for sub in subs:
        found = _diffusers_dir(root / sub) if (root / sub).is_dir() else None
        if found is not None:
            if use_ema and sub == "generator":
                logging.getLogger("oneforcing").warning("generate: %s has no ema/ weights; using generator/", root)
            return found
    found = _diffusers_dir(root)
    if found is None:
        raise UserError(f"generate: {root} is neither a diffusers transformer folder (config.json) "
                        f"nor a checkpoint with {' or '.join(s + '/' for s in subs)}")
    return found


def load_generator_model(cfg: dict, weights_dir: Path, file: str | None, scheduler: FlowMatchScheduler):
    """The recipe's `model:` config loaded from the weights folder through the model's
    `from_pretrained` (the models contract; CausalWan builds on the meta device and fills the
    parameters from the file, instead of a random init that the weights then overwrite). A model
    that declares `scheduler` gets the recipe's, the one the job's sampler holds."""
    for key in ("pretrained", "load_weights"):
        if key in cfg:
            raise UserError(f"generate: set the weights with 'checkpoint', not 'model.{key}'", file=file)
    cfg = dict(cfg)
    name = cfg.pop("type", None)
    if not isinstance(name, str):
        return build(cfg, MODELS, path="model", file=file)  # build's own error for a missing type
    try:
        obj = MODELS.get(name)
    except UserError as err:
        raise err.at(file=file, key="model.type") from None
    handed = declared({"type": name}, MODELS, scheduler=scheduler)
    kwargs = check_kwargs(obj, cfg, what=f"models '{name}'", path="model", file=file,
                          provided=("pretrained", *handed))
    return obj.from_pretrained(str(weights_dir), **kwargs, **handed)


# --- prompt sources of the teacher jobs (ode_pairs, curvature) ----------------------------------
class PromptBatch(NamedTuple):
    """What a prompt source gives for a range of examples."""
    prompts: list[str]
    embed: torch.Tensor             # [B, L, D]
    mask: torch.Tensor              # [B, L] bool
    metadata: list[dict]
    real: torch.Tensor | None       # [B, F, C, H, W] clean real latents (shard sources only)


class ShardPrompts:
    """Prompts, embeddings and metadata of a latent_shards folder (latents are not needed).
    `key`: the job's recipe key for how many prompts it takes (named in errors)."""

    def __init__(self, path: str, num_examples: int | None, key: str = "num_examples"):
        self.ds = LatentShards(path, shuffle=False, rank=0, world_size=1, check_finite=False)
        self.num = self.ds.num_examples if num_examples is None else num_examples
        if self.num > self.ds.num_examples:
            raise UserError(f"{key}={self.num} but prompts_from '{path}' holds {self.ds.num_examples}", key=key)
        self.shape = tuple(self.ds.fields["latent"]["shape"])

    def batch(self, indices: range, encoder) -> PromptBatch:
        items = [self.ds.read(g) for g in indices]
        return PromptBatch([it["prompt"] for it in items], torch.stack([it["prompt_embed"].float() for it in items]),
                           torch.stack([it["prompt_mask"].bool() for it in items]), [it["metadata"] for it in items],
                           torch.stack([it["latent"].float() for it in items]))


class PromptFile:
    """Prompts of a one-prompt-a-line file (Self Forcing's pair script reads a caption file, SF
    `scripts/generate_ode_pairs.py` `--caption_path`), encoded by the job's text encoder; no real
    latents, so the noise shape is the recipe's `latent_shape` [F, C, H, W]."""

    def __init__(self, path: str, num_examples: int | None, latent_shape, key: str = "num_examples"):
        self.prompts = read_prompt_file(path, key="prompts_file")
        self.num = len(self.prompts) if num_examples is None else num_examples
        if self.num > len(self.prompts):
            raise UserError(f"{key}={self.num} but prompts_file '{path}' holds {len(self.prompts)}", key=key)
        self.shape = check_latent_shape(latent_shape, "latent_shape")

    def batch(self, indices: range, encoder) -> PromptBatch:
        prompts = [self.prompts[g] for g in indices]
        embed, mask = encode_text(encoder, prompts)
        return PromptBatch(prompts, embed, mask, [{} for _ in prompts], None)


class PromptWorld(Protocol):
    """What ToyPrompts needs of the registered toy world: the scenes (prompt + metadata) of a split."""

    def scenes(self, indices: range) -> list[dict]: ...


class ToyPrompts:
    """Prompts of a toy-world split, encoded by the job's text encoder (no real latents)."""

    def __init__(self, split: str, num_examples: int | None, seed: int, frames: int, size: int,
                 key: str = "num_examples"):
        if num_examples is None:
            raise UserError("set it for a toy-world split", key=key)
        self.world: PromptWorld = build({"type": TOY_WORLD, "split": split, "num_examples": num_examples,
                                         "seed": seed, "frames": frames, "size": size}, DATASETS)
        self.num = num_examples
        self.shape = tuple(build({"type": TOY_CODEC}, VAES).latent_shape(frames, size, size))

    def batch(self, indices: range, encoder) -> PromptBatch:
        scenes = self.world.scenes(indices)
        prompts = [s["prompt"] for s in scenes]
        embed, mask = encode_text(encoder, prompts)
        return PromptBatch(prompts, embed, mask, scenes, None)  # no real latents: prompts only


# --- what the teacher jobs (ode_pairs, curvature) check before they load the teacher ---------------
def check_teacher_paths(teacher: str, weights: str, prompts_from: str | None, recipe_file: str | None) -> Path:
    """The teacher's weights folder; fails before anything is written if the teacher or the prompts
    are missing (one line naming the recipe key, and the toy twin of the recipe)."""
    for key, path in (("teacher", teacher), ("prompts_from", prompts_from)):
        if path is not None and not Path(path).expanduser().exists():
            raise missing_path(path, key, recipe_file)
    try:
        return resolve_model_dir(teacher, weights)
    except UserError as err:  # a folder that holds no weights
        raise UserError(err.message.removeprefix("generate: "), key="teacher") from None


def check_teacher_shapes(model, shape: tuple, embed: torch.Tensor, negative: torch.Tensor, source: str) -> None:
    """The teacher reads the latents' channels and the prompts' embedding width; `source` names
    where the latents come from (prompts_from, or the toy codec)."""
    cfg = model.config  # the models contract (empty for a model without an architecture)
    if cfg.get("in_channels") not in (None, shape[1]):
        raise UserError(f"teacher has in_channels={cfg['in_channels']} but the latents have {shape[1]} channels "
                        f"({source})", key="teacher")
    if embed.shape[-1] != negative.shape[-1]:
        raise UserError(f"text_encoder gives dim {negative.shape[-1]}, the prompts' embeddings {embed.shape[-1]}: "
                        "set 'text_encoder' to the encoder that made prompts_from", key="text_encoder")
    if cfg.get("text_dim") not in (None, embed.shape[-1]):
        raise UserError(f"teacher has text_dim={cfg['text_dim']}, prompt embeddings {embed.shape[-1]}", key="teacher")
