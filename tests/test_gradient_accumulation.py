"""`deepspeed.gradient_accumulation`: one role update draws N micro-batches (each its own rollout
and backward) and steps once, so accumulation N with micro-batch B is the same update as
accumulation 1 with batch N x B; the LR schedule, the update counters and the EMA see one update."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "tests/recipes/tiny_accumulation.yaml"


def train(run_dir: Path, *overrides: str) -> None:
    env = {**os.environ, "OF_RUN_DIR": str(run_dir), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "recipes/run.py"), str(RECIPE), *overrides], env=env,
                          capture_output=True, text=True, timeout=600, cwd=run_dir.parent)
    assert proc.returncode == 0, "\n".join(proc.stderr.splitlines()[-30:])


def checkpoint(run_dir: Path, name: str) -> tuple[dict, dict]:
    """(tensors, JSON skeleton) of a role's rank-0 state at the final step 2."""
    folder = run_dir / "checkpoints/step_00000002/rank0"
    return load_file(str(folder / f"{name}.safetensors")), json.loads((folder / f"{name}.json").read_text())


@pytest.mark.parametrize("zero_stage", ["0", "3"])
def test_accumulation_matches_one_batch_of_the_same_examples(tmp_path, zero_stage):
    stage = f"deepspeed.zero_stage={zero_stage}"
    train(tmp_path / "batch", stage, "deepspeed.micro_batch_size=4", "deepspeed.gradient_accumulation=1")
    train(tmp_path / "accum", stage, "deepspeed.micro_batch_size=2", "deepspeed.gradient_accumulation=2")
    for name in ("generator", "critic", "ema"):  # weights, AdamW moments, EMA shadow
        (a, meta_a), (b, meta_b) = checkpoint(tmp_path / "batch", name), checkpoint(tmp_path / "accum", name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=f"{name} {k}")
        if name != "ema":  # two steps, one update of each role per step
            assert meta_a["updates"] == meta_b["updates"] == 2
    rows = {run: [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
            for run in ("batch", "accum")}
    for role in ("generator", "critic"):
        # Warm-up over 3 updates: the LR advanced once per update, not once per micro-batch.
        assert [r[f"{role}/lr"] for r in rows["accum"]] == pytest.approx([1e-3 / 3, 2e-3 / 3])
        got, want = ([r[f"{role}/loss"] for r in rows[run]] for run in ("accum", "batch"))
        assert got == pytest.approx(want, rel=1e-5)  # the mean over the micro-batches
        assert want[1] < want[0]  # the updates did move the weights
    ema_a, ema_b = load_file(str(tmp_path / "batch/export/ema/diffusion_pytorch_model.safetensors")), \
        load_file(str(tmp_path / "accum/export/ema/diffusion_pytorch_model.safetensors"))
    for k in ema_a:
        torch.testing.assert_close(ema_b[k], ema_a[k], rtol=1e-5, atol=1e-6)


def test_accumulation_must_be_a_positive_integer(tmp_path):
    env = {**os.environ, "OF_RUN_DIR": str(tmp_path / "run"), "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run([sys.executable, str(ROOT / "recipes/run.py"), str(RECIPE),
                           "deepspeed.gradient_accumulation=0"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error:") and "deepspeed.gradient_accumulation" in proc.stderr
    assert not (tmp_path / "run").exists()
