"""Where the coarse inputs of ``phasestem make-pairs`` come from (``--inputs-from``).

* ``degrade`` (default): synthetic degradations of the true phase (:class:`~phasestem.learn.pairs.Degrade`);
* ``stitch:<model>``: the phase that a trained End2End network (or a patch network with ``stitch_model``)
  predicts from each sample's own diffraction patterns — exactly what ``phasestem predict`` writes for that
  sample — so that Phaseformer learns to correct the errors the stitching route really makes;
* ``ad``: phasestem's own AD reconstruction of each sample's patterns with one recorded recipe (``reconstruct``'s
  parameter-file defaults, probe refined), kept on AD's own grid with the truth brought to it, its phase,
  amplitude and illumination stored after epochs 2, 4, 8 and at its end (:mod:`phasestem.learn.ad_pairs`, which
  documents the file): the pairs of the restorer (``phasestem train restorer``).
  (:func:`measured_inputs` with ``kind='ad'`` still gives the older short-AD input on the truth grid.)

The ``stitch`` source gives one input per sample (``copies`` applies to ``degrade`` only), resampled to the true
phase's grid when the pixel differs. The AD source reconstructs with :mod:`phasestem.recon` through
:mod:`phasestem.learn.hybrid` (the one learn module that imports recon), imported only when it is used.
:func:`make_pairs` writes the pairs file of the ``degrade`` source, :func:`make_measured_pairs` those of the other two.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..base.errors import ConfigError
from ..physics.resample import BAND_LIMITED, resize
from .pairs import Degrade, degrade, simulation_phases, simulation_samples, write_pairs

log = logging.getLogger("phasestem.learn.pairs")

__all__ = ["parse_inputs_from", "make_pairs", "measured_inputs", "make_measured_pairs"]


def parse_inputs_from(spec: str | None) -> tuple[str, str | None]:
    """``'degrade'`` | ``'ad'`` | ``'stitch:<model>'`` → (kind, model path or None)."""
    spec = (spec or "degrade").strip()
    if spec in ("degrade", "ad"):
        return spec, None
    if spec.startswith("stitch:") and spec[len("stitch:"):].strip():
        return "stitch", spec[len("stitch:"):].strip()
    raise ConfigError(f"inputs_from: expected 'degrade', 'ad' or 'stitch:<model folder or file>', got {spec!r}")


def _to_grid(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``image`` on ``shape`` pixels over the same field (band-limited, :func:`phasestem.physics.resample.resize` of
    :data:`~phasestem.physics.resample.BAND_LIMITED`) when its size differs."""
    return np.asarray(resize(np.asarray(image, np.float32), shape, order=BAND_LIMITED), np.float32)


def measured_inputs(paths: list[str], kind: str, model: str | None = None, stitch_model: str | None = None,
                    ad_epochs: int = 4, device: str = "cpu", progress: bool = True
                    ) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(origin ``file:phase_i``, input, true phase) of every sample of the simulation files ``paths``, the input
    predicted by ``model`` (``kind='stitch'``) or reconstructed by AD (``kind='ad'``)."""
    from ..base.safety import check_finite
    from ..io import seed as seedfile
    from .apply.phase import load_predictor, predict_phase

    predictor = None
    if kind == "stitch":
        predictor = load_predictor(model, stitch_model, device=device)
    elif kind != "ad":
        raise ConfigError(f"measured_inputs: unknown kind {kind!r}")
    for _, path, i, ds, truth in simulation_samples(paths, progress):
        if predictor is not None:
            with torch.inference_mode():
                inp = predict_phase(predictor[0], predictor[1], ds)
        else:
            ts = tuple(float(s) for s in ds.truth.get("sampling", ds.sampling))
            from .hybrid import ad_phase

            inp = ad_phase(ds, truth.shape, ts, epochs=ad_epochs, device=device)
        inp = _to_grid(inp, truth.shape)
        check_finite(inp, f"{path}:phase_{i} ({kind} input)", what="input value", hint="")
        yield f"{Path(path).name}:{seedfile.target_key(i, 'phase')}", inp, truth


def make_pairs(files: list[str], out: str | Path, degradation: Degrade | None = None, copies: int = 1,
               seed: int = 0, progress: bool = True) -> Path:
    """Write a pairs file (``input``, ``gt`` (N, H, W)) from the true phases of simulation files, the inputs
    ``copies`` synthetic degradations (``inputs_from`` 'degrade') of each."""
    import json

    from tqdm.auto import tqdm

    from ..base.errors import InputFileError
    from ..base.lock import hold_output
    from ..base.safety import check_finite
    from ..io import seed as seedfile
    from ..io.hdf5 import check_written, open_file, reading
    from .data import expand_paths

    with hold_output(out, "phasestem make-pairs", file=True):
        deg = degradation or Degrade()
        rng = np.random.default_rng(seed)
        inputs, gts, origin = [], [], []
        paths = expand_paths(files)
        for path in paths:
            keys = simulation_phases(path)
            if not keys:
                raise InputFileError(f"{path}: no 'phase_{{i}}' datasets (expected a simulation file)")
            with open_file(path, "simulation file") as f, reading(path, "simulation file"):
                for k in tqdm(keys, desc=Path(path).name, disable=not progress, leave=False):
                    check_written(f[k], f"{path}:{k}")
                    phase = seedfile.read_phase(f, k)  # rad (× σ for the original generator's files)
                    check_finite(phase, f"{path}:{k}", what="phase value", hint="")
                    for _ in range(copies):
                        inputs.append(degrade(phase, deg, rng).numpy())
                        gts.append(phase)
                        origin.append(f"{Path(path).name}:{k}")
        if not gts:
            raise ConfigError("make-pairs: no phase images found")
        return write_pairs(out, np.stack(inputs), np.stack(gts),
                           {"degradation": deg.model_dump_json(), "sources": json.dumps(origin), "seed": seed,
                            "units": "rad"})



def make_measured_pairs(files: list[str], out: str | Path, inputs_from: str, stitch_model: str | None = None,
                        ad_epochs: int | None = None, device: str = "cpu", progress: bool = True,
                        electrons: tuple[float | None, ...] = (None,), seed: int = 0) -> Path:
    """Write a pairs file (``input``, ``gt`` (N, H, W), the format of :func:`~phasestem.learn.pairs.write_pairs`)
    whose inputs come from ``inputs_from`` (``'ad'``: :func:`phasestem.learn.ad_pairs.make_ad_pairs`, its layout,
    ``ad_epochs`` the recipe's epochs, None its default, ``electrons`` its noise-free / counted copies drawn with
    ``seed``; or ``'stitch:<model>'``), one pair per sample."""
    import json

    from .data import expand_paths

    kind, model = parse_inputs_from(inputs_from)
    if kind == "degrade":
        raise ConfigError("make_measured_pairs: 'degrade' inputs are made by make_pairs")
    if stitch_model is not None and kind != "stitch":
        raise ConfigError("stitch_model applies to inputs_from 'stitch:<patch model>' only")
    from ..base.lock import hold_output

    if kind == "ad":
        from .ad_pairs import make_ad_pairs

        return make_ad_pairs(files, out, n_epochs=ad_epochs, device=device, progress=progress, electrons=electrons,
                             seed=seed)
    with hold_output(out, "phasestem make-pairs", file=True):
        inputs, gts, origin = [], [], []
        for name, inp, gt in measured_inputs(expand_paths(files), kind, model, stitch_model, ad_epochs, device,
                                             progress):
            inputs.append(inp)
            gts.append(gt)
            origin.append(name)
        if not gts:
            raise ConfigError("make-pairs: no phase images found")
        source = {"kind": kind, "model": model, "stitch_model": stitch_model}
        return write_pairs(out, np.stack(inputs), np.stack(gts),
                           {"inputs_from": json.dumps(source), "sources": json.dumps(origin), "units": "rad"})
