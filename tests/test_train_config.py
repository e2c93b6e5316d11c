"""The train recipe as typed config (trainer/config.py), the layering around it, and placement."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from oneforcing.errors import UserError
from oneforcing.schedulers import FlowMatchScheduler
from oneforcing.trainer.config import DeepSpeedOptions, EMAConfig, LoraOptions, OptimizerConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "oneforcing"


def python(*args: str) -> subprocess.CompletedProcess:
    """A fresh interpreter that imports this checkout's oneforcing."""
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
TINY = {"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 16, "in_channels": 4,
        "out_channels": 4, "text_dim": 24, "freq_dim": 32, "ffn_dim": 64}


def recipe(**over) -> dict:
    base = {"run_dir": "r", "steps": 3, "models": {"generator": {"type": "causal_wan", "config": TINY}},
            "data": {"type": "latent_shards", "path": "d"}, "generator_losses": [{"type": "flow_matching"}]}
    return {**base, **over}


def test_the_recipe_becomes_typed_sections():
    cfg = TrainConfig.from_recipe(recipe(optim={"generator": {"lr": 2, "betas": [0, 0.9]}}, ema={"decay": 0.5},
                                         lora={"generator": {"rank": 4}}, deepspeed={"zero_stage": 0},
                                         export={"merge_lora": False}, generator_every=2, keep_last=1))
    assert cfg.optim["generator"] == OptimizerConfig(lr=2.0, betas=(0.0, 0.9))
    assert cfg.optim["critic"] == OptimizerConfig()
    assert cfg.ema == EMAConfig(decay=0.5) and cfg.lora == {"generator": LoraOptions(rank=4)}
    assert cfg.deepspeed == DeepSpeedOptions(zero_stage=0) and cfg.export.merge_lora is False
    assert (cfg.schedule.steps, cfg.schedule.generator_every, cfg.schedule.keep_last) == (3, 2, 1)
    [loss] = cfg.generator_losses
    assert loss.name == "flow_matching" and loss.weight == 1.0 and callable(loss.fn)


@pytest.mark.parametrize("over, key, text", [
    ({"stesp": 3}, "stesp", "did you mean 'steps'"),
    ({"steps": "three"}, "steps", "expected int"),
    ({"steps": -1}, "steps", "must be >= 0"),
    ({"optim": {"generator": {"lrr": 1}}}, "optim.generator.lrr", "did you mean 'lr'"),
    ({"optim": {"generator": {"betas": "x"}}}, "optim.generator.betas", "expected tuple"),
    ({"optim": {"teacher": {}}}, "optim", "no role 'teacher'"),
    ({"deepspeed": {"zero_stage": 2}}, "deepspeed.zero_stage", "not supported"),
    ({"deepspeed": {"precison": "bf16"}}, "deepspeed.precison", "did you mean 'precision'"),
    ({"deepspeed": {"micro_batch_size": 0}}, "deepspeed.micro_batch_size", "integer >= 1"),
    ({"lora": {"generator": {"rank": "big"}}}, "lora.generator.rank", "expected int"),
    ({"lora": {"generator": []}}, "lora.generator", "expected a mapping"),
    ({"ema": {"decy": 0.9}}, "ema.decy", "did you mean 'decay'"),
    ({"ema": {"decay": 1.5}}, "ema.decay", "must be in [0, 1)"),
    ({"export": {"folder": "x"}}, "export.folder", "takes no key 'folder'"),
    ({"export": {"inference_weights": "best"}}, "export.inference_weights", "one of raw, ema"),
    ({"export": {"inference_weights": "ema"}, "ema": None}, "export.inference_weights", "no ema: section"),
    ({"models": {"generator": {"type": "causal_wan", "config": TINY, "causl": True}}},
     "models.generator.causl", "did you mean 'causal'"),
    ({"generator_losses": [{"type": "flow_matching", "text_dropuot": 0.1}]},
     "generator_losses[0].text_dropuot", "did you mean 'text_dropout'"),
])
def test_errors_name_the_dotted_key(over, key, text):
    with pytest.raises(UserError) as exc:
        TrainConfig.from_recipe(recipe(**over), file="r.yaml")
    assert exc.value.key == key and exc.value.file == "r.yaml" and exc.value.exit_code == 2
    assert text in exc.value.message
    assert str(exc.value).startswith(f"r.yaml: {key}: ")


def test_zero_stage_auto_is_resolved_by_the_engines_from_the_world_size_they_are_given(monkeypatch):
    from oneforcing.trainer.engines import DeepSpeedPlan

    monkeypatch.setenv("WORLD_SIZE", "4")  # the launcher's variable: the typed config ignores it
    cfg = TrainConfig.from_recipe(recipe(deepspeed={"zero_stage": "auto"}))
    assert cfg.deepspeed.zero_stage == "auto"
    assert DeepSpeedPlan.resolve(cfg.deepspeed, world_size=1).zero_stage == 0
    assert DeepSpeedPlan.resolve(cfg.deepspeed, world_size=2).sharded
    assert DeepSpeedPlan.resolve(DeepSpeedOptions(zero_stage=0), world_size=8).zero_stage == 0
    assert DeepSpeedPlan.resolve(DeepSpeedOptions(), world_size=1).config()["zero_optimization"]["stage"] == 3


def test_the_step_counts_defaults_are_the_schedules():
    from oneforcing.trainer.config import Schedule

    cfg = TrainConfig.from_recipe(recipe())
    assert cfg.schedule == Schedule(steps=3)
    text = (PKG / "trainer" / "config.py").read_text()
    assert "os.environ" not in text and "getenv" not in text  # pure data: nothing read from the launch


def test_show_exits_2_with_the_dotted_key(tmp_path):
    (tmp_path / "r.yaml").write_text(
        "job: train\nrun_dir: r\nsteps: 1\ndata: {type: latent_shards, path: d}\n"
        "models: {generator: {type: causal_wan, config: {num_layers: 2}}}\n"
        "generator_losses: [{type: flow_matching}]\noptim: {generator: {lrr: 1.0}}\n")
    proc = python("-m", "oneforcing.cli", "show", str(tmp_path / "r.yaml"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'r.yaml'}: optim.generator.lrr: ")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_trainer_never_imports_jobs():
    """runtime is the bottom layer; jobs -> trainer, never trainer -> jobs (no import circle)."""
    for file in [*(PKG / "trainer").glob("*.py"), PKG / "runtime.py"]:
        bad = {m for m in _imports(file) if m.startswith("oneforcing.jobs")}
        assert not bad, f"{file.name} imports {bad}"
    code = ("import sys, oneforcing.trainer, oneforcing.trainer.placement, oneforcing.trainer.export;"
            "print(sorted(m for m in sys.modules if m.startswith('oneforcing.jobs')))")
    out = python("-c", code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_models_and_critics_know_nothing_of_distribution():
    """Single-device models: sharding, streaming and process groups live in trainer/placement.py."""
    files = [*(PKG / "models").glob("*.py"), *(PKG / "critics").glob("*.py")]
    assert len(files) > 5
    for file in files:
        bad = {m for m in _imports(file) if m.split(".")[0] == "deepspeed" or m.startswith("torch.distributed")}
        assert not bad, f"{file.name} imports {bad}"
        text = file.read_text()
        assert "torch.distributed" not in text and "deepspeed." not in text.lower(), file.name
    code = "import sys, oneforcing.models, oneforcing.critics; print('deepspeed' in sys.modules)"
    out = python("-c", code)
    assert out.stdout.strip() == "False", out.stderr


def _role(cfg, registry, role="generator", seed=0, **ds):
    from oneforcing.runtime import RunContext
    from oneforcing.trainer.engines import DeepSpeedPlan
    from oneforcing.trainer.placement import build_role_module

    plan = DeepSpeedPlan.resolve(DeepSpeedOptions(zero_stage=0, **ds), world_size=1)
    return build_role_module(cfg, registry, role=role, plan=plan, lora=None, ctx=RunContext(seed=seed),
                             scheduler=FlowMatchScheduler())


def test_placement_loads_a_pretrained_model_from_the_meta_device(tmp_path, monkeypatch):
    from oneforcing.models import CausalWan
    from oneforcing.registry import CRITICS, MODELS
    from oneforcing.testing.tiny_wan import save_tiny_wan
    from oneforcing.trainer import placement

    folder = save_tiny_wan(tmp_path / "wan")
    ref = CausalWan.from_pretrained(folder).state_dict()
    metas = []
    real = placement._built_on_meta
    monkeypatch.setattr(placement, "_built_on_meta", lambda *a: metas.append(real(*a)) or metas[-1])
    model = _role({"type": "causal_wan", "pretrained": str(folder)}, MODELS, gradient_checkpointing=True)
    assert metas[-1] is model and model.gradient_checkpointing  # meta path: no random init at all
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    assert not any(p.is_meta for p in model.parameters())
    # A critic's head is not in the checkpoint: built for real with the role's seed, Wan loaded.
    critic = _role({"type": "register_gan_critic", "pretrained": str(folder), "layers": [1], "heads": 2},
                   CRITICS, role="critic", seed=3)
    assert metas[-1] is None
    assert all(torch.equal(v, ref[k]) for k, v in critic.model.state_dict().items())
    again = _role({"type": "register_gan_critic", "pretrained": str(folder), "layers": [1], "heads": 2},
                  CRITICS, role="critic", seed=3)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in critic.state_dict().items())
