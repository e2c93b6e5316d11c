"""Causal generation whose prompt changes mid-video: the engine behind prompt schedules and `serve`.

`LiveRollout` runs `CausalInference`'s block loop (same steps, re-noising and context pass, so with
no switch its frames equal `sampler.stream`'s) one block per `step()`, and `set_text` changes the
prompt from the next block on. What a switch does to what the video has already cached:

  cross-attention  always switched: every later forward reads the new prompt's text K/V.
  "keep"           the self-attention K/V of the frames already generated stay as written, under
                   the old prompt; the new prompt enters only through cross-attention, so the old
                   content persists until it leaves the window.
  "recache"        (LongLive's re-cache; the default) the K/V of every cached frame the next block
                   reads are re-computed under the new prompt from the frames' clean context inputs,
                   in one forward: all earlier frames with an unbounded cache (exactly the cache a
                   video generated under the new prompt from the same frames would hold), the sink
                   and the window with a rolling cache.
  The sink         is re-computed too (it is read by every later frame; a sink left under the old
                   prompt would keep pulling toward it). The window frames are re-computed attending
                   to the sink and to each other only: frames that already left the window (still
                   holding old K/V, or evicted) are not read (`RollingKVCache.forget_before`).
Cost of a re-cache: one forward over at most local_attn_size frames (every earlier frame without a
window), at the switch only.
"""

from __future__ import annotations

from typing import Callable

import torch

from oneforcing.models.wan_rolling_cache import RollingKVCache
from oneforcing.samplers.causal_inference import CausalInference
from oneforcing.samplers.common import full_t, in_model_dtype, randn_like
from oneforcing.streaming.schedule import SWITCH_MODES


class LiveRollout:
    """One batch of videos generated block by block; `num_frames=None` streams without end (the
    sampler must bound its cache: local_attn_size)."""

    def __init__(self, sampler: CausalInference, model, text: torch.Tensor, *, batch_size: int,
                 num_frames: int | None = None, switch: str = "recache", rng: torch.Generator | None = None):
        if switch not in SWITCH_MODES:
            raise ValueError(f"switch must be one of {SWITCH_MODES}, got {switch!r}")
        if num_frames is None and not sampler.cache_kwargs:
            raise ValueError("an endless stream needs a bounded cache (sampler local_attn_size)")
        self.sampler, self.model, self.switch, self.rng = sampler, model, switch, rng
        self.num_frames = num_frames
        # A rolling cache ignores max_frames; an unbounded one is sized for the whole video.
        self.cache = sampler.new_cache(model, batch_size, num_frames or 1)
        self.text = text
        self.block = 0          # index of the next block
        self.frame = 0          # its first latent frame
        self.written: dict[int, torch.Tensor] = {}  # frame -> the clean context input written for it
        self._pending: torch.Tensor | None = None
        self.switches: list[int] = []  # latent frames where a new prompt took effect

    def set_text(self, text: torch.Tensor) -> None:
        """The prompt of every block from the next on."""
        self._pending = text

    def _next_range(self) -> tuple[int, int] | None:
        n = self.model.frames_per_block
        if self.num_frames is None:
            return self.frame, self.frame + n
        if self.frame >= self.num_frames:
            return None
        return self.frame, min(self.frame + n, self.num_frames)

    @torch.no_grad()
    def step(self, noise: torch.Tensor) -> tuple[int, int, torch.Tensor]:
        """Generate the next block from its noise [B, n, C, H, W]; returns (a, b, clean latents)."""
        r = self._next_range()
        if r is None:
            raise ValueError(f"the video is complete ({self.num_frames} latent frames)")
        a, b = r
        if noise.shape[1] != b - a:
            raise ValueError(f"block [{a}, {b}) needs noise of {b - a} frames, got {noise.shape[1]}")
        if self._pending is not None:
            self._apply_switch(a, b - a)
        s, model, cache = self.sampler, self.model, self.cache
        x, text = in_model_dtype(model, noise, self.text)
        steps = s.steps_for_block(self.block)
        B = x.shape[0]
        for k, t in enumerate(steps):
            tt = full_t(t, B, x.device)
            x0 = s.scheduler.x0_from_v(x, model(x, tt, text, kv_cache=cache, frame_offset=a), tt)
            if k + 1 < len(steps):
                x = s.scheduler.add_noise(x0, randn_like(x0, self.rng), full_t(steps[k + 1], B, x.device))
        if self.num_frames is None or b < self.num_frames:  # the last block's K/V would never be read
            ctx_t = full_t(s.context_t, B, x.device)
            ctx = x0 if s.context_t == 0 else s.scheduler.add_noise(x0, randn_like(x0, self.rng), ctx_t)
            model(ctx, ctx_t, text, kv_cache=cache, frame_offset=a, write_cache=True)
            for j, f in enumerate(range(a, b)):
                self.written[f] = ctx[:, j]
            self._prune(b)
        self.block, self.frame = self.block + 1, b
        return a, b, x0

    # --- switching -----------------------------------------------------------------------------
    def _apply_switch(self, f0: int, n: int) -> None:
        self.text, self._pending = self._pending, None
        self.cache.cross = None  # the next forward computes the new prompt's text K/V
        if f0 > 0:
            self.switches.append(f0)
            if self.switch == "recache":
                self._recache(f0, n)

    def _recache(self, f0: int, n: int) -> None:
        cache, (text,) = self.cache, in_model_dtype(self.model, self.text)
        if isinstance(cache, RollingKVCache):
            frames = cache.context_frames(f0, n)
            sink = [f for f in frames if f < cache.sink_size]
            window = [f for f in frames if f >= cache.sink_size]
            groups = [g for g in (sink, window) if g]
            if window:
                cache.forget_before(window[0])
        else:
            groups = [list(range(f0))]
        for g in groups:  # each a run of consecutive frames
            x = torch.stack([self.written[f] for f in g], dim=1)  # already in the model's dtype
            t = full_t(self.sampler.context_t, x.shape[0], x.device)
            self.model(x, t, text, kv_cache=cache, frame_offset=g[0], write_cache=True)

    def _prune(self, end: int) -> None:
        """Keep only the context inputs a re-cache could still need."""
        cache = self.cache
        if isinstance(cache, RollingKVCache):
            keep = set(range(cache.sink_size)) | set(range(end - cache.ring_size, end))
            for f in [f for f in self.written if f not in keep]:
                del self.written[f]


def scheduled_rollout(sampler: CausalInference, model, noise: torch.Tensor, texts: list[torch.Tensor],
                      starts: list[int], *, switch: str = "recache", rng: torch.Generator | None = None,
                      on_block: Callable[[int, int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """A whole clip [B, F, C, H, W] whose prompt is texts[i] from latent frame starts[i] (a block
    start; starts[0] = 0) on; `on_block(a, b, x0)` as blocks finish."""
    B, F = noise.shape[:2]
    live = LiveRollout(sampler, model, texts[0], batch_size=B, num_frames=F, switch=switch, rng=rng)
    at = dict(zip(starts[1:], texts[1:]))
    out = None
    while live.frame < F:
        a = live.frame
        if a in at:
            live.set_text(at[a])
        a, b, x0 = live.step(noise[:, a:min(a + model.frames_per_block, F)])
        if out is None:
            out = x0.new_empty(noise.shape)
        out[:, a:b] = x0
        if on_block is not None:
            on_block(a, b, x0)
    return out
