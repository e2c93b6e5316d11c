"""Two-rank runs of a trivial job under torchrun and the deepspeed launcher (CPU, gloo)."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(cmd, tmp_path):
    (tmp_path / "r.yaml").write_text(f"job: dist_check\nseed: 5\nout: {tmp_path / 'report.json'}\n")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads((tmp_path / "report.json").read_text())


def check_report(report, launcher):
    assert report["world_size"] == 2 and report["rank_sum"] == 1.0
    assert report["launcher"] == launcher and report["backend"] == "gloo"
    a, b = report["per_rank_draws"]
    assert a != b  # ranks draw different noise ...
    # ... and rank 0 draws what a single process with the same seed draws.
    return a


def bin_of(name):
    return str(Path(sys.executable).with_name(name))


def test_torchrun_two_ranks(tmp_path, root):
    report = run_job([bin_of("torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
                      str(root / "recipes/run.py"), str(tmp_path / "r.yaml")], tmp_path)
    first = check_report(report, "torchrun")
    single = run_job([sys.executable, str(root / "recipes/run.py"), str(tmp_path / "r.yaml")], tmp_path)
    assert single["world_size"] == 1 and single["per_rank_draws"] == [first]
    assert single["shared_draw"] == report["shared_draw"]


@pytest.mark.skipif(shutil.which("deepspeed") is None and not Path(sys.executable).with_name("deepspeed").exists(),
                    reason="deepspeed launcher not installed")
def test_deepspeed_launcher_two_ranks(tmp_path, root):
    report = run_job([bin_of("deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
                      str(root / "recipes/run.py"), str(tmp_path / "r.yaml")], tmp_path)
    check_report(report, "deepspeed")


@pytest.mark.parametrize("world_size", ["1", "2"])
def test_a_finished_rank_leaves_with_its_code_and_its_output(world_size):
    """exit_process: alone, sys.exit (atexit handlers run); a rank of a multi-rank launch whose process
    group is gone leaves through os._exit after flushing (interpreter finalization can abort there in
    C++ and turn a finished run into SIGABRT), so its output and exit code survive, atexit does not."""
    code = ("import atexit, sys\n"
            "from oneforcing.distributed import exit_process\n"
            "atexit.register(lambda: print('atexit ran'))\n"
            "print('finished', flush=False); print('on stderr', file=sys.stderr)\n"
            "exit_process(3)\n")
    env = {**os.environ, "WORLD_SIZE": world_size, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 3
    assert "finished" in proc.stdout and "on stderr" in proc.stderr
    assert ("atexit ran" in proc.stdout) == (world_size == "1")
