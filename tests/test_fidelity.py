"""The method recipes carry the official settings (docs/fidelity.md): initialisations as the
paper's Table 3, the baselines' official configs, Causal Forcing's teacher-forced chain."""

from pathlib import Path

import pytest
import torch
import yaml

from oneforcing.config import load_recipe
from oneforcing.schedulers.build import build_flow
from oneforcing.testing.tiny_wan import TINY_WAN_CONFIG

ROOT = Path(__file__).resolve().parents[1]


def recipe(name: str) -> dict:
    return load_recipe(ROOT / "recipes" / name)


def _recipe_sampler(name: str):
    """The recipe's sampler, built as its jobs build it: with the recipe's scheduler."""
    r = recipe(name)
    return build_flow(r.get("scheduler"), r["sampler"]).sampler


def test_initialisations_follow_table_3():
    paths = yaml.safe_load((ROOT / "recipes/_paths.yaml").read_text())["_paths"]
    gen = lambda name: recipe(name)["models"]["generator"]  # noqa: E731
    assert gen("one_forcing_framewise.yaml")["pretrained"] == paths["cf_ode_init"]
    assert gen("one_forcing_chunkwise.yaml")["pretrained"] == paths["cf_ode_init_chunkwise"]
    assert gen("one_forcing_chunkwise.yaml")["frames_per_block"] == 3
    assert gen("causal_forcing_dmd.yaml")["pretrained"] == paths["cf_ode_init"]
    for name in ("self_forcing_1step.yaml", "self_forcing_4step.yaml"):
        assert gen(name)["pretrained"] == paths["sf_ode_init"] and gen(name)["frames_per_block"] == 3
    assert gen("self_forcing_ode_init.yaml")["frames_per_block"] == 3
    # the CausVid-style init stays, named for what it is, for the init ablation
    assert gen("one_forcing_framewise_causvid_init.yaml")["pretrained"] == paths["causvid_ode_init"]
    assert recipe("causvid_ode_init.yaml")["generator_losses"] == [{"type": "ode_regression"}]
    # the Causal Forcing chain is teacher-forced end to end, framewise and chunkwise
    for suffix, fpb in (("", 1), ("_chunkwise", 3)):
        ar = recipe(f"causal_forcing_ar_diffusion{suffix}.yaml")
        assert ar["models"]["generator"]["frames_per_block"] == fpb
        pairs = recipe(f"causal_forcing_ode_pairs{suffix}.yaml")
        assert pairs["sampler"]["teacher_forcing"] is True and pairs["model"]["frames_per_block"] == fpb
        init = recipe(f"causal_forcing_ode_init{suffix}.yaml")
        assert init["generator_losses"] == [{"type": "ode_regression", "teacher_forcing": True}]
        assert init["models"]["generator"]["frames_per_block"] == fpb
        assert init["data"]["path"] == pairs["out"]


def test_causal_cd_init_follows_causal_forcing_plus_plus():
    """configs/causal_cd_{framewise,chunkwise}.yaml: the AR-diffusion model is both the start and
    the frozen causal teacher; 48 grid steps, guidance 3 as uncond + 3 (cond - uncond), EMA 0.99 as
    the target and the exported weights; batch 64 = 1 x 8 GPUs x 8. One-Forcing's CD ablation loads
    that EMA and is otherwise one_forcing_framewise.yaml."""
    paths = yaml.safe_load((ROOT / "recipes/_paths.yaml").read_text())["_paths"]
    for suffix, fpb in (("", 1), ("_chunkwise", 3)):
        cd = recipe(f"causal_forcing_cd_init{suffix}.yaml")
        for role in ("generator", "real_score"):
            m = cd["models"][role]
            assert (m["type"], m["pretrained"], m["frames_per_block"]) == \
                ("causal_wan", paths[f"cf_ar_diffusion{suffix}"], fpb)
            assert m.get("causal", True) is True
        assert cd["generator_losses"] == [{"type": "causal_cd", "num_steps": 48, "cfg_scale": 3.0}]
        assert cd["ema"] == {"decay": 0.99, "start_step": 0} and cd["export"]["inference_weights"] == "ema"
        assert cd["optim"]["generator"]["lr"] == 2.0e-6 and cd["optim"]["generator"]["betas"] == [0.0, 0.999]
        ds = cd["deepspeed"]
        assert ds["micro_batch_size"] * 8 * ds["gradient_accumulation"] == 64
        assert paths[f"cf_cd_init{suffix}"] == cd["export"]["dir"] + "/ema"
    of, ablation = recipe("one_forcing_framewise.yaml"), recipe("one_forcing_framewise_cd_init.yaml")
    assert ablation["models"]["generator"]["pretrained"] == paths["cf_cd_init"]
    same = lambda r: {k: v for k, v in r.items() if k not in ("models", "run_dir", "export")}  # noqa: E731
    assert same(ablation) == same(of)
    assert {**ablation["models"]["generator"], "pretrained": None} == {**of["models"]["generator"], "pretrained": None}


def test_ar_diffusion_official_settings():
    ar = recipe("causal_forcing_ar_diffusion.yaml")
    (loss,) = ar["generator_losses"]
    assert loss == {"type": "teacher_forcing_diffusion", "timestep_weighting": True}  # no text dropout
    assert ar["optim"]["generator"]["betas"] == [0.0, 0.999] and ar["ema"] is None


def test_baseline_settings():
    sf4 = recipe("self_forcing_4step.yaml")["sampler"]
    assert sf4["same_step_across_blocks"] is True and sf4["steps"] == [1000, 750, 500, 250]
    cf = recipe("causal_forcing_dmd.yaml")
    assert cf["models"]["generator"]["frames_per_block"] == 1
    assert cf["sampler"]["steps"] == [1000] and cf["sampler"]["first_block_steps"] == [1000, 750, 500, 250]
    asd = recipe("asd_1step.yaml")
    assert [item["weight"] for item in asd["generator_losses"] + asd["critic_losses"] if "gan" in item["type"]] \
        == [0.01, 0.01]
    fkl, chunk = recipe("one_forcing_fkl.yaml"), recipe("one_forcing_chunkwise.yaml")
    assert fkl["models"] == chunk["models"] and fkl["sampler"] == chunk["sampler"]
    assert fkl["critic_losses"] == chunk["critic_losses"]
    (_, gan_d) = chunk["critic_losses"]
    assert gan_d["penalty_form"] == "apt" and (gan_d["r1_weight"], gan_d["r2_weight"]) == (1.0, 0.001)
    assert chunk["steps"] == 1000


def test_self_forcing_init_chain_is_its_own():
    """SF scripts/generate_ode_pairs.py (the 1.3B, shift 8, 48 steps, CFG 6, a caption file) ->
    model/ode_regression.py (uniform_timestep=False: a kept state per block), not the CausVid-style
    14B shift-5 pairs nor the causal (teacher-forced) init."""
    pairs, init = recipe("self_forcing_ode_pairs.yaml"), recipe("self_forcing_ode_init.yaml")
    assert pairs["teacher"] == recipe("causvid_ode_init.yaml")["models"]["generator"]["pretrained"]  # the 1.3B
    assert pairs["scheduler"]["shift"] == 8.0 and pairs["dtype"] == "float32"
    assert pairs["sampler"] == {"type": "teacher_ode", "num_steps": 48, "cfg_scale": 6.0, "keep_indices": [0, 12, 24, 36]}
    assert pairs["prompts_from"] is None and pairs["prompts_file"] and pairs["latent_shape"] == [21, 16, 60, 104]
    assert init["data"]["path"] == pairs["out"] != recipe("ode_pairs.yaml")["out"]
    assert init["generator_losses"] == [{"type": "ode_regression", "per_block": True}]
    assert init["models"]["generator"]["frames_per_block"] == 3 and init["ema"] is None


@pytest.mark.parametrize("name", ["self_forcing_1step.yaml", "self_forcing_4step.yaml", "causal_forcing_dmd.yaml"])
def test_data_free_baselines_train_at_the_official_batch_of_64(name):
    r = recipe(name)
    assert r["data"]["type"] == "prompt_list" and r["data"]["latent_shape"] == [21, 16, 60, 104]
    ds = r["deepspeed"]
    assert ds["micro_batch_size"] * 8 * ds["gradient_accumulation"] == 64  # written for 8 GPUs
    assert r["steps"] == 600 and r["export"]["inference_weights"] == "ema"


@pytest.mark.parametrize("name", ["one_forcing_framewise.yaml", "one_forcing_chunkwise.yaml", "asd_1step.yaml"])
def test_one_forcing_and_asd_keep_the_batch_of_8(name):
    ds = recipe(name)["deepspeed"]
    assert ds["micro_batch_size"] * 8 * ds["gradient_accumulation"] == 8
    assert recipe(name)["data"]["type"] == "latent_shards"


def _tiny(fpb):
    from oneforcing.models import CausalWan

    torch.manual_seed(0)
    return CausalWan.from_config(TINY_WAN_CONFIG, frames_per_block=fpb, causal=True, attention="sdpa").eval()


def test_self_forcing_4step_draws_one_exit_step_for_all_blocks():
    sampler = _recipe_sampler("self_forcing_4step.yaml")
    model = _tiny(1)
    noise, text = torch.randn(1, 6, 4, 4, 4), torch.randn(1, 5, 24)
    with torch.no_grad():
        for seed in range(4):
            exits = sampler(model, noise, text, exit_rng=torch.Generator().manual_seed(seed)).exit_indices
            assert len(set(exits)) == 1


def test_causal_forcing_first_block_takes_the_four_step_list():
    sampler = _recipe_sampler("causal_forcing_dmd.yaml")
    model = _tiny(1)
    noise, text = torch.randn(1, 4, 4, 4, 4), torch.randn(1, 5, 24)
    seen = []
    with torch.no_grad():
        for seed in range(8):
            out = sampler(model, noise, text, exit_rng=torch.Generator().manual_seed(seed))
            assert out.exit_indices[1:] == [0, 0, 0] and out.exit_t[1:] == [1000.0] * 3
            assert out.exit_t[0] == pytest.approx(sampler.first_steps[out.exit_indices[0]])
            assert out.num_forwards == out.exit_indices[0] + 1 + 3 + 3
            seen.append(out.exit_indices[0])
    assert sampler.first_steps == pytest.approx([1000.0, 937.5, 833.3333, 625.0], rel=1e-4)
    assert len(set(seen)) > 1
