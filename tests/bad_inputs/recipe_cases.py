"""Bad recipes, overrides and recipe values (see common.py)."""

from __future__ import annotations

from bad_inputs.common import RECIPES, TINY_TEACHER, case, toy_data, train


# --- recipes: syntax, structure, hostile YAML ------------------------------------------------
@case("duplicate_yaml_key", r"duplicate_keys\.yaml: invalid YAML: line 5, column 1: duplicate key 'num_examples'")
def _(w):
    return ["show", str(RECIPES / "duplicate_keys.yaml")]


@case("yaml_alias_bomb", r"expands to more than 1,000,000 values")
def _(w):
    return ["show", str(RECIPES / "alias_bomb.yaml")]


@case("base_chain_1500_deep", r"_base_ chain deeper than 64 files")
def _(w):
    for i in range(1500):
        (w.root / f"b{i}.yaml").write_text(f"_base_: b{i + 1}.yaml\n" if i < 1499 else "job: toy_data\n")
    return ["show", "b0.yaml"]


@case("circular_base", r"circular _base_: circular_a\.yaml -> circular_b\.yaml -> circular_a\.yaml")
def _(w):
    return ["show", str(RECIPES / "circular_a.yaml")]


@case("missing_base", r"_base_: base recipe 'does_not_exist\.yaml' not found")
def _(w):
    return ["show", str(RECIPES / "missing_base.yaml")]


@case("invalid_yaml", r"not_yaml\.yaml: invalid YAML: line 3")
def _(w):
    return ["show", str(RECIPES / "not_yaml.yaml")]


@case("recipe_is_a_list", r"a recipe must be a mapping of keys, got list")
def _(w):
    return ["show", str(RECIPES / "a_list.yaml")]


@case("recipe_without_job", r"no_job\.yaml: missing 'job'")
def _(w):
    return ["show", str(RECIPES / "no_job.yaml")]


@case("deeply_nested_yaml", r"(nested too deeply|invalid YAML)")
def _(w):
    (w.root / "deep.yaml").write_text("job: toy_data\nx: " + "[" * 5000 + "]" * 5000 + "\n")
    return ["show", "deep.yaml"]


@case("recipe_not_found", r"nope\.yaml: recipe file not found")
def _(w):
    return ["show", "nope.yaml"]


@case("huge_value_is_cut_short", r"characters cut")
def _(w):
    return train("seed=" + "x" * 200_000, command="show")


@case("override_without_equals", r"bad override 'steps'")
def _(w):
    return train("steps", command="show")


@case("override_with_dashes", r"write key=value without dashes")
def _(w):
    return train("--steps=3", command="show")


@case("override_unknown_nested_key", r"no key 'optim\.generator\.lrr' to override")
def _(w):
    return train("optim.generator.lrr.x=1", command="show")


@case("reference_to_missing_key", r"steps: reference \$\{nowhere\} names no key")
def _(w):
    return train("steps=${nowhere}", command="show")


@case("unset_environment_variable", r"environment variable 'OF_SURELY_UNSET' is not set")
def _(w):
    return toy_data(w, "out=${env:OF_SURELY_UNSET}")


@case("circular_reference_on_command_line", r"circular reference")
def _(w):
    return ["toy-data", "_a=${_b}", "_b=${_a}", "out=${_a}"]


@case("unknown_command", r"unknown command 'toy-dta'\. did you mean 'toy-data'")
def _(w):
    return ["toy-dta"]


@case("recipe_of_another_job", r"recipe runs job 'train', not 'toy_data'")
def _(w):
    return ["toy-data", str(TINY_TEACHER)]


# --- recipe values: types and ranges ---------------------------------------------------------
@case("model_config_wrong_type", r"tiny_teacher\.yaml: models\.generator\.config\.num_layers: expected an integer >= 1, got str 'one'")
def _(w):
    return train("models.generator.config.num_layers=one", command="show")


@case("model_config_short_patch_size", r"models\.generator\.config\.patch_size: expected 3 integers")
def _(w):
    return train("models.generator.config.patch_size=[1, 2]", command="show")


@case("model_config_unknown_key", r"models\.generator\.config\.num_layer: keys this Wan implementation does not know")
def _(w):
    return train("models.generator.config.num_layer=2", command="show")


@case("checkpoint_every_zero", r"checkpoint_every: must be >= 1, got 0")
def _(w):
    return train("checkpoint_every=0")


@case("log_every_zero", r"log_every: must be >= 1, got 0")
def _(w):
    return train("log_every=0")


@case("steps_negative", r"steps: must be >= 0, got -1")
def _(w):
    return train("steps=-1")


@case("micro_batch_size_zero", r"deepspeed\.micro_batch_size: must be an integer >= 1, got 0")
def _(w):
    return train("deepspeed.micro_batch_size=0")


@case("max_bad_steps_zero", r"max_bad_steps: must be >= 1")
def _(w):
    return train("max_bad_steps=0")


@case("unknown_logger", r"loggers\[1\]\.type: unknown metric sinks? 'tensorboard'|loggers\[1\]")
def _(w):
    return train("loggers=[jsonl, {type: tensorboard}]", command="show")


@case("logger_unknown_key", r"loggers\[0\]\.file: .*takes no key 'file'")
def _(w):
    return train("loggers=[{type: jsonl, file: m.jsonl}]", command="show")


@case("unknown_role", r"models: unknown role 'teacher'")
def _(w):
    return train("models.teacher={type: causal_wan}", command="show")


@case("seed_not_an_integer", r"seed: 'seed' must be an integer")
def _(w):
    return train("seed=abc", command="show")


@case("unknown_loss", r"generator_losses\[0\]\.type: unknown")
def _(w):
    return train("generator_losses[0].type=flow_matchin", command="show")


@case("loss_value_wrong_type", r"generator_losses\[0\]\.text_dropout: loss 'flow_matching': expected float")
def _(w):
    return train("generator_losses[0].text_dropout=lots", command="show")


@case("toy_data_bad_latent_dtype", r"latent_dtype: unknown dtype 'float8'")
def _(w):
    return toy_data(w, "latent_dtype=float8")


# --- numbers: finite, and a float YAML reads as a string ---------------------------------------
@case("recipe_nan_learning_rate", r"tiny_teacher\.yaml: optim\.generator\.lr: must be a finite number, got nan")
def _(w):
    return train("optim.generator.lr=.nan", command="show")


@case("recipe_infinite_value_in_a_list", r"optim\.generator\.betas\[1\]: must be a finite number, got inf")
def _(w):
    return train("optim.generator.betas=[0.0, .inf]")


@case("generate_nan_shift", r"\(command line\): scheduler\.shift: must be a finite number, got nan")
def _(w):
    from bad_inputs.common import generate

    return generate(w, "scheduler={type: flow_match, shift: .nan}")


@case("nan_through_a_reference", r"generator_losses\[0\]\.text_dropout: must be a finite number, got -inf")
def _(w):
    return train("_p=-.inf", "generator_losses[0].text_dropout=${_p}", command="show")


@case("float_that_is_not_a_number", r"optim\.generator\.lr: .*expected float, got str 'nan'")
def _(w):
    return train("optim.generator.lr='nan'", command="show")


# --- seeds: what a generator takes ---------------------------------------------------------------
@case("seed_past_2_to_the_64", r"seed: a seed is an integer in \[0, 2\^64\), got 18446744073709551617")
def _(w):
    return train("seed=18446744073709551617")


@case("generate_seeds_past_2_to_the_64", r"seeds\[1\]: a seed is an integer in \[0, 2\^64\)")
def _(w):
    from bad_inputs.common import generate

    return generate(w, "samples_per_prompt=2", "seeds=[1, 18446744073709551617]")


@case("generate_negative_seed", r"seeds\[0\]: a seed is an integer in \[0, 2\^64\), got -1")
def _(w):
    from bad_inputs.common import generate

    return generate(w, "seeds=[-1]")
