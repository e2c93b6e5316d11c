"""Strict building of registered components from recipe configs.

`build({"type": NAME, **kwargs}, REGISTRY)` looks NAME up and calls it with kwargs, after
checking every kwarg against the component's signature: unknown keys, missing required keys
and values of the wrong type (by the signature's annotations) are errors that name the recipe
file and the dotted key path. Nested configs (a dict with `type`) are built recursively when
the parameter's annotation asks for an object rather than a dict; values that only a `**kwargs`
takes stay raw (the callee checks them: the train job hands its keys to trainer/config.py).
`validate` is the same walk with construction switched off.
"""

from __future__ import annotations

import collections.abc
import inspect
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from oneforcing.errors import ComponentError, RecipeError, UserError, did_you_mean
from oneforcing.registry.kinds import REGISTRIES
from oneforcing.registry.plugins import load_plugins

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
    tuples, so `betas: [0, 0.999]` becomes (0.0, 0.999)), list -> tuple, str -> Path, and a
    string that reads as a finite float -> float where a float is expected (YAML reads `1e-5`,
    a number without a dot, as a string)."""
    origin, args = get_origin(ann), get_args(ann)
    if ann is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if ann is float and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    if origin in (Union, types.UnionType):
        for option in args:
            if _matches(value, option):
                return _coerce(value, option)
        for option in args:  # none takes it as it is: the first that takes it converted
            converted = _coerce(value, option)
            if converted is not value and _matches(converted, option):
                return converted
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


class Unbuilt:
    """What `validate` puts where `build` would put a built nested component: the class or
    factory that would be called (so the parameter's annotation can still be checked)."""

    def __init__(self, obj: Any):
        self.obj = obj

    def matches(self, ann: Any) -> bool:
        if ann is _EMPTY or ann is Any or isinstance(ann, (str, typing.TypeVar)):
            return True
        if get_origin(ann) in (Union, types.UnionType):
            return any(self.matches(a) for a in get_args(ann))
        if ann is type(None) or ann is None or get_origin(ann) is not None:
            return False  # a built component is neither None nor a container
        if isinstance(ann, type) and inspect.isclass(self.obj):
            try:
                return issubclass(self.obj, ann)
            except TypeError:  # a Protocol that is not runtime-checkable: as build would not tell
                return True
        return True  # a factory function: its result's type is known only once called


def _resolve_nested(value: Any, ann: Any, path: str, file: str | None, default_registry, construct: bool) -> Any:
    """Build nested `{type: ...}` dicts (and lists of them) that an annotation asks for as objects
    (with construct=False: check them the same way and leave `Unbuilt` placeholders)."""
    if _wants_config_dict(ann):
        return value
    if _is_component_cfg(value):
        return _walk_any(value, path=path, file=file, prefer=default_registry, annotation=ann, provided={},
                         construct=construct)
    if isinstance(value, list) and value and all(_is_component_cfg(v) for v in value):
        elem = _list_element(ann)
        if _wants_config_dict(elem):
            return value
        return [
            _walk_any(v, path=_join(path, i), file=file, prefer=default_registry, annotation=elem, provided={},
                      construct=construct)
            for i, v in enumerate(value)
        ]
    return value


def check_kwargs(obj, kwargs: dict, *, what: str, path: str = "", file: str | None = None,
                 provided: tuple[str, ...] = (), registry=None, construct: bool = True) -> dict:
    """Validate `kwargs` against `obj`'s signature; return them with nested configs built
    (construct=False: checked only, as `Unbuilt` placeholders).

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
        if key not in params:  # taken by **kwargs: the callee reads the raw recipe value itself
            out[key] = value
            continue
        ann = hints.get(key, params[key].annotation)
        value = _resolve_nested(value, ann, key_path, file, registry, construct)
        value = _coerce(value, ann)
        if not (value.matches(ann) if isinstance(value, Unbuilt) else _matches(value, ann)):
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
    handed_in = [m for m in missing if registry is not None and registry.contract is not None
                 and m in registry.contract.init_keywords]
    if handed_in:  # e.g. a sampler nested in a loss: only a job holds the recipe's scheduler to hand it
        raise RecipeError(f"{what} needs the recipe's '{handed_in[0]}', which the job hands in when it builds it "
                          f"(build(cfg, registry, {handed_in[0]}=...)); it cannot be configured inside another component",
                          file=file, key=path or None)
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


def declared(cfg: Any, registry, **offered) -> dict:
    """The `offered` call-time kwargs whose names the constructor of the component `cfg` names
    declares: how a component asks for what the job holds and a recipe cannot write (a model that
    needs the noise level declares `scheduler: FlowMatchScheduler` and gets the recipe's; a
    rank-aware dataset declares `rank`). {} for a config without a known type (build then says why)."""
    name = cfg.get("type") if isinstance(cfg, dict) else None
    entry = registry.find(name) if isinstance(name, str) and ":" not in name else None
    if entry is None:
        return {}
    params, _, _ = _signature(entry.obj)
    return {k: v for k, v in offered.items() if k in params}


def build(cfg: Any, registry, *, path: str = "", file: str | None = None, **provided) -> Any:
    """Build `cfg = {type: NAME, ...}` from `registry`, strictly. `provided` are call-time
    kwargs that do not come from the recipe (models, schedulers handed in by the trainer)."""
    return _walk(cfg, registry, path=path, file=file, provided=provided, construct=True)


def validate(cfg: Any, registry, *, path: str = "", file: str | None = None,
             provided: tuple[str, ...] = ()) -> None:
    """Check a config exactly as `build` would (the same walk: type, keys, value types, nested
    configs looked up the same way) without constructing anything: jobs call it at construction
    so that `oneforcing show` and the first seconds of a run catch every recipe mistake before
    any weights are loaded. `provided` names the kwargs the caller will pass at build time."""
    _walk(cfg, registry, path=path, file=file, provided=dict.fromkeys(provided), construct=False)


def build_from_any(cfg: dict, *, path: str = "", file: str | None = None, prefer=None,
                   annotation: Any = _EMPTY, **provided) -> Any:
    """Build a nested config whose registry is not fixed: `kind:name` says it explicitly;
    otherwise the unique registry holding the name (the preferred one on a tie)."""
    return _walk_any(cfg, path=path, file=file, prefer=prefer, annotation=annotation, provided=provided,
                     construct=True)


def _walk(cfg: Any, registry, *, path: str, file: str | None, provided: dict, construct: bool) -> Any:
    """The one walk behind `build` and `validate`; construct=False stops before every call."""
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
        return _walk_any(cfg, path=path, file=file, prefer=None, annotation=_EMPTY, provided=provided,
                         construct=construct)
    try:
        obj = registry.get(name)
    except UserError as err:
        raise err.at(file=file, key=_join(path, "type")) from None
    kwargs = {k: v for k, v in cfg.items() if k != "type"}
    for key in sorted(set(kwargs) & set(provided)):  # e.g. a sampler's `scheduler`: set once, by the job
        raise RecipeError(f"{registry.singular} '{name}' gets '{key}' from the job, not from this config",
                          file=file, key=_join(path, key))
    kwargs = check_kwargs(obj, kwargs, what=f"{registry.singular} '{name}'", path=path, file=file,
                          provided=tuple(provided), registry=registry, construct=construct)
    if not construct:
        return Unbuilt(obj)
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


def _walk_any(cfg: dict, *, path: str, file: str | None, prefer, annotation: Any, provided: dict,
              construct: bool) -> Any:
    """`_walk` for a nested config whose registry is not fixed (see `build_from_any`)."""
    load_plugins()
    name = cfg["type"]
    if ":" in name:
        kind, _, short = name.partition(":")
        if kind not in REGISTRIES:
            hint = did_you_mean(kind, REGISTRIES)
            raise RecipeError(f"unknown registry kind '{kind}'.{hint} Kinds: {', '.join(REGISTRIES)}",
                              file=file, key=_join(path, "type"))
        return _walk({**cfg, "type": short}, REGISTRIES[kind], path=path, file=file, provided=provided,
                     construct=construct)
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
    return _walk(cfg, holders[0], path=path, file=file, provided=provided, construct=construct)
