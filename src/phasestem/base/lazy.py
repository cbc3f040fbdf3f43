"""Imports deferred to first use, so that ``import phasestem`` and the command line stay light (no torch): a module
imported on first attribute access, and the PEP 562 ``__getattr__`` of a package's table of public names."""
from __future__ import annotations

import importlib
import sys
from types import ModuleType


class LazyModule:
    """Stands for module ``name`` (``torch``) and imports it on first use of an attribute: ``torch.zeros`` in a
    function body costs the import when the function first runs, not when its module is imported."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str):  # called only for names not yet kept on the proxy
        if self._module is None:
            self._module = importlib.import_module(self._name)
        value = getattr(self._module, attr)
        setattr(self, attr, value)  # kept: the next use is a plain attribute read, not this call
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}{'' if self._module is None else ' (imported)'}>"


def lazy_attribute(api: dict[str, str], module_name: str, name: str):
    """The object ``api[name]`` names (``"module:attribute"``), imported now; AttributeError for another name."""
    target = api.get(name)
    if target is None:
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def lazy_exports(api: dict[str, str], module_name: str):
    """A package's module ``__getattr__`` and ``__dir__`` (PEP 562): each name of ``api`` imported on first use and
    kept in the package, and listed with the package's own: ``__getattr__, __dir__ = lazy_exports(API, __name__)``."""

    def __getattr__(name: str):  # noqa: N807 - the module hook's own name
        value = lazy_attribute(api, module_name, name)
        setattr(sys.modules[module_name], name, value)  # resolved once
        return value

    return __getattr__, lambda: sorted({*vars(sys.modules[module_name]), *api})
