"""Shards: toy_data writes them, latent_shards / ode_pairs read them back exactly, per rank, resumably."""

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from oneforcing.data import LatentShards, OdePairShards, ShardWriter, write_index, write_shard
from oneforcing.errors import UserError
from oneforcing.jobs.base import RunContext
from oneforcing.toy.codec import ToyCodec
from oneforcing.toy.text_encoder import TOY_MAX_LENGTH, TOY_TEXT_ENCODER_PATH
from oneforcing.toy.world import ToyWorld
import oneforcing.toy.jobs.data  # noqa: F401  (registers "toy_data" until jobs/__init__ imports it)
from oneforcing.registry import DATASETS, JOBS, TEXT_ENCODERS, build

TEXT = {"type": "umt5", "path": TOY_TEXT_ENCODER_PATH, "max_length": TOY_MAX_LENGTH}



def _same_shard(a: Path, b: Path) -> bool:
    """Same tensors and header metadata (safetensors orders its header keys arbitrarily)."""
    from safetensors import safe_open

    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        return (fa.metadata() == fb.metadata() and set(fa.keys()) == set(fb.keys())
                and all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys()))


def _job(out, **kw):
    cfg = {"type": "toy_data", "out": str(out), "num_examples": 20, "examples_per_shard": 6,
           "batch_size": 4, "text_encoder": TEXT, **kw}
    return build(cfg, JOBS)


@pytest.fixture(scope="module")
def toy_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "train"
    _job(out).run(RunContext(seed=7))
    return out


def test_toy_data_reads_back_bit_exactly(toy_shards):
    ds = build({"type": "latent_shards", "path": str(toy_shards), "shuffle": False}, DATASETS)
    assert ds.num_examples == 20 and len(ds.shards) == 4 and len(ds) == 20
    items = list(ds)
    world = ToyWorld("train", 20, seed=7)
    latents = ToyCodec().encode(world.render(range(20))).half()
    embeds = build(TEXT, TEXT_ENCODERS).encode(world.prompts())
    for i, it in enumerate(items):
        assert it["index"] == i and it["prompt"] == world.prompts()[i]
        assert it["latent"].dtype == torch.float16 and torch.equal(it["latent"], latents[i])
        assert it["prompt_embed"].dtype == torch.float16  # stored like the latents
        assert torch.equal(it["prompt_embed"], embeds[i].half())
        assert torch.equal(it["prompt_mask"], embeds[i].ne(0).any(-1))
        assert it["metadata"]["objects"] == world.scene(i)["objects"]
    batch = next(ds.batches(8))  # the training Batch: stored field names -> what losses read
    assert batch.latents.shape == (8, 21, 16, 8, 8) and len(batch.prompts) == 8
    assert torch.equal(batch.text, torch.stack([it["prompt_embed"] for it in items[:8]]))
    assert batch.ode_states is None and batch.dataset == "latent_shards"


def test_ranks_read_disjoint_parts(toy_shards):
    orders = [LatentShards(str(toy_shards), seed=1, rank=r, world_size=3).epoch_order(0) for r in range(3)]
    assert [len(o) for o in orders] == [6, 6, 6]  # drop_last: every rank the same count
    assert len(set(orders[0]) | set(orders[1]) | set(orders[2])) == 18
    assert LatentShards(str(toy_shards), seed=1, rank=0, world_size=3).epoch_order(1) != orders[0]
    padded = [LatentShards(str(toy_shards), seed=1, rank=r, world_size=3, drop_last=False) for r in range(3)]
    assert [len(p) for p in padded] == [7, 7, 7]
    assert set().union(*(p.epoch_order(0) for p in padded)) == set(range(20))


def test_resume_mid_epoch(toy_shards):
    ref = LatentShards(str(toy_shards), seed=3, infinite=True, rank=1, world_size=3)
    it = iter(ref)
    seq = [next(it)["index"] for _ in range(15)]  # 6 per epoch: crosses two epoch boundaries
    a = LatentShards(str(toy_shards), seed=3, infinite=True, rank=1, world_size=3)
    it = iter(a)
    for _ in range(8):
        next(it)
    state = json.loads(json.dumps(a.state_dict()))  # survives a checkpoint file
    b = LatentShards(str(toy_shards), seed=3, infinite=True, rank=1, world_size=3)
    b.load_state_dict(state)
    rest = [x["index"] for _, x in zip(range(7), b)]
    assert rest == seq[8:]
    with pytest.raises(UserError, match="world_size"):
        LatentShards(str(toy_shards), seed=3, rank=0, world_size=2).load_state_dict(state)


def test_job_resumes_and_refuses_other_settings(toy_shards, tmp_path):
    out = tmp_path / "resume"
    _job(out).run(RunContext(seed=7))
    (out / "shard-00002.safetensors").unlink()
    (out / "index.json").unlink()
    stamp = (out / "shard-00000.safetensors").stat().st_mtime_ns
    _job(out).run(RunContext(seed=7))
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == stamp  # skipped, not rewritten
    assert _same_shard(out / "shard-00002.safetensors", toy_shards / "shard-00002.safetensors")
    with pytest.raises(UserError, match="num_examples"):
        _job(out, num_examples=12).run(RunContext(seed=7))
    _job(out, num_examples=12, overwrite=True).run(RunContext(seed=7))
    assert LatentShards(str(out)).num_examples == 12 and len(list(out.glob("*.safetensors"))) == 2


def test_overwrite_removes_only_the_jobs_own_files(tmp_path):
    # A model folder is not a shard folder: overwrite must not touch it (it has no job.json).
    model = tmp_path / "model"
    model.mkdir()
    (model / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    with pytest.raises(UserError, match="has no job.json"):
        _job(model, num_examples=4, examples_per_shard=2, overwrite=True).run(RunContext(seed=7))
    assert sorted(p.name for p in model.iterdir()) == ["diffusion_pytorch_model.safetensors"]
    # In a folder the job wrote, a file it did not list survives an overwrite.
    out = tmp_path / "out"
    _job(out, num_examples=4, examples_per_shard=2).run(RunContext(seed=7))
    (out / "mine.safetensors").write_bytes(b"keep")
    listed = json.loads((out / "job.json").read_text())["files"]
    assert listed == ["index.json", "shard-00000.safetensors", "shard-00001.safetensors"]
    _job(out, num_examples=2, examples_per_shard=2, overwrite=True).run(RunContext(seed=7))
    assert (out / "mine.safetensors").read_bytes() == b"keep"
    assert not (out / "shard-00001.safetensors").exists()
    # A job.json listing a path outside the folder is refused, not followed.
    record = json.loads((out / "job.json").read_text())
    (tmp_path / "victim").write_text("x")
    (out / "job.json").write_text(json.dumps({**record, "files": ["../victim"]}))
    with pytest.raises(UserError, match="not a plain file name"):
        _job(out, num_examples=2, examples_per_shard=2, overwrite=True).run(RunContext(seed=7))
    assert (tmp_path / "victim").exists()


def test_folder_is_claimed_only_after_the_models_load(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserError):
        _job(out, num_examples=4, text_encoder={"type": "umt5", "path": str(tmp_path / "missing")}).run(
            RunContext(seed=7))
    assert not out.exists()


def _write_small(path, n=5, latent=None, **extra):
    latent = torch.randn(n, 3, 4, 2, 2) if latent is None else latent
    tensors = {"latent": latent, "prompt_embed": torch.randn(n, 6, 8),
               "prompt_mask": torch.ones(n, 6, dtype=torch.bool), **extra}
    write_shard(path, tensors, [f"p{i}" for i in range(n)])


def test_corrupt_shards_are_reported_by_name_and_index(tmp_path):
    d = tmp_path / "nan"
    d.mkdir()
    _write_small(d / "shard-00000.safetensors")
    bad = torch.randn(5, 3, 4, 2, 2)
    bad[3, 1, 0, 0, 0] = float("nan")
    _write_small(d / "shard-00001.safetensors", latent=bad)
    write_index(d)
    ds = LatentShards(str(d), shuffle=False)
    with pytest.raises(UserError, match=r"shard-00001\.safetensors: example 3: 'latent' holds NaN"):
        list(ds)

    d = tmp_path / "shape"
    d.mkdir()
    _write_small(d / "shard-00000.safetensors")
    _write_small(d / "shard-00001.safetensors", latent=torch.randn(5, 3, 4, 2, 3))
    with pytest.raises(UserError, match=r"shard-00001\.safetensors: fields"):
        write_index(d)
    (d / "shard-00001.safetensors").unlink()
    write_index(d)
    _write_small(d / "shard-00001.safetensors", latent=torch.randn(5, 3, 4, 2, 3))  # swapped in later
    index = json.loads((d / "index.json").read_text())
    index["shards"].append({"file": "shard-00001.safetensors", "num_examples": 5})
    index["num_examples"] = 10
    (d / "index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match=r"shard-00001\.safetensors: field 'latent' is float32\[3, 4, 2, 3\]"):
        LatentShards(str(d))

    write_shard(d / "shard-00001.safetensors", {"latent": torch.randn(5, 3, 4, 2, 2), "prompt_embed": torch.randn(5, 6, 8),
                                                "prompt_mask": torch.ones(5, 6, dtype=torch.bool)}, ["x"] * 5)
    from safetensors.torch import save_file  # a shard without 'prompt_mask'
    save_file({"latent": torch.randn(5, 3, 4, 2, 2), "prompt_embed": torch.randn(5, 6, 8)},
              str(d / "shard-00001.safetensors"),
              metadata={"format": "oneforcing.shards", "kind": "latents", "num_examples": "5", "prompts": "[]"})
    with pytest.raises(UserError, match=r"shard-00001\.safetensors: missing field 'prompt_mask'"):
        LatentShards(str(d))

    _write_small(d / "shard-00001.safetensors")
    raw = (d / "shard-00001.safetensors").read_bytes()
    (d / "shard-00001.safetensors").write_bytes(raw[: len(raw) - 100])  # truncated
    with pytest.raises(UserError, match=r"shard-00001\.safetensors"):
        LatentShards(str(d))
    (d / "shard-00001.safetensors").unlink()
    with pytest.raises(UserError, match=r"shard-00001\.safetensors: shard file is missing"):
        LatentShards(str(d))
    with pytest.raises(UserError, match="index is missing"):
        LatentShards(str(tmp_path / "nowhere"))


def test_ode_pairs_round_trip(tmp_path):
    k, f = 4, 3
    with ShardWriter(tmp_path, kind="ode_pairs", examples_per_shard=3) as w:
        for i in range(7):
            w.add(prompt=f"prompt {i}", metadata={"i": i}, states=torch.full((k, f, 2, 2, 2), float(i)),
                  timesteps=torch.tensor([1000.0, 937.5, 833.3, 625.0]), clean=torch.full((f, 2, 2, 2), -i / 10),
                  prompt_embed=torch.randn(5, 4), prompt_mask=torch.ones(5, dtype=torch.bool))
    ds = build({"type": "ode_pairs", "path": str(tmp_path), "shuffle": False}, DATASETS)
    items = list(ds)
    assert [it["metadata"]["i"] for it in items] == list(range(7)) and len(ds.shards) == 3
    assert items[5]["states"].shape == (k, f, 2, 2, 2) and items[5]["states"].unique().item() == 5.0
    assert torch.equal(items[2]["timesteps"], torch.tensor([1000.0, 937.5, 833.3, 625.0]))
    with pytest.raises(UserError, match="kind 'ode_pairs'"):
        LatentShards(str(tmp_path))
    assert isinstance(ds, OdePairShards)


def test_frames_keeps_the_first_frames_of_latents_and_ode_pairs(tmp_path):
    """`data.frames: N` (an image stage trains on first frames): the same values, cut on the frame axis."""
    d = tmp_path / "latents"
    d.mkdir()
    latent = torch.randn(5, 3, 4, 2, 2)
    _write_small(d / "shard-00000.safetensors", latent=latent)
    write_index(d)
    ds = build({"type": "latent_shards", "path": str(d), "shuffle": False, "frames": 2}, DATASETS)
    batch = next(ds.batches(5))
    assert torch.equal(batch.latents, latent[:, :2])
    for bad in (0, 4, 1.5, True):
        with pytest.raises(UserError, match=r"data\.frames: .*frames must be an integer in 1\.\.3"):
            LatentShards(str(d), frames=bad)
    p = tmp_path / "pairs"
    with ShardWriter(p, kind="ode_pairs", examples_per_shard=4) as w:
        for i in range(4):
            w.add(prompt=f"p{i}", states=torch.arange(4 * 3 * 8.0).reshape(4, 3, 2, 2, 2) + i,
                  timesteps=torch.tensor([1000.0, 937.5, 833.3, 625.0]), clean=torch.arange(24.0).reshape(3, 2, 2, 2),
                  prompt_embed=torch.randn(5, 4), prompt_mask=torch.ones(5, dtype=torch.bool))
    item = OdePairShards(str(p), shuffle=False, frames=1).read(2)
    full = OdePairShards(str(p), shuffle=False).read(2)
    assert item["states"].shape == (4, 1, 2, 2, 2) and torch.equal(item["states"], full["states"][:, :1])
    assert torch.equal(item["clean"], full["clean"][:1])


def _gloo_worker(rank, world_size, out, port, result_dir):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        _job(out).run(RunContext(seed=7, rank=rank, world_size=world_size))
        ds = LatentShards(str(out), seed=5)  # rank and world size from torch.distributed
        torch.save({"indices": [it["index"] for it in ds], "rank": ds.rank},
                   os.path.join(result_dir, f"r{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_two_rank_gloo(toy_shards, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "gloo"
    mp.spawn(_gloo_worker, args=(2, str(out), port, str(tmp_path)), nprocs=2, join=True)
    for p in sorted(toy_shards.glob("*.safetensors")):
        assert _same_shard(out / p.name, p)
    got = [torch.load(tmp_path / f"r{r}.pt") for r in (0, 1)]
    assert [g["rank"] for g in got] == [0, 1]
    assert sorted(got[0]["indices"] + got[1]["indices"]) == list(range(20))


def test_prompt_embeddings_are_stored_up_to_the_longest_real_token(tmp_path):
    """A shard keeps prompt_embed rows only up to its longest real token (the full length stays in
    prompt_mask and index.json); loaders pad the zeros back, so readers see [L, D] as written."""
    from safetensors import safe_open

    n, L, D = 4, 16, 8
    embed = torch.randn(n, L, D).to(torch.bfloat16)
    lengths = [3, 5, 1, 2]
    mask = torch.arange(L)[None] < torch.tensor(lengths)[:, None]
    embed = embed * mask[..., None]
    write_shard(tmp_path / "shard-00000.safetensors", {"latent": torch.randn(n, 3, 4, 2, 2),
                "prompt_embed": embed, "prompt_mask": mask}, [f"p{i}" for i in range(n)])
    with safe_open(str(tmp_path / "shard-00000.safetensors"), framework="pt") as f:
        stored = f.get_tensor("prompt_embed")
    assert stored.shape == (n, max(lengths), D) and stored.dtype == torch.bfloat16
    index = write_index(tmp_path)
    assert index["fields"]["prompt_embed"] == {"shape": [L, D], "dtype": "bfloat16"}
    items = list(LatentShards(str(tmp_path), shuffle=False))
    assert torch.equal(torch.stack([it["prompt_embed"] for it in items]), embed)
    assert [int(it["prompt_mask"].sum()) for it in items] == lengths
    with pytest.raises(ValueError, match="padding must be zeroed"):
        write_shard(tmp_path / "bad.safetensors", {"latent": torch.randn(n, 3, 4, 2, 2),
                    "prompt_embed": torch.ones(n, L, D), "prompt_mask": mask}, [f"p{i}" for i in range(n)])
