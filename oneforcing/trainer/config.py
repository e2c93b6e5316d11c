"""The train recipe as typed config, built in one place (`TrainConfig.from_recipe`).

The recipe's top-level keys are declared once, by the signature of `_from_keys` below; every
section is a dataclass (`optim.<role>` -> OptimizerConfig, `deepspeed` -> DeepSpeedOptions,
`lora.<role>` -> LoraOptions, `ema` -> EMAConfig, `export` -> ExportConfig, the step counts ->
Schedule) and every component config is checked by the registry's `validate` (the walk `build`
takes, constructing nothing). A mistake anywhere is one UserError naming the dotted key, which
the runner prints with the recipe file (exit 2), before any engine starts or any model loads.

Pure typed data: nothing here reads the environment or knows DeepSpeed's schema (trainer/engines.py
turns `deepspeed:` into DeepSpeed's config for the world size it is given). Imports nothing from
`oneforcing.jobs` (jobs/train.py is a thin adapter over this module).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from oneforcing.errors import UserError
from oneforcing.weights import INFERENCE_WEIGHTS
from oneforcing.registry import (CRITICS, DATASETS, LOGGERS, LOSSES, MODELS, SAMPLERS, SCHEDULERS,
                                 TEXT_ENCODERS, TIMESTEP_SAMPLERS, Registry, build, check_kwargs, declared,
                                 validate)
from oneforcing.schedulers.build import DEFAULT_SCHEDULER

ROLES: dict[str, Registry] = {"generator": MODELS, "critic": CRITICS, "real_score": MODELS}
TRAINED_ROLES = ("generator", "critic")
LOSS_META = ("weight", "name")  # per-loss keys the trainer reads; the rest go to the loss


@dataclass
class OptimizerConfig:
    """AdamW and its schedule for one trained role (recipe: `optim.generator`, `optim.critic`)."""

    lr: float = 1e-5
    betas: tuple[float, float] = (0.0, 0.999)
    weight_decay: float = 0.01
    eps: float = 1e-8
    warmup_steps: int = 0
    grad_clip: float = 10.0

    def lr_at(self, update: int) -> float:
        """Linear warm-up over `warmup_steps` optimizer updates, then constant."""
        if self.warmup_steps > 0 and update < self.warmup_steps:
            return self.lr * (update + 1) / self.warmup_steps
        return self.lr


@dataclass
class DeepSpeedOptions:
    """Recipe key `deepspeed:`, as the recipe gives it. trainer/engines.py resolves it for the run's
    world size (`DeepSpeedPlan`: the ZeRO stage of "auto") and writes DeepSpeed's config from it."""

    zero_stage: int | str = 3          # 3, 0 (no sharding), or "auto": 3 on >= 2 ranks, else 0
    precision: str = "fp32"            # fp32 | bf16
    offload_optimizer: bool = False
    offload_params: bool = False
    micro_batch_size: int = 1
    gradient_accumulation: int = 1
    gradient_checkpointing: bool = False
    frozen_engine: bool = True         # real_score as a ZeRO-3 inference engine (else a plain module)
    zero_init: bool = True             # build ZeRO-3 roles already partitioned (deepspeed.zero.Init)
    extra: dict = field(default_factory=dict)  # raw DeepSpeed keys merged last

    def __post_init__(self):
        if self.zero_stage not in (0, 3, "auto"):
            raise UserError(f"{self.zero_stage!r} is not supported (use 3, 0 for no sharding, or auto)",
                            key="deepspeed.zero_stage")
        if self.precision not in ("fp32", "bf16"):
            raise UserError(f"'{self.precision}' is not one of fp32, bf16", key="deepspeed.precision")
        for key in ("micro_batch_size", "gradient_accumulation"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"must be an integer >= 1, got {value!r}", key=f"deepspeed.{key}")

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.precision == "bf16" else torch.float32


@dataclass
class LoraOptions:
    """Recipe key `lora.generator` / `lora.critic`."""

    rank: int = 16
    alpha: float = 16.0
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    dropout: float = 0.0


@dataclass
class EMAConfig:
    """Recipe key `ema:` (the generator's exponential moving average)."""

    decay: float = 0.99
    start_step: int = 0

    def __post_init__(self):
        if not 0.0 <= self.decay < 1.0:
            raise UserError(f"must be in [0, 1), got {self.decay}", key="ema.decay")


@dataclass
class ExportConfig:
    """Recipe key `export:` (diffusers folders of the generator at the end of the run)."""

    dir: str | None = None           # default: <run_dir>/export
    merge_lora: bool = True
    # The weights the method's official inference samples: "raw" (the generator: One-Forcing) or
    # "ema" (Self Forcing, Causal Forcing: their inference passes --use_ema). Written to the
    # export's export.json; `generate`, `toy_eval` and the report read it (weights: auto).
    inference_weights: str = "raw"

    def __post_init__(self):
        if self.inference_weights not in INFERENCE_WEIGHTS:
            raise UserError(f"must be one of {', '.join(INFERENCE_WEIGHTS)}, got {self.inference_weights!r}",
                            key="export.inference_weights")


@dataclass
class Schedule:
    """The top-level step counts: how long, how often each phase, log and checkpoint."""

    steps: int
    generator_every: int = 5
    # Critic-only warm-up: the generator's first update is at step `generator_start` (then every
    # `generator_every` steps), so the fake score first learns the initial generator's outputs.
    # 0 (the official methods): the generator updates from step 0.
    generator_start: int = 0
    checkpoint_every: int = 50
    keep_last: int = 2
    log_every: int = 1
    max_bad_steps: int = 3
    resume: str = "auto"             # auto | never | a checkpoint path

    def __post_init__(self):
        for key, least in (("steps", 0), ("checkpoint_every", 1), ("log_every", 1), ("generator_every", 1),
                           ("generator_start", 0), ("max_bad_steps", 1), ("keep_last", 0)):
            if getattr(self, key) < least:
                raise UserError(f"must be >= {least}, got {getattr(self, key)}", key=key)


@dataclass
class WeightedLoss:
    """One entry of `generator_losses` / `critic_losses`: the built loss and its weight."""

    name: str          # label in logs, e.g. "dmd"
    fn: Any            # the registered loss object
    weight: float = 1.0


@dataclass
class TrainConfig:
    run_dir: str
    models: dict[str, dict]              # role -> component config (built by trainer/placement.py)
    data: dict
    schedule: Schedule
    generator_losses: list[WeightedLoss] = field(default_factory=list)
    critic_losses: list[WeightedLoss] = field(default_factory=list)
    ode_data: dict | None = None         # a second stream (ODE pairs) merged into each batch as ode_*
    sampler: dict | None = None
    scheduler: dict = field(default_factory=lambda: dict(DEFAULT_SCHEDULER))  # the flow-matching convention
    timesteps: dict = field(default_factory=lambda: {"type": "shifted_uniform"})
    text_encoder: dict | None = None
    negative_prompt: str | None = None
    optim: dict[str, OptimizerConfig] = field(default_factory=lambda: {r: OptimizerConfig() for r in TRAINED_ROLES})
    deepspeed: DeepSpeedOptions = field(default_factory=DeepSpeedOptions)
    lora: dict[str, LoraOptions] = field(default_factory=dict)
    ema: EMAConfig | None = None
    loggers: list = field(default_factory=lambda: ["console", "jsonl"])
    export: ExportConfig | None = None

    @classmethod
    def from_recipe(cls, recipe: Mapping, *, file: str | None = None) -> "TrainConfig":
        """The one place a train recipe's mapping becomes typed config (keys: `_from_keys`)."""
        keys = check_kwargs(_from_keys, dict(recipe), what="job 'train'", file=file)
        try:
            return _from_keys(**keys)
        except UserError as err:
            raise err.at(file=file) from None

    @property
    def steps(self) -> int:
        return self.schedule.steps

    def phase_losses(self) -> dict[str, list[WeightedLoss]]:
        return {"generator": self.generator_losses, "critic": self.critic_losses}


def _from_keys(run_dir: str, models: dict, data: dict, steps: int,
               generator_losses: list[dict] | None = None, critic_losses: list[dict] | None = None,
               generator_every: int = Schedule.generator_every, generator_start: int = Schedule.generator_start,
               sampler: dict | None = None, scheduler: dict | None = None, timesteps: dict | None = None,
               optim: dict | None = None, deepspeed: dict | None = None, ema: dict | None = None,
               checkpoint_every: int = Schedule.checkpoint_every, keep_last: int = Schedule.keep_last,
               resume: str = Schedule.resume, text_encoder: dict | None = None, negative_prompt: str | None = None,
               loggers: list[str | dict] | None = None, export: dict | None = None,
               max_bad_steps: int = Schedule.max_bad_steps, log_every: int = Schedule.log_every,
               lora: dict | None = None, ode_data: dict | None = None) -> TrainConfig:
    """The train recipe's top-level keys (this signature declares them) -> TrainConfig. The step
    counts' defaults are Schedule's (written there once)."""
    unknown = set(models) - set(ROLES)
    if unknown:
        raise UserError(f"unknown role '{sorted(unknown)[0]}' (roles: {', '.join(ROLES)})", key="models")
    if "generator" not in models:
        raise UserError("needs models.generator", key="models")
    for role, cfg in models.items():
        # A model that needs the noise level declares `scheduler`: the trainer hands it the recipe's.
        validate(cfg, ROLES[role], path=f"models.{role}", provided=tuple(declared(cfg, ROLES[role], scheduler=None)))
    validate(data, DATASETS, path="data")
    if ode_data is not None:
        validate(ode_data, DATASETS, path="ode_data")
    if not generator_losses and not critic_losses:
        raise UserError("needs generator_losses and/or critic_losses", key="generator_losses")
    if critic_losses and "critic" not in models:
        raise UserError("critic_losses need models.critic", key="critic_losses")
    if sampler is not None:  # its scheduler is the recipe's, handed in when it is built
        validate(sampler, SAMPLERS, path="sampler", provided=("scheduler",))
    if text_encoder is not None:
        validate(text_encoder, TEXT_ENCODERS, path="text_encoder")
    defaults = TrainConfig.__dataclass_fields__
    scheduler = scheduler or defaults["scheduler"].default_factory()
    validate(scheduler, SCHEDULERS, path="scheduler")
    timesteps = timesteps or defaults["timesteps"].default_factory()
    validate(timesteps, TIMESTEP_SAMPLERS, path="timesteps", provided=("scheduler",))
    loggers = loggers if loggers is not None else defaults["loggers"].default_factory()
    for i, cfg in enumerate(loggers):  # names or {type: ...}; built by the trainer
        validate({"type": cfg} if isinstance(cfg, str) else cfg, LOGGERS, path=f"loggers[{i}]")
    optim = optim or {}
    extra_roles = set(optim) - set(TRAINED_ROLES)
    if extra_roles:
        raise UserError(f"optim has no role '{sorted(extra_roles)[0]}' (generator, critic)", key="optim")
    lora = lora or {}
    if set(lora) - set(TRAINED_ROLES):
        raise UserError("lora roles are generator and critic", key="lora")
    schedule = Schedule(steps=steps, generator_every=generator_every, generator_start=generator_start,
                        checkpoint_every=checkpoint_every,
                        keep_last=keep_last, log_every=log_every, max_bad_steps=max_bad_steps, resume=resume)
    config = TrainConfig(
        run_dir=run_dir, models=models, data=data, ode_data=ode_data, schedule=schedule,
        generator_losses=_losses(generator_losses or [], "generator_losses"),
        critic_losses=_losses(critic_losses or [], "critic_losses"),
        sampler=sampler, scheduler=scheduler, timesteps=timesteps, text_encoder=text_encoder,
        negative_prompt=negative_prompt,
        optim={r: section(OptimizerConfig, optim.get(r, {}), f"optim.{r}") for r in TRAINED_ROLES},
        deepspeed=section(DeepSpeedOptions, deepspeed or {}, "deepspeed"),
        lora={r: section(LoraOptions, cfg, f"lora.{r}") for r, cfg in lora.items()},
        ema=section(EMAConfig, ema, "ema") if ema is not None else None,
        loggers=loggers,
        export=section(ExportConfig, export, "export") if export is not None else None,
    )
    if config.export is not None and config.export.inference_weights == "ema" and config.ema is None:
        raise UserError("is 'ema' but the recipe has no ema: section (nothing to export)",
                        key="export.inference_weights")
    return config


def _losses(entries: list, key: str) -> list[WeightedLoss]:
    """Losses are small objects: they are built here, so that a mistake anywhere inside one (even
    in a raw sub-config such as a GAN loss's `real:`) stops the run before any model loads."""
    out = []
    for i, cfg in enumerate(entries):
        if not isinstance(cfg, dict):
            raise UserError(f"expected a loss config {{type: ...}}, got {cfg!r}", key=f"{key}[{i}]")
        body = {k: v for k, v in cfg.items() if k not in LOSS_META}
        weight, name = float(cfg.get("weight", 1.0)), str(cfg.get("name", cfg.get("type")))
        # A loss whose constructor names `weight` scales only part of itself by it (GAN D with
        # unscaled R1/R2, the official `apt` form): it is handed the weight, the trainer applies 1.
        own = declared(body, LOSSES, weight=weight)
        out.append(WeightedLoss(name, build(body, LOSSES, path=f"{key}[{i}]", **own), 1.0 if own else weight))
    return out


def section(cls, cfg: Any, path: str):
    """A recipe section -> dataclass `cls`, strictly (unknown keys, types), errors at `path.key`."""
    if not isinstance(cfg, dict):
        raise UserError(f"expected a mapping, got {cfg!r}", key=path)
    return cls(**check_kwargs(cls, dict(cfg), what=path, path=path))

