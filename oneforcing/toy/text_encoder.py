"""The toy text encoder asset: a word-level tokenizer + a tiny random UMT5 encoder, in HF format.

    python -m oneforcing.toy.text_encoder [OUT_DIR]

rebuilds `oneforcing/assets/toy_text_encoder/{tokenizer,text_encoder}/` (the layout of a Wan
diffusers pipeline) offline and deterministically: the vocabulary is the toy-world grammar's
words, the weights are `UMT5EncoderModel`'s own initialisation under `torch.manual_seed(0)`.
A random encoder is enough for the toy world: distinct prompts get distinct, stable embeddings,
and the generator learns the mapping. Load it with `AutoTokenizer.from_pretrained(.../tokenizer)`
and `UMT5EncoderModel.from_pretrained(.../text_encoder)`, or through the registered "umt5" encoder
with `path` = the asset folder and `max_length` = TOY_MAX_LENGTH.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from oneforcing.config.assets import TOY_TEXT_ENCODER
from oneforcing.toy.world import VOCABULARY

# Named once, by the core (config/assets.py): its teacher jobs default to this encoder.
TOY_TEXT_ENCODER_PATH, TOY_MAX_LENGTH = TOY_TEXT_ENCODER["path"], TOY_TEXT_ENCODER["max_length"]
SPECIALS = ("<pad>", "</s>", "<unk>")  # T5's ids: pad 0, eos 1, unk 2


def build_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *VOCABULARY])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # T5 appends </s> to every sequence; so does this one.
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=TOY_MAX_LENGTH,
                                   padding_side="right")


def build_text_encoder(vocab_size: int, seed: int = 0):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=0.0,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    return UMT5EncoderModel(config).eval()


def build_asset(out_dir: str = TOY_TEXT_ENCODER_PATH) -> str:
    """Write tokenizer/ and text_encoder/ under `out_dir` (each folder replaced atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    vocab_size = -(-len(tokenizer) // 8) * 8  # rounded up, as real checkpoints pad the table
    model = build_text_encoder(vocab_size)
    for name, obj in (("tokenizer", tokenizer), ("text_encoder", model)):
        tmp = out / f".{name}.tmp{os.getpid()}"
        obj.save_pretrained(str(tmp), **({"safe_serialization": True} if name == "text_encoder" else {}))
        final = out / name
        if final.exists():
            old = out / f".{name}.old{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            for p in sorted(old.rglob("*"), reverse=True):
                p.unlink() if p.is_file() else p.rmdir()
            old.rmdir()
        else:
            os.replace(tmp, final)
    return str(out)


def load_toy_text_encoder(path: str = TOY_TEXT_ENCODER_PATH):
    from transformers import AutoTokenizer, UMT5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(os.path.join(path, "tokenizer"))
    model = UMT5EncoderModel.from_pretrained(os.path.join(path, "text_encoder"), use_safetensors=True).eval()
    return tokenizer, model


if __name__ == "__main__":
    print(build_asset(sys.argv[1] if len(sys.argv) > 1 else TOY_TEXT_ENCODER_PATH))
