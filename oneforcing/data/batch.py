"""`Batch`: what a training dataset yields and what losses read (`s.batch`, `s.latents`, `s.text`).

Datasets registered for training (`data:` / `ode_data:` of a train recipe) are batch streams (the
datasets contract, registry/contracts.py): `batches(batch_size)` yields `Batch`es. A field a loss needs but the dataset did not fill is
an error naming the recipe key and the dataset, never a silent stand-in:

    text         [B, L, D]            prompt embeddings (every batch)
    latents      [B, F, C, H, W]      clean real latents (latent_shards; what rollouts and GAN reals use)
    noise_shape  (F, C, H, W)         the generator's noise shape per sample, from prompt-only data
                                      (prompt_list) that has no latents (`rollout_shape`)
    ode_states   [B, K, F, C, H, W]   teacher ODE states at the kept steps (ode_pairs)
    ode_t        [K]                  their model timesteps (sigma = t / 1000)
    ode_x0       [B, F, C, H, W]      the ODE's clean endpoint (the regression target)
    ode_context  [B, F, C, H, W]      the real latents the pairs were teacher-forced on (causal ODE pairs)
    ode_text     [B, L, D]            the ODE pairs' own prompts, when they come as a second stream
    prompts      list[str]            the prompts, for logs (optional)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from oneforcing.errors import UserError

ODE_FIELDS = ("ode_states", "ode_t", "ode_x0", "ode_context")
KEEP_DTYPE = ("ode_t",)  # never cast to the compute dtype (see Batch.cast)


@dataclass
class Batch:
    text: torch.Tensor
    latents: torch.Tensor | None = None
    ode_states: torch.Tensor | None = None
    ode_t: torch.Tensor | None = None
    ode_x0: torch.Tensor | None = None
    ode_context: torch.Tensor | None = None
    ode_text: torch.Tensor | None = None
    noise_shape: tuple[int, ...] | None = None
    prompts: list[str] = field(default_factory=list)
    dataset: str = "dataset"  # for errors: the dataset type that made it ...
    key: str = "data"         # ... and the recipe key it was configured at (set by the trainer)

    def __post_init__(self):
        if not torch.is_tensor(self.text):
            raise TypeError(f"Batch.text must be a tensor [B, L, D], got {type(self.text).__name__}")

    @property
    def size(self) -> int:
        return self.text.shape[0]

    def require(self, name: str, who: str, hint: str = "") -> torch.Tensor:
        """The field `name`, or a UserError naming the recipe key and dataset that did not fill it."""
        value = getattr(self, name)
        if value is None:
            raise UserError(f"{who} needs '{name}' in every batch, but the dataset '{self.dataset}' gives none "
                            f"(it gives {', '.join(self.filled())}){'; ' + hint if hint else ''}", key=self.key)
        return value

    def rollout_shape(self, who: str) -> tuple[int, ...]:
        """[B, F, C, H, W] of the generator's noise: the real latents' shape, or prompt-only data's
        `noise_shape`; neither is a UserError naming the recipe key and dataset."""
        if self.latents is None and self.noise_shape is not None:
            return (self.size, *self.noise_shape)
        return tuple(self.require("latents", who, "or a prompt-only dataset with a latent_shape").shape)

    def filled(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self)
                if f.name not in ("prompts", "dataset", "key") and getattr(self, f.name) is not None]

    def cast(self, dtype: torch.dtype | None) -> "Batch":
        """Floating tensors in the compute dtype (shards keep latents in fp16 to halve the disk),
        except the timesteps `ode_t`: bf16 would round 937.5 / 833.3 / 625 to 936 / 832 / 624,
        conditioning the student on other timesteps than the teacher's pairs were made at."""
        if dtype is None:
            return self
        return dataclasses.replace(self, **{
            f.name: getattr(self, f.name).to(dtype) for f in dataclasses.fields(self)
            if f.name not in KEEP_DTYPE and torch.is_tensor(getattr(self, f.name))
            and getattr(self, f.name).is_floating_point()})

    def at(self, key: str) -> "Batch":
        """The same batch, its errors naming recipe key `key` (the trainer's `data` / `ode_data`)."""
        return dataclasses.replace(self, key=key)

    def with_ode(self, ode: "Batch") -> "Batch":
        """This batch plus a second stream's ODE pairs (the fKL ablation): ode_* and its prompts."""
        return dataclasses.replace(self, ode_text=ode.text, **{k: getattr(ode, k) for k in ODE_FIELDS})


def as_batch(value, source: str) -> Batch:
    """A dataset's yield as a Batch, or a UserError naming the recipe key."""
    if not isinstance(value, Batch):
        raise UserError(f"the dataset yields {type(value).__name__}, not oneforcing.data.Batch "
                        "(docs/architecture.md, 'datasets')", key=source)
    return value
