"""Toy prompt embeddings back to prompts: the toy text encoder inverted over the toy grammar.

The analytic toy teacher is called like the learned one, with prompt *embeddings* [B, L, D], but
needs the prompt's attributes. The toy grammar has two fixed templates (one or two objects); an
embedding's number of non-zero rows (tokens + </s>, padding is zeroed) says which, and each
template slot has at most six words. Coordinate descent over the slots (encode every word of one
slot with the others fixed, keep the closest, sweep until nothing changes) recovers the prompt;
the result is accepted only if its own embedding matches the input, so a wrong answer is an
error, never a silent guess. Each slot's word dominates its own output row, so one or two sweeps
suffice (tests/test_toy_analytic_teacher.py decodes every test prompt).
"""

from __future__ import annotations

import torch

from oneforcing.errors import UserError
from oneforcing.toy.world import BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES, SIZES, SPEEDS

_OBJECT = [("a",), tuple(SIZES), tuple(COLOURS), SHAPES, ("moving",), tuple(DIRECTIONS), tuple(SPEEDS)]
_TAIL = [("on",), ("a",), tuple(BACKGROUNDS), ("background",)]
TEMPLATES = {  # non-zero embedding rows (words + </s>) -> the slots' word choices
    1: [],                                        # the empty prompt: just </s>
    len(_OBJECT) + len(_TAIL) + 1: _OBJECT + _TAIL,
    2 * len(_OBJECT) + 1 + len(_TAIL) + 1: _OBJECT + [("and",)] + _OBJECT + _TAIL,
}
MAX_SWEEPS = 6
REL_TOL = 1e-3  # squared distance / squared norm; another word in any slot is >= 100x that apart


class ToyPromptDecoder:
    """`decode(embedding [L, D]) -> prompt` for embeddings made by `encoder` (a UMT5TextEncoder)."""

    def __init__(self, encoder):
        self.encoder = encoder

    def _distances(self, prompts: list[str], target: torch.Tensor) -> torch.Tensor:
        emb = self.encoder.encode(prompts).float()
        n = min(emb.shape[1], target.shape[0])
        return ((emb[:, :n] - target[None, :n]) ** 2).sum(dim=(1, 2))

    @torch.no_grad()
    def decode(self, embedding: torch.Tensor) -> str:
        target = embedding.detach().float().cpu()
        rows = int(target.abs().sum(-1).gt(0).sum())
        if rows not in TEMPLATES:
            raise UserError(f"toy analytic teacher: a text embedding with {rows} non-zero rows is not a "
                            f"toy-world prompt (expected {sorted(TEMPLATES)}); was it made by the toy text encoder?")
        slots = TEMPLATES[rows]
        words = [options[0] for options in slots]
        scale = float((target ** 2).sum()) + 1e-12
        for _ in range(MAX_SWEEPS):
            changed = False
            for i, options in enumerate(slots):
                if len(options) == 1:
                    continue
                candidates = [" ".join(words[:i] + [w] + words[i + 1:]) for w in options]
                best = options[int(self._distances(candidates, target).argmin())]
                changed |= best != words[i]
                words[i] = best
            if not changed:
                break
        prompt = " ".join(words)
        if float(self._distances([prompt], target)[0]) > REL_TOL * scale:
            raise UserError("toy analytic teacher: this text embedding is not the toy text encoder's embedding "
                            "of any toy-world prompt (the teacher needs the toy UMT5 asset's embeddings)")
        return prompt
