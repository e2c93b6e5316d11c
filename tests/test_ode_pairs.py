"""ode_pairs: a tiny bidirectional teacher's ODE trajectories as shards, resumable, rank-invariant."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import oneforcing.jobs.ode_pairs  # noqa: F401  (registers "ode_pairs" until jobs/__init__ imports it)
from oneforcing.data import OdePairShards, write_index, write_shard
from oneforcing.errors import UserError
from oneforcing.jobs.base import RunContext, derive_seed
from oneforcing.models.causal_wan import CausalWan
from oneforcing.registry import JOBS, TEXT_ENCODERS, build
from oneforcing.samplers.teacher_ode import TeacherODE
from oneforcing.schedulers.flow_match import FlowMatchScheduler
from oneforcing.testing.tiny_wan import save_toy_shaped_wan
from oneforcing.toy.text_encoder import TOY_MAX_LENGTH, TOY_TEXT_ENCODER_PATH
from oneforcing.toy.world import ToyWorld

FLOW = FlowMatchScheduler()  # the recipe's convention (shift 5), handed to every sampler

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 16, 4, 4)  # frames 3, 16 x 16 pixels through the toy codec (16 PCA channels)
FAST = {"type": "teacher_ode", "num_steps": 8, "keep_indices": [0, 2, 4, 6]}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_toy_shaped_wan(tmp_path_factory.mktemp("teacher") / "transformer")


def _job(teacher, out, **kw):
    cfg = {"type": "ode_pairs", "teacher": str(teacher), "out": str(out), "split": "test", "num_examples": 5,
           "examples_per_shard": 2, "batch_size": 2, "frames": 3, "size": 16, "latent_dtype": "float32",
           "progress": False, **kw}
    return build(cfg, JOBS)


def _load(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _read(out):
    return list(OdePairShards(str(out), shuffle=False))


def test_toy_split_pairs_and_resume(teacher, tmp_path):
    out = tmp_path / "pairs"
    _job(teacher, out).run(RunContext(seed=7))
    items = _read(out)
    prompts = ToyWorld("test", 5, seed=7, frames=3, size=16).prompts()
    assert [it["prompt"] for it in items] == prompts and len(list(out.glob("shard-*"))) == 3
    ts = items[0]["timesteps"]
    assert torch.allclose(ts, torch.tensor([1000.0, 937.5, 833.3333, 625.0]))
    for g, it in enumerate(items):
        assert it["states"].shape == (4, *SHAPE) and it["clean"].shape == SHAPE
        assert bool((it["timesteps"][1:] < it["timesteps"][:-1]).all())
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(derive_seed(7, "ode_pairs", g)))
        assert torch.equal(it["states"][0], noise)  # t = 1000: the state is the noise itself
        assert it["metadata"]["source_index"] == g and it["metadata"]["prompt"] == prompts[g]
    # The endpoint is the CFG ODE against the empty negative prompt (the toy teacher's uncond text).
    enc = build({"type": "umt5", "path": TOY_TEXT_ENCODER_PATH, "max_length": TOY_MAX_LENGTH}, TEXT_ENCODERS)
    model = CausalWan.from_pretrained(teacher, causal=False).eval()
    ref = TeacherODE(scheduler=FLOW)(model, items[0]["states"][0][None], enc.encode([prompts[0]]),
                                     negative_text=enc.encode([""]))
    assert torch.allclose(ref.x0[0], items[0]["clean"], atol=1e-5)

    # Resume: a lost shard is rewritten identically, complete ones are left alone.
    stamp = (out / "shard-00000.safetensors").stat().st_mtime_ns
    before = _load(out / "shard-00001.safetensors")
    (out / "shard-00001.safetensors").unlink()
    _job(teacher, out).run(RunContext(seed=7))
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == stamp
    after = _load(out / "shard-00001.safetensors")  # (the header's key order is not stable: no byte compare)
    assert after[1] == before[1] and all(torch.equal(after[0][k], v) for k, v in before[0].items())
    with pytest.raises(UserError, match="other settings"):
        _job(teacher, out, sampler=FAST).run(RunContext(seed=7))


def test_prompts_from_latent_shards(teacher, tmp_path):
    src = tmp_path / "latents"
    src.mkdir()
    g = torch.Generator().manual_seed(0)
    embed = torch.randn(3, 6, 32, generator=g)
    embed[:, 4:] = 0
    write_shard(src / "shard-00000.safetensors", {"latent": torch.randn(3, *SHAPE, generator=g),
                "prompt_embed": embed, "prompt_mask": embed.ne(0).any(-1)}, ["a", "b", "c"], "latents")
    write_index(src)
    out = tmp_path / "pairs"
    _job(teacher, out, split=None, prompts_from=str(src), num_examples=None, sampler=FAST,
         latent_dtype="float16").run(RunContext())
    items = _read(out)
    assert [it["prompt"] for it in items] == ["a", "b", "c"]
    # stored in the latent dtype, up to the longest real token (4 of 6), read back at full length
    assert torch.equal(torch.stack([it["prompt_embed"] for it in items]), embed.half())
    assert _load(out / "shard-00000.safetensors")[0]["prompt_embed"].shape == (2, 4, 32)
    assert items[0]["states"].shape == (4, *SHAPE) and items[0]["states"].dtype == torch.float16
    with pytest.raises(UserError, match="holds 3"):
        _job(teacher, tmp_path / "x", split=None, prompts_from=str(src), num_examples=4).run(RunContext())


def test_prompts_file_at_shift_8_as_self_forcings_pair_script(teacher, tmp_path):
    """Self Forcing's pairs: prompts of a caption file (no latents: `latent_shape` is the noise
    shape), the 48-step grid warped by shift 8: kept t = 1000, 8 s / (1 + 7 s) at s = 1 - 12/48 ..."""
    (tmp_path / "captions.txt").write_text("a red ball moving left\na blue square moving up\n")
    out = tmp_path / "pairs"
    _job(teacher, out, split=None, prompts_file=str(tmp_path / "captions.txt"), latent_shape=list(SHAPE),
         num_examples=None, scheduler={"type": "flow_match", "shift": 8.0},
         sampler={"type": "teacher_ode", "num_steps": 48, "keep_indices": [0, 12, 24, 36]}).run(RunContext(seed=2))
    items = _read(out)
    assert [it["prompt"] for it in items] == ["a red ball moving left", "a blue square moving up"]
    s = torch.tensor([1.0, 36 / 48, 24 / 48, 12 / 48])
    assert torch.allclose(items[0]["timesteps"], 1000 * 8 * s / (1 + 7 * s), atol=1e-3)
    assert items[0]["states"].shape == (4, *SHAPE) and "context" not in items[0]
    info = __import__("json").loads((out / "index.json").read_text())["info"]
    assert info["source"].endswith("captions.txt") and len(info["prompts_sha256"]) == 64
    with pytest.raises(UserError, match="latent_shape"):
        _job(teacher, tmp_path / "x", split=None, prompts_file=str(tmp_path / "captions.txt"))
    (tmp_path / "gap.txt").write_text("one\n\ntwo\n")
    with pytest.raises(UserError, match=r"gap\.txt:2: empty line"):
        _job(teacher, tmp_path / "y", split=None, prompts_file=str(tmp_path / "gap.txt"), latent_shape=list(SHAPE),
             num_examples=None).run(RunContext())


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("per_shard, batch_size", [(2, 2), (5, 1)])
def test_two_ranks_match_one(teacher, tmp_path, per_shard, batch_size):
    # (5, 1): all 5 prompts in one shard; both ranks compute examples, rank 0 writes the shard.
    one = tmp_path / "one"
    _job(teacher, one, sampler=FAST, examples_per_shard=per_shard, batch_size=batch_size).run(RunContext(seed=3))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "job: ode_pairs\nimports: [oneforcing.jobs.ode_pairs]\nseed: 3\n"
        f"teacher: {teacher}\nout: {tmp_path / 'two'}\nsplit: test\nnum_examples: 5\n"
        f"examples_per_shard: {per_shard}\nbatch_size: {batch_size}\nframes: 3\nsize: 16\nlatent_dtype: float32\n"
        "sampler: {type: teacher_ode, num_steps: 8, keep_indices: [0, 2, 4, 6]}\n")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()),
                           str(ROOT / "recipes/run.py"), str(recipe)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    # Batches are dealt round-robin: rank 0 computes 3 of the 5 examples, so rank 1 computed the
    # other 2 of the complete output below (only rank 0 logs at info level).
    assert re.findall(r"this rank computes (\d+) of the 5", proc.stderr) == ["3"], proc.stderr[-2000:]
    assert len(list((tmp_path / "two").glob("shard-*"))) == len(list(one.glob("shard-*")))
    for a, b in zip(_read(one), _read(tmp_path / "two"), strict=True):
        for key in ("states", "clean", "timesteps", "prompt_embed"):
            assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("kw, match", [
    ({"prompts_from": "/x"}, "exactly one"),
    ({"split": None}, "exactly one"),
    ({"sampler": {"type": "causal_inference"}}, "teacher_ode"),
    ({"sampler": {"type": "teacher_ode", "num_steps": 8}}, "keep_indices"),
    ({"num_examples": None}, "num_examples"),
    ({"latent_dtype": "int8"}, "latent_dtype"),
    ({"teacher": "/nonexistent"}, "not found"),
])
def test_user_errors(teacher, tmp_path, kw, match):
    cfg = {"teacher": str(teacher), **kw}
    with pytest.raises(UserError, match=match):
        job = _job(cfg.pop("teacher"), tmp_path, **cfg)
        job.weights_dir  # weights are looked up at run time, so `oneforcing show` works without them


def test_teacher_forced_causal_pairs_see_the_real_frames_not_their_own_noise(teacher, tmp_path):
    """Causal Forcing's pairs (official get_causal_ode_data_framewise.py): every step runs the AR
    model with clean_x = the sample's real latents, so frame f's trajectory depends on the real
    frames < f and never on the noisy states of frames < f; the real clip is stored as `context`."""
    causal = tmp_path / "ar"
    torch.manual_seed(0)
    save_toy_shaped_wan(causal, causal=True, frames_per_block=1)
    src = tmp_path / "latents"
    src.mkdir()
    g = torch.Generator().manual_seed(0)
    real = torch.randn(2, *SHAPE, generator=g)
    embed = torch.randn(2, 6, 32, generator=g)
    write_shard(src / "shard-00000.safetensors", {"latent": real, "prompt_embed": embed,
                "prompt_mask": embed.ne(0).any(-1)}, ["a", "b"], "latents")
    write_index(src)
    out = tmp_path / "pairs"
    sampler = {**FAST, "teacher_forcing": True}
    _job(causal, out, split=None, prompts_from=str(src), num_examples=None, sampler=sampler,
         model={"causal": True, "frames_per_block": 1}, weights="raw").run(RunContext(seed=1))
    items = _read(out)
    assert torch.equal(torch.stack([it["context"] for it in items]), real)  # the real clip, stored

    model = CausalWan.from_pretrained(causal, frames_per_block=1).eval()
    ode = TeacherODE(**{k: v for k, v in sampler.items() if k != "type"}, scheduler=FLOW)
    enc = build({"type": "umt5", "path": TOY_TEXT_ENCODER_PATH, "max_length": TOY_MAX_LENGTH}, TEXT_ENCODERS)
    neg = enc.encode([""])
    noise = items[0]["states"][0][None]
    ref = ode(model, noise, embed[:1], negative_text=neg, context=real[:1])
    assert torch.allclose(ref.x0[0], items[0]["clean"], atol=1e-5)
    # Frame 2 ignores the noise of frames 0-1 (the old block-causal rollout over its own noisy
    # frames depended on it) but follows the real frames 0-1.
    other_noise = noise.clone()
    other_noise[:, :2] = torch.randn(1, 2, *SHAPE[1:], generator=g)
    assert torch.allclose(ode(model, other_noise, embed[:1], negative_text=neg, context=real[:1]).x0[:, 2], ref.x0[:, 2], atol=1e-5)
    other_real = real[:1].clone()
    other_real[:, :2] += 1.0
    assert not torch.allclose(ode(model, noise, embed[:1], negative_text=neg, context=other_real).x0[:, 2], ref.x0[:, 2], atol=1e-3)
    with pytest.raises(ValueError, match="context"):
        ode(model, noise, embed[:1], negative_text=neg)
    with pytest.raises(UserError, match="prompts_from"):
        _job(causal, tmp_path / "y", sampler=sampler)
