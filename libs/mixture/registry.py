"""Registries for the extension points: filters, quality scorers, predictors, output formats.

An extension is one module that registers itself by name:

    from mixture.registry import PREDICTORS

    @PREDICTORS.register("my_predictor")
    class MyPredictor: ...

The project's own extensions live in the package each registry names (`package`); the registry
imports that package's modules the first time it is asked for a name, so a built-in is always
known, and an extension from anywhere else (a plugin, a test module) is known once its module is
imported. The config checks names against the registry, so an unknown name is a config error
that lists the known ones.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown or doubly registered name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str | None = None):
        self.kind = kind
        self.package = package
        self._items: dict[str, T] = {}
        self._loaded = package is None

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register `obj` under `name` (re-registering the same object is a no-op)."""

        def deco(obj: T) -> T:
            old = self._items.get(name)
            if old is not None and old is not obj and _qualname(old) != _qualname(obj):
                raise RegistryError(f"{self.kind} {name!r} is already registered ({_qualname(old)})")
            self._items[name] = obj
            return obj

        return deco

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        assert self.package is not None
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + "."):
            if not info.name.rsplit(".", 1)[-1].startswith("_"):
                importlib.import_module(info.name)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None

    def check(self, names: Any) -> Any:
        """Raise ValueError (for pydantic validators) unless every name is registered."""
        for n in [names] if isinstance(names, str) else list(names):
            if n not in self.names():
                raise ValueError(f"unknown {self.kind} {n!r}; known: {', '.join(self.names())}")
        return names

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


# The project's extension points. Each package holds one module per built-in.
FILTERS: Registry[Any] = Registry("filter", "mixture.curate.filters")
QUALITY_SCORERS: Registry[Any] = Registry("quality scorer", "mixture.cluster.scorers")
PREDICTORS: Registry[Any] = Registry("predictor", "mixture.search.predictors")
OUTPUT_FORMATS: Registry[Any] = Registry("output format", "mixture.climbmix.formats")
