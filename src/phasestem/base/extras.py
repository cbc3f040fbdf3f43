"""Optional dependencies: which pip extra of phasestem installs which module, and one clear line when it is missing.

The core install (``pip install phasestem``) reads, simulates, calibrates and reconstructs. The rest is in
extras (``pip install 'phasestem[learn,tune]'``; ``all`` is every one, ``dev`` adds the test tools)::

    learn      timm, torchvision, safetensors, accelerate, huggingface_hub   networks: train, predict, refine, …
    tune       optuna                                                       phasestem tune
    cluster    distributed (Dask)                                           simulate with workers or a scheduler
    detectors  hdf5plugin, scikit-image (rosettasciio[blockfile])           Dectris bitshuffle/LZ4 frames, .blo
    abtem      abTEM                                                        the independent simulations of the
                                                                            tests and benchmarks
    serve      Starlette, uvicorn                                           phasestem serve (browser workspace)
    live       libertem-live                                                phasestem live --replay (the simulator)
"""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import PhasestemError

#: top-level module → the phasestem extra that installs it
EXTRAS = {
    "timm": "learn", "torchvision": "learn", "safetensors": "learn", "accelerate": "learn",
    "huggingface_hub": "learn", "optuna": "tune", "distributed": "cluster", "hdf5plugin": "detectors",
    "skimage": "detectors", "abtem": "abtem", "starlette": "serve", "uvicorn": "serve",
    "libertem_live": "live",
}


class MissingExtraError(PhasestemError, ImportError):
    """A module of an optional extra is not installed."""


def install_hint(module: str) -> str:
    """``pip install 'phasestem[EXTRA]'`` for ``module`` (a top-level name of :data:`EXTRAS`; others: its own
    ``pip install``)."""
    top = module.split(".")[0]
    return f"pip install 'phasestem[{EXTRAS[top]}]'" if top in EXTRAS else f"pip install {top}"


def require(module: str, needed_for: str) -> ModuleType:
    """Import ``module`` (e.g. ``"optuna"``, ``"safetensors.torch"``) or raise :class:`MissingExtraError` naming
    what needs it and the extra to install. A module missing *inside* an installed package is not hidden."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != top:
            raise
        raise MissingExtraError(f"{needed_for} needs {top}, which is not installed: {install_hint(top)}") from None
