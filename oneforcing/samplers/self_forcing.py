"""Self-Forcing training rollout: the generator produces the clip it is trained on, block by block.

An exit step is drawn uniformly from the step list (from the trainer's exits generator, the same
on every rank: every rank runs the same number of forwards under ZeRO-3): ONE draw shared by all blocks (`same_step_across_blocks: true`,
the official Self Forcing / Causal Forcing / One-Forcing default_config) or one per block. With
`first_block_steps` (Causal Forcing's `denoising_step_list_first_chunk`, its 1-step framewise
model: [1000, 750, 500, 250]) the first block denoises with that list and its own exit draw, the
later blocks with `steps` (official pipeline/self_forcing_training.py). Steps before the exit run without gradient and re-noise
the predicted x0 with fresh noise to the next step; the exit step runs with gradient only when the
block overlaps the gradient window (the last `grad_frames` frames; None = all). Frames of a grad
block that fall outside the window are detached, so exactly the window's frames carry gradient.
Each finished block (but the last) is re-run at t = context_t without gradient to write its K/V:
gradients never flow through the cache into earlier blocks.

Long-horizon training (`rollout_frames`, in the spirit of Self-Forcing++ and LongLive's streaming long
tuning): the generator rolls out `rollout_frames` latent frames (more than the clip's F, the length
the critic and teacher score) through a bounded cache (`local_attn_size`, `sink_size`, `sink_rope`:
the rolling window + sink the student streams long videos with), and the returned clip is an
F-frame window of it whose block-aligned start is drawn uniformly (from `exit_rng`: the same on
every rank; `window_stride` limits the starts to its multiples); DMD and the critic see that window as an ordinary clip. Blocks before the window run
without gradient (they only fill the cache), generation stops at the window's end, and the
gradient window (`grad_frames`) is counted inside it. Frames beyond the clip's own noise get fresh
noise from `rng`.

    out = SelfForcingRollout(steps=[1000], grad_frames=17, scheduler=flow)(generator_model, noise, text)
    out.x0           [B, F, C, H, W]  rolled-out clean latents (graph on the window's frames)
    out.frame_mask   [F] bool         the gradient window (mask for the DMD loss)
    out.exit_indices / out.exit_t     per block
"""

from __future__ import annotations

from typing import Callable

import torch

from oneforcing.models.wan_rolling_cache import check_window
from oneforcing.registry import SAMPLERS
from oneforcing.samplers.common import Rollout, draw_exit_indices, full_t, in_model_dtype, no_context, randn_like
from oneforcing.schedulers.flow_match import SHIFT_MOVED, FlowMatchScheduler

DEFAULT_STEPS = [1000.0, 750.0, 500.0, 250.0]
__all__ = ["DEFAULT_STEPS", "Rollout", "SelfForcingRollout"]


@SAMPLERS.register("self_forcing")
class SelfForcingRollout:
    needs_context = False
    steps: list[float]  # the step list in model timesteps (the sampler contract; set from the scheduler)
    renamed_keys = {"shift": SHIFT_MOVED}

    def __init__(self, steps: list[float] | None = None, warp: bool = True,
                 grad_frames: int | None = None, context_t: float = 0.0,
                 same_step_across_blocks: bool = True, first_block_steps: list[float] | None = None,
                 rollout_frames: int | None = None, window_stride: int | None = None,
                 local_attn_size: int | None = None, sink_size: int = 0, sink_rope: str = "adjacent",
                 *, scheduler: FlowMatchScheduler):
        self.scheduler = scheduler  # the recipe's, handed in: no component has a convention of its own
        steps = DEFAULT_STEPS if steps is None else steps
        if not steps or (first_block_steps is not None and not first_block_steps):
            raise ValueError("the step lists must not be empty")
        if grad_frames is not None and grad_frames < 0:
            raise ValueError(f"grad_frames must be >= 0 or None, got {grad_frames}")
        self.steps = self.scheduler.step_list(steps, warp)
        self.grad_frames = grad_frames
        self.context_t = float(context_t)
        self.same_step_across_blocks = bool(same_step_across_blocks)
        self.first_steps = None if first_block_steps is None else self.scheduler.step_list(first_block_steps, warp)
        if rollout_frames is not None and rollout_frames < 1:
            raise ValueError(f"rollout_frames must be >= 1 or None, got {rollout_frames}")
        if local_attn_size is not None:
            check_window(local_attn_size, sink_size, sink_rope)
        elif sink_size:
            raise ValueError("sink_size needs local_attn_size (the sink is part of a bounded cache)")
        if window_stride is not None and window_stride < 1:
            raise ValueError(f"window_stride must be >= 1 or None, got {window_stride}")
        self.rollout_frames, self.window_stride = rollout_frames, window_stride
        self.cache_kwargs = ({} if local_attn_size is None else
                             {"local_attn_size": int(local_attn_size), "sink_size": int(sink_size),
                              "sink_rope": sink_rope})

    def block_steps(self, i: int) -> list[float]:
        """The (warped) step list of block i."""
        return self.first_steps if i == 0 and self.first_steps is not None else self.steps

    def draw_exits(self, num_blocks: int, rng: torch.Generator | None) -> list[int]:
        """Per block, its exit index into `block_steps(i)` (from the rank-independent `rng`)."""
        if self.first_steps is None:
            return draw_exit_indices(num_blocks, len(self.steps), rng, self.same_step_across_blocks)
        first = draw_exit_indices(1, len(self.first_steps), rng)
        rest = draw_exit_indices(num_blocks - 1, len(self.steps), rng, self.same_step_across_blocks) \
            if num_blocks > 1 else []
        return first + rest

    def window_start(self, num_frames: int, blocks: list[tuple[int, int]], rng: torch.Generator | None) -> int:
        """First frame of the F-frame clip taken from a long rollout: a block start drawn uniformly
        among those whose window fits and that are multiples of `window_stride` (None: every block
        start; the clip length: the rollout's consecutive clips, so the video's start is drawn as
        often as any later clip). 0 without a long rollout."""
        total = self.rollout_frames or num_frames
        if total < num_frames:
            raise ValueError(f"rollout_frames={total} is shorter than the clip ({num_frames} latent frames)")
        stride = self.window_stride or 1
        starts = [a for a, _ in blocks if a + num_frames <= total and a % stride == 0]
        if len(starts) == 1:
            return 0
        return starts[int(torch.randint(0, len(starts), (1,), generator=rng))]

    def window(self, num_frames: int) -> torch.Tensor:
        n = num_frames if self.grad_frames is None else min(self.grad_frames, num_frames)
        mask = torch.zeros(num_frames, dtype=torch.bool)
        mask[num_frames - n:] = True
        return mask

    def __call__(self, model, noise: torch.Tensor, text: torch.Tensor, *,
                 rng: torch.Generator | None = None, exit_rng: torch.Generator | None = None,
                 negative_text: torch.Tensor | None = None, context: torch.Tensor | None = None,
                 on_block: Callable[[int, int, torch.Tensor], None] | None = None) -> Rollout:
        """`rng`: fresh re-noising noise (may differ per rank); `exit_rng`: the exit
        draws (the same on every rank). Gradients are taken only if grad mode is on at the call.
        No guidance (`negative_text` unused)."""
        no_context("self_forcing", context)
        noise, text = in_model_dtype(model, noise, text)
        B, F = noise.shape[:2]
        dev = noise.device
        total = self.rollout_frames or F
        all_blocks = model.block_ranges(total)
        exits = self.draw_exits(len(all_blocks), exit_rng)
        w0 = self.window_start(F, all_blocks, exit_rng)
        if total > F:  # the clip's noise at its window, fresh noise elsewhere
            extra = randn_like(noise.new_empty(B, total - F, *noise.shape[2:]), rng)
            noise = torch.cat([extra[:, :w0], noise, extra[:, w0:]], dim=1)
        window = torch.zeros(total, dtype=torch.bool)
        window[w0:w0 + F] = self.window(F)
        want_grad = torch.is_grad_enabled()
        cache = model.new_kv_cache(B, total, **self.cache_kwargs)
        outs, forwards, blocks = [], 0, [(a, b) for a, b in all_blocks if b <= w0 + F]
        for i, (a, b) in enumerate(blocks):
            grad_block = want_grad and bool(window[a:b].any())
            x, steps = noise[:, a:b], self.block_steps(i)
            for s in range(exits[i] + 1):
                t = full_t(steps[s], B, dev)
                exit_now = s == exits[i]
                with torch.set_grad_enabled(grad_block and exit_now):
                    x0 = self.scheduler.x0_from_v(x, model(x, t, text, kv_cache=cache, frame_offset=a), t)
                forwards += 1
                if not exit_now:
                    x = self.scheduler.add_noise(x0, randn_like(x0, rng), full_t(steps[s + 1], B, dev))
            if grad_block and not window[a:b].all():  # detach the frames before the window
                keep = window[a:b].to(dev).view(1, -1, 1, 1, 1)
                x0 = torch.where(keep, x0, x0.detach())
            if a >= w0:
                outs.append(x0)
                if on_block is not None:
                    on_block(a - w0, b - w0, x0)
            if i + 1 < len(blocks):
                with torch.no_grad():
                    ctx_t = full_t(self.context_t, B, dev)
                    ctx = x0 if self.context_t == 0 else self.scheduler.add_noise(x0, randn_like(x0, rng), ctx_t)
                    model(ctx.detach(), ctx_t, text, kv_cache=cache, frame_offset=a, write_cache=True)
                forwards += 1
        shown = [i for i, (a, _) in enumerate(blocks) if a >= w0]
        return Rollout(
            x0=torch.cat(outs, dim=1), frame_mask=window[w0:w0 + F], with_grad=want_grad,
            exit_indices=[exits[i] for i in shown], exit_t=[self.block_steps(i)[exits[i]] for i in shown],
            blocks=[(a - w0, b - w0) for a, b in blocks[shown[0]:]], num_forwards=forwards,
        )
