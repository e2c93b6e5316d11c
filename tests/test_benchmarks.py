"""Every benchmark script runs, at its smallest size: a renamed recipe, key or API breaks the suite,
not the next person who runs the README's command. The figures are not checked (benchmarks/ is
where they are measured); only that each script gets through every code path and prints them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
       "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}

SMOKE = [  # (script and its smallest arguments, a line its output must hold)
    (["streaming.py", "--smoke"], "VAE decode at the end:"),
    (["toy_teacher_gap.py", "--num", "1", "--t", "500"], "learned x0 mse"),
    (["long_video.py", "--videos", "1", "--windows", "1", "--batch-size", "1"], "window 21 + sink 1"),
    (["memory.py", "plan"], "optimizer + params"),
    (["toy_frame_stats.py", "--prompts", "1", "--steps", "1"], "toy_causal_ode_init, one-step rollout"),
    (["toy_placement_ceiling.py", "--videos", "4"], "| blind_both |"),
    (["prompt_switch.py", "--videos", "2", "--batch-size", "2"], "| switch, recache |"),
    (["serve_speed.py", "--frames", "4"], "keep: cpu, 32x32: latency to first frame"),
]
SLOW = [
    (["unit_world.py", "--part", "objectives", "--seeds", "1", "--updates", "3", "--out", "{tmp}/unit_world"],
     "| dmd_gan w0.3 |"),
    (["training.py", "--recipe", "tests/recipes/tiny_distill.yaml", "--steps", "2", "--warmup", "1"], "P4 critic:"),
    (["precision.py", "--steps", "1", "--repeats", "1", "--recipes", "causvid_ode_init"], "| causvid_ode_init |"),
]


def run_script(args: list[str], cwd: Path, timeout: int = 600) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / args[0]), *args[1:]], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout


@pytest.mark.parametrize("args,expect", SMOKE, ids=[a[0] for a, _ in SMOKE])
def test_benchmark_runs(args, expect, tmp_path):
    assert expect in run_script(args, ROOT)


@pytest.mark.slow
@pytest.mark.parametrize("args,expect", SLOW, ids=[a[0] for a, _ in SLOW])
def test_slower_benchmark_runs(args, expect, tmp_path):
    assert expect in run_script([a.replace("{tmp}", str(tmp_path)) for a in args], ROOT)


@pytest.mark.slow
def test_the_readme_real_chain_runs_on_narrow_folders(tmp_path):
    """README "Real runs": prepare-data -> causal_forcing_ar_diffusion -> causal_forcing_ode_pairs ->
    causal_forcing_ode_init -> one_forcing_framewise -> generate, by the README's commands on folders
    of the real Wan layout (narrow: 2 heads, 1 block), 2 ranks. ~2 min on 2 shared cores."""
    out = run_script(["real_chain.py", "--narrow", "--ranks", "2", "--work", str(tmp_path / "work")], ROOT)
    stages = [line.split(":")[0].removeprefix("== ") for line in out.splitlines() if line.startswith("== ")]
    assert stages == ["prepare-data", "causal_forcing_ar_diffusion", "causal_forcing_ode_pairs",
                      "causal_forcing_ode_init", "one_forcing_framewise", "generate"]
    assert "vbench/: [" in out and "FAILED" not in out


def test_the_real_chain_is_the_readmes():
    """The chain the script runs is the one the README's "Real runs" block lists, in order."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import real_chain
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("## Real runs"):]
    block = block[block.index("```bash"):block.index("```", block.index("```bash") + 3)]
    recipes = [line.split("recipes/run.py ")[1].split()[0] for line in block.splitlines() if "recipes/run.py" in line]
    ours = [cmd.split("recipes/run.py ")[1].split()[0] for _, cmd in real_chain.stages(1) if "recipes/run.py" in cmd]
    assert ours == recipes and all((ROOT / r).is_file() for r in recipes)


def test_toy_one_step_fit_runs(tmp_path):
    """benchmarks/toy_one_step_fit.py on an 8-example deterministic tier, fresh and fixed noise."""
    subprocess.run([sys.executable, str(ROOT / "recipes" / "run.py"), str(ROOT / "recipes" / "toy" / "data.yaml"),
                    f"out={tmp_path / 'tier'}", "num_examples=8", "start_positions=1"],
                   cwd=ROOT, env=ENV, check=True, capture_output=True, timeout=300)
    for extra in ([], ["--fixed-noise"]):
        out = run_script(["toy_one_step_fit.py", str(tmp_path / "tier"), "--steps", "1", "--every", "1",
                          "--frames", "3", "--batch", "2", *extra], ROOT)
        assert "step     1  x0 error train: frame 0" in out and "held-out: frame 0" in out
    out = run_script(["toy_one_step_fit.py", "fresh", "--max-objects", "1", "--start-positions", "1", "--steps", "1",
                      "--every", "1", "--frames", "1", "--context", "none", "--batch", "2", "--absolute-position"], ROOT)
    assert "fresh renders of the tier (scored on 200 unseen) train / 200 held-out" in out and "step     1  x0 error train: frame 0" in out


def gpu_sh(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), *args], cwd=ROOT,
                          env={**ENV, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_gpu_script_smoke_runs_every_part_on_a_cpu(tmp_path):
    """benchmarks/gpu.sh --smoke: the GPU script's every part (real-layout folders, the VBench
    protocol's speed record with and without first-frame enhancement, a One-Forcing iteration of the
    real recipe, the attention comparison) at toy sizes on a CPU. ~1-2 min on 2 shared cores."""
    work = tmp_path / "work"
    proc = gpu_sh("--smoke", "--work", str(work))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    out = proc.stdout
    assert [ln.split(" (")[0] for ln in out.splitlines() if ln.startswith("== ")] == \
        ["== build", "== speed", "== train", "== attention", "== done: total"]
    assert "one step per block, the first block too" in out and "(first-frame enhancement)" in out
    assert "bf16 ZeRO-3 on 1 device" in out and "GiB peak process RSS; real score 1 of the 14B's 40 blocks" in out
    assert "flash-attn unavailable here" in out and "block-causal forward of 3 latent frames" in out
    one_step = json.loads((work / "vbench_one_step" / "vbench_manifest.json").read_text())
    assert one_step["sampler"]["first_frame_enhancement"] is False and one_step["speed"]["videos_timed"] == 2


def test_gpu_script_refuses_bad_arguments_in_one_line(tmp_path):
    proc = gpu_sh("--fast", timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "--fast" in proc.stderr
    (tmp_path / "x").write_text("")
    proc = gpu_sh("--smoke", "--work", str(tmp_path), timeout=60)
    assert proc.returncode == 2 and "not empty" in proc.stderr and not (tmp_path / "data").exists()


def test_toy_convergence_runs(tmp_path):
    """benchmarks/toy_convergence.py: the init's row, then one run trained to 1 and resumed to 2
    iterations, each export scored, on a one-object tier of 4 examples."""
    subprocess.run([sys.executable, str(ROOT / "recipes" / "run.py"), str(ROOT / "recipes" / "toy" / "data_single.yaml"),
                    f"out={tmp_path / 'tier'}", "num_examples=4"], cwd=ROOT, env=ENV, check=True, capture_output=True,
                   timeout=300)
    out = run_script(["toy_convergence.py", "recipes/toy/one_forcing_framewise_single.yaml", "--points", "1,2",
                      "--out", str(tmp_path / "curve"), "--tier", "1,1", "--videos", "2", "--eval", "fd=false",
                      "--eval", "batch_size=2", "--", f"data.path={tmp_path / 'tier'}", "deepspeed.micro_batch_size=1",
                      "generator_every=1"], ROOT)
    assert "| generator updates | total |" in out and "| 2 |" in out
    rows = json.loads((tmp_path / "curve" / "curve.json").read_text())["rows"]
    assert [r["updates"] for r in rows] == [0, 1, 2] and (tmp_path / "curve" / "curve.md").is_file()


def test_toy_convergence_counts_the_generator_updates_the_trainer_makes():
    """The curve's x axis: updates at steps >= generator_start, every generator_every (trainer/loop.py);
    a critic-only warm-up counts none (it once labelled 400 iterations after a 200 warm-up as 80)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from toy_convergence import generator_updates
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert [generator_updates(p, 5) for p in (1, 5, 6, 200, 201)] == [1, 1, 2, 40, 41]
    assert generator_updates(400, 5, 200) == 40 and generator_updates(200, 5, 200) == 0
    assert generator_updates(100, 5, 200) == 0 and generator_updates(2, 1) == 2


def test_rollout_regression_diagnostic_trains(tmp_path):
    """benchmarks/rollout_regression.yaml (DMD's exact limit on the one-object tier) takes a step."""
    subprocess.run([sys.executable, str(ROOT / "recipes" / "run.py"), str(ROOT / "recipes" / "toy" / "data_single.yaml"),
                    f"out={tmp_path / 'tier'}", "num_examples=4"], cwd=ROOT, env=ENV, check=True, capture_output=True,
                   timeout=300)
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "run.py"), "benchmarks/rollout_regression.yaml",
                           "steps=2", f"run_dir={tmp_path / 'run'}", f"data.path={tmp_path / 'tier'}",
                           "deepspeed.micro_batch_size=1", f"export={{dir: {tmp_path / 'export'}}}"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("generator/rollout_regression/mse" in r for r in rows)
    assert (tmp_path / "export" / "generator" / "config.json").is_file()
