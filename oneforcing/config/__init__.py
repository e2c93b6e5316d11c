"""Recipe loading: YAML, `_base_` inheritance, overrides, references."""

from oneforcing.config.recipe import apply_overrides, deep_merge, dump_recipe, load_recipe

__all__ = ["apply_overrides", "deep_merge", "dump_recipe", "load_recipe"]
