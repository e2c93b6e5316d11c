"""Recipes: YAML files with `_base_` inheritance, command-line overrides and `${a.b}` references.

    recipe = load_recipe("recipes/toy/one_forcing_framewise.yaml", ["lr=2e-5", "losses[1].weight=0.1"])

- YAML is read with a `yaml.SafeLoader` that also refuses duplicate keys and documents whose
  aliases expand past a million values; `_base_` chains are at most 64 files deep.
- `_base_: file` or `_base_: [a, b]` (relative to the recipe) are merged first, in order, then the
  recipe on top. Mappings merge key by key; anything else (lists included) is replaced. A mapping
  with `_delete_: true` replaces its base instead of merging into it.
- Overrides `a.b=value` and `a[2].b=value`; the value is parsed as YAML (`lr=1e-5` is a float,
  `steps=[1000,750]` a list, `name=null` None).
- `${a.b}` is replaced by the value at that path (type kept when it is the whole string);
  `${env:NAME}` / `${env:NAME,default}` by an environment variable; `${assets:NAME}` by the path
  of a file shipped in the package's assets folder (toy weights, the toy text encoder).
- Top-level keys starting with `_` are private variables for references and are dropped after.
Every user error raises `RecipeError` with one line naming the file and key.
"""

from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml

from oneforcing.config.assets import packaged_asset
from oneforcing.errors import RecipeError, did_you_mean

_OVERRIDE_KEY = re.compile(r"^[A-Za-z_][\w\-]*(\[\d+\])*(\.[A-Za-z_][\w\-]*(\[\d+\])*)*$")
_TOKEN = re.compile(r"([A-Za-z_][\w\-]*)|\[(\d+)\]")
_REF = re.compile(r"\$\{([^}]*)\}")


def parse_path(path: str, *, file: str | None = None) -> list[str | int]:
    """'a.b[2].c' -> ['a', 'b', 2, 'c']."""
    if not _OVERRIDE_KEY.match(path):
        raise RecipeError(f"bad key path '{path}' (expected e.g. a.b or a[2].b)", file=file)
    return [name if name else int(index) for name, index in _TOKEN.findall(path)]


def format_path(parts: list[str | int]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


MAX_BASE_DEPTH = 64          # `_base_` files inheriting from each other
MAX_VALUES = 1_000_000       # values a recipe may expand to through YAML aliases (a "billion laughs")


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses duplicate keys (YAML would keep the last one silently) and
    documents whose aliases expand to more than MAX_VALUES values."""

    def construct_document(self, node):
        sizes: dict[int, int] = {}

        def size(n) -> int:  # expanded value count; aliases share nodes, so memoise by identity
            if id(n) not in sizes:
                sizes[id(n)] = 0  # a self-referencing alias counts once
                if isinstance(n, yaml.SequenceNode):
                    total = 1 + sum(size(c) for c in n.value)
                elif isinstance(n, yaml.MappingNode):
                    total = 1 + sum(size(k) + size(v) for k, v in n.value)
                else:
                    total = 1
                sizes[id(n)] = min(total, MAX_VALUES + 1)
            return sizes[id(n)]

        if size(node) > MAX_VALUES:
            raise yaml.YAMLError(f"the document expands to more than {MAX_VALUES:,} values through aliases")
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # an unhashable key: construct_mapping reports it
                if first is not key_node.start_mark:
                    mark = key_node.start_mark
                    raise _DuplicateKey(f"line {mark.line + 1}, column {mark.column + 1}: duplicate key "
                                        f"{str(key)[:80]!r} (first at line {first.line + 1})")
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(yaml.YAMLError):
    pass


def _read_yaml(path: Path) -> dict:
    shown = str(path)
    if not path.exists():
        raise RecipeError("recipe file not found", file=shown)
    if path.is_dir():
        raise RecipeError("is a directory, expected a YAML recipe file", file=shown)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read: {exc}", file=shown) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise RecipeError("invalid YAML: nested too deeply", file=shown) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"invalid YAML: {where}{problem}", file=shown) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"a recipe must be a mapping of keys, got {type(data).__name__}", file=shown)
    return data


def deep_merge(base: Any, top: Any) -> Any:
    if isinstance(base, dict) and isinstance(top, dict):
        if top.get("_delete_") is True:
            return {k: copy.deepcopy(v) for k, v in top.items() if k != "_delete_"}
        out = dict(base)
        for key, value in top.items():
            out[key] = deep_merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(top)


def _load_with_bases(path: Path, stack: tuple[Path, ...]) -> dict:
    path = path.resolve()
    if len(stack) >= MAX_BASE_DEPTH:
        raise RecipeError(f"_base_ chain deeper than {MAX_BASE_DEPTH} files (from {stack[0].name})",
                          file=str(path), key="_base_")
    if path in stack:
        chain = " -> ".join(p.name for p in (*stack, path))
        raise RecipeError(f"circular _base_: {chain}", file=str(path))
    data = _read_yaml(path)
    bases = data.pop("_base_", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise RecipeError("_base_ must be a file name or a list of file names", file=str(path), key="_base_")
    merged: dict = {}
    for base in bases:
        base_path = (path.parent / base)
        if not base_path.exists():
            raise RecipeError(f"base recipe '{base}' not found (looked at {base_path})", file=str(path), key="_base_")
        merged = deep_merge(merged, _load_with_bases(base_path, (*stack, path)))
    return deep_merge(merged, data)


def set_path(data: dict, parts: list[str | int], value: Any, *, file: str | None, shown: str) -> None:
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        here = format_path(parts[: depth + 1])
        if isinstance(part, int):
            if not isinstance(node, list):
                raise RecipeError(f"'{format_path(parts[:depth]) or '(root)'}' is not a list", file=file, key=shown)
            if part >= len(node):
                raise RecipeError(f"index {part} out of range: '{format_path(parts[:depth])}' has {len(node)} items",
                                  file=file, key=shown)
        else:
            if not isinstance(node, dict):
                raise RecipeError(f"'{format_path(parts[:depth]) or '(root)'}' is not a mapping", file=file, key=shown)
            if part not in node and not last:
                hint = did_you_mean(part, node)
                raise RecipeError(f"no key '{here}' to override.{hint}", file=file, key=shown)
        if last:
            node[part] = value
        else:
            node = node[part]


def apply_overrides(data: dict, overrides: list[str], *, file: str | None = None) -> dict:
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"bad override '{item}': expected key=value (e.g. lr=1e-5)", file=file)
        key, _, raw = item.partition("=")
        key = key.strip()
        if key.startswith("--"):
            raise RecipeError(f"bad override '{item}': write key=value without dashes", file=file)
        parts = parse_path(key, file=file)
        try:
            value = yaml.load(raw, Loader=_StrictLoader) if raw.strip() else ""  # noqa: S506
        except (yaml.YAMLError, RecursionError):
            # `{` / `[` open a YAML mapping / list: a string such as '{prompt}-{index}.mp4' needs quotes
            hint = (f""" (a string starting with {raw.strip()[0]} needs YAML quotes: {key}='"..."')"""
                    if raw.strip()[:1] in ("{", "[") else "")
            raise RecipeError(f"bad value in override '{item}': not valid YAML{hint}", file=file, key=key) from None
        set_path(data, parts, value, file=file, shown=key)
    return data


def get_path(data: Any, parts: list[str | int]) -> Any:
    node = data
    for part in parts:
        if isinstance(part, int) and isinstance(node, list) and part < len(node):
            node = node[part]
        elif isinstance(part, str) and isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise KeyError(format_path(parts))
    return node


def resolve_references(data: dict, *, file: str | None = None) -> dict:
    """Replace `${a.b}` and `${env:NAME[,default]}` everywhere; detect cycles."""

    def lookup(ref: str, where: str, stack: tuple[str, ...]) -> Any:
        ref = ref.strip()
        if ref.startswith("assets:"):
            path = packaged_asset(ref[len("assets:"):])
            if not path.exists():
                raise RecipeError(f"no packaged asset '{ref[7:]}' (looked at {path})", file=file, key=where)
            return str(path)
        if ref.startswith("env:"):
            name, _, default = ref[4:].partition(",")
            if name in os.environ:
                return os.environ[name]
            if default:
                return yaml.safe_load(default)
            raise RecipeError(f"environment variable '{name}' is not set (referenced as ${{{ref}}})",
                              file=file, key=where)
        if ref in stack:
            raise RecipeError(f"circular reference: {' -> '.join((*stack, ref))}", file=file, key=where)
        try:
            target = get_path(data, parse_path(ref, file=file))
        except (KeyError, RecipeError):
            raise RecipeError(f"reference ${{{ref}}} names no key in the recipe", file=file, key=where) from None
        return walk(target, ref, (*stack, ref))

    def walk(node: Any, where: str, stack: tuple[str, ...]) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, f"{where}.{k}" if where else str(k), stack) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{where}[{i}]", stack) for i, v in enumerate(node)]
        if isinstance(node, str) and "${" in node:
            whole = _REF.fullmatch(node)
            if whole:
                return lookup(whole.group(1), where, stack)
            return _REF.sub(lambda m: str(lookup(m.group(1), where, stack)), node)
        return node

    return walk(data, "", ())


def load_recipe(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Load, merge, override and resolve a recipe; returns a plain dict (private keys dropped)."""
    shown = str(path)
    try:
        data = _load_with_bases(Path(path), ())
    except RecursionError:
        raise RecipeError("the recipe is nested too deeply", file=shown) from None
    return finish_recipe(data, overrides, shown)


def finish_recipe(data: dict, overrides: list[str] | tuple[str, ...], shown: str) -> dict:
    """Apply overrides, resolve `${...}`, drop private keys (also for a recipe made of overrides
    alone, on the command line)."""
    try:
        data = apply_overrides(data, list(overrides), file=shown)
        data = resolve_references(data, file=shown)
    except RecursionError:
        raise RecipeError("the recipe is nested too deeply", file=shown) from None
    data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("_"))}
    check_finite(data, file=shown)
    return data


def check_finite(data: Any, *, file: str | None = None, where: str = "") -> None:
    """Every number of a recipe is finite, checked once for all jobs: a YAML `.nan` or `.inf` in a
    cfg_scale, a shift or a learning rate passes every range check (comparisons with NaN are false)
    and would silently write NaN data or black videos."""
    if isinstance(data, float) and not math.isfinite(data):
        raise RecipeError(f"must be a finite number, got {data}", file=file, key=where or None)
    if isinstance(data, dict):
        for k, v in data.items():
            check_finite(v, file=file, where=f"{where}.{k}" if where else str(k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            check_finite(v, file=file, where=f"{where}[{i}]")


def dump_recipe(recipe: dict) -> str:
    return yaml.safe_dump(recipe, sort_keys=False, default_flow_style=None, width=100)
