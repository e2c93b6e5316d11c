"""Structured attention masks for block-causal video: described by frame blocks, not by a matrix.

Every token carries the index of the autoregressive block its frame belongs to and whether it is a
"clean" copy (teacher forcing puts [clean ; noisy] copies of the video in one sequence). One rule
then covers every mode the causal student needs:

    query clean (or plain block-causal):  sees clean keys of blocks <= its block
    query noisy:                          sees clean keys of blocks <  its block, and
                                          noisy keys of its own block

Plain block-causal attention is the all-clean case (`kb <= qb`). Keeping the description small
lets each backend realise it its own way: sdpa as a dense boolean matrix (small sequences) or as
a loop over query groups, flex as a BlockMask, flash as a loop over query groups. The grouped form
is exact and needs no N x N memory: the tokens of one (block, copy) group all see the same keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class FrameMask:
    q_block: torch.Tensor  # [Nq] long: block index of each query token
    q_clean: torch.Tensor  # [Nq] bool: query is a clean (context) copy
    k_block: torch.Tensor  # [Nk] long
    k_clean: torch.Tensor  # [Nk] bool
    # Memo of derived facts (every layer of a forward asks the same questions of one mask).
    _memo: dict = field(default_factory=dict, compare=False, repr=False)

    # --- constructors ----------------------------------------------------------------------
    @staticmethod
    def _tokens(frames: torch.Tensor, frames_per_block: int, tokens_per_frame: int) -> torch.Tensor:
        return (frames // frames_per_block).repeat_interleave(tokens_per_frame)

    @classmethod
    def block_causal(cls, q_frames: torch.Tensor, k_frames: torch.Tensor, frames_per_block: int,
                     tokens_per_frame: int) -> "FrameMask":
        """Queries at absolute frame indices `q_frames` over keys at `k_frames` (a cached prefix
        followed by the queries' own frames, or the same frames for a full-sequence forward)."""
        qb = cls._tokens(q_frames, frames_per_block, tokens_per_frame)
        kb = cls._tokens(k_frames, frames_per_block, tokens_per_frame)
        return cls(qb, torch.ones_like(qb, dtype=torch.bool), kb, torch.ones_like(kb, dtype=torch.bool))

    @classmethod
    def teacher_forcing(cls, frames: torch.Tensor, frames_per_block: int,
                        tokens_per_frame: int) -> "FrameMask":
        """Tokens [clean ; noisy] of the same `frames`, queries and keys alike."""
        b = cls._tokens(frames, frames_per_block, tokens_per_frame)
        blocks = torch.cat([b, b])
        clean = torch.cat([torch.ones_like(b, dtype=torch.bool), torch.zeros_like(b, dtype=torch.bool)])
        return cls(blocks, clean, blocks, clean)

    # --- queries about the mask ------------------------------------------------------------
    @staticmethod
    def visible(qb, qc, kb, kc):
        """The rule, elementwise on broadcastable tensors (also used as flex's mask_mod)."""
        clean_q = kc & (kb <= qb)
        noisy_q = (kc & (kb < qb)) | (~kc & (kb == qb))
        return torch.where(qc, clean_q, noisy_q)

    def dense(self, device=None) -> torch.Tensor:
        """[Nq, Nk] bool, True = attend (sdpa's convention)."""
        m = self.visible(self.q_block[:, None], self.q_clean[:, None], self.k_block[None, :], self.k_clean[None, :])
        return m.to(device) if device is not None else m

    def is_full(self) -> bool:
        """True when every query sees every key (then no mask is needed at all)."""
        if "full" not in self._memo:
            self._memo["full"] = self._is_full()
        return self._memo["full"]

    def _is_full(self) -> bool:
        # Groups are few: checking one representative query per group is enough.
        for qb, qc in self._group_keys():
            qb_t = torch.tensor(qb)
            qc_t = torch.tensor(qc)
            if not bool(self.visible(qb_t, qc_t, self.k_block, self.k_clean).all()):
                return False
        return True

    def _group_keys(self) -> list[tuple[int, bool]]:
        pairs = torch.stack([self.q_block, self.q_clean.long()], dim=1).unique(dim=0)
        return [(int(b), bool(c)) for b, c in pairs.tolist()]

    def groups(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(query indices, visible key indices)] — one entry per (block, copy) group of queries.

        Groups are returned as index tensors; a contiguous run is returned as a slice-equivalent
        arange, which backends may turn into a view."""
        if "groups" in self._memo:
            return self._memo["groups"]
        out = []
        for qb, qc in self._group_keys():
            q_idx = torch.nonzero((self.q_block == qb) & (self.q_clean == qc)).flatten()
            k_vis = self.visible(torch.tensor(qb), torch.tensor(qc), self.k_block, self.k_clean)
            out.append((q_idx, torch.nonzero(k_vis).flatten()))
        self._memo["groups"] = out
        return out


def take(x: torch.Tensor, idx: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """x.index_select(dim, idx), as a cheap view when idx is one contiguous run."""
    if idx.numel() > 0 and int(idx[-1] - idx[0]) + 1 == idx.numel():
        return x.narrow(dim, int(idx[0]), idx.numel())
    return x.index_select(dim, idx.to(x.device))
