"""CheckpointManager on its own (no engines): the `latest` pointer can neither lose a run's
checkpoints nor lead outside its folder, and a damaged checkpoint is one clear error."""

import json

import pytest
import torch

from oneforcing.errors import UserError
from oneforcing.trainer.checkpoint import CheckpointManager
from oneforcing.trainer.state_io import load_state


def _manager(root):
    return CheckpointManager(root, rank=0, world_size=1, keep_last=2)


def _saved(tmp_path, steps=(2, 4)):
    m = _manager(tmp_path / "run" / "checkpoints")
    for step in steps:
        m.save(step, {"generator": {"w": torch.full((3,), float(step)), "updates": step}})
    return m


def test_latest_and_resume(tmp_path):
    m = _saved(tmp_path)
    assert m.latest().name == "step_00000004" and m.resolve("auto") == m.latest()
    states, meta = m.load(m.latest(), ["generator"])
    assert torch.equal(states["generator"]["w"], torch.full((3,), 4.0)) and meta["step"] == 4
    assert m.resolve(str(tmp_path / "run")) == m.latest()  # a run folder resolves to its latest


@pytest.mark.parametrize("pointer,message", [
    ({"checkpoint": "step_00000006", "step": 6}, "missing or incomplete"),
    ({"checkpoint": "../../other/checkpoints/step_00000002", "step": 2}, "not a step_NNNNNNNN folder"),
    ({"checkpoint": "/abs/step_00000002"}, "not a step_NNNNNNNN folder"),
    ({"checkpoint": ["step_00000002"]}, "not a step_NNNNNNNN folder"),
    ({"step": 4}, "unreadable checkpoint pointer"),
    ("not json", "unreadable checkpoint pointer"),
])
def test_a_bad_latest_pointer_stops_the_run(tmp_path, pointer, message):
    m = _saved(tmp_path)
    other = _saved(tmp_path / "o", steps=(2,))  # a second run the pointer could lead into
    (m.root / "latest").write_text(pointer if isinstance(pointer, str) else json.dumps(pointer))
    before = sorted(p.name for p in m.root.iterdir())
    with pytest.raises(UserError, match=message):
        m.resolve("auto")
    assert sorted(p.name for p in m.root.iterdir()) == before and other.latest().name == "step_00000002"


def test_a_run_killed_before_its_first_pointer_resumes_from_its_checkpoint(tmp_path):
    # The kill landed between renaming the checkpoint into place and writing `latest`: the
    # checkpoint is complete, so it is resumed from (starting over would overwrite it).
    m = _saved(tmp_path)
    (m.root / "latest").unlink()
    (m.root / ".tmp-step_00000006").mkdir()  # a half-written later one does not count
    assert m.resolve("auto").name == "step_00000004"
    assert _manager(tmp_path / "fresh").resolve("auto") is None  # a new run starts from step 0


def test_damaged_checkpoints_are_one_line_errors(tmp_path):
    m = _saved(tmp_path)
    ckpt = m.latest()
    meta = ckpt / "meta.json"
    good_meta = meta.read_text()
    for garbage in ("{", "[1, 2]", json.dumps({"format": "oneforcing-checkpoint-v1"})):
        meta.write_text(garbage)
        with pytest.raises(UserError, match="meta.json"):
            m.read_meta(ckpt)
    meta.write_text(good_meta)
    tensors, skeleton = ckpt / "rank0/generator.safetensors", ckpt / "rank0/generator.json"
    data = tensors.read_bytes()
    tensors.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"generator\.safetensors: unreadable tensor file"):
        load_state(ckpt / "rank0/generator")
    tensors.write_bytes(data)
    for bad in ("{not json", json.dumps({"w": {"__tensor__": "t99"}})):
        skeleton.write_text(bad)
        with pytest.raises(UserError, match=r"generator\.json"):
            load_state(ckpt / "rank0/generator")


def test_saving_the_same_step_again_replaces_it_whole(tmp_path):
    m = _saved(tmp_path)
    m.save(4, {"generator": {"w": torch.full((3,), 40.0), "updates": 4}})
    states, _ = m.load(m.latest(), ["generator"])
    assert torch.equal(states["generator"]["w"], torch.full((3,), 40.0))
    assert sorted(p.name for p in m.root.iterdir()) == ["latest", "step_00000002", "step_00000004"]
