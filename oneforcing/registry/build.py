"""Strict building of registered components from recipe configs.

`build({"type": NAME, **kwargs}, REGISTRY)` looks NAME up and calls it with kwargs, after
checking every kwarg against the component's signature: unknown keys, missing required keys
and values of the wrong type (by the signature's annotations) are errors that name the recipe
file and the dotted key path. Nested configs (a dict with `type`) are built recursively when
the parameter's annotation asks for an object rather than a dict.
"""

from __future__ import annotations

import collections.abc
import inspect
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from oneforcing.errors import ComponentError, RecipeError, UserError, did_you_mean

_EMPTY = inspect.Parameter.empty


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _signature(obj) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """Parameters (minus self), resolved annotations, and whether it takes **kwargs."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    sig = inspect.signature(target)
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - unresolvable annotations: check names only
        hints = {}
    params, var_kw = {}, False
    for i, (name, p) in enumerate(sig.parameters.items()):
        if inspect.isclass(obj) and i == 0 and name == "self":
            continue
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind is not p.VAR_POSITIONAL:
            params[name] = p
    return params, hints, var_kw


def _type_name(ann: Any) -> str:
    if isinstance(ann, type):
        return ann.__name__
    return str(ann).replace("typing.", "")


def _wants_config_dict(ann: Any) -> bool:
    """True when a parameter asks for a raw dict (the component builds it itself)."""
    if ann is _EMPTY or ann is Any:
        return False
    origin = get_origin(ann) or ann
    if origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        return True
    if origin in (Union, types.UnionType):
        return any(_wants_config_dict(a) for a in get_args(ann) if a is not type(None))
    return False


def _matches(value: Any, ann: Any) -> bool:
    if ann is _EMPTY or ann is Any or isinstance(ann, (str, typing.TypeVar)):
        return True
    origin = get_origin(ann)
    args = get_args(ann)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if ann is type(None) or ann is None:
        return value is None
    if ann is bool:
        return isinstance(value, bool)
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if ann is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if ann in (Path, os.PathLike):
        return isinstance(value, (str, os.PathLike))
    if origin in (list, collections.abc.Sequence, collections.abc.Iterable):
        if not isinstance(value, (list, tuple)):
            return False
        return not args or all(_matches(v, args[0]) for v in value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if not args:
            return True
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args))
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            return False
        return not args or all(_matches(v, args[1]) for v in value.values())
    if origin is not None and isinstance(origin, type):
        return isinstance(value, origin)
    if isinstance(ann, type):
        return isinstance(value, ann)
    return True  # typing constructs we do not model (Callable, Protocol, ...)


def _coerce(value: Any, ann: Any) -> Any:
    """Small lossless conversions YAML cannot express: int -> float (also inside lists and
    tuples, so `betas: [0, 0.999]` becomes (0.0, 0.999)), list -> tuple, str -> Path."""
    origin, args = get_origin(ann), get_args(ann)
    if ann is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin in (Union, types.UnionType):
        for option in args:
            if _matches(value, option):
                return _coerce(value, option)
        return value
    if origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        if args and len(args) == len(value):
            return tuple(_coerce(v, a) for v, a in zip(value, args))
        return tuple(value)
    if origin is list and args and isinstance(value, list):
        return [_coerce(v, args[0]) for v in value]
    if ann is Path and isinstance(value, str):
        return Path(value)
    return value


def _is_component_cfg(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("type"), str)


def _strip_optional(ann: Any) -> Any:
    """`X | None` -> X (for a single non-None option)."""
    if get_origin(ann) in (Union, types.UnionType):
        options = [a for a in get_args(ann) if a is not type(None)]
        if len(options) == 1:
            return options[0]
    return ann


def _list_element(ann: Any) -> Any:
    ann = _strip_optional(ann)
    if get_origin(ann) in (list, tuple, collections.abc.Sequence) and get_args(ann):
        return get_args(ann)[0]
    return _EMPTY


def _resolve_nested(value: Any, ann: Any, path: str, file: str | None, default_registry) -> Any:
    """Build nested `{type: ...}` dicts (and lists of them) that an annotation asks for as objects."""
    if _wants_config_dict(ann):
        return value
    if _is_component_cfg(value):
        return build_from_any(value, path=path, file=file, prefer=default_registry, annotation=ann)
    if isinstance(value, list) and value and all(_is_component_cfg(v) for v in value):
        elem = _list_element(ann)
        if _wants_config_dict(elem):
            return value
        return [
            build_from_any(v, path=_join(path, i), file=file, prefer=default_registry, annotation=elem)
            for i, v in enumerate(value)
        ]
    return value


def check_kwargs(obj, kwargs: dict, *, what: str, path: str = "", file: str | None = None,
                 provided: tuple[str, ...] = (), registry=None) -> dict:
    """Validate `kwargs` against `obj`'s signature; return them with nested configs built.

    `provided` names parameters the caller passes at call time (not from the recipe)."""
    params, hints, var_kw = _signature(obj)
    out = {}
    for key, value in kwargs.items():
        key_path = _join(path, key)
        if key not in params and not var_kw:
            renamed = getattr(obj, "renamed_keys", {}).get(key)  # a key that moved: say where to
            if renamed:
                raise RecipeError(f"{what} takes no key '{key}': {renamed}", file=file, key=key_path)
            accepted = [p for p in params if p not in provided]
            hint = did_you_mean(key, accepted)
            raise RecipeError(
                f"{what} takes no key '{key}'.{hint} Accepted keys: {', '.join(accepted) or '(none)'}",
                file=file, key=key_path,
            )
        ann = hints.get(key, params[key].annotation if key in params else _EMPTY)
        value = _resolve_nested(value, ann, key_path, file, registry)
        value = _coerce(value, ann)
        if not _matches(value, ann):
            shown = repr(value) if len(repr(value)) < 60 else repr(value)[:57] + "..."
            raise RecipeError(
                f"{what}: expected {_type_name(ann)}, got {type(value).__name__} {shown}",
                file=file, key=key_path,
            )
        out[key] = value
    missing = [
        n for n, p in params.items()
        if p.default is _EMPTY and n not in kwargs and n not in provided
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if missing:
        raise RecipeError(
            f"{what} needs key{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)}",
            file=file, key=path or None,
        )
    # A component may check the contents of raw dict values (a model's `config:`) itself.
    hook = getattr(obj, "check_recipe", None)
    if callable(hook):
        try:
            hook(out, path=path, file=file)
        except UserError as err:
            raise err.at(file=file, key=path or None) from None
    return out


def build(cfg: Any, registry, *, path: str = "", file: str | None = None, **provided) -> Any:
    """Build `cfg = {type: NAME, ...}` from `registry`, strictly. `provided` are call-time
    kwargs that do not come from the recipe (models, schedulers handed in by the trainer)."""
    if not isinstance(cfg, dict):
        raise RecipeError(
            f"expected a mapping with a 'type' key naming one of the {registry.kind}, "
            f"got {type(cfg).__name__} {cfg!r}", file=file, key=path or None,
        )
    if "type" not in cfg:
        raise RecipeError(f"missing 'type' (one of the {registry.kind}: {', '.join(registry.names())})",
                          file=file, key=path or None)
    name = cfg["type"]
    if not isinstance(name, str):
        raise RecipeError(f"'type' must be a string, got {name!r}", file=file, key=_join(path, "type"))
    if ":" in name:  # explicit "kind:name"
        return build_from_any(cfg, path=path, file=file, **provided)
    try:
        obj = registry.get(name)
    except UserError as err:
        raise err.at(file=file, key=_join(path, "type")) from None
    kwargs = {k: v for k, v in cfg.items() if k != "type"}
    for key in sorted(set(kwargs) & set(provided)):  # e.g. a sampler's `scheduler`: set once, by the job
        raise RecipeError(f"{registry.singular} '{name}' gets '{key}' from the job, not from this config",
                          file=file, key=_join(path, key))
    kwargs = check_kwargs(obj, kwargs, what=f"{registry.singular} '{name}'", path=path, file=file,
                          provided=tuple(provided), registry=registry)
    try:
        return obj(**kwargs, **provided)
    except UserError as err:
        raise err.at(file=file, key=path or None) from None
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a component failing on its input is still the recipe's line
        text = str(exc).splitlines()[0] if str(exc) else ""
        raise ComponentError(f"building {registry.singular} '{name}' failed: {type(exc).__name__}: {text} "
                             "(set ONEFORCING_DEBUG=1 for the traceback)", file=file, key=path or None) from exc


def build_from_any(cfg: dict, *, path: str = "", file: str | None = None, prefer=None,
                   annotation: Any = _EMPTY, **provided) -> Any:
    """Build a nested config whose registry is not fixed: `kind:name` says it explicitly;
    otherwise the unique registry holding the name (the preferred one on a tie)."""
    from oneforcing.registry import REGISTRIES, load_plugins

    load_plugins()
    name = cfg["type"]
    if ":" in name:
        kind, _, short = name.partition(":")
        if kind not in REGISTRIES:
            hint = did_you_mean(kind, REGISTRIES)
            raise RecipeError(f"unknown registry kind '{kind}'.{hint} Kinds: {', '.join(REGISTRIES)}",
                              file=file, key=_join(path, "type"))
        return build({**cfg, "type": short}, REGISTRIES[kind], path=path, file=file, **provided)
    holders = [r for r in REGISTRIES.values() if name in r]
    if prefer is not None and name in prefer and prefer not in holders:
        holders.append(prefer)  # a registry outside REGISTRIES (e.g. a plugin's own)
    if len(holders) > 1 and isinstance(annotation, type):
        typed = [r for r in holders if inspect.isclass(r.get(name)) and issubclass(r.get(name), annotation)]
        holders = typed or holders
    if len(holders) > 1 and prefer is not None and prefer in holders:
        holders = [prefer]
    if len(holders) > 1:
        kinds = ", ".join(f"'{r.kind}:{name}'" for r in holders)
        raise RecipeError(f"'{name}' is registered in several kinds; write one of {kinds}",
                          file=file, key=_join(path, "type"))
    if not holders:
        everything = sorted({n for r in REGISTRIES.values() for n in r.names()})
        hint = did_you_mean(name, everything, n=3, cutoff=0.5)
        raise RecipeError(f"unknown component '{name}'.{hint} (see `oneforcing list`)",
                          file=file, key=_join(path, "type"))
    return build(cfg, holders[0], path=path, file=file, **provided)


def validate(cfg: Any, registry, *, path: str = "", file: str | None = None,
             provided: tuple[str, ...] = ()) -> None:
    """Check a config as `build` would (type, keys, value types, nested configs) without
    constructing anything: jobs call it at construction so that `oneforcing show` and the first
    seconds of a run catch every recipe mistake before any weights are loaded."""
    if not isinstance(cfg, dict) or not isinstance(cfg.get("type"), str):
        build(cfg, registry, path=path, file=file)  # raises the same error build would
    name = cfg["type"]
    if ":" in name:
        from oneforcing.registry import REGISTRIES

        kind, _, name = name.partition(":")
        if kind not in REGISTRIES:
            build_from_any(cfg, path=path, file=file)  # raises
        registry = REGISTRIES[kind]
    try:
        obj = registry.get(name)
    except UserError as err:
        raise err.at(file=file, key=_join(path, "type")) from None
    params, hints, var_kw = _signature(obj)
    shallow = {k: v for k, v in cfg.items() if k != "type"}
    for key, value in cfg.items():
        if key == "type" or key not in params:
            continue
        ann = hints.get(key, params[key].annotation)
        if _is_component_cfg(value) and not _wants_config_dict(ann):
            validate(value, registry, path=_join(path, key), file=file)
            shallow.pop(key)
        elif isinstance(value, list) and value and all(_is_component_cfg(v) for v in value):
            elem = _list_element(ann)
            if not _wants_config_dict(elem):
                for i, v in enumerate(value):
                    validate(v, registry, path=_join(_join(path, key), i), file=file)
                shallow.pop(key)
    # Keys, required keys and plain value types (nested objects were checked above).
    nested_ok = {k for k in cfg if k != "type" and k not in shallow}
    check_kwargs(obj, shallow, what=f"{registry.singular} '{name}'", path=path, file=file,
                 provided=tuple(provided) + tuple(nested_ok), registry=registry)
