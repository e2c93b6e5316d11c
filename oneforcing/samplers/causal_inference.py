"""Causal (streaming) inference: block by block with a KV cache, first-frame enhancement.

For each autoregressive block: start from its noise, run the block's step list (model timesteps =
the list warped by the shift); between steps, re-noise the predicted x0 with fresh noise to the
next step (as in training rollouts). Then re-run the block's clean output at t = `context_t`
(0: "context noise" 0) with write_cache=True so later blocks attend to it. The first block may use
its own, longer list (first-frame enhancement): [1000, 750, 500, 250] for the first block,
[1000] (one step) for the others. Long videos: `local_attn_size` (latent frames a block attends
to, sink and itself included; 21 = the training length) bounds the KV cache, `sink_size` keeps
the first frames in it, `sink_rope` places the sink ("adjacent" | "absolute"; wan_rolling_cache).

    sampler = CausalInference(steps=[1000], first_block_steps=[1000, 750, 500, 250], scheduler=flow)
    x0 = sampler(model, noise, text, rng=g, on_block=lambda a, b, x0: ...).x0
    for a, b, x0_block in sampler.stream(model, noise, text):  # frames [a, b) as soon as ready
        ...
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from oneforcing.models.wan_rolling_cache import check_window
from oneforcing.registry import SAMPLERS
from oneforcing.samplers.common import Rollout, full_t, in_model_dtype, no_context, randn_like
from oneforcing.schedulers.flow_match import SHIFT_MOVED, FlowMatchScheduler

DEFAULT_FIRST_BLOCK_STEPS = [1000.0, 750.0, 500.0, 250.0]


@SAMPLERS.register("causal_inference")
class CausalInference:
    needs_context = False
    steps: list[float]  # the step list in model timesteps (the sampler contract; set from the scheduler)
    renamed_keys = {"shift": SHIFT_MOVED}

    def __init__(self, steps: list[float] | None = None, first_block_steps: list[float] | None = None,
                 first_frame_enhancement: bool = True, warp: bool = True,
                 context_t: float = 0.0, local_attn_size: int | None = None, sink_size: int = 0,
                 sink_rope: str = "adjacent", *, scheduler: FlowMatchScheduler):
        self.scheduler = scheduler  # the recipe's, handed in: no component has a convention of its own
        steps = [1000.0] if steps is None else steps
        if first_block_steps is None:
            first_block_steps = DEFAULT_FIRST_BLOCK_STEPS if first_frame_enhancement else steps
        if not steps or not first_block_steps:
            raise ValueError("step lists must not be empty")
        self.steps = self.scheduler.step_list(steps, warp)
        self.first_block_steps = self.scheduler.step_list(first_block_steps, warp)
        self.context_t = float(context_t)
        # Long videos: a bounded KV cache (None = every earlier frame, memory growing with the clip).
        if local_attn_size is not None:
            check_window(local_attn_size, sink_size, sink_rope)
        elif sink_size:
            raise ValueError("sink_size needs local_attn_size (the sink is part of a bounded cache)")
        self.cache_kwargs = ({} if local_attn_size is None else
                             {"local_attn_size": int(local_attn_size), "sink_size": int(sink_size),
                              "sink_rope": sink_rope})

    def new_cache(self, model, batch_size: int, num_frames: int):
        """The KV cache of a rollout of this size, not yet allocated (a job sizes it up before any
        tensor exists: `planned_nbytes`); ValueError when a block does not fit the window."""
        cache = model.new_kv_cache(batch_size, num_frames, **self.cache_kwargs)
        if self.cache_kwargs:
            largest = max(b - a for a, b in model.block_ranges(num_frames))
            ring = self.cache_kwargs["local_attn_size"] - self.cache_kwargs["sink_size"]
            if ring < largest:
                raise ValueError(f"a block of {largest} latent frames does not fit local_attn_size="
                                 f"{self.cache_kwargs['local_attn_size']} with sink_size={self.cache_kwargs['sink_size']}: "
                                 f"need local_attn_size >= sink_size + {largest}")
        return cache

    def steps_for_block(self, index: int) -> list[float]:
        return self.first_block_steps if index == 0 else self.steps

    def num_forwards(self, num_blocks: int) -> int:
        """Model calls for a clip: the denoising steps plus one cache write per block but the last."""
        return len(self.first_block_steps) + (num_blocks - 1) * (len(self.steps) + 1)

    @torch.no_grad()
    def stream(self, model, noise: torch.Tensor, text: torch.Tensor, *,
               rng: torch.Generator | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield (first frame, end frame, clean latents [B, b-a, C, H, W]) block by block."""
        noise, text = in_model_dtype(model, noise, text)
        B, F = noise.shape[:2]
        blocks = model.block_ranges(F)
        cache = self.new_cache(model, B, F)
        for i, (a, b) in enumerate(blocks):
            x, steps = noise[:, a:b], self.steps_for_block(i)
            for s, t in enumerate(steps):
                tt = full_t(t, B, noise.device)
                x0 = self.scheduler.x0_from_v(x, model(x, tt, text, kv_cache=cache, frame_offset=a), tt)
                if s + 1 < len(steps):
                    x = self.scheduler.add_noise(x0, randn_like(x0, rng), full_t(steps[s + 1], B, noise.device))
            if i + 1 < len(blocks):  # the last block's K/V would never be read
                ctx_t = full_t(self.context_t, B, noise.device)
                ctx = x0 if self.context_t == 0 else self.scheduler.add_noise(x0, randn_like(x0, rng), ctx_t)
                model(ctx, ctx_t, text, kv_cache=cache, frame_offset=a, write_cache=True)
            yield a, b, x0

    def __call__(self, model, noise: torch.Tensor, text: torch.Tensor, *,
                 rng: torch.Generator | None = None, exit_rng: torch.Generator | None = None,
                 negative_text: torch.Tensor | None = None, context: torch.Tensor | None = None,
                 on_block: Callable[[int, int, torch.Tensor], None] | None = None) -> Rollout:
        """The whole clip (`.x0` [B, F, C, H, W]); `on_block(a, b, x0_block)` is called as blocks
        finish. Every step of every block runs (no exit draw); no guidance (`negative_text` unused)."""
        no_context("causal_inference", context)
        out, blocks = None, []
        for a, b, x0 in self.stream(model, noise, text, rng=rng):
            if out is None:  # in the model's dtype, like the blocks
                out = x0.new_empty(noise.shape)
            out[:, a:b] = x0
            blocks.append((a, b))
            if on_block is not None:
                on_block(a, b, x0)
        return Rollout(x0=out, blocks=blocks, num_forwards=self.num_forwards(len(blocks)))
