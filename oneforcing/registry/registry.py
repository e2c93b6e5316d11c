"""Named registries of components, with decorator registration and lazy plugin loading."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from oneforcing.errors import RegistryError, did_you_mean
from oneforcing.registry.contracts import CONTRACTS, Contract
from oneforcing.registry.plugins import load_plugins


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Callable[..., Any]
    source: str  # top-level package that registered it ("oneforcing", a plugin's package, ...)


def _source_of(obj: Any) -> str:
    module = inspect.getmodule(obj)
    name = module.__name__ if module is not None else getattr(obj, "__module__", "?")
    return (name or "?").split(".")[0]


class Registry:
    """A mapping from names to buildable components of one kind (losses, critics, ...)."""

    def __init__(self, kind: str, doc: str = "", contract: Contract | None = None):
        self.kind = kind
        self.doc = doc
        # Checked when a component registers (registry/contracts.py; the built-in kind's by default).
        self.contract = contract if contract is not None else CONTRACTS.get(kind)
        self._entries: dict[str, Entry] = {}
        # "losses" -> "loss", "critics" -> "critic": how one entry is named in messages.
        self.singular = kind[:-2] if kind.endswith("sses") else kind[:-1] if kind.endswith("s") else kind

    def register(self, name: str | None = None, *, replace: bool = False):
        """Decorator: `@LOSSES.register("dmd")`. A second registration of a name is an error
        unless `replace=True` (which is how a plugin deliberately overrides a built-in). A
        component that breaks its kind's contract is an error here, at import time."""

        def decorator(obj):
            key = name or obj.__name__
            problems = self.contract.problems(obj) if self.contract is not None else []
            if problems:
                where = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)}"
                raise RegistryError(
                    f"{self.singular} '{key}' ({where}) breaks the {self.kind} contract: {'; '.join(problems)}. "
                    f"Expected: {self.contract.signature} (docs/plugins.md)"
                )
            if key in self._entries and not replace and self._entries[key].obj is not obj:
                prev = self._entries[key]
                raise RegistryError(
                    f"{self.kind} '{key}' is already registered by {prev.source} "
                    f"({prev.obj.__module__}.{prev.obj.__qualname__}); "
                    "pass replace=True to override it deliberately"
                )
            self._entries[key] = Entry(key, obj, _source_of(obj))
            return obj

        return decorator

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def find(self, name: str) -> Entry | None:
        """Look a name up without raising, loading plugins once on the first miss."""
        if name not in self._entries:
            load_plugins()
        return self._entries.get(name)

    def get(self, name: str) -> Callable[..., Any]:
        entry = self.find(name)
        if entry is None:
            raise RegistryError(self.unknown_message(name))
        return entry.obj

    def unknown_message(self, name: str) -> str:
        hint = did_you_mean(name, self.names(), n=3, cutoff=0.5)
        known = ", ".join(self.names()) or "(none)"
        return (
            f"unknown {self.kind} '{name}'.{hint} Registered {self.kind}: {known} "
            f"(see `oneforcing list {self.kind}`)"
        )

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"
