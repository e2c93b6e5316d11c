"""The KV cache of a streaming CausalWan rollout.

Self-attention: per layer, keys (after RoPE, so positions are absolute) and values of every frame
generated so far, preallocated for `max_frames` frames:
    k[layer], v[layer]: [B, max_frames * tokens_per_frame, heads, head_dim]
`frames` is the number of leading frames that hold valid context; a forward at frame offset f0
reads frames [0, f0). A forward with write_cache=True stores its own frames' K/V (detached:
gradients never flow through the cache) and advances `frames`. Memory:
    2 x layers x max_frames x tokens_per_frame x dim x bytes.

Cross-attention: per layer, the text keys/values of the prompt, computed on the first forward and
reused by every later block (they do not depend on the video). They are stored without grad;
a forward that needs gradients for the text projections recomputes them (cheap: one matmul on
512 text tokens per layer).

The slots of the frames being generated are scratch until written: a no-grad forward at
f0 >= frames puts its K/V into its own slots so that attention reads one contiguous view of
cache + current block without copying. A later write_cache forward overwrites them.
"""

from __future__ import annotations

import torch


class WanKVCache:
    def __init__(self, num_layers: int, batch_size: int, max_frames: int, heads: int, head_dim: int):
        self.num_layers = num_layers
        self.batch_size = batch_size
        self.max_frames = max_frames
        self.heads = heads
        self.head_dim = head_dim
        self.tokens_per_frame: int | None = None
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.frames = 0
        self.cross: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    # --- allocation --------------------------------------------------------------------------
    def allocate(self, tokens_per_frame: int, dtype: torch.dtype, device) -> None:
        """Preallocate (idempotent); called by the model with the first block's shape."""
        if self.k:
            if tokens_per_frame != self.tokens_per_frame:
                raise ValueError(f"KV cache was allocated for {self.tokens_per_frame} tokens per frame, "
                                 f"got a block with {tokens_per_frame}")
            return
        self.tokens_per_frame = tokens_per_frame
        shape = (self.batch_size, self.max_frames * tokens_per_frame, self.heads, self.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(self.num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(self.num_layers)]

    def reset(self) -> None:
        """Forget the video and the prompt (keeps the buffers): reuse for a new sample."""
        self.frames = 0
        self.cross = None

    def planned_nbytes(self, tokens_per_frame: int, dtype: torch.dtype) -> int:
        """What `allocate(tokens_per_frame, dtype, ...)` will take: known before allocating."""
        itemsize = torch.empty(0, dtype=dtype).element_size()
        return 2 * self.num_layers * self.batch_size * self.max_frames * tokens_per_frame * self.heads * self.head_dim * itemsize

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))

    def key_frames(self, f0: int, n: int) -> torch.Tensor:
        """Absolute frame of every key `keys_values` returns: all of [0, f0 + n)."""
        return torch.arange(0, f0 + n)

    # --- per-layer use -------------------------------------------------------------------------
    def keys_values(self, layer: int, f0: int, k: torch.Tensor, v: torch.Tensor,
                    write: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values for queries of frames starting at f0: cached frames [0, f0) then (k, v)."""
        S = self.tokens_per_frame
        a, b = f0 * S, f0 * S + k.shape[1]
        if b > self.k[layer].shape[1]:
            raise ValueError(f"KV cache holds {self.max_frames} frames; a block ends at frame {b // S}")
        if write or (f0 >= self.frames and not (k.requires_grad or v.requires_grad)):
            self.k[layer][:, a:b] = k.detach()
            self.v[layer][:, a:b] = v.detach()
        if k.requires_grad or v.requires_grad or (f0 < self.frames and not write):
            # Keep the current block's own K/V (with their graph); the cached prefix is a constant.
            if f0 == 0:
                return k, v
            return (torch.cat([self.k[layer][:, :a], k], dim=1),
                    torch.cat([self.v[layer][:, :a], v], dim=1))
        return self.k[layer][:, :b], self.v[layer][:, :b]
