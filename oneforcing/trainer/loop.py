"""The training loop, top to bottom.

    for step in steps:
        if generator_losses and step >= generator_start and (step - generator_start) % generator_every == 0:
            generator update on its own minibatch(es), critic frozen     (phase "generator")
        if critic_losses:
            critic update on its own minibatch(es)                       (phase "critic")
        log; checkpoint every N steps; stop on SIGTERM/SIGINT with a checkpoint

An update draws `deepspeed.gradient_accumulation` micro-batches of `micro_batch_size` (each its
own rollout and backward) and steps once: the LR schedule, the update counters and the EMA see
one update. A phase's loss is the weighted sum of its registered losses. A non-finite loss (of
any micro-batch, on any rank) skips that phase's update on every rank; DeepSpeed skips non-finite
gradients itself; `max_bad_steps` bad updates in a row stop the run, leaving the last good
checkpoint in place.

Every `log_every` steps the loggers get the LATEST figures of every phase, each phase's with
`PHASE/step` = the (1-based, as logged) step of the update they come from: with
`generator_every: 5` and `log_every: 5` the generator updates on steps 0, 5, 10, ... are never
the logged step, and would otherwise never reach metrics.jsonl.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import time
from typing import Any

import torch

from oneforcing.data.batch import Batch, as_batch
from oneforcing.errors import UserError
from oneforcing.registry.contracts import BATCH_STREAM, require
from oneforcing.runtime import RunContext
from oneforcing.trainer.checkpoint import CheckpointManager, ResumePoint
from oneforcing.trainer.config import TrainConfig
from oneforcing.trainer.ema import EMA
from oneforcing.trainer.engines import FrozenRole, TrainedRole
from oneforcing.trainer.step import StepContext

log = logging.getLogger("oneforcing")


class TooManyBadSteps(UserError):
    pass


class Trainer:
    def __init__(self, cfg: TrainConfig, ctx: RunContext, *, generator: TrainedRole, critic: TrainedRole | None,
                 real_score: FrozenRole | None, data, ode_data, sampler, scheduler, timesteps,
                 uncond_text: torch.Tensor | None, ema: EMA | None, checkpoints: CheckpointManager,
                 resume_from: ResumePoint | None, loggers):
        """`cfg` holds every setting; the rest are the objects `build_trainer` built from it
        (`resume_from`: the checkpoint `schedule.resume` names, already checked; None: fresh)."""
        self.cfg, self.ctx = cfg, ctx
        self.roles = {"generator": generator, "critic": critic}
        self.real_score = real_score
        self.losses = cfg.phase_losses()
        if cfg.critic_losses and critic is None:
            raise UserError("critic_losses are set but models.critic is not")
        self.data, self.sampler = data, sampler
        self.scheduler, self.timesteps, self.uncond_text = scheduler, timesteps, uncond_text
        self.ema, self.checkpoints, self.loggers = ema, checkpoints, loggers
        self.resume_from = resume_from
        sched = cfg.schedule
        self.steps, self.generator_every, self.generator_start = sched.steps, sched.generator_every, sched.generator_start
        self.checkpoint_every, self.max_bad_steps, self.log_every = (sched.checkpoint_every, sched.max_bad_steps,
                                                                     sched.log_every)
        self.recipe, self.run_dir = ctx.recipe, cfg.run_dir   # the resolved recipe, saved with checkpoints
        self.batch_size = cfg.deepspeed.micro_batch_size
        self.ode_data = ode_data
        for key, ds, ds_cfg in (("data", data, cfg.data), ("ode_data", ode_data, cfg.ode_data)):
            if ds is not None:  # what the trainer calls: batches(n), state_dict, load_state_dict
                require(ds, BATCH_STREAM, what=f"dataset '{ds_cfg.get('type')}'", key=key)
        self.dtype = cfg.deepspeed.dtype
        self.lora = cfg.lora  # adapters per role (export merges or writes them)
        self._ode_iter = None
        self.step = 0
        self.bad_in_a_row = 0
        self._stop_signal: int | None = None
        self._data_iter = None
        self._batch_size = 0
        self._latest: dict[str, dict[str, float]] = {}  # phase -> its last update's figures

    def _generator_turn(self) -> bool:
        """Whether this step updates the generator: every `generator_every` steps from `generator_start`."""
        since = self.step - self.generator_start
        return since >= 0 and since % self.generator_every == 0

    # --- the loop ------------------------------------------------------------------------
    def fit(self) -> int:
        self.checkpoints.clean_partial()
        if self.resume_from is not None:
            self._resume(self.resume_from)
        self.loggers.start(self.run_dir, self.recipe, self.steps, self.step)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while self.step < self.steps:
                t0 = time.perf_counter()
                for phase in ("generator", "critic"):
                    if self.losses[phase] and (phase == "critic" or self._generator_turn()):
                        self._latest[phase] = {**self._phase(phase), f"{phase}/step": self.step + 1}
                self.step += 1
                metrics = {k: v for figures in self._latest.values() for k, v in figures.items()}
                metrics["time/step_s"] = time.perf_counter() - t0
                metrics["time/samples_per_s"] = self._batch_size * self.ctx.world_size / metrics["time/step_s"]
                if self.step % self.log_every == 0 or self.step == self.steps:
                    self.loggers.log(self.step, metrics)
                stop = self._agreed_stop()
                if self.step % self.checkpoint_every == 0 or self.step == self.steps or stop:
                    self.save()
                if stop:
                    log.info("stopped by signal %s at step %d; checkpoint written", stop, self.step)
                    break
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.loggers.close()
        return self.step

    def _phase(self, phase: str) -> dict[str, float]:
        """One update of a role: `gradient_accumulation` micro-batches, each its own minibatch,
        rollout and backward, then one optimizer step (one LR-schedule and EMA update)."""
        role: TrainedRole = self.roles[phase]
        critic = self.roles["critic"]
        sums: dict[str, float] = {}
        bad_micro = 0
        freeze = critic.frozen() if (phase == "generator" and critic is not None) else contextlib.nullcontext()
        with freeze:
            for micro in range(role.accumulation):
                figures, ok = self._micro_batch(phase, micro, last=micro == role.accumulation - 1)
                bad_micro += not ok
                for k, v in figures.items():
                    sums[k] = sums.get(k, 0.0) + v / role.accumulation
        metrics = {f"{phase}/{k}": v for k, v in sums.items()}
        metrics[f"{phase}/lr"] = role.lr
        grad_norm = role.step(skip=bad_micro > 0)  # a bad micro-batch skips the whole update
        ok = math.isfinite(grad_norm)
        if not bad_micro:
            metrics[f"{phase}/grad_norm"] = grad_norm
        if ok:
            self.bad_in_a_row = 0
            if phase == "generator" and self.ema is not None:
                self.ema.update(self.step)
            if role.updates == 1:  # optimizer state exists from the first update on
                log.info("%s: model+optimizer state on this rank: %.3f MiB", phase, role.state_bytes() / 2**20)
        else:
            self.bad_in_a_row += 1
            log.warning("step %d: non-finite %s loss or gradient; update skipped on every rank (%d in a row)",
                        self.step, phase, self.bad_in_a_row)
            if self.bad_in_a_row >= self.max_bad_steps:
                raise TooManyBadSteps(f"{self.bad_in_a_row} bad updates in a row (max_bad_steps="
                                      f"{self.max_bad_steps}); stopped at step {self.step}, the last good "
                                      f"checkpoint is kept in {self.checkpoints.root}")
        return metrics

    def _micro_batch(self, phase: str, micro: int, last: bool) -> tuple[dict[str, float], bool]:
        """Loss and backward of one micro-batch; (its figures, whether its loss was finite on every
        rank). A non-finite loss gets no backward on any rank."""
        batch = self._next_batch()
        self._batch_size = batch.size * self.roles[phase].accumulation
        # Micro-batch 0 keeps the seed of an un-accumulated update; the others draw their own.
        rng = self.ctx.rng("train", self.step, phase, *((micro,) if micro else ()))
        critic, real_score = self.roles["critic"], self.real_score
        s = StepContext(step=self.step, phase=phase, batch=batch, generator=self.roles["generator"].module,
                        critic=critic.module if critic else None,
                        real_score=real_score.module if real_score else None,
                        scheduler=self.scheduler, timesteps=self.timesteps, sampler=self.sampler,
                        uncond_text=self.uncond_text, rng=rng, ctx=self.ctx,
                        dtype=self.dtype, ema_weights=self._ema_weights())
        total, figures = self._weighted_sum(phase, s)
        ok = self._all_finite(total)
        if ok:
            self.roles[phase].backward(total, last=last)
        return figures, ok

    def _ema_weights(self):
        """What `StepContext.ema_generator` enters: the generator role on the EMA's shards."""
        if self.ema is None:
            return None
        role, shadow = self.roles["generator"], self.ema.shadow
        return lambda: role.weights_swapped(shadow)

    def _weighted_sum(self, phase: str, s: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        total = None
        figures: dict[str, float] = {}
        for item in self.losses[phase]:
            value, extra = _loss_result(item.name, phase, item.fn(s))
            figures[item.name] = float(value.detach())
            figures.update({f"{item.name}/{k}": float(v) for k, v in (extra or {}).items()})
            term = item.weight * value.float()
            total = term if total is None else total + term
        figures["loss"] = float(total.detach())
        return total, figures

    # --- agreement across ranks ------------------------------------------------------------
    def _all_finite(self, value: torch.Tensor) -> bool:
        bad = torch.tensor([0.0 if torch.isfinite(value.detach()).all() else 1.0])
        if self.ctx.distributed:
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        return bad.item() == 0.0

    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self._stop_signal = signum
        log.warning("received signal %d: will checkpoint and stop after this step", signum)

    def _agreed_stop(self) -> int:
        flag = torch.tensor([float(self._stop_signal or 0)])
        if self.ctx.distributed:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())

    # --- data --------------------------------------------------------------------------------
    def _next_batch(self) -> Batch:
        if self._data_iter is None:
            self._data_iter = _batches(self.data, self.batch_size)
        batch = as_batch(self._draw(self._data_iter), "data").at("data").cast(self.dtype)
        if self.ode_data is not None:  # ODE pairs alongside real data (the fKL surrogate ablation)
            if self._ode_iter is None:
                self._ode_iter = _batches(self.ode_data, self.batch_size)
            batch = batch.with_ode(as_batch(self._draw(self._ode_iter), "ode_data").at("ode_data").cast(self.dtype))
        return batch

    @staticmethod
    def _draw(iterator) -> dict:
        try:
            return next(iterator)
        except StopIteration:
            raise UserError("the training data ran out: use an infinite loader (data.infinite: true)") from None

    # --- checkpoints -------------------------------------------------------------------------
    def _rank_state(self) -> dict[str, Any]:
        states: dict[str, Any] = {"generator": self.roles["generator"].state_dict()}
        if self.roles["critic"] is not None:
            states["critic"] = self.roles["critic"].state_dict()
        if self.ema is not None:
            states["ema"] = self.ema.state_dict()
        states["trainer"] = {
            "step": self.step, "bad_in_a_row": self.bad_in_a_row,
            # each phase's latest figures: a resumed run logs, at a step where one phase does not
            # update, the same figures as an uninterrupted run (metrics continuity)
            "latest": {phase: dict(figures) for phase, figures in self._latest.items()},
            "torch_rng": torch.get_rng_state(), "python_rng": _python_rng_state(),
            "data": self.data.state_dict(),
            "ode_data": self.ode_data.state_dict() if self.ode_data is not None else {},
        }
        return states

    def save(self) -> None:
        path = self.checkpoints.save(self.step, self._rank_state(), {"recipe": self.recipe})
        log.info("checkpoint: %s", path)

    def _resume(self, point: ResumePoint) -> None:
        path = point.path
        states, _ = self.checkpoints.load(path, state_names(self.cfg), point.meta)
        try:
            self._load_states(states)
        except UserError:
            raise
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AssertionError) as exc:
            text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise UserError(f"resume: {path} does not fit this run's models or optimizers ({text})") from None
        log.info("resumed from %s at step %d", path, self.step)

    def _load_states(self, states: dict) -> None:
        self.roles["generator"].load_state_dict(states["generator"])
        if self.roles["critic"] is not None:
            self.roles["critic"].load_state_dict(states["critic"])
        if self.ema is not None:
            self.ema.load_state_dict(states["ema"])
        t = states["trainer"]
        self.step, self.bad_in_a_row = int(t["step"]), int(t["bad_in_a_row"])
        self._latest = {phase: {k: float(v) for k, v in figures.items()} for phase, figures in t.get("latest", {}).items()}
        torch.set_rng_state(t["torch_rng"])
        random.setstate(_python_rng_from(t["python_rng"]))
        self.data.load_state_dict(t["data"])
        if self.ode_data is not None:
            self.ode_data.load_state_dict(t["ode_data"])
        self._data_iter = self._ode_iter = None


def state_names(cfg: TrainConfig) -> list[str]:
    """What a checkpoint of this run holds per rank: the keys of `Trainer._rank_state`."""
    return ["generator", *(["critic"] if "critic" in cfg.models else []),
            *(["ema"] if cfg.ema is not None else []), "trainer"]


def _loss_result(name: str, phase: str, result) -> tuple[torch.Tensor, dict]:
    """A loss returns (scalar tensor, figures dict): anything else is one line naming it (a plugin's
    loss returning a float would otherwise fail deep inside backward)."""
    ok = (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.Tensor)
          and result[0].dim() == 0 and (result[1] is None or isinstance(result[1], dict)))
    if not ok:
        got = type(result).__name__ if not isinstance(result, tuple) else \
            f"({', '.join(type(r).__name__ for r in result)})"
        raise UserError(f"{phase}_losses: loss '{name}' returned {got}; a loss returns (a scalar tensor, "
                        f"a dict of figures) (docs/plugins.md)")
    return result


def _batches(data, batch_size: int):
    """The dataset's batches of the micro-batch size (a batch stream: registry/contracts.py)."""
    return iter(data.batches(batch_size))


def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _python_rng_from(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
