"""EMA of the generator, correct under ZeRO-3 partitioning.

Under ZeRO-3 each rank owns a flat shard of every parameter (`param.ds_tensor`); the EMA keeps
a shard of the same shape and updates it locally, so it costs 1/world_size of a full copy and
needs no communication until export, which all-gathers the shards.
"""

from __future__ import annotations

import torch

from oneforcing.trainer.engines import is_partitioned


class EMA:
    def __init__(self, module: torch.nn.Module, decay: float = 0.99, start_step: int = 0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay, self.start_step = decay, start_step
        self.params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.shadow = {n: self._local(p).detach().float().clone() for n, p in self.params}

    @staticmethod
    def _local(p: torch.nn.Parameter) -> torch.Tensor:
        return p.ds_tensor if is_partitioned(p) else p.data

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Before `start_step` the EMA follows the weights; from then on it averages them."""
        decay = self.decay if step >= self.start_step else 0.0
        for n, p in self.params:
            self.shadow[n].lerp_(self._local(p).float(), 1.0 - decay)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "start_step": self.start_step, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        for n, t in state["shadow"].items():
            self.shadow[n].copy_(t)

    @torch.no_grad()
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Whole EMA tensors (all-gathered across ranks when partitioned), on every rank."""
        out = {}
        for n, p in self.params:
            shard = self.shadow[n]
            if is_partitioned(p) and torch.distributed.is_initialized():
                parts = [torch.empty_like(shard) for _ in range(torch.distributed.get_world_size())]
                torch.distributed.all_gather(parts, shard.contiguous())
                flat = torch.cat(parts)[: p.ds_numel]
                out[n] = flat.view(p.ds_shape).to(p.dtype)
            elif is_partitioned(p):
                out[n] = shard[: p.ds_numel].view(p.ds_shape).to(p.dtype)
            else:
                out[n] = shard.to(p.dtype).clone()
        return out
