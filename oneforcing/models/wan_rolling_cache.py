"""A bounded KV cache for long streaming rollouts: attention sink + a rolling window of recent frames.

A block of n frames starting at frame f0 attends to at most `local_attn_size` latent frames in all
(Self Forcing's `local_attn_size`; Causal Forcing's long-video model uses 21, its training length):
    the sink      frames [0, sink_size)                        (kept for the whole video)
    the window    the most recent frames before f0, as many as fit: local_attn_size - sink - n
    itself        its own n frames
While f0 + n <= local_attn_size nothing is dropped: the output equals the unbounded `WanKVCache`.
Memory is 2 x layers x local_attn_size x tokens_per_frame x dim x bytes, whatever the video length:
the sink has fixed slots, the window a ring of local_attn_size - sink_size frame slots (frame f
lives in ring slot (f - sink) mod ring size), so nothing is shifted when a frame is evicted.

RoPE. Keys are stored rotated at their absolute frame index, and queries of frame f use index f,
as both reference implementations do (positions grow past the trained 21; RoPE scores depend only
on query-key distances, which the window bounds). The sink is where they differ:
- sink_rope="adjacent" (Causal Forcing's long_video model, after Rolling Forcing): the sink is
  re-positioned at read time to sit right before the oldest window frame, so every query-key
  distance stays within local_attn_size, the range seen in training. Done here by rotating the
  stored sink keys by the shift (rotations compose) instead of storing them un-rotated.
- sink_rope="absolute" (Self Forcing's causal_model): the sink keeps its own positions 0..sink-1,
  so its distance to the queries grows with the video.
(Causal Forcing's clean context pass also drops the sink once the cache is full; here the
context pass reads the same keys as the denoising passes.)

Re-cache (a prompt switch, oneforcing/streaming): `forget_before(f)` makes window frames before f
unreadable, so a re-computed window attends to the sink and to the re-computed frames only, never
to K/V still holding the old prompt.

Writes: as in `WanKVCache`, `write=True` stores the block's K/V (detached) and advances `frames`;
forwards without write store nothing. Gradients flow through the current block's own K/V only.
"""

from __future__ import annotations

import torch

from oneforcing.models.wan_cache import WanKVCache
from oneforcing.models.wan_rope import apply_rope, rope_time_shift

SINK_ROPE = ("adjacent", "absolute")


def check_window(local_attn_size: int, sink_size: int, sink_rope: str) -> None:
    """ValueError unless the settings describe a usable bounded cache."""
    if local_attn_size < 1 or sink_size < 0 or sink_size >= local_attn_size:
        raise ValueError(f"need local_attn_size >= 1 and 0 <= sink_size < local_attn_size, got "
                         f"local_attn_size={local_attn_size}, sink_size={sink_size}")
    if sink_rope not in SINK_ROPE:
        raise ValueError(f"sink_rope must be one of {SINK_ROPE}, got {sink_rope!r}")


class RollingKVCache(WanKVCache):
    """`WanKVCache`'s buffers sized for local_attn_size frames (its allocation and memory accounting),
    with the slots reused as sink + ring and the reads planned per block."""

    def __init__(self, num_layers: int, batch_size: int, heads: int, head_dim: int, local_attn_size: int,
                 sink_size: int = 0, sink_rope: str = "adjacent"):
        check_window(local_attn_size, sink_size, sink_rope)
        super().__init__(num_layers, batch_size, max_frames=local_attn_size, heads=heads, head_dim=head_dim)
        self.local_attn_size, self.sink_size, self.sink_rope = local_attn_size, sink_size, sink_rope
        self.ring_size = local_attn_size - sink_size
        # Absolute frame index held by each written slot (a dict: sized by what is written, not by
        # the window, so a window far larger than any video costs nothing before it is checked).
        self.slot_frame: dict[int, int] = {}
        self._plan: dict = {}
        self.floor = 0  # window frames before it are never read (forget_before)

    def reset(self) -> None:
        """Forget the video and the prompt (keeps the buffers): reuse for a new sample."""
        super().reset()
        self.slot_frame = {}
        self._plan = {}
        self.floor = 0

    def forget_before(self, frame: int) -> None:
        """Window frames before `frame` are no longer read (the sink still is)."""
        self.floor = max(self.floor, frame)
        self._plan = {}

    # --- which frames a block sees ----------------------------------------------------------------
    def slot(self, frame: int) -> int:
        if frame < self.sink_size:
            return frame
        return self.sink_size + (frame - self.sink_size) % self.ring_size

    def context_frames(self, f0: int, n: int) -> list[int]:
        """Absolute indices of the cached frames a block [f0, f0 + n) attends to, oldest first."""
        room = self.local_attn_size - n
        if self.ring_size < n:
            raise ValueError(f"a block of {n} frames does not fit a local_attn_size of {self.local_attn_size} "
                             f"frames with a sink of {self.sink_size}")
        sink = list(range(min(f0, self.sink_size)))
        recent = list(range(max(self.sink_size, self.floor, f0 - (room - len(sink))), f0))
        return sink + recent

    def key_frames(self, f0: int, n: int) -> torch.Tensor:
        """Absolute frame of every key `keys_values` returns (for the block-causal mask)."""
        return torch.tensor(self.context_frames(f0, n) + list(range(f0, f0 + n)), dtype=torch.long)

    def _read_plan(self, f0: int, n: int):
        """(token indices of the context in the buffers, sink tokens, RoPE shift of the sink) for a
        block; the same for every layer of a forward, so computed once."""
        if (f0, n) not in self._plan:
            frames = self.context_frames(f0, n)
            missing = [f for f in frames if self.slot_frame.get(self.slot(f)) != f]
            if missing:
                raise ValueError(f"rolling KV cache: frames {missing[:4]} needed by the block at frame {f0} "
                                 "were never written or were evicted (blocks must be generated in order)")
            S = self.tokens_per_frame
            slots = torch.tensor([self.slot(f) for f in frames], dtype=torch.long)
            idx = (slots[:, None] * S + torch.arange(S)).flatten()
            n_sink = min(f0, self.sink_size)
            recent = frames[n_sink:]
            # Adjacent: the sink's last frame sits right before the oldest window frame.
            shift = (recent[0] - n_sink) if (self.sink_rope == "adjacent" and n_sink and recent) else 0
            self._plan = {(f0, n): (idx, n_sink * S, shift)}
        return self._plan[(f0, n)]

    # --- per-layer use -------------------------------------------------------------------------
    def keys_values(self, layer: int, f0: int, k: torch.Tensor, v: torch.Tensor,
                    write: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values for queries of frames starting at f0: the sink and window, then (k, v)."""
        S = self.tokens_per_frame
        n = k.shape[1] // S
        idx, n_sink_tokens, shift = self._read_plan(f0, n)
        ck = self.k[layer].index_select(1, idx.to(k.device))
        cv = self.v[layer].index_select(1, idx.to(v.device))
        if shift:
            cos, sin = rope_time_shift(self.head_dim, shift, device=k.device)
            ck[:, :n_sink_tokens] = apply_rope(ck[:, :n_sink_tokens], cos, sin)
        if write:
            for j, f in enumerate(range(f0, f0 + n)):
                s = self.slot(f)
                self.k[layer][:, s * S:(s + 1) * S] = k[:, j * S:(j + 1) * S].detach()
                self.v[layer][:, s * S:(s + 1) * S] = v[:, j * S:(j + 1) * S].detach()
            if layer == self.num_layers - 1:
                self._written(f0, n)
        return torch.cat([ck, k], dim=1), torch.cat([cv, v], dim=1)

    def _written(self, f0: int, n: int) -> None:
        for f in range(f0, f0 + n):
            self.slot_frame[self.slot(f)] = f
        self._plan = {}
