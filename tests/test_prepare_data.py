"""prepare_data: mp4 files + captions -> shards, with the toy codec and the toy UMT5 asset."""

import json

import pytest
import torch
import torch.nn.functional as F

import oneforcing.jobs.prepare_data  # noqa: F401  (registers "prepare_data" until jobs/__init__ imports it)
from oneforcing.data import LatentShards
from oneforcing.data.videos import read_video, resize_center_crop, write_video
from oneforcing.errors import UserError
from oneforcing.jobs.base import RunContext
from oneforcing.registry import JOBS, TEXT_ENCODERS, build
from oneforcing.toy.codec import ToyCodec
from oneforcing.toy.text_encoder import TOY_MAX_LENGTH, TOY_TEXT_ENCODER_PATH
from oneforcing.toy.world import ToyWorld

TEXT = {"type": "umt5", "path": TOY_TEXT_ENCODER_PATH, "max_length": TOY_MAX_LENGTH}



@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Five 64x80 mp4 clips of 23 frames and a captions CSV: toy videos upscaled 2x and padded
    with background at the sides, so resizing to 32 and centre-cropping gives the scene back."""
    root = tmp_path_factory.mktemp("clips")
    world = ToyWorld("validation", 5, frames=23)
    videos = world.render(range(5))
    lines = ["video,caption"]
    for i, v in enumerate(videos):
        big = F.pad(F.interpolate(v, scale_factor=2, mode="nearest"), (8, 8, 0, 0), mode="replicate")
        write_video(root / f"clip{i}.mp4", big)
        lines.append(f'clip{i}.mp4,"{world.prompts()[i]}"')
    (root / "captions.csv").write_text("\n".join(lines) + "\n")
    return root, world


def _job(root, out, **kw):
    cfg = {"type": "prepare_data", "videos": str(root), "captions": str(root / "captions.csv"),
           "out": str(out), "vae": {"type": "toy_codec"}, "text_encoder": TEXT, "height": 32,
           "width": 32, "frames": 21, "examples_per_shard": 2, "batch_size": 2,
           "latent_dtype": "float32", **kw}
    return build(cfg, JOBS)


def test_round_trip_and_resume(clips, tmp_path):
    root, world = clips
    out = tmp_path / "shards"
    _job(root, out).run(RunContext())
    ds = LatentShards(str(out), shuffle=False)
    assert ds.num_examples == 5 and len(ds.shards) == 3
    codec, text = ToyCodec(), build(TEXT, TEXT_ENCODERS)
    for i, item in enumerate(ds):
        video = resize_center_crop(read_video(root / f"clip{i}.mp4")[:21], 32, 32)
        assert torch.equal(item["latent"], codec.encode(video[None])[0])
        assert torch.equal(item["prompt_embed"], text.encode([world.prompts()[i]])[0])
        assert item["prompt"] == world.prompts()[i] and item["metadata"] == {"source": f"clip{i}.mp4"}
        # what comes back decodes to the scene (up to resampling and mp4 rounding)
        # antialiased resampling blurs edges slightly
        assert (codec.decode(item["latent"][None])[0] - world.render([i])[0, :21]).abs().mean() < 0.06  # + the PCA codec (16 of 48 components)

    (out / "shard-00001.safetensors").unlink()
    stamp = (out / "shard-00000.safetensors").stat().st_mtime_ns
    _job(root, out).run(RunContext())
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == stamp
    assert [it["index"] for it in LatentShards(str(out), shuffle=False)] == list(range(5))


def test_jsonl_captions_and_frame_stride(clips, tmp_path):
    root, world = clips
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text("".join(json.dumps({"file": f"clip{i}.mp4", "prompt": p}) + "\n"
                             for i, p in enumerate(world.prompts()[:3])))
    _job(root, tmp_path / "s", captions=str(jsonl), frames=11, frame_stride=2).run(RunContext())
    ds = LatentShards(str(tmp_path / "s"), shuffle=False)
    assert ds.num_examples == 3 and ds.fields["latent"]["shape"] == [11, 16, 8, 8]


def test_user_errors(clips, tmp_path):
    root, _ = clips
    bad = tmp_path / "bad.csv"
    bad.write_text("video,caption\nclip0.mp4,ok\nmissing.mp4,gone\n")
    with pytest.raises(UserError, match=r"bad\.csv:3: video not found"):
        _job(root, tmp_path / "a", captions=str(bad)).run(RunContext())
    bad.write_text("clip,words\nclip0.mp4,ok\n")
    with pytest.raises(UserError, match=r"bad\.csv:2: need a video column"):
        _job(root, tmp_path / "b", captions=str(bad)).run(RunContext())
    with pytest.raises(UserError, match=r"clip0\.mp4: has 23 frames, prepare_data needs 41"):
        _job(root, tmp_path / "c", frames=41).run(RunContext())
    # A VAE that does not load leaves `out` unclaimed: the corrected re-run is not blocked.
    with pytest.raises(UserError):
        _job(root, tmp_path / "d", vae={"type": "wan_vae", "path": str(tmp_path / "no_vae")}).run(RunContext())
    assert not (tmp_path / "d").exists()
    _job(root, tmp_path / "d", examples_per_shard=5).run(RunContext())


def test_with_tiny_wan_vae_and_umt5(clips, tmp_path):
    """The real code path: a tiny diffusers AutoencoderKLWan and a tiny UMT5, as a Wan pipeline
    folder; 21 frames -> 1 + 20/4 = 6 latent frames at 1/8 the resolution."""
    from oneforcing.models import UMT5TextEncoder, WanVAE
    from oneforcing.testing.tiny_encoders import save_tiny_encoders

    root, world = clips
    wan = save_tiny_encoders(tmp_path / "wan", z_dim=4, extra_words=world.prompts())
    vae, text = {"type": "wan_vae", "path": str(wan)}, {"type": "umt5", "path": str(wan), "max_length": 16}
    job = _job(root, tmp_path / "out", vae=vae, text_encoder=text)
    job.run(RunContext())
    ds = LatentShards(str(tmp_path / "out"), shuffle=False)
    assert ds.num_examples == 5 and ds.fields["latent"]["shape"] == [6, 4, 4, 4]
    encoder, codec = UMT5TextEncoder(path=str(wan), max_length=16), WanVAE(path=str(wan))
    for i, item in enumerate(ds):
        assert torch.equal(item["prompt_embed"], encoder.encode([world.prompts()[i]])[0])
        video = resize_center_crop(read_video(root / f"clip{i}.mp4")[:21], 32, 32)
        torch.testing.assert_close(item["latent"], codec.encode(video[None])[0], atol=1e-5, rtol=1e-5)
