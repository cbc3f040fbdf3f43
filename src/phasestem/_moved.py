"""Module paths of earlier releases, kept importable as deprecated aliases.

``from phasestem.learn.autoencoder import Autoencoder`` (the path earlier releases documented; the module is now
:mod:`phasestem.learn.nets.autoencoder`) still works and warns once, naming the new path. One table
(:data:`MOVED`) and one meta-path finder, installed by ``import phasestem``: an old path becomes a small module
that forwards every attribute to its new modules, first match wins (the objects are the same ones).
"""
from __future__ import annotations

import importlib
import importlib.machinery
import sys
import warnings
from types import ModuleType

#: old module path -> its new modules, searched in order for each attribute
MOVED: dict[str, tuple[str, ...]] = {
    "phasestem.learn.autoencoder": ("phasestem.learn.nets.autoencoder", "phasestem.learn.apply.latent"),
    "phasestem.learn.end2end": ("phasestem.learn.nets.end2end",),
    "phasestem.learn.patch_recovery": ("phasestem.learn.nets.patch",),
    "phasestem.learn.phase_stitching": ("phasestem.learn.nets.stitch",),
    "phasestem.learn.phaseformer": ("phasestem.learn.nets.phaseformer",),
    "phasestem.learn.pipeline": ("phasestem.learn.training.route", "phasestem.learn.registry"),
    "phasestem.learn.predict": ("phasestem.learn.apply.phase",),
    "phasestem.learn.restore_apply": ("phasestem.learn.apply.latent", "phasestem.learn.apply.refine",
                                      "phasestem.learn.pair_sources"),
    "phasestem.learn.restore_config": ("phasestem.learn.config", "phasestem.learn.registry"),
    "phasestem.learn.restore_train": ("phasestem.learn.training.autoencoder", "phasestem.learn.training.phaseformer"),
    "phasestem.learn.commands_restore": ("phasestem.cli.learn",),
    "phasestem.learn.restore": ("phasestem.learn.apply.restorer",),
    "phasestem.learn.restorer_config": ("phasestem.learn.config",),
    "phasestem.learn.checkpoint": ("phasestem.learn.trainer.checkpoint",),
    "phasestem.learn.commands": ("phasestem.cli.learn",),
    "phasestem.recon.commands": ("phasestem.cli.reconstruct", "phasestem.recon.run"),
    "phasestem.simulate.lock": ("phasestem.base.lock",),
    "phasestem.recon.schema": ("phasestem.recon.settings", "phasestem.recon.settings.data",
                               "phasestem.recon.settings.optics", "phasestem.recon.settings.scan",
                               "phasestem.recon.settings.model", "phasestem.recon.settings.tune"),
    "phasestem.recon.run_config": ("phasestem.recon.settings.run",),
    "phasestem.recon.constraint_settings": ("phasestem.recon.settings.constraints",),
    "phasestem.recon.model_options": ("phasestem.recon.settings.model",),
}


class _Alias:
    """Finds the old paths of :data:`MOVED` (asked after the real finders, so a real module of that name wins) and
    loads them (the meta-path finder and loader protocols; no ABCs, so ``import phasestem`` stays light)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        return None  # a plain module, filled by exec_module

    def exec_module(self, module: ModuleType) -> None:
        name = module.__name__
        targets = MOVED[name]
        modules = [importlib.import_module(t) for t in targets]

        def __getattr__(attr: str):
            for m in modules:
                if hasattr(m, attr):
                    return getattr(m, attr)
            raise AttributeError(f"module {name!r} (moved to {', '.join(targets)}) has no attribute {attr!r}")

        public = sorted({a for m in modules for a in getattr(m, "__all__", [
            a for a, v in vars(m).items() if not a.startswith("_") and not isinstance(v, ModuleType)])})
        module.__getattr__ = __getattr__
        module.__dir__ = lambda: public
        module.__all__ = public
        module.__doc__ = f"Deprecated alias of {', '.join(targets)}."
        warnings.warn(f"{name} is deprecated: import from {' or '.join(targets)} (public names: phasestem, "
                      "phasestem.learn)", DeprecationWarning, stacklevel=2)  # past the import machinery


def install() -> None:
    """Add the finder once, after the real ones."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
