"""UMT5 text encoder: loads a (tiny, offline) Wan diffusers layout, zeroes padding like WanPipeline."""

from types import SimpleNamespace

import pytest
import torch

from oneforcing.errors import UserError
from oneforcing.models.text_encoder import WAN_NEGATIVE_PROMPT, UMT5TextEncoder, clean_prompt
from oneforcing.registry import TEXT_ENCODERS, build
from oneforcing.testing.tiny_encoders import save_tiny_text_encoder

L = 16


@pytest.fixture(scope="module")
def wan_root(tmp_path_factory):
    return save_tiny_text_encoder(tmp_path_factory.mktemp("wan_te"), d_model=32, seed=3)


@pytest.fixture(scope="module")
def enc(wan_root):
    return UMT5TextEncoder(path=str(wan_root), max_length=L)


def test_shapes_and_attributes(enc):
    emb = enc.encode(["a red ball", "a blue cube moves left slowly"])
    assert emb.shape == (2, L, enc.dim) and enc.dim == 32 and enc.max_length == L
    assert emb.dtype == torch.float32 and not emb.requires_grad
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    enc.train()  # a trainer's blanket .train() must not unfreeze it
    assert not enc.training and not enc.model.training


def test_padding_zeroed(enc):
    prompts = ["a red ball", "a blue cube moves left slowly"]
    emb, mask = enc.encode(prompts, return_mask=True)
    lengths = mask.sum(1).tolist()
    assert lengths == [4, 7]  # words + </s>
    for row, n in zip(emb, lengths):
        assert row[n:].abs().max() == 0  # exactly zero, not small
        assert (row[:n].abs().sum(-1) > 0).all()


def test_matches_diffusers_wan_pipeline(enc):
    """Same numbers as WanPipeline._get_t5_prompt_embeds on the same tokenizer + encoder."""
    from diffusers import WanPipeline

    prompts = ["a red  ball &amp; a dog", "the cat runs"]
    fake_pipe = SimpleNamespace(tokenizer=enc.tokenizer, text_encoder=enc.model)
    ref = WanPipeline._get_t5_prompt_embeds(fake_pipe, prompt=prompts, max_sequence_length=L,
                                            device=torch.device("cpu"), dtype=torch.float32)
    torch.testing.assert_close(enc.encode(prompts), ref, rtol=0, atol=0)


def test_batch_independent_and_truncated(enc):
    both = enc.encode(["a dog", "a green bird flies up in the sky"])
    torch.testing.assert_close(both[0], enc.encode(["a dog"])[0])
    long = enc.encode([" ".join(["a dog runs"] * 20)])
    assert (long[0].abs().sum(-1) > 0).all()  # truncated to max_length, no padding left


def test_negative_prompt(enc):
    assert enc.negative_prompt == WAN_NEGATIVE_PROMPT and "色调艳丽" in WAN_NEGATIVE_PROMPT
    neg = enc.encode_negative(3)
    assert neg.shape == (3, L, enc.dim)
    torch.testing.assert_close(neg[2], enc.encode([WAN_NEGATIVE_PROMPT])[0])


def test_explicit_subfolders_and_registry(wan_root, enc):
    other = build({"type": "umt5", "text_encoder_path": str(wan_root / "text_encoder"),
                   "tokenizer_path": str(wan_root / "tokenizer"), "max_length": L}, TEXT_ENCODERS)
    torch.testing.assert_close(other.encode(["a cat"]), enc.encode(["a cat"]))


def test_clean_prompt():
    assert clean_prompt("  a &amp;amp;  b\n c ") == "a & b c"


def test_missing_directory_names_it(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match="nowhere"):
        UMT5TextEncoder(path=str(missing))
    with pytest.raises(UserError, match="config.json"):
        UMT5TextEncoder(path=str(tmp_path))
    with pytest.raises(UserError, match="path"):
        UMT5TextEncoder()
