"""LoRA training and export, and scale-out launches: 2 "nodes" x 1 rank via torchrun's
rendezvous on 127.0.0.1, and the deepspeed launcher."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "tests/recipes/tiny_teacher.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(run_dir: Path) -> dict:
    return {**os.environ, "OF_RUN_DIR": str(run_dir), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


def bin_of(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def check(proc):
    assert proc.returncode == 0, "\n".join(proc.stderr.splitlines()[-40:])
    return proc


def test_lora_trains_only_adapters_and_exports_merged_and_adapters(tmp_path):
    lora = "lora={generator: {rank: 4, alpha: 8, target_modules: [to_q, to_v]}}"
    merged_run, adapter_run = tmp_path / "merged", tmp_path / "adapters"
    for run, merge in ((merged_run, "true"), (adapter_run, "false")):
        check(subprocess.run([sys.executable, str(ROOT / "recipes/run.py"), str(RECIPE), lora, "ema=null",
                              f"export={{dir: {run}/export, merge_lora: {merge}}}"],
                             env=env_for(run), capture_output=True, text=True, timeout=300))
    merged = load_file(str(merged_run / "export/generator/diffusion_pytorch_model.safetensors"))
    base = load_file(str(adapter_run / "export/generator/diffusion_pytorch_model.safetensors"))
    adapters = load_file(str(adapter_run / "export/generator/adapter_model.safetensors"))
    assert not any("lora" in k or "base_layer" in k for k in merged)  # a plain Wan folder
    assert merged.keys() == base.keys()
    changed = {k for k in merged if not torch.equal(merged[k], base[k])}
    # Only the adapted projections moved: the base weights were frozen.
    assert changed and all(k.endswith(("attn1.to_q.weight", "attn1.to_v.weight", "attn2.to_q.weight",
                                       "attn2.to_v.weight")) for k in changed)
    # merged = base + (alpha / rank) * B @ A, layer by layer.
    key = sorted(changed)[0]
    prefix = key[: -len(".weight")]
    a, b = adapters[f"{prefix}.lora_A.default.weight"], adapters[f"{prefix}.lora_B.default.weight"]
    torch.testing.assert_close(merged[key], base[key] + 2.0 * b @ a)


def test_two_nodes_one_rank_each_via_rendezvous(tmp_path):
    run, port = tmp_path / "run", free_port()
    common = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
              "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "oneforcing-test"]
    args = [str(ROOT / "recipes/run.py"), str(RECIPE), "steps=2", "export=null"]
    nodes = [subprocess.Popen([bin_of("torchrun"), *common, "--node_rank", str(i), *args], env=env_for(run),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [n.communicate(timeout=300) for n in nodes]
    for node, (_, err) in zip(nodes, outs):
        assert node.returncode == 0, "\n".join(err.splitlines()[-30:])
    logs = "".join(err for _, err in outs)
    assert "ZeRO-3 over 2 ranks" in logs
    assert (run / "checkpoints/step_00000002/rank1/generator.safetensors").exists()


def test_deepspeed_launcher_runs_the_trainer(tmp_path):
    run = tmp_path / "run"
    proc = check(subprocess.run([bin_of("deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
                                 str(ROOT / "recipes/run.py"), str(RECIPE), "steps=2", "export=null"],
                                env=env_for(run), capture_output=True, text=True, timeout=300))
    assert "ZeRO-3 over 2 ranks" in proc.stdout + proc.stderr
    assert (run / "checkpoints/step_00000002/rank1/generator.safetensors").exists()


def test_pretrained_weights_stream_into_zero3_partitions(tmp_path):
    """2 ranks, ZeRO-3 built under zero.Init: the model never exists whole; the checkpoint is
    streamed in tensor by tensor and the exported weights equal the file (lr 0, one step)."""
    from oneforcing.models import CausalWan
    from oneforcing.testing.tiny_wan import tiny_wan_config

    src = tmp_path / "teacher"
    torch.manual_seed(3)
    CausalWan.from_config(tiny_wan_config(), causal=False).save_pretrained(src)
    run = tmp_path / "run"
    proc = check(subprocess.run(
        [bin_of("torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
         str(ROOT / "recipes/run.py"), str(RECIPE), "steps=1", "ema=null",
         f"models.generator={{type: causal_wan, causal: false, pretrained: {src}}}",
         "optim.generator.lr=0.0", "optim.generator.weight_decay=0.0"],
        env=env_for(run), capture_output=True, text=True, timeout=300))
    assert "streamed" in proc.stderr and "into partitioned parameters" in proc.stderr
    exported = load_file(str(run / "export/generator/diffusion_pytorch_model.safetensors"))
    original = load_file(str(src / "diffusion_pytorch_model.safetensors"))
    assert exported.keys() == original.keys()
    for k in original:
        assert torch.equal(exported[k], original[k]), k


def test_pretrained_critic_and_teacher_stream_under_zero3(tmp_path):
    """The critic wraps a Wan under `model.`: its weights stream into the inner model."""
    from oneforcing.models import CausalWan

    wan = {"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 16, "in_channels": 4,
           "out_channels": 4, "text_dim": 24, "freq_dim": 32, "ffn_dim": 64}
    src = tmp_path / "base"
    CausalWan.from_config(wan, causal=False).save_pretrained(src)
    run = tmp_path / "run"
    proc = check(subprocess.run(
        [bin_of("torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
         str(ROOT / "recipes/run.py"), str(ROOT / "tests/recipes/tiny_distill.yaml"), "steps=1", "export=null",
         f"models.critic={{type: register_gan_critic, pretrained: {src}, layers: [0, 1], heads: 2, ffn_dim: 32}}",
         f"models.real_score={{type: causal_wan, causal: false, pretrained: {src}}}"],
        env=env_for(run), capture_output=True, text=True, timeout=300))
    for role in ("critic", "real_score"):
        assert f"{role}: streamed" in proc.stderr


def test_zero3_gather_limits_follow_the_block_size():
    """ZeRO-3 may keep ~2 transformer blocks gathered, not the whole model (DeepSpeed's 1e9 default
    kept every parameter of a model called several times per update gathered on every rank)."""
    from oneforcing.models.causal_wan import CausalWan
    from oneforcing.testing.tiny_wan import TINY_WAN_CONFIG
    from oneforcing.trainer.config import DeepSpeedOptions
    from oneforcing.trainer.engines import DeepSpeedPlan, zero3_limits

    model = CausalWan(config={**TINY_WAN_CONFIG, "num_layers": 3})
    block = sum(p.numel() for p in model.blocks[0].parameters())
    total = sum(p.numel() for p in model.parameters())
    assert 3 * block < total  # the blocks are not the whole model (embeddings, head)
    limits = zero3_limits(model)
    assert limits == {"stage3_max_live_parameters": 2 * block, "stage3_max_reuse_distance": block,
                      "stage3_prefetch_bucket_size": block, "reduce_bucket_size": block}

    # Partitioned parameters (deepspeed.zero.Init) hold an empty tensor and report ds_numel.
    for p in model.parameters():
        p.ds_id, p.ds_numel = id(p), p.numel()
        p.data = torch.empty(0)
    assert zero3_limits(model) == limits

    def plan(**ds) -> DeepSpeedPlan:
        return DeepSpeedPlan.resolve(DeepSpeedOptions(**ds), world_size=2)

    zero = plan(zero_stage=3).config(1.0, model=model)["zero_optimization"]
    assert zero["stage3_max_live_parameters"] == 2 * block and zero["stage3_param_persistence_threshold"] == 0
    assert "stage3_max_live_parameters" not in plan(zero_stage=3).config()["zero_optimization"]
    assert "stage3_max_live_parameters" not in plan(zero_stage=0).config(model=model)["zero_optimization"]
    extra = {"zero_optimization": {"stage3_max_live_parameters": 7}}  # a recipe's raw keys still win
    assert plan(zero_stage=3, extra=extra).config(model=model)["zero_optimization"][
        "stage3_max_live_parameters"] == 7

    linear = torch.nn.Linear(5, 3)  # no ModuleList: its largest module's own tensors
    assert zero3_limits(linear)["stage3_max_reuse_distance"] == 18
