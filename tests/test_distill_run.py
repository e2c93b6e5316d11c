"""A tiny One-Forcing run (generator + register-GAN critic + frozen teacher) under ZeRO-3 on
2 ranks, through torchrun and the deepspeed launcher; and its exact resume."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_trainer import checkpoint_files, free_port, kill_run, latest_step

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "tests/recipes/tiny_distill.yaml"


def env_for(run_dir):
    return {**os.environ, "OF_RUN_DIR": str(run_dir), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


def launch(kind: str) -> list[str]:
    run = str(ROOT / "recipes/run.py")
    if kind == "python":
        return [sys.executable, run, str(RECIPE)]
    launcher = str(Path(sys.executable).with_name(kind))
    flag = "--nproc_per_node" if kind == "torchrun" else "--num_gpus"
    return [launcher, flag, "2", "--master_port", str(free_port()), run, str(RECIPE)]


@pytest.mark.parametrize("kind", ["torchrun", "deepspeed"])
def test_one_forcing_step_under_zero3_on_two_ranks(tmp_path, kind):
    run = tmp_path / "run"
    proc = subprocess.run(launch(kind), env=env_for(run), capture_output=True, text=True, timeout=600)
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, "\n".join(logs.splitlines()[-40:])
    for role in ("generator", "critic", "real_score"):
        m = re.search(rf"{role}: ([\d,]+) parameters, this rank holds ([\d,]+) \(ZeRO-3 over 2 ranks", logs)
        total, held = (int(g.replace(",", "")) for g in m.groups())
        assert held < 0.55 * total, role
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert "generator/dmd" in rows[0] and "generator/gan_generator" in rows[0]  # step 0: G and C
    # generator_every: 2: step 1 logs the generator's latest figures, from the update at step 0
    assert rows[1]["generator/step"] == 1 and rows[1]["generator/dmd"] == rows[0]["generator/dmd"]
    assert all("critic/gan_discriminator/logit_gap" in r for r in rows)
    assert (run / "export/ema/diffusion_pytorch_model.safetensors").exists()


def test_generator_metrics_reach_the_log_when_their_step_is_not_logged(tmp_path):
    """generator_every 5 and log_every 5 (the toy recipes): the generator updates on steps 0, 5, ...
    are never a logged step; every logged row still carries the latest generator figures."""
    run = tmp_path / "run"
    proc = subprocess.run(launch("python") + ["steps=10", "generator_every=5", "log_every=5", "checkpoint_every=10",
                                              "deepspeed.zero_stage=0"],
                          env=env_for(run), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10]
    assert [r["generator/step"] for r in rows] == [1, 6] and [r["critic/step"] for r in rows] == [5, 10]
    for r in rows:
        assert {"generator/dmd", "generator/gan_generator", "generator/gan_generator/logit_gap"} <= set(r)
    assert rows[0]["generator/dmd"] != rows[1]["generator/dmd"]


def test_generator_start_warms_the_critic_up_first(tmp_path):
    """generator_start 3: steps 0-2 update only the critic; the generator updates on 3, 5, 7."""
    run = tmp_path / "run"
    proc = subprocess.run(launch("python") + ["steps=8", "generator_every=2", "generator_start=3", "log_every=1",
                                              "checkpoint_every=8", "deepspeed.zero_stage=0", "export=null"],
                          env=env_for(run), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("generator/dmd" not in r for r in rows[:3]) and all("critic/flow_denoise" in r for r in rows)
    assert [r["generator/step"] for r in rows[3:]] == [4, 4, 6, 6, 8]


def test_distillation_kill_and_resume_is_bit_identical(tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    overrides = ["steps=8", "generator_every=3"]  # a resume lands between generator updates
    assert subprocess.run(launch("python") + overrides, env=env_for(clean), capture_output=True,
                          timeout=600).returncode == 0
    proc = subprocess.Popen(launch("python") + overrides, env=env_for(killed), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while latest_step(killed) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    kill_run(proc)
    assert 2 <= latest_step(killed) < 8
    assert subprocess.run(launch("python") + overrides, env=env_for(killed), capture_output=True,
                          timeout=600).returncode == 0
    # The whole checkpoint, byte for byte: generator, critic, EMA, optimizer states, RNG, data.
    a, b = (checkpoint_files(run / "checkpoints/step_00000008") for run in (clean, killed))
    assert sorted(a) == sorted(b) and [k for k in a if a[k] != b[k]] == []
    # And the log: every step's row (the resumed run's, where both wrote one) as uninterrupted, times aside.
    def rows(run):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return {r["step"]: {k: v for k, v in r.items() if k != "time" and not k.startswith("time/")}
                for r in map(json.loads, lines)}
    assert rows(killed) == rows(clean)
