"""The benchmark scripts of ``benchmarks/learned`` as modules, for the tests of their plumbing: one loader."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "learned"


def load_bench(name: str, module: str | None = None) -> ModuleType:
    """``benchmarks/learned/NAME.py`` imported as module ``module`` (default ``name``), registered in ``sys.modules``
    (dataclasses look their module up), with the folder on ``sys.path`` (the scripts import each other)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(module or name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module or name] = mod
    spec.loader.exec_module(mod)
    return mod
