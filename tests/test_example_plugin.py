"""The example plugin package: pip-installed, listed, and trained in a recipe with no change to
the project."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_trainer import free_port

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "plugins" / "oneforcing-tdcritic"


@pytest.fixture(scope="module")
def installed():
    pip = [sys.executable, "-m", "pip"]
    proc = subprocess.run([*pip, "install", "-q", "--no-deps", "--no-build-isolation", str(PLUGIN)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    yield
    subprocess.run([*pip, "uninstall", "-y", "-q", "oneforcing-tdcritic"], capture_output=True, timeout=300)


def test_plugin_critic_is_listed(installed):
    proc = subprocess.run([sys.executable, "-m", "oneforcing.cli", "list", "critics"],
                          capture_output=True, text=True, timeout=120)
    line = next(ln for ln in proc.stdout.splitlines() if "temporal_difference_critic" in ln)
    assert "[oneforcing_tdcritic]" in line


def test_plugin_critic_trains_in_a_recipe(installed, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OF_RUN_DIR": str(run), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    critic = 'models.critic={type: temporal_difference_critic, config: "${_wan}", layer: -1, hidden: 16}'
    proc = subprocess.run([str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2",
                           "--master_port", str(free_port()), str(ROOT / "recipes/run.py"),
                           str(ROOT / "tests/recipes/tiny_distill.yaml"), critic, "export=null"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, "\n".join(proc.stderr.splitlines()[-30:])
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all("critic/gan_discriminator/logit_gap" in r for r in rows)
    assert all(r["critic/grad_norm"] > 0 for r in rows)
