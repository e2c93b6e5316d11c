"""Components for trainer tests and examples, registered only when imported
(a recipe's `imports: [oneforcing.testing.train_fixtures]`)."""

from __future__ import annotations

import torch

from oneforcing.data.batch import Batch
from oneforcing.jobs.base import derive_seed
from oneforcing.registry import DATASETS, LOSSES


@DATASETS.register("random_latents")
class RandomLatents:
    """An endless, rank-aware, resumable stream of random latents and prompt embeddings:
    example i on rank r depends only on (seed, r, i), so a restored position replays exactly."""

    def __init__(self, frames: int = 3, channels: int = 4, height: int = 4, width: int = 4,
                 text_len: int = 6, text_dim: int = 24, rank: int = 0, world_size: int = 1, seed: int = 0):
        self.shape = (frames, channels, height, width)
        self.text_shape = (text_len, text_dim)
        self.rank, self.seed = rank, seed
        self.position = 0

    def batches(self, batch_size: int):
        while True:
            rng = torch.Generator().manual_seed(derive_seed(self.seed, "data", self.rank, self.position))
            self.position += 1
            # A little structure (a per-sample mean) so a model can reduce its loss.
            latents = torch.randn(batch_size, *self.shape, generator=rng) * 0.5
            latents = latents + torch.randn(batch_size, 1, 1, 1, 1, generator=rng)
            yield Batch(latents=latents, text=torch.randn(batch_size, *self.text_shape, generator=rng),
                        prompts=["random"] * batch_size, dataset="random_latents")

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


@LOSSES.register("nan_at_steps")
class NanAtSteps:
    """A zero loss that turns bad at the listed steps (to test the trainer's bad-step handling):
    `in_gradient: false` makes the loss NaN; `true` keeps the loss finite (0) with a NaN gradient."""

    def __init__(self, steps: list[int], in_gradient: bool = False):
        self.steps, self.in_gradient = set(steps), in_gradient

    def __call__(self, s):
        out = s.generator(s.latents, torch.full((s.batch_size,), 500.0), s.text)
        zero = 0.0 * out.mean()
        if s.step not in self.steps:
            return zero, {}
        if self.in_gradient:  # sqrt'(0) = inf reaches every weight as inf - inf = NaN
            return zero + torch.sqrt(out - out.detach()).sum(), {}
        return zero + float("nan"), {}


@DATASETS.register("indexed_latents")
class IndexedLatents:
    """Like `random_latents`, but example i (on rank r) depends only on (seed, r, i) whatever the
    batch size: `batches(n)` stacks n consecutive examples, so one batch of N x B and N batches of
    B hold the same examples (for gradient-accumulation tests). Resumable by position."""

    def __init__(self, frames: int = 3, channels: int = 4, height: int = 4, width: int = 4,
                 text_len: int = 6, text_dim: int = 24, rank: int = 0, world_size: int = 1, seed: int = 0):
        self.shape, self.text_shape = (frames, channels, height, width), (text_len, text_dim)
        self.rank, self.seed = rank, seed
        self.position = 0

    def example(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, "indexed", self.rank, index))
        latents = torch.randn(*self.shape, generator=g) * 0.5 + torch.randn(1, generator=g)
        return latents, torch.randn(*self.text_shape, generator=g)

    def batches(self, batch_size: int):
        while True:
            items = [self.example(self.position + i) for i in range(batch_size)]
            self.position += batch_size
            yield Batch(latents=torch.stack([x for x, _ in items]), text=torch.stack([t for _, t in items]),
                        dataset="indexed_latents")

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


@LOSSES.register("deterministic_regression")
class DeterministicRegression:
    """A loss without randomness, example by example, so a batch and its split into micro-batches
    give the same mean: the generator phase regresses a one-step rollout (the phase's sampler)
    started from a fixed function of each example's latents, not from drawn noise, onto those
    latents; the critic phase regresses the critic's velocity at t = 500 onto them."""

    def __call__(self, s):
        from oneforcing.losses.common import critic_denoise

        x = s.latents.float()
        if s.phase == "generator":
            start = 0.5 * x.flip(1) + 0.3
            out = s.sampler(s.generator, start, s.text).x0.float()
        else:
            out = critic_denoise(s.critic, x, torch.full((x.shape[0],), 500.0), s.text)
        return torch.mean((out - x) ** 2), {}
