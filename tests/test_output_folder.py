"""overwrite=true builds the new data set beside the old one and swaps it in only when complete:
a failed or killed overwrite never costs the old set (data/output.py)."""

import hashlib
import json

import pytest

import oneforcing.data.output as output
import oneforcing.toy.jobs.data  # noqa: F401  (registers "toy_data")
from oneforcing.data import LatentShards
from oneforcing.jobs.base import RunContext
from oneforcing.registry import JOBS, build
from oneforcing.toy.text_encoder import TOY_MAX_LENGTH, TOY_TEXT_ENCODER_PATH

TEXT = {"type": "umt5", "path": TOY_TEXT_ENCODER_PATH, "max_length": TOY_MAX_LENGTH}



def _job(out, n, **kw):
    return build({"type": "toy_data", "out": str(out), "num_examples": n, "examples_per_shard": 2,
                  "batch_size": 2, "text_encoder": TEXT, **kw}, JOBS)


def _files(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("exchange", [True, False], ids=["rename_exchange", "two_renames"])
def test_overwrite_swaps_in_the_new_set_and_keeps_unlisted_files(tmp_path, monkeypatch, exchange):
    if not exchange:  # a system without renameat2: out -> .out.old, staging -> out
        monkeypatch.setattr(output, "_exchange", lambda a, b: False)
    out = tmp_path / "out"
    _job(out, 4).run(RunContext(seed=7))
    (out / "notes.txt").write_text("mine")
    _job(out, 2, overwrite=True).run(RunContext(seed=3))
    assert LatentShards(str(out)).num_examples == 2
    assert json.loads((out / "job.json").read_text())["seed"] == 3
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "job.json", "notes.txt", "shard-00000.safetensors"]
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or old folder left


def test_failed_overwrite_leaves_the_old_set_untouched(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _job(out, 4).run(RunContext(seed=7))
    before = _files(out)
    job = _job(out, 6, overwrite=True)
    write = type(job).write

    def write_then_fail(self, ctx, world, folder, codec, encoder):
        write(self, ctx, world, folder, codec, encoder)
        raise RuntimeError("disk full")  # after the whole new set is written, before the index

    monkeypatch.setattr(type(job), "write", write_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        job.run(RunContext(seed=7))
    assert _files(out) == before and LatentShards(str(out)).num_examples == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_killed_overwrite_resumes_in_its_staging_folder(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _job(out, 4).run(RunContext(seed=7))
    before = _files(out)
    job = _job(out, 6, overwrite=True)
    write = type(job).write

    def write_then_die(self, ctx, world, folder, codec, encoder):
        write(self, ctx, world, folder, codec, encoder)
        (folder / "shard-00002.safetensors").unlink()  # as if killed before the last shard
        raise KeyboardInterrupt

    monkeypatch.setattr(type(job), "write", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        job.run(RunContext(seed=7))
    monkeypatch.undo()
    staging = tmp_path / ".out.overwrite"
    assert _files(out) == before and (staging / "shard-00000.safetensors").is_file()
    stamp = (staging / "shard-00000.safetensors").stat().st_mtime_ns
    _job(out, 6, overwrite=True).run(RunContext(seed=7))
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == stamp  # resumed, not rewritten
    assert [it["index"] for it in LatentShards(str(out), shuffle=False)] == list(range(6))
    assert not staging.exists()
