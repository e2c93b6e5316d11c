"""Every shipped recipe: the real ones resolve and validate (`oneforcing show`), the toy ones
run a few training steps on the CPU from the shipped toy weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oneforcing.cli import main

ROOT = Path(__file__).resolve().parents[1]
REAL = sorted(p.name for p in (ROOT / "recipes").glob("*.yaml") if not p.name.startswith("_"))
TOY_TRAIN = ["one_forcing_framewise", "one_forcing_framewise_causvid_init", "one_forcing_chunkwise",
             "self_forcing_1step", "self_forcing_4step", "asd_1step", "one_forcing_fkl", "causvid_ode_init",
             "self_forcing_ode_init", "causal_forcing_ar_diffusion", "causal_forcing_ar_diffusion_chunkwise",
             "causal_forcing_ode_init", "causal_forcing_ode_init_chunkwise", "causal_forcing_dmd", "teacher",
             "student_base", "analytic_ode_init", "one_forcing_framewise_exact", "causal_forcing_cd_init",
             "causal_forcing_cd_init_chunkwise", "one_forcing_framewise_cd_init", "one_forcing_framewise_long"]


@pytest.mark.parametrize("name", REAL)
def test_real_recipe_resolves(name, capsys):
    assert main(["show", str(ROOT / "recipes" / name)]) == 0, capsys.readouterr().err
    assert "job:" in capsys.readouterr().out


def test_real_recipe_without_weights_points_to_the_toy_twin(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "recipes/run.py"), str(ROOT / "recipes/one_forcing_framewise.yaml"),
                           f"_paths.cf_ode_init={tmp_path}/missing"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "models.generator.pretrained" in line and "missing' does not exist" in line
    assert "recipes/toy/one_forcing_framewise.yaml" in line


def run(args, cwd, timeout=600):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "recipes/run.py"), *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, "\n".join(proc.stderr.splitlines()[-30:])
    return proc


@pytest.fixture(scope="module")
def toy_inputs(tmp_path_factory):
    """A few toy examples, short ODE pairs (4 Euler steps) from the shipped teacher, Self Forcing's
    (the student base at shift 8 on the toy prompt file), and short teacher-forced causal ODE pairs
    (with the real context) from the student base run causally."""
    root = tmp_path_factory.mktemp("toy")
    run([str(ROOT / "recipes/toy/data.yaml"), f"out={root}/data", "num_examples=8", "examples_per_shard=8"], root)
    run([str(ROOT / "recipes/toy/ode_pairs.yaml"), f"prompts_from={root}/data", f"out={root}/ode",
         "num_examples=4", "examples_per_shard=4", "batch_size=4",
         "sampler={type: teacher_ode, num_steps: 4, keep_indices: [0, 2]}"], root)
    run([str(ROOT / "recipes/toy/self_forcing_ode_pairs.yaml"), f"out={root}/sf_ode", "num_examples=4",
         "examples_per_shard=4", "batch_size=4", "sampler={type: teacher_ode, num_steps: 4, keep_indices: [0, 2]}"], root)
    run([str(ROOT / "recipes/toy/causal_forcing_ode_pairs.yaml"), f"prompts_from={root}/data", f"out={root}/cf_ode",
         "num_examples=4", "examples_per_shard=4", "batch_size=4", "teacher=${assets:toy_student_base}",
         "sampler={type: teacher_ode, num_steps: 4, keep_indices: [0, 2], teacher_forcing: true}"], root)
    return root


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", TOY_TRAIN)
def test_toy_recipe_runs_a_few_steps(name, precision, toy_inputs, tmp_path):
    """Both precisions are first-class: every method's losses, samplers and rollouts run in bf16
    (the real recipes' default) as well as in fp32 (the toy recipes' default)."""
    init = "${assets:toy_causvid_ode_init}"  # any causal toy generator: the shipped init ablation's
    overrides = [f"run_dir={tmp_path}/run", f"deepspeed.precision={precision}", "steps=2", "generator_every=1",
                 "checkpoint_every=2", "export=null", "deepspeed.micro_batch_size=1",
                 f"_paths.data={toy_inputs}/data", f"_paths.ode_pairs={toy_inputs}/ode", f"_paths.sf_ode_pairs={toy_inputs}/sf_ode",
                 f"_paths.cf_ode_pairs={toy_inputs}/cf_ode", f"_paths.cf_ode_pairs_chunkwise={toy_inputs}/cf_ode",
                 f"_paths.ode_pairs_analytic={toy_inputs}/ode",
                 "_paths.cf_ar_diffusion=${assets:toy_student_base}",
                 "_paths.cf_ar_diffusion_chunkwise=${assets:toy_student_base}",
                 f"_paths.cf_ode_init={init}", f"_paths.cf_ode_init_chunkwise={init}", f"_paths.sf_ode_init={init}",
                 f"_paths.cf_cd_init={init}"]
    if name in ("teacher", "student_base"):
        overrides = [o for o in overrides if not o.startswith("_paths")] + [f"data.path={toy_inputs}/data"]
    proc = run([str(ROOT / "recipes/toy" / f"{name}.yaml"), *overrides], tmp_path)
    assert f"not sharded, {precision})" in proc.stderr  # the models were built in that precision
    assert (tmp_path / "run/checkpoints/step_00000002/meta.json").exists()


def test_one_object_tier_init_chain_runs(toy_inputs, tmp_path):
    """The demo's init, both stages (single_init_frame0.yaml -> single_init.yaml): the image stage
    trains on first frames only and exports a wide causal toy Wan with absolute positions; the video
    stage starts from that export and trains on all frames; so does its CausVid-style twin (ODE pairs)."""
    stage1 = [str(ROOT / "recipes/toy/single_init_frame0.yaml"), f"run_dir={tmp_path}/s1", "steps=2",
              "checkpoint_every=2", f"export={{dir: {tmp_path}/s1/export}}", "deepspeed.micro_batch_size=2",
              f"data.path={toy_inputs}/data"]
    run(stage1, tmp_path)
    cfg = json.loads((tmp_path / "s1/export/generator/config.json").read_text())
    assert (cfg["num_layers"], cfg["num_attention_heads"] * cfg["attention_head_dim"]) == (4, 192)
    assert cfg["absolute_position_grid"] == [4, 4]
    run([str(ROOT / "recipes/toy/single_init.yaml"), f"run_dir={tmp_path}/s2", "steps=2", "checkpoint_every=2",
         "export=null", "deepspeed.micro_batch_size=2", f"data.path={toy_inputs}/data",
         f"models.generator.pretrained={tmp_path}/s1/export/generator"], tmp_path)
    assert (tmp_path / "s2/checkpoints/step_00000002/meta.json").exists()
    # the CausVid-style twin of stage 2 (claim (g)): ODE regression with the noisy context, from the same image stage
    run([str(ROOT / "recipes/toy/single_causvid_init.yaml"), f"run_dir={tmp_path}/s2c", "steps=2", "checkpoint_every=2",
         "export=null", "deepspeed.micro_batch_size=2", f"data.path={toy_inputs}/ode",
         f"models.generator.pretrained={tmp_path}/s1/export/generator"], tmp_path)
    assert (tmp_path / "s2c/checkpoints/step_00000002/meta.json").exists()
    # and its control (claim (i)): the same with the clean context (the pair's endpoint)
    run([str(ROOT / "recipes/toy/single_causal_pairs_init.yaml"), f"run_dir={tmp_path}/s2p", "steps=2",
         "checkpoint_every=2", "export=null", "deepspeed.micro_batch_size=2", f"data.path={toy_inputs}/ode",
         f"models.generator.pretrained={tmp_path}/s1/export/generator"], tmp_path)
    assert (tmp_path / "s2p/checkpoints/step_00000002/meta.json").exists()


TIER_TWINS = ["one_forcing_framewise_single", "one_forcing_chunkwise_single", "one_forcing_fkl_single",
              "asd_1step_single", "causal_forcing_dmd_single", "self_forcing_1step_single",
              "self_forcing_4step_single", "one_forcing_framewise_causvid_init_single",
              "one_forcing_framewise_causal_pairs_init_single"]


@pytest.mark.parametrize("name", TIER_TWINS)
def test_one_object_tier_twin_runs_in_bf16(name, toy_inputs, tmp_path):
    """Every method's twin on the one-object tier (the toy report's methods): two steps in bf16 from
    the shipped wide inits, the exact teacher as real score, critics built from the wide init (fp32:
    the quick report, test_toy_report.py). Their method lines are their toy recipe's."""
    from oneforcing.config.recipe import load_recipe

    proc = run([str(ROOT / "recipes/toy" / f"{name}.yaml"), f"run_dir={tmp_path}/run", "deepspeed.precision=bf16",
                "steps=2", "generator_every=1", "checkpoint_every=2", "export=null", "deepspeed.micro_batch_size=1",
                f"_paths.single_data={toy_inputs}/data", f"_paths.single_ode_pairs={toy_inputs}/ode"], tmp_path)
    assert "not sharded, bf16)" in proc.stderr
    assert (tmp_path / "run/checkpoints/step_00000002/meta.json").exists()
    twin = load_recipe(str(ROOT / "recipes/toy" / f"{name}.yaml"))
    assert twin["models"]["real_score"]["type"] == "toy_analytic_teacher"
    assert [x["cfg_scale"] for x in twin["generator_losses"] if x["type"] == "dmd"] == [1.0]
    assert os.path.basename(twin["models"]["generator"]["pretrained"]) in (
        "toy_single_init", "toy_single_init_chunkwise", "toy_single_causvid_init", "toy_single_causal_pairs_init")
    assert twin["models"]["critic"]["pretrained"].endswith("toy_single_init")
    # the init ablation's control has no whole-world twin: its method lines are One-Forcing framewise's
    method = {"one_forcing_framewise_causal_pairs_init_single": "one_forcing_framewise"}.get(
        name, name.removesuffix("_single"))
    toy = load_recipe(str(ROOT / "recipes/toy" / f"{method}.yaml"))
    for key in ("sampler", "critic_losses", "generator_every", "ema"):
        assert twin.get(key) == toy.get(key), key
    assert twin["export"]["inference_weights"] == toy["export"]["inference_weights"]
    assert [x["type"] for x in twin["generator_losses"]] == [x["type"] for x in toy["generator_losses"]]
