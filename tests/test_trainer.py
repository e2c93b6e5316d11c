"""The DeepSpeed trainer end to end on a tiny Wan: checkpoints, kill-and-resume, faults, export."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "tests/recipes/tiny_teacher.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(ranks: int, *overrides: str) -> list[str]:
    run = str(ROOT / "recipes/run.py")
    if ranks == 1:
        return [sys.executable, run, str(RECIPE), *overrides]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    return [torchrun, "--nproc_per_node", str(ranks), "--master_port", str(free_port()), run, str(RECIPE), *overrides]


def env_for(run_dir: Path) -> dict:
    return {**os.environ, "OF_RUN_DIR": str(run_dir), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


def train(run_dir: Path, ranks: int = 1, *overrides: str, expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(command(ranks, *overrides), env=env_for(run_dir), capture_output=True, text=True,
                          timeout=600, cwd=run_dir.parent)
    if proc.returncode != expect:
        interesting = [ln for ln in proc.stderr.splitlines()
                       if any(w in ln for w in ("Error", "error", "rank", "Abort", "abort", "oneforcing"))]
        pytest.fail(f"exit {proc.returncode}, expected {expect}:\n" + "\n".join(interesting[-60:]))
    return proc


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


def assert_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def latest_step(run_dir: Path) -> int:
    pointer = run_dir / "checkpoints" / "latest"
    try:
        return json.loads(pointer.read_text())["step"]
    except (OSError, ValueError):
        return -1


def kill_run(proc: subprocess.Popen) -> None:
    """kill -9 a launched run: the launcher's process group and every descendant's own group
    (torchrun starts its workers in their own sessions, out of the launcher's group); then
    check that none of them is left running."""
    import psutil

    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        try:
            os.killpg(os.getpgid(p.pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait()
    deadline = time.time() + 30
    alive = family
    while alive and time.time() < deadline:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.05)
    assert not alive, f"still running after kill -9: {[p.pid for p in alive]}"


def checkpoint_files(ckpt: Path) -> dict[str, bytes]:
    """Every file of a checkpoint, byte for byte (meta.json without its wall-clock time, and with
    the run's own folder, which its recipe names, written as RUN)."""
    out = {}
    for f in sorted(ckpt.rglob("*")):
        if f.is_file():
            data = f.read_bytes()
            if f.name == "meta.json":
                meta = json.loads(data.decode().replace(str(ckpt.parents[1]), "RUN"))
                meta.pop("time")
                data = json.dumps(meta, sort_keys=True).encode()
            out[str(f.relative_to(ckpt))] = data
    return out


def test_single_rank_run_checkpoints_ema_and_export(tmp_path):
    run = tmp_path / "run"
    proc = train(run, 1, "loggers=[console, {type: jsonl}]")  # a logger by name or as a mapping
    assert "this rank holds" in proc.stderr
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(r["generator/flow_matching"] > 0 for r in rows)
    # Warm-up: lr ramps over the first two updates.
    assert rows[0]["generator/lr"] == pytest.approx(5e-4) and rows[2]["generator/lr"] == pytest.approx(1e-3)
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert ckpts == ["step_00000004", "step_00000006"]  # keep_last: 2
    # The export is a diffusers folder that diffusers itself loads; EMA differs from raw weights.
    from diffusers import WanTransformer3DModel

    gen, ema = weights(run / "export/generator"), weights(run / "export/ema")
    assert any(not torch.equal(gen[k], ema[k]) for k in gen)
    model = WanTransformer3DModel.from_pretrained(run / "export/ema")
    assert torch.equal(model.state_dict()["proj_out.weight"], ema["proj_out.weight"])
    # It declares the inference weights (the recipe's export.inference_weights, raw by default).
    assert json.loads((run / "export/export.json").read_text()) == {"inference_weights": "raw", "has_ema": True}


@pytest.mark.parametrize("ranks,zero_stage", [(1, "3"), (2, "3"), (1, "0")])
def test_kill_and_resume_is_bit_identical(tmp_path, ranks, zero_stage):
    stage = f"deepspeed.zero_stage={zero_stage}"
    clean = tmp_path / "clean"
    train(clean, ranks, stage)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(ranks, stage), env=env_for(killed), cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while latest_step(killed) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    kill_run(proc)  # the launcher and every rank, each in its own process group
    step_at_kill = latest_step(killed)
    assert 2 <= step_at_kill < 6, "the run was not interrupted mid-way"
    resumed = train(killed, ranks, stage)
    assert f"resumed from" in resumed.stderr
    for sub in ("generator", "ema"):
        assert_identical(weights(clean / "export" / sub), weights(killed / "export" / sub))
    # Optimizer state, EMA, RNG and data position too: the final checkpoints are the same files,
    # byte for byte, on every rank (ZeRO-3's partition padding included).
    a, b = (checkpoint_files(run / "checkpoints/step_00000006") for run in (clean, killed))
    assert sorted(a) == sorted(b) and len(a) == 1 + 6 * ranks
    assert [k for k in a if a[k] != b[k]] == []


def test_two_ranks_partition_parameters(tmp_path):
    proc = train(tmp_path / "run", 2, "steps=1", "export=null")
    held = re.search(r"generator: ([\d,]+) parameters, this rank holds ([\d,]+) \(ZeRO-3 over 2 ranks", proc.stderr)
    total, local = (int(g.replace(",", "")) for g in held.groups())
    assert local < 0.55 * total


def test_nan_losses_skip_updates_then_stop(tmp_path):
    # One bad step is skipped on every rank; three in a row stop the run with exit 2.
    run = tmp_path / "run"
    proc = subprocess.run(command(2, "generator_losses=[{type: nan_at_steps, steps: [3]}]", "export=null"),
                          env=env_for(run), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    skipped = [ln for ln in proc.stderr.splitlines() if "update skipped on every rank (1 in a row)" in ln]
    assert len(skipped) == 2  # one line from each rank, both at the same step
    assert skipped[0].startswith("[oneforcing") and all("step 3:" in ln for ln in skipped)
    assert any(ln.startswith("[oneforcing rank 1]") for ln in skipped)
    # (one rank here: torchrun reports any failing child as exit 1, the runner's own code is 2)
    run2 = tmp_path / "run2"
    proc = train(run2, 1, "generator_losses=[{type: nan_at_steps, steps: [3, 4, 5]}]", "export=null", expect=2)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "3 bad updates in a row" in errors[0]
    # Bad updates never touch the weights, so the checkpoint at step 4 (after one skipped update)
    # is good, and it is what `latest` names: nothing was written after the run went bad.
    assert latest_step(run2) == 4
    assert sorted(p.name for p in (run2 / "checkpoints").glob("step_*")) == ["step_00000002", "step_00000004"]
    # ... and resumable: with the loss fixed the run goes on from step 4 to the end.
    resumed = train(run2, 1, "export=null")
    assert "resumed from" in resumed.stderr and latest_step(run2) == 6


@pytest.mark.parametrize("zero_stage", ["3", "0"])
def test_nan_gradient_with_finite_loss_is_skipped(tmp_path, zero_stage):
    # ZeRO-3 detects non-finite gradients itself; unsharded DeepSpeed does not, so the trainer
    # measures the norm. Either way the weights of the skipped update stay as they were.
    run, clean = tmp_path / "run", tmp_path / "clean"
    bad = "generator_losses=[{type: nan_at_steps, steps: [0, 1, 2, 3, 4, 5], in_gradient: true}]"
    proc = train(run, 1, bad, f"deepspeed.zero_stage={zero_stage}", "max_bad_steps=10", "ema=null")
    assert sum("update skipped on every rank" in ln for ln in proc.stderr.splitlines()) == 6
    # A zero loss (zero gradients, no weight decay in this recipe) leaves the initial weights.
    train(clean, 1, "generator_losses=[{type: nan_at_steps, steps: []}]", f"deepspeed.zero_stage={zero_stage}",
          "ema=null")
    after = weights(run / "export/generator")
    assert all(torch.isfinite(v).all() for v in after.values())
    assert_identical(weights(clean / "export/generator"), after)


def test_zero_stage_auto_shards_only_with_several_ranks(tmp_path):
    one = train(tmp_path / "one", 1, "steps=1", "export=null", "deepspeed.zero_stage=auto")
    assert "this rank holds" in one.stderr and "(not sharded, fp32)" in one.stderr
    two = train(tmp_path / "two", 2, "steps=1", "export=null", "deepspeed.zero_stage=auto")
    assert "(ZeRO-3 over 2 ranks, fp32)" in two.stderr


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(command(1, "steps=1000", "checkpoint_every=1000", "export=null"),
                            env=env_for(run), cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text().strip():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    step = latest_step(run)
    assert 1 <= step < 1000 and "stopped by signal" in err


def test_resume_errors_are_one_line(tmp_path):
    proc = train(tmp_path / "a", 1, "resume=/nonexistent/ckpt", expect=2)
    assert proc.stderr.strip().splitlines()[-1].startswith("error: resume: '/nonexistent/ckpt' is not a complete")
    # A checkpoint written by 1 rank cannot be resumed by 2.
    run = tmp_path / "b"
    train(run, 1, "steps=2", "export=null")
    proc = train(run, 2, "steps=4", expect=1)  # torchrun turns any failed child into exit 1 ...
    assert "failed (exitcode: 2)" in proc.stderr  # ... the ranks themselves exit 2
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors and all("was written by 1 ranks; this run has 2" in ln for ln in errors)
