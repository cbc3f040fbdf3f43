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
The implementations live in :mod:`.predict` (phase from patterns) and :mod:`.restore_apply` (autoencoder,
Phaseformer); both still export their names. Every model is read from its file alone (metadata:
:mod:`.meta`), so older models load as they did.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .predict import (
    geometry_for,
    load_predictor,
    model_summary,
    predict_file,
    predict_phase,
    prediction_outputs,
    prediction_residual,
    write_prediction,
)
from .restore_apply import (
    autoencoder_report,
    embed_patterns,
    embed_scan,
    load_autoencoder,
    load_phaseformer,
    make_pairs,
    read_phase_image,
    refine_phase,
    show,
    write_latent_maps,
    write_refined,
)

__all__ = [
    "apply_file", "model_kind", "predict_file", "embed_file", "refine_file",
    "load_predictor", "predict_phase", "geometry_for", "write_prediction", "prediction_residual",
    "prediction_outputs", "model_summary",
    "load_autoencoder", "embed_patterns", "embed_scan", "write_latent_maps", "autoencoder_report", "show",
    "load_phaseformer", "read_phase_image", "refine_phase", "write_refined", "make_pairs",
]


def model_kind(path: str | Path) -> str:
    """The network kind a saved model (file or run folder) names in its metadata."""
    from .checkpoint import load_weights
    from .meta import require_kind

    return require_kind(load_weights(path)[1], path)


def embed_file(data: str | Path, model_path: str | Path, out: str | Path | None = None, png: bool = True,
               device: str = "auto", batch_size: int = 256, report: int = 0, summary: bool = False,
               patterns_key: str | None = None, sample: int | None = None, bad_pixels: str = "refuse"
               ) -> dict[str, Any]:
    """4D-STEM file → HDF5 of the autoencoder's latent maps (D, Sy, Sx) (+ a PNG grid); with ``report`` N also
    the reconstruction metrics of N random patterns and their comparison figure. Returns what was written:
    ``out``, ``png``, ``comparison``, ``shape``, ``masked`` (non-finite values replaced) and ``report``."""
    import numpy as np

    from .. import io
    from ..safety import refuse_output_over_inputs

    out = Path(out or Path(data).with_suffix("").name + "_latent.h5")
    png_path = out.with_suffix(".png") if png else None
    comparison = out.with_name(out.stem + "_comparison.png") if report else None
    refuse_output_over_inputs([p for p in (out, png_path, comparison) if p], [data, model_path])
    opts: dict[str, Any] = {}
    if patterns_key:
        opts["patterns_key"] = patterns_key
    if sample is not None:
        opts["sample"] = sample
    ds = io.load(data, bad_pixels=bad_pixels, **opts)
    model, meta = load_autoencoder(model_path, device)
    if summary:
        b = int(meta["data"].get("preprocess", {}).get("bin", 1))
        show(model, input_size=(1, ds.pattern_shape[0] // b, ds.pattern_shape[1] // b))
    maps = embed_scan(model, ds.patterns, meta, batch_size=batch_size)
    write_latent_maps(out, maps, {"source": str(data), "checkpoint": str(model_path),
                                  "scan_step": list(ds.scan_step)}, png=png_path)
    result: dict[str, Any] = {"out": out, "png": png_path, "comparison": comparison, "shape": maps.shape,
                              "masked": ds.metadata.get("bad_pixels_masked"), "report": None}
    if report:
        pats = np.asarray(ds.patterns).reshape(-1, *ds.pattern_shape)
        idx = np.random.default_rng(0).choice(len(pats), min(report, len(pats)), replace=False)
        result["report"] = autoencoder_report(model, pats[np.sort(idx)], meta, png=comparison)
    return result


def refine_file(image: str | Path, model_path: str | Path, out: str | Path | None = None, png: bool = True,
                device: str = "auto", size: int | None = 256, key: str | None = None, bad_pixels: str = "refuse"
                ) -> dict[str, Any]:
    """Coarse phase image → HDF5 with the Phaseformer's refined phase and its ×2 version (+ a comparison PNG);
    ``size`` None or 0 keeps the input size. Returns ``out``, ``png``, ``shape`` and ``shape_x2``."""
    from ..safety import refuse_output_over_inputs

    out = Path(out or Path(image).with_suffix("").name + "_refined.h5")
    png_path = out.with_suffix(".png") if png else None
    refuse_output_over_inputs([p for p in (out, png_path) if p], [image, model_path])
    coarse = read_phase_image(image, key, bad_pixels=bad_pixels)
    net, _ = load_phaseformer(model_path, device)
    low, high = refine_phase(net, coarse, size or None)
    write_refined(out, low, high, {"source": str(image), "checkpoint": str(model_path)}, png=png_path,
                  coarse=coarse)
    return {"out": out, "png": png_path, "shape": low.shape, "shape_x2": high.shape}


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
