"""Folders in the exact Wan2.1-T2V-1.3B-Diffusers / 14B-Diffusers layout, real widths, random weights.

    root/Wan2.1-T2V-1.3B-Diffusers/
      model_index.json                WanPipeline's index
      scheduler/scheduler_config.json UniPCMultistepScheduler, flow shift 3.0 (as shipped)
      tokenizer/                      word level (UMT5-XXL's 256k-word SentencePiece model is not
                                      available offline); everything else is UMT5-XXL's config
      text_encoder/                   UMT5EncoderModel: d_model 4096, 64 heads x 64, FFN 10240
      transformer/                    WanTransformer3DModel: 1.3B = 12 heads x 128, FFN 8960;
                                      14B = 40 heads x 128, FFN 13824; text dim 4096, 16 channels
      vae/                            AutoencoderKLWan with Wan2.1's config (diffusers' defaults)

Only the number of layers (`layers`, `text_layers`) and the vocabulary differ from the released
checkpoints, so the real recipes, `prepare-data` and `generate` run on them unchanged, by path.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from oneforcing.testing.tiny_encoders import DEFAULT_WORDS, _seeded, build_tiny_tokenizer

WAN_TRANSFORMER = {  # transformer/config.json of Wan-AI/Wan2.1-T2V-1.3B-Diffusers
    "_class_name": "WanTransformer3DModel", "added_kv_proj_dim": None, "attention_head_dim": 128,
    "cross_attn_norm": True, "eps": 1e-06, "ffn_dim": 8960, "freq_dim": 256, "image_dim": None,
    "in_channels": 16, "num_attention_heads": 12, "num_layers": 30, "out_channels": 16,
    "patch_size": [1, 2, 2], "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024, "text_dim": 4096,
}
WAN_SIZES = {"1.3B": {}, "14B": {"num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40}}
UMT5_XXL = {  # text_encoder/config.json (google/umt5-xxl's encoder)
    "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "dropout_rate": 0.1,
    "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6, "pad_token_id": 0, "eos_token_id": 1,
    "decoder_start_token_id": 0, "tie_word_embeddings": False, "vocab_size": 256384,
}
SCHEDULER = {"_class_name": "UniPCMultistepScheduler", "num_train_timesteps": 1000, "prediction_type": "flow_prediction",
             "use_flow_sigmas": True, "flow_shift": 3.0, "solver_order": 2, "predict_x0": True}
MODEL_INDEX = {"_class_name": "WanPipeline", "scheduler": ["diffusers", "UniPCMultistepScheduler"],
               "text_encoder": ["transformers", "UMT5EncoderModel"], "tokenizer": ["transformers", "T5TokenizerFast"],
               "transformer": ["diffusers", "WanTransformer3DModel"], "vae": ["diffusers", "AutoencoderKLWan"]}
FOLDER = {"1.3B": "Wan2.1-T2V-1.3B-Diffusers", "14B": "Wan2.1-T2V-14B-Diffusers"}
# `narrow=True`: the same layout and keys at a width a CPU runs in seconds (the test suite's copy of
# the real chain): 2 heads x 64 (4 x 32 for the 14B folder), a 64-wide UMT5 and the transformer's
# text_dim to match, a VAE of base_dim 8 (its z_dim stays Wan's 16).
NARROW = {"1.3B": {"num_attention_heads": 2, "attention_head_dim": 64, "ffn_dim": 128, "freq_dim": 32,
                   "text_dim": 64},
          "14B": {"num_attention_heads": 4, "attention_head_dim": 32, "ffn_dim": 128, "freq_dim": 32,
                  "text_dim": 64}}
NARROW_UMT5 = {"d_model": 64, "d_kv": 16, "d_ff": 128, "num_heads": 4}
NARROW_VAE = {"base_dim": 8, "z_dim": 16}


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def wan_config(size: str = "1.3B", layers: int | None = None, narrow: bool = False) -> dict:
    """The released transformer config of `size`, optionally with fewer layers (or `narrow`)."""
    cfg = {**WAN_TRANSFORMER, **WAN_SIZES[size], **(NARROW[size] if narrow else {})}
    return cfg if layers is None else {**cfg, "num_layers": layers}


def save_real_layout(root: str | Path, size: str = "1.3B", *, layers: int = 1, text_layers: int = 1,
                     words: list[str] | tuple[str, ...] = DEFAULT_WORDS, dtype: torch.dtype = torch.bfloat16,
                     seed: int = 0, transformer_only: bool = False, narrow: bool = False,
                     device: str | torch.device = "cpu") -> Path:
    """Write root/Wan2.1-T2V-{size}-Diffusers with random weights stored in `dtype` (the released
    files are bf16 for the transformer; fp32 for the VAE); returns the folder. `transformer_only`
    leaves out text_encoder/, tokenizer/ and vae/ (the caller links them: they are the same
    files in both released folders). `narrow`: see NARROW. `device`: where the transformer's
    random init runs (a GPU draws the 14B's 28 GB of weights in seconds; a CPU takes minutes)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    out = Path(root) / FOLDER[size]
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    (out / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2) + "\n")
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2) + "\n")
    cfg = {k: v for k, v in wan_config(size, layers, narrow).items() if k != "_class_name"}
    with _seeded(seed), _default_dtype(dtype), torch.device(device):  # born in bf16: a 14B block is 1.4 GB in fp32
        WanTransformer3DModel(**cfg).save_pretrained(str(out / "transformer"), safe_serialization=True)
    if transformer_only:
        return out
    tokenizer = build_tiny_tokenizer(words)
    tokenizer.save_pretrained(out / "tokenizer")
    text_cfg = UMT5Config(**{**UMT5_XXL, **(NARROW_UMT5 if narrow else {}), "num_layers": text_layers,
                             "vocab_size": len(tokenizer)})
    with _seeded(seed + 1), _default_dtype(dtype):
        UMT5EncoderModel(text_cfg).save_pretrained(out / "text_encoder", safe_serialization=True)
    with _seeded(seed + 2):
        AutoencoderKLWan(**(NARROW_VAE if narrow else {})).save_pretrained(str(out / "vae"), safe_serialization=True)
    return out
