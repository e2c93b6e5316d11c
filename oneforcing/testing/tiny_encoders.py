"""Tiny, offline stand-ins for Wan's UMT5 text encoder and VAE, saved in the diffusers layout.

    root/
      tokenizer/      PreTrainedTokenizerFast (word level), loads with AutoTokenizer
      text_encoder/   UMT5EncoderModel (random init from a seed)
      vae/            AutoencoderKLWan (random init from a seed, non-trivial latents_mean/std)

Tests load them through exactly the code path the real Wan2.1 checkpoints use
(`UMT5TextEncoder(path=root)`, `WanVAE(path=root)`), so nothing here may need the hub.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import torch

# A small vocabulary: enough words that test prompts tokenise to distinct, non-<unk> ids.
DEFAULT_WORDS = (
    "a red green blue yellow white black ball cube square circle dog cat car bird fish "
    "moves jumps runs flies falls rolls left right up down slowly quickly in on the of and "
    "with sky water grass street city night day background"
).split()

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2: T5's pad / eos / unk convention


@contextlib.contextmanager
def _seeded(seed: int):
    """A forked RNG so building a tiny model never disturbs the caller's global torch state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_tiny_tokenizer(words: list[str] | tuple[str, ...] = DEFAULT_WORDS, model_max_length: int = 512):
    """A lower-casing, whitespace/punctuation-splitting word-level tokenizer that appends `</s>`
    like T5's, wrapped as a PreTrainedTokenizerFast (so AutoTokenizer can load it back)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        w = w.lower()
        if w not in vocab:
            vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        model_max_length=model_max_length, padding_side="right",
    )


def build_tiny_umt5(vocab_size: int, d_model: int = 32, seed: int = 0):
    """A 2-layer UMT5 encoder with the real model's structure (relative buckets per layer)."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=32,
        dropout_rate=0.0, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )
    with _seeded(seed):
        model = UMT5EncoderModel(config)
    return model.eval()


def build_tiny_wan_vae(z_dim: int = 4, base_dim: int = 8, seed: int = 0):
    """A tiny AutoencoderKLWan with Wan2.1's 4x temporal / 8x spatial structure.

    latents_mean / latents_std are drawn from the seed (not 0 / 1) so that a test of the
    normalisation can tell whether it was applied, and applied the right way round."""
    from diffusers import AutoencoderKLWan

    with _seeded(seed):
        mean = (torch.randn(z_dim) * 0.3).tolist()
        std = (torch.rand(z_dim) * 1.5 + 0.5).tolist()
        vae = AutoencoderKLWan(
            base_dim=base_dim, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1, attn_scales=[],
            temperal_downsample=[False, True, True], dropout=0.0,
            latents_mean=mean, latents_std=std,
        )
    return vae.eval()


def save_tiny_text_encoder(root: str | Path, *, words: list[str] | tuple[str, ...] = DEFAULT_WORDS,
                           d_model: int = 32, seed: int = 0) -> Path:
    """Write `root/tokenizer` and `root/text_encoder`; returns root."""
    root = Path(root)
    tokenizer = build_tiny_tokenizer(words)
    tokenizer.save_pretrained(root / "tokenizer")
    model = build_tiny_umt5(len(tokenizer), d_model=d_model, seed=seed)
    model.save_pretrained(root / "text_encoder")
    return root


def save_tiny_wan_vae(root: str | Path, *, z_dim: int = 4, base_dim: int = 8, seed: int = 0) -> Path:
    """Write `root/vae` (diffusers layout); returns root."""
    root = Path(root)
    build_tiny_wan_vae(z_dim=z_dim, base_dim=base_dim, seed=seed).save_pretrained(root / "vae")
    return root


def save_tiny_encoders(root: str | Path, *, z_dim: int = 4, d_model: int = 32, seed: int = 0,
                       extra_words: list[str] | tuple[str, ...] = ()) -> Path:
    """Tokenizer, text encoder and VAE under one Wan-pipeline-shaped root."""
    words = list(DEFAULT_WORDS) + [w for p in extra_words for w in re.findall(r"\w+", p.lower())]
    save_tiny_text_encoder(root, words=words, d_model=d_model, seed=seed)
    save_tiny_wan_vae(root, z_dim=z_dim, seed=seed + 1)
    return Path(root)
