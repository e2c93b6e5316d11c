import math
"""The toy world, the toy codec and the toy text-encoder asset."""

from pathlib import Path

import pytest
import torch

from oneforcing.errors import UserError
from oneforcing.registry import DATASETS, VAES, build
from oneforcing.toy.codec import ToyCodec
from oneforcing.toy.text_encoder import TOY_MAX_LENGTH, TOY_TEXT_ENCODER_PATH, build_asset
from oneforcing.toy.world import (
    HELDOUT_PAIRS, VOCABULARY, ToyWorld, example_seed, parse_prompt, render_scenes, sample_scene,
)



def test_deterministic_and_disjoint_splits():
    a = ToyWorld("train", 8, seed=3)
    b = build({"type": "toy_world", "split": "train", "num_examples": 8, "seed": 3}, DATASETS)
    assert a.prompts() == b.prompts()
    assert torch.equal(a.render(range(8)), b.render(range(8)))
    assert a.prompts() != ToyWorld("train", 8, seed=4).prompts()
    seeds = {s: {example_seed(0, s, i) for i in range(2000)} for s in ("train", "validation", "test", "heldout")}
    assert all(len(v) == 2000 for v in seeds.values())
    assert not seeds["train"] & (seeds["validation"] | seeds["test"] | seeds["heldout"])
    assert not seeds["validation"] & seeds["test"]


def test_heldout_pairs_only_in_heldout_split():
    for split in ("train", "validation", "test"):
        for i in range(300):
            assert not any((o["colour"], o["shape"]) in HELDOUT_PAIRS for o in sample_scene(0, split, i)["objects"])
    for i in range(100):
        s = sample_scene(0, "heldout", i)
        assert (s["objects"][0]["colour"], s["objects"][0]["shape"]) in HELDOUT_PAIRS


def test_prompt_grammar_round_trip():
    counts = set()
    for i in range(400):
        s = sample_scene(1, "train", i)
        parsed = parse_prompt(s["prompt"])
        assert parsed["background"] == s["background"]
        keys = ("size", "colour", "shape", "direction", "speed")
        assert parsed["objects"] == [{k: o[k] for k in keys} for o in s["objects"]]
        assert set(s["prompt"].split()) <= set(VOCABULARY)
        counts.add(len(s["objects"]))
    assert counts == {1, 2}
    with pytest.raises(UserError, match="grammar"):
        parse_prompt("a purple dragon flying")


def test_render_range_motion_and_objects_inside():
    scenes = [sample_scene(0, "train", i) for i in range(64)]
    v = render_scenes(scenes)
    assert v.shape == (64, 21, 3, 32, 32) and v.min() >= -1 and v.max() <= 1
    # 8-bit levels, like decoded video
    assert torch.allclose((v + 1) * 127.5, ((v + 1) * 127.5).round(), atol=1e-3)
    # every object moves: consecutive frames differ in every video
    assert ((v[:, 1:] - v[:, :-1]).abs().amax(dim=(2, 3, 4)) > 0.1).all()
    for s in scenes:  # every object stays whole inside the frame
        for o in s["objects"]:
            for t in (0, s["frames"] - 1):
                x, y = (o["start"][k] + o["velocity"][k] * t for k in (0, 1))
                assert o["radius"] <= x <= 32 - o["radius"] and o["radius"] <= y <= 32 - o["radius"]


def test_codec_round_trip_and_interface():
    codec = build({"type": "toy_codec"}, VAES)
    assert isinstance(codec, ToyCodec)
    v = ToyWorld("validation", 16).render(range(16))
    z = codec.encode(v)
    assert z.shape == (16, 21, 16, 8, 8) and codec.latent_channels == 16
    assert (codec.temporal_factor, codec.spatial_factor) == (1, 4)
    assert codec.num_latent_frames(21) == 21 and codec.num_video_frames(21) == 21
    assert abs(z.mean().item()) < 0.1 and abs(z.std().item() - 1) < 0.1  # normalised components
    # PCA keeps 16 of 48 patch components: lossy like a VAE, but close (PSNR > 27 dB on [-1, 1]).
    mse = ((codec.decode(z) - v) ** 2).mean().item()
    assert 10 * math.log10(4 / mse) > 27
    # decode(encode(decode(z))) == decode(z): the codec is a projection.
    torch.testing.assert_close(codec.encode(codec.decode(z)), z, atol=1e-4, rtol=0)


def test_exact_codec_round_trip():
    codec = build({"type": "toy_codec", "channels": None}, VAES)
    v = ToyWorld("validation", 16).render(range(16))
    z = codec.encode(v)
    assert z.shape == (16, 21, 48, 8, 8) and codec.latent_channels == 48
    assert torch.allclose(codec.decode(z), v, atol=1e-6)
    # fp16 storage keeps the 8-bit video exact after rounding
    back = codec.decode(z.half().float())
    assert torch.equal(((back + 1) * 127.5).round(), ((v + 1) * 127.5).round())


def test_codec_basis_asset_rebuilds_exactly():
    from safetensors.torch import load_file

    from oneforcing.toy.codec import PCA_ASSET
    from oneforcing.toy.codec_fit import fit_pca

    shipped, rebuilt = load_file(str(PCA_ASSET)), fit_pca()
    for key in ("components", "mean", "std"):
        torch.testing.assert_close(rebuilt[key], shipped[key], atol=1e-5, rtol=1e-5)
    assert rebuilt["explained"][:16].sum() > 0.99


def test_text_encoder_asset_loads_offline_and_rebuilds(tmp_path):
    from transformers import AutoTokenizer, UMT5EncoderModel
    from safetensors.torch import load_file

    asset = Path(TOY_TEXT_ENCODER_PATH)
    assert sum(p.stat().st_size for p in asset.rglob("*") if p.is_file()) < 2_000_000
    tok = AutoTokenizer.from_pretrained(asset / "tokenizer")
    model = UMT5EncoderModel.from_pretrained(asset / "text_encoder")
    prompts = [sample_scene(0, "train", i)["prompt"] for i in range(32)]
    batch = tok(prompts, padding="max_length", max_length=TOY_MAX_LENGTH, truncation=True, return_tensors="pt")
    assert (batch.input_ids != tok.unk_token_id).all()
    assert (batch.input_ids[batch.attention_mask.sum(1) == TOY_MAX_LENGTH] == 0).sum() == 0  # none truncated
    out = model(**batch).last_hidden_state
    assert out.shape == (32, TOY_MAX_LENGTH, model.config.d_model) and torch.isfinite(out).all()
    # the build script reproduces the asset exactly
    build_asset(str(tmp_path))
    a = load_file(asset / "text_encoder" / "model.safetensors")
    b = load_file(tmp_path / "text_encoder" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "tokenizer" / "tokenizer.json").read_text() == (asset / "tokenizer" / "tokenizer.json").read_text()
