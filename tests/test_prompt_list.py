"""The prompt-only dataset (`prompt_list`) of the data-free DMD recipes: the file format, what a
batch holds for the trainer, rank split, resumption, and the shipped toy prompt file."""

import pytest
import torch

from oneforcing.config.assets import TOY_TEXT_ENCODER, packaged_asset
from oneforcing.data import Batch, read_prompt_file
from oneforcing.errors import UserError
from oneforcing.registry import DATASETS, build

SHAPE = [3, 16, 8, 8]


def make(path, **kw):
    cfg = {"type": "prompt_list", "path": str(path), "latent_shape": SHAPE, "text_encoder": dict(TOY_TEXT_ENCODER), **kw}
    return build(cfg, DATASETS)


def write(tmp_path, text, name="prompts.txt"):
    p = tmp_path / name
    p.write_bytes(text.encode("utf-8"))
    return p


def test_reads_one_prompt_a_line_like_the_official_reader(tmp_path):
    p = write(tmp_path, "a red ball moving left  \r\nsecond prompt\nthird\n")
    assert read_prompt_file(p) == ["a red ball moving left", "second prompt", "third"]


@pytest.mark.parametrize("text, match", [
    ("", r"prompts\.txt: holds no prompts"),
    ("one\n\nthree\n", r"prompts\.txt:2: empty line"),
    ("one\n   \n", r"prompts\.txt:2: empty line"),
    ("one\ntwo\n\n", r"prompts\.txt:3: empty line"),
])
def test_empty_file_or_line_names_the_file_line_and_key(tmp_path, text, match):
    with pytest.raises(UserError, match=match) as err:
        make(write(tmp_path, text))
    assert err.value.key == "data.path"


def test_missing_file_and_bad_shape_name_their_keys(tmp_path):
    with pytest.raises(UserError, match="not a prompt file") as err:
        make(tmp_path / "nope.txt")
    assert err.value.key == "data.path"
    with pytest.raises(UserError) as err:
        make(write(tmp_path, "a\n"), latent_shape=[3, 16, 8])
    assert err.value.key == "data.latent_shape"


def test_batches_hold_embeddings_prompts_and_the_noise_shape(tmp_path):
    prompts = [f"a small red circle moving {d} slowly on a black background" for d in ("left", "right", "up", "down")]
    ds = make(write(tmp_path, "\n".join(prompts) + "\n"), shuffle=False)
    batch = next(ds.batches(3))
    assert isinstance(batch, Batch) and batch.prompts == prompts[:3]
    assert batch.text.shape[:2] == (3, TOY_TEXT_ENCODER["max_length"]) and batch.text.dtype == torch.float32
    assert batch.latents is None
    assert batch.rollout_shape("the rollout") == (3, *SHAPE)  # what the trainer's rollout draws noise for
    with pytest.raises(UserError, match="needs 'latents'"):
        batch.require("latents", "a GAN on real data")  # no silent stand-in for real latents
    # Each prompt's embedding is its own (not the batch's): the same prompt alone gives the same row.
    alone = ds.encode([prompts[1]])
    assert torch.allclose(alone[0], batch.text[1], atol=1e-5)


def test_ranks_split_each_epoch_and_resume_continues(tmp_path):
    p = write(tmp_path, "\n".join(f"prompt {i}" for i in range(10)) + "\n")
    firsts = [list(_take(iter(make(p, rank=r, world_size=2, seed=3)), 5)) for r in range(2)]
    assert len(set(firsts[0]) | set(firsts[1])) == 10  # disjoint, together every prompt once
    a = make(p, seed=3)
    it = iter(a)
    head = _take(it, 13)  # into the second epoch
    b = make(p, seed=3)
    b.load_state_dict(a.state_dict())
    assert _take(iter(b), 4) == _take(it, 4)
    assert sorted(head[:10]) == sorted(f"prompt {i}" for i in range(10))
    assert a.epoch_order(0) != a.epoch_order(1)  # a new permutation every epoch
    with pytest.raises(UserError, match="cannot resume: saved num_prompts=10, now 9"):
        make(write(tmp_path, "\n".join(f"p{i}" for i in range(9)) + "\n", "other.txt"), seed=3).load_state_dict(a.state_dict())


def test_the_shipped_toy_prompt_file_reads():
    prompts = read_prompt_file(packaged_asset("toy_prompts.txt"))
    assert len(prompts) == 2000 and len(set(prompts)) > 1000


def _take(it, n):
    return [next(it) for _ in range(n)]
