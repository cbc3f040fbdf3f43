"""A module imported on first attribute access, for modules whose constants and plain functions must stay light."""
from __future__ import annotations

import importlib
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
