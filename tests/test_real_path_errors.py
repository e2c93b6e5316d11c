"""Mistakes on the real path are one line naming the recipe key, exit code 2, before anything is
built or written: a register critic whose layers its base does not have, a missing ODE teacher,
a shortened teacher ODE without its kept indices."""

import os
import subprocess
import sys
from pathlib import Path

from oneforcing.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_recipe(recipe: str, *overrides: str, cwd: Path) -> str:
    """The last stderr line of a run that must fail with exit code 2."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "recipes/run.py"), str(ROOT / recipe), *overrides],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def test_register_critic_layers_missing_from_its_base(tmp_path):
    # The toy critic base has 3 blocks; the real recipe's layers [21, 29] are blocks of the 1.3B.
    line = run_recipe("recipes/toy/one_forcing_framewise.yaml", "models.critic.layers=[21, 29]",
                      f"run_dir={tmp_path}/run", f"_paths.data={tmp_path}", cwd=tmp_path)
    assert line.startswith("error:") and "one_forcing_framewise.yaml: models.critic.layers:" in line
    assert "[21, 29] do not exist in the 3-block base" in line
    assert not (tmp_path / "run").exists()  # stopped before the generator (or anything) was built


def test_ode_pairs_without_its_teacher_names_the_key_and_the_toy_twin(tmp_path):
    line = run_recipe("recipes/ode_pairs.yaml", f"teacher={tmp_path}/missing", f"out={tmp_path}/ode", cwd=tmp_path)
    assert line.startswith("error:") and "ode_pairs.yaml: teacher:" in line and "missing' does not exist" in line
    assert "recipes/toy/ode_pairs.yaml" in line
    assert not (tmp_path / "ode").exists()


def test_fewer_ode_steps_need_their_kept_indices(capsys):
    recipe = str(ROOT / "recipes/toy/ode_pairs.yaml")
    assert main(["show", recipe, "sampler={type: teacher_ode, num_steps: 4}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sampler" in err
    assert "num_steps=4 needs keep_indices too" in err and "[0, 1, 2, 3]" in err
    assert main(["show", recipe, "sampler={type: teacher_ode, num_steps: 4, keep_indices: [0, 2]}"]) == 0
