"""Where components come from: the built-in modules, entry-point plugins, recipe `imports:`."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging

from oneforcing.errors import RecipeError, UserError

log = logging.getLogger("oneforcing")

ENTRY_POINT_GROUP = "oneforcing.plugins"

# Sub-packages whose import registers the built-in components. Each one's __init__ imports
# its modules, so importing the package is enough.
BUILTIN_PACKAGES = (
    "oneforcing.schedulers",
    "oneforcing.attention",
    "oneforcing.models",
    "oneforcing.critics",
    "oneforcing.samplers",
    "oneforcing.losses",
    "oneforcing.data",
    "oneforcing.eval",
    "oneforcing.loggers",
    "oneforcing.jobs",
    "oneforcing.toy",  # the toy world: after the core, whose jobs and registries it uses
)

_state = {"builtins": False, "plugins": False}
plugin_failures: dict[str, str] = {}


def load_builtins() -> None:
    if _state["builtins"]:
        return
    _state["builtins"] = True
    for package in BUILTIN_PACKAGES:
        if importlib.util.find_spec(package) is not None:
            importlib.import_module(package)


def load_plugins(force: bool = False) -> None:
    """Import every module named by an entry point in the `oneforcing.plugins` group, once.

    A plugin that fails to import is reported on one line and skipped: one broken third-party
    package must not take the rest of the library down with it.
    """
    load_builtins()
    if _state["plugins"] and not force:
        return
    _state["plugins"] = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in plugin_failures and not force:
            continue
        try:
            ep.load()
        except Exception as exc:  # noqa: BLE001 - any failure of third-party code is reported
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
            plugin_failures[ep.name] = msg
            log.warning("oneforcing plugin '%s' (%s) failed to load: %s", ep.name, ep.value, msg)


def import_modules(modules: list[str] | tuple[str, ...], *, file: str | None = None) -> None:
    """A recipe's `imports: [pkg.module, ...]`: modules whose import registers components."""
    load_builtins()
    if not isinstance(modules, (list, tuple)):
        raise RecipeError("must be a list of module names", file=file, key="imports")
    for i, name in enumerate(modules):
        if not isinstance(name, str):
            raise RecipeError(f"expected a module name, got {name!r}", file=file, key=f"imports[{i}]")
        try:
            importlib.import_module(name)
        except UserError:
            raise  # e.g. a component breaking its contract: already one line naming it
        except SyntaxError as exc:
            raise RecipeError(f"cannot import module '{name}': SyntaxError: {exc.msg} ({exc.filename}, line "
                              f"{exc.lineno})", file=file, key=f"imports[{i}]") from None
        except Exception as exc:  # noqa: BLE001 - whatever the module's own code raises at import
            what = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ImportError) else str(exc)
            raise RecipeError(f"cannot import module '{name}': {what}", file=file, key=f"imports[{i}]") from exc
