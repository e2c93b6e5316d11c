"""UMT5 prompt encoder, matching how diffusers' WanPipeline embeds prompts.

Wan2.1 conditions on UMT5-XXL's last hidden state at 512 tokens x 4096, with every position
after the prompt's own tokens (its `</s>` included) set to exactly zero. The zeroing matters:
UMT5 still writes non-zero states at padded positions, and the Wan transformer was trained on
zeros there, so a re-implementation that skipped it would condition on different text.

The encoder is frozen: a plain module (never handed to DeepSpeed), in eval mode, no grad.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import torch
from torch import nn

from oneforcing.errors import UserError
from oneforcing.registry import TEXT_ENCODERS

# Wan2.1's own default negative prompt (its `sample_neg_prompt`), used by the teacher's CFG.
# It is Chinese on purpose: the Wan teachers were tuned with this exact string.
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，"
    "形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(name: str, *, key: str = "dtype") -> torch.dtype:
    if name not in _DTYPES:
        raise UserError(f"{key}: unknown dtype '{name}' (one of {', '.join(_DTYPES)})")
    return _DTYPES[name]


def clean_prompt(text: str) -> str:
    """WanPipeline's prompt_clean: fix mojibake (if ftfy is installed), unescape HTML twice,
    collapse whitespace. Applied before tokenising so our embeddings equal diffusers'."""
    try:
        import ftfy  # optional, as in diffusers
        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def _has_weights(d: Path) -> bool:
    return (d / "config.json").is_file()


def _resolve(path: str | None, text_encoder_path: str | None, tokenizer_path: str | None) -> tuple[Path, Path]:
    """Accept a Wan pipeline root (text_encoder/ + tokenizer/), a single directory holding both,
    or the two sub-directories given explicitly (which win over `path`)."""
    if path is None and (text_encoder_path is None or tokenizer_path is None):
        raise UserError("umt5 text encoder: give 'path' (a Wan diffusers root) or both "
                        "'text_encoder_path' and 'tokenizer_path'")
    if path is not None:
        root = Path(path).expanduser()
        if not root.is_dir():
            raise UserError(f"text encoder directory not found: {root}")
        nested = (root / "text_encoder", root / "tokenizer")
        enc_dir, tok_dir = nested if nested[0].is_dir() else (root, root)
    if text_encoder_path is not None:
        enc_dir = Path(text_encoder_path).expanduser()
    if tokenizer_path is not None:
        tok_dir = Path(tokenizer_path).expanduser()
    for what, d in (("text encoder", enc_dir), ("tokenizer", tok_dir)):
        if not d.is_dir():
            raise UserError(f"{what} directory not found: {d}")
    if not _has_weights(enc_dir):
        raise UserError(f"no UMT5 config.json in {enc_dir} (expected a text_encoder/ saved by transformers)")
    return enc_dir, tok_dir


@TEXT_ENCODERS.register("umt5")
class UMT5TextEncoder(nn.Module):
    """Frozen UMT5 encoder: `encode(prompts) -> [B, max_length, dim]`, padding zeroed.

    `path` is a Wan diffusers root (e.g. Wan2.1-T2V-1.3B-Diffusers) or a directory holding both
    the encoder and the tokenizer; `text_encoder_path` / `tokenizer_path` override either part.
    """

    def __init__(self, path: str | None = None, text_encoder_path: str | None = None,
                 tokenizer_path: str | None = None, max_length: int = 512, dtype: str = "float32",
                 device: str | None = None, negative_prompt: str = WAN_NEGATIVE_PROMPT,
                 clean: bool = True):
        super().__init__()
        from transformers import AutoTokenizer, UMT5EncoderModel

        if max_length < 1:
            raise UserError(f"max_length must be positive, got {max_length}")
        enc_dir, tok_dir = _resolve(path, text_encoder_path, tokenizer_path)
        torch_dtype = parse_dtype(dtype)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load a tokenizer from {tok_dir}: {str(exc).splitlines()[0]}") from None
        from transformers.utils import logging as hf_logging

        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a bar per load would be the only other stderr line
        try:  # safetensors only: a pickled pytorch_model.bin could run code when loaded
            self.model = UMT5EncoderModel.from_pretrained(str(enc_dir), dtype=torch_dtype, use_safetensors=True)
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        self.model.requires_grad_(False)
        self.model.eval()
        if device is not None:
            self.model.to(device)
        self.max_length = int(max_length)
        self.dim = int(self.model.config.d_model)
        self.dtype = torch_dtype
        self.negative_prompt = negative_prompt
        self.clean = bool(clean)
        self._neg_cache: torch.Tensor | None = None
        self.eval()

    def train(self, mode: bool = True) -> "UMT5TextEncoder":
        # Frozen: a trainer calling .train() on its modules must not switch dropout on here.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """ids and attention mask, [B, max_length] each; long prompts are truncated."""
        if isinstance(prompts, str):
            prompts = [prompts]
        texts = [clean_prompt(p) if self.clean else p for p in prompts]
        out = self.tokenizer(texts, padding="max_length", max_length=self.max_length, truncation=True,
                             add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        return out.input_ids, out.attention_mask

    @torch.no_grad()
    def encode(self, prompts: list[str], return_mask: bool = False):
        """[B, max_length, dim] in the encoder's dtype; rows past each prompt's length are 0.

        With return_mask=True also returns the [B, max_length] bool mask of real tokens."""
        ids, mask = self.tokenize(prompts)
        dev = self.device
        hidden = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).last_hidden_state
        keep = mask.to(dev).gt(0)
        # Zero exactly as WanPipeline does (slice to the length, pad with zeros); a mask multiply
        # would give the same values but would let NaN/inf at padded positions leak through.
        emb = torch.where(keep.unsqueeze(-1), hidden, torch.zeros((), dtype=hidden.dtype, device=dev))
        emb = emb.to(self.dtype)
        return (emb, keep) if return_mask else emb

    def forward(self, prompts: list[str]) -> torch.Tensor:
        return self.encode(prompts)

    @torch.no_grad()
    def encode_negative(self, batch: int = 1) -> torch.Tensor:
        """The negative prompt's embedding repeated to [batch, max_length, dim] (encoded once)."""
        if self._neg_cache is None or self._neg_cache.device != self.device:
            self._neg_cache = self.encode([self.negative_prompt])
        return self._neg_cache.expand(batch, -1, -1).clone()
