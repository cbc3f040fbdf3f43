"""Applying trained networks, all kinds in one place: a 4D-STEM scan → phase (end2end, or patch + stitch), a scan →
latent maps (autoencoder), a coarse phase → refined phase (Phaseformer), and training pairs from simulations.

File to file, one call per network (what ``phasestem predict`` / ``embed`` / ``refine`` run)::

    predict_file(scan, model, out, stitch_path=None, device="auto")   # end2end, or patch + stitch
    embed_file(scan, model, out, device="auto")                       # autoencoder → latent maps
    refine_file(image, model, out, device="auto")                     # Phaseformer → refined phase
    apply_file(model, source, out, **options)                         # any of the three, by the model's kind

and the in-memory steps they are made of: :func:`load_predictor` / :func:`predict_phase`,
:func:`load_autoencoder` / :func:`embed_scan` / :func:`embed_patterns`, :func:`load_phaseformer` /
:func:`refine_phase`, the writers, :func:`make_pairs`, :func:`autoencoder_report` and :func:`show`.
One module per network family, each with its file-to-file function: :mod:`.phase` (phase from patterns:
end2end, patch + stitch), :mod:`.latent` (autoencoder) and :mod:`.refine` (Phaseformer); ``make_pairs`` is
:func:`phasestem.learn.pair_sources.make_pairs`. Every model is read from its file alone (metadata:
:mod:`phasestem.learn.meta`), so older models load as they did.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ...base.errors import ConfigError
from ..pair_sources import make_pairs
from .latent import (
    autoencoder_report,
    embed_file,
    embed_patterns,
    embed_scan,
    load_autoencoder,
    show,
    write_latent_maps,
)
from .phase import (
    geometry_for,
    load_predictor,
    model_summary,
    predict_file,
    predict_phase,
    prediction_outputs,
    prediction_residual,
    write_prediction,
)
from .refine import load_phaseformer, read_phase_image, refine_file, refine_phase, write_refined

__all__ = [
    "apply_file", "model_kind", "predict_file", "embed_file", "refine_file",
    "load_predictor", "predict_phase", "geometry_for", "write_prediction", "prediction_residual",
    "prediction_outputs", "model_summary",
    "load_autoencoder", "embed_patterns", "embed_scan", "write_latent_maps", "autoencoder_report", "show",
    "load_phaseformer", "read_phase_image", "refine_phase", "write_refined", "make_pairs",
]


def model_kind(path: str | Path) -> str:
    """The network kind a saved model (file or run folder) names in its metadata."""
    from ..meta import require_kind
    from ..trainer.checkpoint import read_meta

    return require_kind(read_meta(path), path)


def apply_file(model_path: str | Path, source: str | Path, out: str | Path | None = None, **options) -> Any:
    """Apply any saved model to a file, by the kind its metadata names: end2end (or patch with
    ``stitch_path=``) → :func:`predict_file` (returns the output path), autoencoder → :func:`embed_file`,
    phaseformer → :func:`refine_file` (both return their dict). ``options`` go to that function."""
    kind = model_kind(model_path)
    if kind in ("end2end", "patch"):
        if out is None:
            raise ConfigError("predicting a phase needs an output path")
        options.setdefault("device", "auto")
        return predict_file(source, model_path, out, **options)
    if kind == "autoencoder":
        return embed_file(source, model_path, out, **options)
    if kind == "phaseformer":
        return refine_file(source, model_path, out, **options)
    raise ConfigError(f"{model_path}: a '{kind}' model is applied inside an end2end model or with a patch model "
                      "(predict MODEL --stitch-model), not alone")
