"""Roles -> DeepSpeed engines. The only module in the project that talks to DeepSpeed, and the one
place that knows its schema: `DeepSpeedPlan` resolves the recipe's `deepspeed:` options for the
run's world size (the ZeRO stage of `auto`) and writes DeepSpeed's config dict.

A trained role (generator, critic) becomes a DeepSpeed engine with its own AdamW; a frozen role
(real_score) becomes a ZeRO-3 inference engine or stays a plain module. Models are always
*called* as `role.module(...)`, never `engine(...)`: the engine's own forward registers output
hooks that would make a backward through the frozen critic (the GAN generator loss) look like a
second engine's backward. ZeRO-3's parameter gathering lives on the module's hooks and works
either way (tests/test_trainer.py and tests/test_gradient_accumulation.py train through
`role.module` on ZeRO-3; no test compares the engine with plain torch AdamW).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from dataclasses import dataclass

import torch

from oneforcing.errors import UserError
from oneforcing.trainer.config import DeepSpeedOptions, OptimizerConfig

log = logging.getLogger("oneforcing")


def import_deepspeed():
    """Import DeepSpeed, keeping it from JIT-building its shared-memory op on CPU (~30-90 s):
    the gloo process group we create ourselves does the communication instead."""
    import warnings

    import deepspeed
    import deepspeed.comm.torch  # noqa: F401 - the module whose builder we replace

    # DeepSpeed 0.19 calls collectives that torch 2.13 deprecates, once per call: pure noise.
    warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+` is deprecated", category=FutureWarning)

    if not torch.cuda.is_available():
        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    if not torch.distributed.is_initialized():
        # DeepSpeed needs a process group even alone: a one-rank group on a free local port.
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        for var, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
            os.environ.setdefault(var, value)  # DeepSpeed reads these even for one process
        torch.distributed.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    return deepspeed


@dataclass(frozen=True)
class DeepSpeedPlan:
    """The recipe's `deepspeed:` options resolved for one run: what placement and the engines read.
    Build it with `resolve`, from the world size the caller knows (the run context's)."""

    options: DeepSpeedOptions
    zero_stage: int                    # 0 or 3: "auto" is decided

    @classmethod
    def resolve(cls, options: DeepSpeedOptions, world_size: int) -> "DeepSpeedPlan":
        stage = options.zero_stage
        if stage == "auto":
            # One process has nothing to shard, and ZeRO-3's per-module gather hooks cost more than
            # a tiny model's forward (toy iterations run ~4x faster unsharded on one CPU process).
            stage = 3 if world_size > 1 else 0
        return cls(options, stage)

    @property
    def sharded(self) -> bool:
        return self.zero_stage == 3

    def config(self, grad_clip: float | None = None, *, trained: bool = True,
               model: torch.nn.Module | None = None) -> dict:
        """DeepSpeed's config dict. `model` sizes ZeRO-3's gather limits (see `zero3_limits`);
        without it (the config that `deepspeed.zero.Init` reads to partition at construction)
        nothing is gathered yet."""
        ds = self.options
        zero: dict = {"stage": self.zero_stage}
        if self.sharded:
            zero["stage3_param_persistence_threshold"] = 0
            if model is not None:
                zero.update(zero3_limits(model))
            if ds.offload_params:
                zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
            if ds.offload_optimizer and trained:
                zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        cfg = {
            "train_micro_batch_size_per_gpu": ds.micro_batch_size,
            "gradient_accumulation_steps": ds.gradient_accumulation,
            "zero_optimization": zero,
            "bf16": {"enabled": ds.precision == "bf16"},
            "steps_per_print": 10**12,
            "wall_clock_breakdown": False,
            "zero_allow_untested_optimizer": True,
        }
        if grad_clip:
            cfg["gradient_clipping"] = grad_clip
        return _deep_update(cfg, ds.extra)


def _deep_update(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def zero3_limits(model: torch.nn.Module, blocks_live: int = 2) -> dict:
    """ZeRO-3 gather limits from the model's size, so a rank holds about `blocks_live` whole
    transformer blocks at a time (the one running and the one prefetched) instead of the model.

    DeepSpeed's defaults (1e9 live parameters, 1e9 reuse distance) keep every parameter that is
    used again within 1e9 parameters gathered: our roles are called several times per update
    (rollout blocks, DMD's two passes, critic and GAN passes), so a model under 1e9 parameters
    never gets released and each rank ends up holding all of it. Gradients likewise wait in a
    reduce bucket of 5e8 elements by default (2 GB in fp32) before they are reduce-scattered.
    A block is the largest entry of any nn.ModuleList (Wan's `blocks`); a model without one counts
    its largest module's own tensors.
    """
    def numel(module: torch.nn.Module, recurse: bool = True) -> int:
        return sum(p.ds_numel if is_partitioned(p) else p.numel() for p in module.parameters(recurse=recurse))

    block = max((numel(b) for m in model.modules() if isinstance(m, torch.nn.ModuleList) for b in m), default=0)
    block = max(block, max((numel(m, recurse=False) for m in model.modules()), default=0), 1)
    return {"stage3_max_live_parameters": blocks_live * block,  # what may stay gathered at once
            "stage3_max_reuse_distance": block,      # keep a parameter only if it is reused this soon
            "stage3_prefetch_bucket_size": block,    # gather ahead: the next block
            "reduce_bucket_size": block}             # gradients reduce-scattered a block at a time


def is_partitioned(param: torch.nn.Parameter) -> bool:
    return hasattr(param, "ds_id")


class TrainedRole:
    """A trained model: its DeepSpeed engine, optimizer schedule, and checkpointable state."""

    def __init__(self, name: str, module: torch.nn.Module, optim: OptimizerConfig, plan: DeepSpeedPlan):
        deepspeed = import_deepspeed()
        self.name, self.optim, self.plan = name, optim, plan
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise UserError(f"models.{name}: has no trainable parameters")
        optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=tuple(float(b) for b in optim.betas),
                                      weight_decay=optim.weight_decay, eps=optim.eps)
        self.engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer,
                                               config=plan.config(optim.grad_clip, model=module))
        self.module = self.engine.module
        zero_partition_padding(self.engine)
        self.updates = 0  # optimizer updates taken (drives the LR schedule)
        self._backwards = 0  # micro-batch backwards since the last step
        self._trainable = [p for p in self.module.parameters() if p.requires_grad]
        log_partitioning(name, self.module, plan)

    @contextlib.contextmanager
    def frozen(self):
        """Parameters stop requiring grad: a backward through this model reaches its inputs only."""
        for p in self._trainable:
            p.requires_grad_(False)
        try:
            yield self.module
        finally:
            for p in self._trainable:
                p.requires_grad_(True)

    @contextlib.contextmanager
    def weights_swapped(self, shards: dict[str, torch.Tensor]):
        """The module runs on `shards` (per parameter name, this rank's share as `EMA.shadow` keeps
        it) instead of its weights, without gradient, until the context ends; then its own weights
        are back bit for bit. A consistency target network (the `causal_cd` loss) this way costs one
        shard-sized copy, not a second model. ZeRO-3 releases every gathered parameter on entry and
        exit, so no forward reads a whole copy gathered from the other weights."""
        locals_ = {n: (p.ds_tensor if is_partitioned(p) else p.data) for n, p in self.module.named_parameters()
                   if n in shards}
        if self.plan.sharded:
            self.engine.empty_partition_cache()
        saved = {n: t.clone() for n, t in locals_.items()}
        try:
            with torch.no_grad():
                for n, t in locals_.items():
                    t.copy_(shards[n].to(t.device, t.dtype))
                yield self.module
        finally:
            if self.plan.sharded:
                self.engine.empty_partition_cache()
            with torch.no_grad():
                for n, t in locals_.items():
                    t.copy_(saved[n])

    @property
    def accumulation(self) -> int:
        """Micro-batches per update (`deepspeed.gradient_accumulation`)."""
        return self.plan.options.gradient_accumulation

    def backward(self, loss: torch.Tensor, last: bool = True) -> None:
        """One micro-batch's backward; `last`: the update's final one. Gradients add up (DeepSpeed
        divides each loss by `accumulation`, so an update sees their mean) until `step`. The trainer
        owns the accumulation boundary: ranks reduce at the last backward, `step` applies once."""
        self.engine.set_gradient_accumulation_boundary(last)
        optimizer = self.engine.optimizer
        if hasattr(optimizer, "clear_backward_seen_flag"):
            # What engine.forward does at each forward, and models are called as modules here:
            # ZeRO-3 advances its micro-step count, without which every backward would overwrite
            # the gradient partitions of the previous micro-batches instead of adding to them.
            optimizer.clear_backward_seen_flag()
        self.engine.backward(loss)
        self._backwards += 1

    def step(self, skip: bool = False) -> float:
        """Apply the update (DeepSpeed clips and skips non-finite gradients); returns the grad norm.
        `skip`: a micro-batch of this update had a non-finite loss; end the accumulation without
        moving the weights or the optimizer state (returns NaN)."""
        lr = self.optim.lr_at(self.updates)
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        self.engine.set_gradient_accumulation_boundary(True)
        backwards, self._backwards = self._backwards, 0
        if skip:
            if backwards:  # end the accumulation; with nothing accumulated there is nothing to end
                self._step_without_update()
            return float("nan")
        if self.plan.sharded:
            self.engine.step()  # ZeRO-3 measures the norm and skips non-finite gradients itself
            norm = self.engine.get_global_grad_norm()
            norm = float(norm) if norm is not None else float("nan")
        else:
            # Unsharded fp32 DeepSpeed neither reports the norm nor skips non-finite gradients. The
            # gradients were all-reduced by the boundary backward, so every rank reaches the same verdict.
            grads = [p.grad for p in self._trainable if p.grad is not None]
            norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
            if math.isfinite(norm):
                self.engine.step()
            else:
                self._step_without_update()
        if math.isfinite(norm):
            self.updates += 1
        return norm

    def _step_without_update(self) -> None:
        """engine.step (the accumulation boundary: its reductions, counters and zero_grad) with the
        optimizer's own step switched off, so neither weights nor AdamW moments move."""
        for p in self._trainable:
            if p.grad is not None:
                p.grad.zero_()  # DeepSpeed clips before stepping; NaNs would not survive that
        outer = self.engine.optimizer
        inner = getattr(outer, "optimizer", outer)  # the AdamW inside a ZeRO / bf16 wrapper
        inner.step = lambda *args, **kwargs: None
        try:
            self.engine.step()
        finally:
            del inner.step  # back to the class's step

    @property
    def lr(self) -> float:
        return self.optim.lr_at(self.updates)

    def state_bytes(self) -> int:
        """Bytes of model parameters and optimizer state held by this rank (after the first step,
        when AdamW's moments exist): what ZeRO-3 divides across ranks."""
        seen: set[int] = set()

        def size(t: torch.Tensor) -> int:
            if id(t) in seen or t.numel() == 0:
                return 0
            seen.add(id(t))
            return t.numel() * t.element_size()

        total = sum(size(p.ds_tensor if is_partitioned(p) else p.data) for p in self.module.parameters())
        opt = self.engine.optimizer
        for flat in getattr(opt, "fp32_partitioned_groups_flat", []):
            total += size(flat)
        inner = getattr(opt, "optimizer", opt)
        for state in inner.state.values():
            total += sum(size(v) for v in state.values() if torch.is_tensor(v))
        return total

    # --- checkpoint state (this rank's shard) -----------------------------------------------
    def state_dict(self) -> dict:
        state = {"updates": self.updates, "optimizer": _engine_optimizer_state(self.engine)}
        if not self.plan.sharded:  # ZeRO-3 master weights live in the optimizer state
            state["module"] = {k: v for k, v in self.module.state_dict().items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        if "module" in state:
            self.module.load_state_dict(state["module"])
        _load_engine_optimizer_state(self.engine, state["optimizer"])


@torch.no_grad()
def zero_partition_padding(engine) -> None:
    """Zero the padding that ZeRO-3 appends to the last rank's share of each parameter (and so
    to its flat optimizer groups). DeepSpeed allocates it with torch.empty and never writes it,
    so without this two identical runs save different checkpoint files, and the padding could
    hold NaN."""
    opt = engine.optimizer
    groups, paddings = getattr(opt, "fp16_groups", None), getattr(opt, "groups_padding", None)
    if groups is None or paddings is None or not hasattr(opt, "fp32_partitioned_groups_flat"):
        return  # not ZeRO-3
    flats = [opt.fp16_partitioned_groups_flat, opt.fp32_partitioned_groups_flat]
    for i, (params, pads) in enumerate(zip(groups, paddings)):
        offset = 0
        for p, pad in zip(params, pads):
            n = p.partition_numel()
            if pad:
                p.ds_tensor.data.view(-1)[n - pad:n].zero_()
                for flat in flats:
                    if i < len(flat) and flat[i].numel() >= offset + n:
                        flat[i].narrow(0, offset + n - pad, pad).zero_()
            offset += n


def _engine_optimizer_state(engine) -> dict:
    sd = engine.optimizer.state_dict()
    sd = {k: v for k, v in sd.items() if k != "loss_scaler"}  # an object; fp32/bf16 use no scaling
    return sd


def _load_engine_optimizer_state(engine, sd: dict) -> None:
    opt = engine.optimizer
    if hasattr(opt, "fp32_partitioned_groups_flat"):  # ZeRO-3
        from deepspeed.runtime.zero.config import ZeroStageEnum

        sd = {**sd, "loss_scaler": opt.loss_scaler, "zero_stage": ZeroStageEnum(sd["zero_stage"])}
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        state_list = [sd if r == rank else None for r in range(world)]
        opt.load_state_dict(state_list, load_optimizer_states=True, load_from_fp32_weights=True)
    else:
        opt.load_state_dict(sd)


class FrozenRole:
    """A frozen model (the real score): ZeRO-3 inference engine or plain module, eval, no grad."""

    def __init__(self, name: str, module: torch.nn.Module, plan: DeepSpeedPlan):
        self.name = name
        module.requires_grad_(False)
        module.eval()
        if plan.sharded and plan.options.frozen_engine:
            deepspeed = import_deepspeed()
            cfg = plan.config(None, trained=False, model=module)
            self.engine, *_ = deepspeed.initialize(model=module, config=cfg)
            self.module = self.engine.module
        else:
            self.engine, self.module = None, module
        log_partitioning(name, self.module, plan)


def local_numel(module: torch.nn.Module) -> tuple[int, int]:
    """(parameters in the model, parameters held by this rank)."""
    total = held = 0
    for p in module.parameters():
        full = p.ds_numel if is_partitioned(p) else p.numel()
        total += full
        held += p.ds_tensor.numel() if is_partitioned(p) else full
    return total, held


def log_partitioning(name: str, module: torch.nn.Module, plan: DeepSpeedPlan) -> None:
    total, held = local_numel(module)
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    how = f"ZeRO-{plan.zero_stage} over {world} rank{'s' if world > 1 else ''}" if plan.zero_stage else "not sharded"
    log.info("%s: %s parameters, this rank holds %s (%s, %s)", name, f"{total:,}", f"{held:,}", how,
             plan.options.precision)


def gathered(module: torch.nn.Module):
    """Context in which a ZeRO-3 module's parameters are whole (for export / inspection)."""
    params = [p for p in module.parameters() if is_partitioned(p)]
    if not params:
        return contextlib.nullcontext()
    deepspeed = import_deepspeed()
    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
