"""The generate job, end to end on tiny offline models: tiny CausalWan (diffusers folder or a
training checkpoint's ema/ / generator/), tiny UMT5 + tokenizer, tiny Wan VAE -> playable mp4s."""

import json

import pytest

from oneforcing.errors import UserError
import oneforcing.models.text_encoder  # noqa: F401  (registers umt5 even before models/__init__ does)
import oneforcing.models.wan_vae  # noqa: F401
from oneforcing.jobs.base import RunContext
from oneforcing.jobs.generate import Generate, load_prompts, slugify
from oneforcing.jobs.shared import resolve_model_dir
from oneforcing.registry import JOBS, build
from oneforcing.testing.tiny_encoders import save_tiny_encoders
from oneforcing.video import read_mp4

tiny_wan = pytest.importorskip("oneforcing.testing.tiny_wan")
pytest.importorskip("oneforcing.models.causal_wan")
pytest.importorskip("oneforcing.samplers.causal_inference")

FRAMES, H, W = 9, 32, 32  # -> latents [3, 4, 4, 4]: 4 tokens per frame at patch (1, 2, 2)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen_assets")
    enc = save_tiny_encoders(root / "wan", z_dim=tiny_wan.TINY_WAN_CONFIG["in_channels"],
                             d_model=tiny_wan.TINY_WAN_CONFIG["text_dim"], seed=1)
    tiny_wan.save_tiny_wan(root / "student", seed=2)
    ckpt = root / "checkpoint-000010"
    tiny_wan.save_tiny_wan(ckpt / "generator", seed=3)
    tiny_wan.save_tiny_wan(ckpt / "ema", seed=4)
    return {"encoders": enc, "student": root / "student", "checkpoint": ckpt}


def _cfg(assets, out_dir, **kw):
    cfg = {
        "type": "generate", "checkpoint": str(assets["student"]), "out_dir": str(out_dir),
        "text_encoder": {"type": "umt5", "path": str(assets["encoders"]), "max_length": 16},
        "vae": {"type": "wan_vae", "path": str(assets["encoders"])},
        "model": {"type": "causal_wan", "attention": "sdpa"},
        "sampler": {"type": "causal_inference"},  # first block [1000, 750, 500, 250], then [1000]
        "num_frames": FRAMES, "height": H, "width": W, "progress": False,
    }
    cfg.update(kw)
    return cfg


def test_generate_writes_playable_mp4s(assets, tmp_path, capsys):
    job = build(_cfg(assets, tmp_path, prompts=["A red ball, rolling left!", "a blue cube"],
                     samples_per_prompt=2), JOBS)
    job.run(RunContext(seed=7))
    names = sorted(p.name for p in tmp_path.glob("*.mp4"))
    assert names == ["a-blue-cube-0.mp4", "a-blue-cube-1.mp4",
                     "a-red-ball-rolling-left-0.mp4", "a-red-ball-rolling-left-1.mp4"]
    for name in names:
        frames = read_mp4(tmp_path / name)
        assert frames.shape == (FRAMES, H, W, 3)
    out = capsys.readouterr().out
    assert "latency to first frame" in out and "DiT" in out and "with VAE decode" in out
    assert "on CPU" in out and "peak process RSS" in out  # the device and memory are named
    manifest = json.loads((tmp_path / "generate_manifest.json").read_text())
    assert [v["file"] for v in manifest["videos"]][:2] == ["a-red-ball-rolling-left-0.mp4",
                                                          "a-red-ball-rolling-left-1.mp4"]
    # Same seed, same prompt -> same video; different sample index -> different noise.
    a, b = (read_mp4(tmp_path / f"a-blue-cube-{i}.mp4") for i in (0, 1))
    assert (a != b).any()


def test_seeds_ranks_and_vbench_names(assets, tmp_path):
    """Two ranks split the videos; each video's noise depends on its number only, so a
    2-rank run writes the same files as a 1-rank run."""
    prompts = ["a cat", "a dog", "a bird"]
    one, two = tmp_path / "one", tmp_path / "two"
    build(_cfg(assets, one, prompts=prompts, filename="{prompt}-{index}.mp4"), JOBS).run(RunContext(seed=1))
    for rank in (0, 1):
        job = build(_cfg(assets, two, prompts=prompts, filename="{prompt}-{index}.mp4"), JOBS)
        job.run(RunContext(seed=1, rank=rank, world_size=2))
    assert sorted(p.name for p in one.glob("*.mp4")) == ["a bird-0.mp4", "a cat-0.mp4", "a dog-0.mp4"]
    for p in one.glob("*.mp4"):
        assert (read_mp4(p) == read_mp4(two / p.name)).all()


def test_checkpoint_dirs(assets, tmp_path):
    ckpt = assets["checkpoint"]
    assert resolve_model_dir(str(ckpt), "ema") == ckpt / "ema"
    assert resolve_model_dir(str(ckpt), "raw") == ckpt / "generator"
    assert resolve_model_dir(str(assets["student"]), "ema") == assets["student"]
    # the raw generator by default (official inference: USE_EMA=0), EMA only when asked; recorded
    job = build(_cfg(assets, tmp_path, checkpoint=str(ckpt), prompt="a dog"), JOBS)
    assert job.weights_dir == ckpt / "generator" and job.weights_kind == "generator"
    job.run(RunContext(seed=0))
    assert read_mp4(tmp_path / "a-dog-0.mp4").shape == (FRAMES, H, W, 3)
    assert json.loads((tmp_path / "generate_manifest.json").read_text())["weights_kind"] == "generator"
    ema_job = build(_cfg(assets, tmp_path / "e", checkpoint=str(ckpt), prompt="a dog", weights="ema"), JOBS)
    assert ema_job.weights_dir == ckpt / "ema" and ema_job.weights_kind == "ema"
    with pytest.raises(UserError, match="nowhere"):
        resolve_model_dir(str(tmp_path / "nowhere"), "ema")
    with pytest.raises(UserError, match="neither"):
        resolve_model_dir(str(tmp_path), "ema")
    with pytest.raises(UserError, match="weights: must be one of auto, raw, ema"):
        build(_cfg(assets, tmp_path / "w", checkpoint=str(ckpt), prompt="a dog", weights="best"), JOBS)


def test_prompts_and_plan(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("a cat\n\n# comment\n  a dog  \n")
    assert load_prompts(None, None, str(f)) == ["a cat", "a dog"]
    assert load_prompts("x", None, None) == ["x"]
    for bad in ((None, None, None), ("x", ["y"], None), (None, None, str(tmp_path / "missing.txt"))):
        with pytest.raises(UserError):
            load_prompts(*bad)
    assert slugify("A cat, jumping!") == "a-cat-jumping" and slugify("!!!") == "video"


def test_recipe_errors(assets, tmp_path):
    with pytest.raises(UserError, match="seeds"):
        build(_cfg(assets, tmp_path, prompt="a", seeds=[1, 2]), JOBS)
    with pytest.raises(UserError, match="two videos"):
        build(_cfg(assets, tmp_path, prompts=["a", "a"]), JOBS).plan(0)
    with pytest.raises(UserError, match="filename"):
        build(_cfg(assets, tmp_path, prompt="a", filename="{nope}.mp4"), JOBS)
    with pytest.raises(UserError, match="prompt"):
        build(_cfg(assets, tmp_path), JOBS)
    with pytest.raises(UserError, match="255"):
        build(_cfg(assets, tmp_path, prompt="word " * 60, filename="{prompt}-{index}.mp4"), JOBS).plan(0)
    # VBench: the model reads the extended prompts, the files are named by the original ones.
    names = tmp_path / "names.txt"
    names.write_text("a cat\na dog\n")
    job = build(_cfg(assets, tmp_path, prompts=["a cat, long version", "a dog, long"], names_file=str(names),
                     filename="{prompt}-{index}.mp4"), JOBS)
    assert [(it.prompt, it.path.name) for it in job.plan(0)] == [
        ("a cat, long version", "a cat-0.mp4"), ("a dog, long", "a dog-0.mp4")]
    job = build(_cfg(assets, tmp_path, prompt="a", seeds=[123]), JOBS)
    assert [it.seed for it in job.plan(0)] == [123]
    assert isinstance(job, Generate)


def test_runs_from_a_recipe(assets, tmp_path, capsys):
    """The user's path: a YAML recipe through the runner, with a key=value override."""
    import yaml

    from oneforcing.runner import run

    cfg = _cfg(assets, tmp_path / "videos", prompt="a fish")
    cfg.pop("type")
    cfg["model"]["frames_per_block"] = 3  # chunkwise student
    recipe = {"job": "generate", "seed": 5,
              "imports": ["oneforcing.jobs.generate", "oneforcing.models.wan_vae", "oneforcing.models.text_encoder"],
              **cfg}
    path = tmp_path / "gen.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert run(str(path), ["samples_per_prompt=2"]) == 0
    assert sorted(p.name for p in (tmp_path / "videos").glob("*.mp4")) == ["a-fish-0.mp4", "a-fish-1.mp4"]
    assert run(str(path), ["checkpoint=/nonexistent/ckpt"]) == 2
    assert "/nonexistent/ckpt" in capsys.readouterr().err


def test_nothing_is_written_until_models_and_sizes_check_out(assets, tmp_path):
    """A failed start leaves out_dir as it was: no folder, no manifest naming missing videos."""
    out = tmp_path / "out"
    bad_vae = {"type": "wan_vae", "path": str(tmp_path / "no_vae")}
    cases = [({"vae": bad_vae}, "no_vae"),
             ({"height": 36}, "spatial factor"),                        # not whole VAE pixels
             ({"height": 40}, "not whole 2x2 patches: use multiples of 16"),  # 5 latent rows, patch 2
             ({"vae": {"type": "toy_codec"}}, "16-channel latents, the model reads")]
    for extra, message in cases:
        with pytest.raises(UserError, match=message):
            build(_cfg(assets, out, prompt="a dog", **extra), JOBS).run(RunContext(seed=0))
        assert not out.exists(), extra
    with pytest.raises(UserError, match="plain file name"):
        build(_cfg(assets, out, prompt="a dog", filename="../{slug}-{index}.mp4"), JOBS).plan(0)
    with pytest.raises(UserError, match="plain file name"):
        build(_cfg(assets, out, prompt="..", filename="{prompt}/{index}.mp4"), JOBS).plan(0)
    # The manifest comes last and lists exactly the videos on disk.
    build(_cfg(assets, out, prompt="a dog"), JOBS).run(RunContext(seed=0))
    manifest = json.loads((out / "generate_manifest.json").read_text())
    assert [v["file"] for v in manifest["videos"]] == ["a-dog-0.mp4"] and (out / "a-dog-0.mp4").is_file()
