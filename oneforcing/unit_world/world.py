"""Train a one-step generator onto the mixture with the registered losses, in a plain-torch loop.

The loop is the trainer's (trainer/loop.py) without DeepSpeed: per step, a generator update every
`generator_every` steps with the critic frozen, then a critic update; each phase builds the same
`StepContext` the trainer builds (fresh batch, per-step / per-phase seeded rng, the recipe's
scheduler, timesteps and `self_forcing` sampler) and sums the phase's losses with their weights.
The losses are built from recipe-style configs by the trainer's own builder, so `weight`, the GAN
discriminator's own weight and every loss default are the ones a run gets.

Everything the library expects is here in its standard form: latents [B, 1, 2, 1, 1] (points),
text [B, 1, 1] zeros (the models ignore it), the real score a frozen model (`ExactScore`),
timesteps shifted_uniform (shift 5, clamp [20, 980], integer) as recipes/_wan.yaml, AdamW with
betas (0, 0.999), weight decay 0.01 and grad clip 10 as the One-Forcing recipes.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace

import torch

import oneforcing.losses  # noqa: F401 - registers the losses and real sources
from oneforcing.data.batch import Batch
from oneforcing.runtime import RunContext
from oneforcing.samplers.common import Rollout
from oneforcing.samplers.self_forcing import SelfForcingRollout
from oneforcing.samplers.teacher_ode import TeacherODE
from oneforcing.schedulers.flow_match import FlowMatchScheduler
from oneforcing.schedulers.timesteps import ShiftedUniformTimesteps
from oneforcing.trainer.config import _losses
from oneforcing.trainer.step import StepContext
from oneforcing.unit_world.metrics import Score, score
from oneforcing.unit_world.mog import EmpiricalScore, ExactScore, MixtureOfGaussians
from oneforcing.unit_world.nets import UnitCritic, UnitGenerator
from oneforcing.unit_world.objectives import FLOW_DENOISE, objectives
from oneforcing.unit_world.points import as_latents, as_points

CRITIC_INITS = ("random", "target", "far")
GENERATOR_INITS = ("random", "half")


def adamw(module: torch.nn.Module, lr: float, beta1: float = 0.0) -> torch.optim.AdamW:
    """The One-Forcing recipes' optimizer: AdamW, betas (0, 0.999), weight decay 0.01."""
    return torch.optim.AdamW(module.parameters(), lr=lr, betas=(beta1, 0.999), weight_decay=0.01)


@dataclass(frozen=True)
class UnitConfig:
    objective: str = "dmd"
    steps: int = 2000                 # trainer steps: generator_every critic updates per generator update
    generator_every: int = 5          # as the One-Forcing recipes
    batch: int = 1024                 # the DMD gradient is noisy per sample (one t, one eps): 256 converges slower
    lr_generator: float = 1e-3
    lr_critic: float = 1e-3
    beta1: float = 0.0                # AdamW's first beta (the recipes: 0)
    hidden: int = 128
    depth: int = 3
    fourier: int = 64                 # random Fourier features of the generator's input noise: a plain
    fourier_scale: float = 3.0        # MLP needs ~4x the updates to bend the Gaussian into 8 tight modes
    critic_fourier: bool = False      # the critic gets them too (measured: no faster)
    shift: float = 5.0
    gan_weight: float = 0.03          # One-Forcing framewise
    fkl_weight: float = 1.0
    critic_init: str = "random"       # random | target (pretrained on the target, as a teacher init) | far
    generator_init: str = "random"    # random | half: pre-trained onto the first half of the modes only
    generator_pretrain: int = 600     # fkl_surrogate updates for the half init
    critic_pretrain: int = 500        # flow_denoise updates for the target / far inits
    far_offset: float = 4.0           # the "far" init's distribution: the target moved by (d, d)
    bank: int = 2048                  # generator samples behind the exact fake score (dmd_exact_fake)
    ode_steps: int = 48               # the exact teacher's Euler ODE for the fKL pairs
    ode_pairs: int = 8192
    modes: int = 8
    radius: float = 2.0
    std: float = 0.1
    eval_samples: int = 4096
    eval_every: int = 0               # trainer steps between scores in the history (0: at the end only)


@dataclass
class RunResult:
    config: UnitConfig
    seed: int
    final: Score
    history: list[tuple[int, Score]] = field(default_factory=list)   # (generator updates, score)
    samples: torch.Tensor | None = None
    seconds: float = 0.0


class PointsSampler:
    """A sampler-protocol stand-in that returns given points as the "rollout" (critic pre-training)."""

    needs_context = False
    steps = [1000.0]

    def __init__(self, draw):
        self.draw = draw

    def __call__(self, model, noise, text, **_) -> Rollout:
        return Rollout(x0=as_latents(self.draw(noise.shape[0])))


class UnitWorld:
    """One run: build, then `train()`; `sample(n)` draws the generator's points."""

    def __init__(self, cfg: UnitConfig, seed: int = 0):
        if cfg.critic_init not in CRITIC_INITS:
            raise ValueError(f"critic_init must be one of {', '.join(CRITIC_INITS)}, got {cfg.critic_init!r}")
        if cfg.generator_init not in GENERATOR_INITS:
            raise ValueError(f"generator_init must be one of {', '.join(GENERATOR_INITS)}, got {cfg.generator_init!r}")
        table = objectives(cfg.gan_weight, cfg.fkl_weight)
        if cfg.objective not in table:
            raise ValueError(f"unknown objective {cfg.objective!r} (known: {', '.join(table)})")
        self.cfg, self.seed, self.objective = cfg, seed, table[cfg.objective]
        torch.manual_seed(seed)
        self.ctx = RunContext(seed=seed)
        self.target = MixtureOfGaussians.ring(cfg.modes, cfg.radius, cfg.std)
        self.scheduler = FlowMatchScheduler(shift=cfg.shift)
        self.timesteps = ShiftedUniformTimesteps(20.0, 980.0, integer=True, scheduler=self.scheduler)
        self.sampler = SelfForcingRollout(steps=[1000.0], scheduler=self.scheduler)
        self.real_score = ExactScore(self.target)
        self.generator = UnitGenerator(self.target.dim, cfg.hidden, cfg.depth, cfg.fourier, cfg.fourier_scale)
        self.step = 0
        self.critic = self._build_critic()
        self.losses = {"generator": _losses(self.objective.generator_losses, "generator_losses"),
                       "critic": _losses(self.objective.critic_losses, "critic_losses")}
        self.optim = {"generator": adamw(self.generator, cfg.lr_generator, cfg.beta1)}
        if isinstance(self.critic, UnitCritic):
            self.optim["critic"] = adamw(self.critic, cfg.lr_critic, cfg.beta1)
        self.ode = self._ode_pairs(self.real_score) if self.objective.needs_ode_pairs else None
        if cfg.generator_init == "half":
            self._pretrain_generator()
        if isinstance(self.critic, UnitCritic) and cfg.critic_init != "random":
            self._pretrain_critic()

    # --- building ---------------------------------------------------------------------------
    def _build_critic(self):
        kind = self.objective.critic
        if kind == "learned":
            cfg = self.cfg
            return UnitCritic(self.target.dim, cfg.hidden, cfg.depth, self.objective.needs_head,
                              cfg.fourier if cfg.critic_fourier else 0, cfg.fourier_scale)
        if kind == "empirical":
            return EmpiricalScore(self.sample(self.cfg.bank))
        return None

    def _ode_pairs(self, teacher: ExactScore) -> dict[str, torch.Tensor]:
        """The exact teacher's ODE from fresh noise: start state (t = 1000) and endpoint, as ode_pairs stores them."""
        g = self.ctx.rng("ode_pairs")
        noise = as_latents(torch.randn(self.cfg.ode_pairs, self.target.dim, generator=g))
        text = torch.zeros(noise.shape[0], 1, 1)
        out = TeacherODE(num_steps=self.cfg.ode_steps, cfg_scale=1.0, keep_indices=[0],
                         scheduler=self.scheduler)(teacher, noise, text)
        return {"states": out.states, "t": out.timesteps, "x0": out.x0}

    def _pretrain_generator(self) -> None:
        """A generator that has dropped half the modes: `generator_pretrain` fkl_surrogate updates
        onto the ODE of a mixture of the first K/2 modes (a half ring), then a fresh optimizer."""
        half = MixtureOfGaussians(self.target.means[: self.target.num_modes // 2], self.target.std)
        saved = (self.ode, self.losses["generator"])
        self.ode = self._ode_pairs(ExactScore(half))
        self.losses["generator"] = _losses([{"type": "fkl_surrogate", "index": 0}], "generator_init")
        for i in range(self.cfg.generator_pretrain):
            self._phase("generator", step=-1 - i)
        self.ode, self.losses["generator"] = saved
        self.optim["generator"] = adamw(self.generator, self.cfg.lr_generator, self.cfg.beta1)

    def _pretrain_critic(self) -> None:
        """The critic's init: `critic_pretrain` flow_denoise updates on the target (a teacher-like
        init, as One-Forcing's critic starts from the base model) or on the target moved far away."""
        offset = 0.0 if self.cfg.critic_init == "target" else self.cfg.far_offset
        g = self.ctx.rng("critic_init")
        draw = lambda n: self.target.sample(n, g) + offset  # noqa: E731
        saved = (self.sampler, self.losses["critic"])
        self.sampler = PointsSampler(draw)
        self.losses["critic"] = _losses([FLOW_DENOISE], "critic_init")
        for i in range(self.cfg.critic_pretrain):
            self._phase("critic", step=-1 - i)
        self.sampler, self.losses["critic"] = saved
        self.optim["critic"] = adamw(self.critic, self.cfg.lr_critic, self.cfg.beta1)  # a fresh optimizer, as a run starts

    # --- the loop ---------------------------------------------------------------------------
    def _batch(self, step: int, phase: str) -> Batch:
        g = self.ctx.rng("data", step, phase)
        B = self.cfg.batch
        fields = {"latents": as_latents(self.target.sample(B, g))}
        if self.ode is not None:
            idx = torch.randint(0, self.ode["x0"].shape[0], (B,), generator=g)
            fields.update(ode_states=self.ode["states"][idx], ode_t=self.ode["t"], ode_x0=self.ode["x0"][idx])
        return Batch(text=torch.zeros(B, 1, 1), dataset="unit_world", **fields)

    def _phase(self, phase: str, step: int) -> dict[str, float]:
        s = StepContext(step=step, phase=phase, batch=self._batch(step, phase), generator=self.generator,
                        critic=self.critic, real_score=self.real_score, scheduler=self.scheduler,
                        timesteps=self.timesteps, sampler=self.sampler, uncond_text=None,
                        rng=self.ctx.rng("train", step, phase), ctx=self.ctx)
        frozen = self._frozen(self.critic) if phase == "generator" else contextlib.nullcontext()
        with frozen:
            total, figures = None, {}
            for item in self.losses[phase]:
                value, extra = item.fn(s)
                figures[item.name] = float(value.detach())
                figures.update({f"{item.name}/{k}": float(v) for k, v in (extra or {}).items()})
                total = item.weight * value.float() if total is None else total + item.weight * value.float()
            opt = self.optim[phase]
            opt.zero_grad(set_to_none=True)
            total.backward()
            params = [p for group in opt.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
        figures["loss"] = float(total.detach())
        return figures

    @staticmethod
    @contextlib.contextmanager
    def _frozen(module):
        params = [p for p in module.parameters() if p.requires_grad] if isinstance(module, torch.nn.Module) else []
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in params:
                p.requires_grad_(True)

    def train_step(self) -> dict[str, dict[str, float]]:
        out = {}
        if self.step % self.cfg.generator_every == 0:
            if isinstance(self.critic, EmpiricalScore):
                self.critic.refresh(self.sample(self.cfg.bank))
            out["generator"] = self._phase("generator", self.step)
        if self.losses["critic"]:
            out["critic"] = self._phase("critic", self.step)
        self.step += 1
        return out

    @property
    def generator_updates(self) -> int:
        return -(-self.step // self.cfg.generator_every)

    @torch.no_grad()
    def sample(self, n: int, seed: int | None = None) -> torch.Tensor:
        """n generator points [n, D] through the training sampler (one step from t = 1000)."""
        g = self.ctx.rng("sample", self.step if seed is None else seed)
        noise = as_latents(torch.randn(n, self.target.dim, generator=g))
        return as_points(self.sampler(self.generator, noise, torch.zeros(n, 1, 1)).x0)

    def score(self) -> Score:
        return score(self.sample(self.cfg.eval_samples, seed=-1), self.target, self.seed)

    def train(self) -> RunResult:
        t0 = time.perf_counter()
        history = [(0, self.score())] if self.cfg.eval_every else []
        while self.step < self.cfg.steps:
            self.train_step()
            if self.cfg.eval_every and (self.step % self.cfg.eval_every == 0 or self.step == self.cfg.steps):
                history.append((self.generator_updates, self.score()))
        final = history[-1][1] if history else self.score()
        return RunResult(self.cfg, self.seed, final, history, self.sample(self.cfg.eval_samples, seed=-1),
                         time.perf_counter() - t0)


def run(seed: int = 0, **overrides) -> RunResult:
    """Train one configuration (UnitConfig's fields as keywords) and score it."""
    return UnitWorld(replace(UnitConfig(), **overrides), seed).train()
