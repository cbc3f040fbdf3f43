"""Restorer training pairs from phasestem's own AD reconstructions (``phasestem make-pairs --inputs-from ad``).

Each sample of a simulation file is reconstructed with one fixed, recorded recipe
(:func:`phasestem.learn.hybrid.ad_recipe`: ``phasestem reconstruct``'s parameter-file defaults, probe refined, flat
start) and kept on **AD's own grid** (the dataset frame at the object pixel, pixel (0, 0) at 0 Å); the true phase
is brought to that grid by the band-limited resampler (:data:`phasestem.resample.BAND_LIMITED`; a simulated
phase is periodic over its cell, so points beyond it take the periodic continuation).

File layout (HDF5, ``format`` = ``phasestem-pairs``, ``layout`` = :data:`LAYOUT`); N samples, H × W AD pixels:

=============================  =================  =====================================================
``input``                      (N, H, W) float32  AD's phase (rad) at its last epoch (what ``H5Pairs`` and
                                                  Phaseformer read: the file is an ordinary pairs file too)
``gt``                         (N, H, W) float32  the true phase (rad) on AD's grid
``field``                      (N, H, W) float32  1 inside the scanned field (the positions' rectangle)
``epoch_{e}/phase``            (N, H, W) float32  AD's phase after epoch e, for every e in ``attrs['epochs']``
``epoch_{e}/amplitude``        (N, H, W) float32  AD's object amplitude after epoch e
``epoch_{e}/illumination``     (N, H, W) float32  Σ_j |P(r − r_j)|² ÷ its maximum, probe of epoch e
``sampling``                   (N, 2) float64     AD's pixel (Å)
=============================  =================  =====================================================

Attributes: ``epochs`` (JSON list, ascending; the last is the run's end), ``optics`` (JSON: energy eV,
semi-angle and detector pixel mrad, aberrations Å, scan step Å, and ``sampling``, AD's pixel in Å: the geometry a
restorer trained on the file is for), ``inputs_from`` (JSON: kind 'ad', the
recipe's parameter file as YAML, its epochs), ``sources`` (JSON ``file:phase_i`` per sample), ``units`` 'rad'.
Every sample must give the same AD grid (one geometry per file); another is refused in one line.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from ..errors import ConfigError, ShapeError
from ..resample import BAND_LIMITED, sample_on_grid

LAYOUT = "ad-epochs/1"
CHANNELS = ("phase", "amplitude", "illumination")
DEFAULT_SNAPSHOTS = (2, 4, 8)

__all__ = ["LAYOUT", "CHANNELS", "DEFAULT_SNAPSHOTS", "truth_on_grid", "make_ad_pairs", "stored_epochs"]


def truth_on_grid(truth: np.ndarray, truth_sampling: tuple[float, float], sampling: tuple[float, float],
                  shape: tuple[int, int]) -> np.ndarray:
    """The true phase (H', W'), pixel (0, 0) at 0 Å, on ``shape`` pixels of ``sampling`` Å (band-limited,
    periodic beyond its cell): (H, W) float32."""
    out = sample_on_grid(np.asarray(truth, np.float32), tuple(truth_sampling), tuple(sampling), tuple(shape),
                         order=BAND_LIMITED)
    same = all(abs(a - b) < 1e-9 for a, b in zip(truth_sampling, sampling, strict=True))
    if same and (shape[0] > truth.shape[0] or shape[1] > truth.shape[1]):  # copied, zeros beyond: continue it
        ys, xs = np.arange(shape[0]) % truth.shape[0], np.arange(shape[1]) % truth.shape[1]
        out = np.asarray(truth, np.float32)[np.ix_(ys, xs)]
    return np.asarray(out, np.float32)


def stored_epochs(path: str | Path) -> list[int]:
    """The epochs whose AD channels a pairs file of :data:`LAYOUT` holds (ascending); refuses another file."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("layout") != LAYOUT:
            raise ConfigError(f"{path}: not a pairs file of AD epochs (layout {LAYOUT!r}; written by "
                              "'phasestem make-pairs --inputs-from ad')")
        return [int(e) for e in json.loads(f.attrs["epochs"])]


def make_ad_pairs(files: list[str], out: str | Path, n_epochs: int | None = None,
                  snapshots: tuple[int, ...] = DEFAULT_SNAPSHOTS, device: str = "cpu", progress: bool = True
                  ) -> Path:
    """Write the pairs file of the module docstring for every sample of the simulation ``files``: AD with the
    recipe (``n_epochs``: None = ``reconstruct``'s default), channels after ``snapshots`` and at the end."""
    from tqdm.auto import tqdm

    from .. import io
    from ..io import seed as seedfile
    from ..io.hdf5 import open_file
    from ..lock import hold_output
    from ..safety import atomic_file, check_finite
    from .apply.phase import check_training_optics, dataset_optics
    from .data import expand_paths
    from .hybrid import ad_recipe, ad_recipe_snapshots
    from .pairs import PAIRS_FORMAT

    recipe = ad_recipe(n_epochs, device)
    with hold_output(out, "phasestem make-pairs", file=True):
        rows: list[dict] = []
        origin: list[str] = []
        epochs: list[int] | None = None
        optics: dict | None = None
        for path in expand_paths(files):
            with open_file(path, "simulation file") as f:
                ids = seedfile.sample_ids(f.keys(), "phase")
            for i in tqdm(ids, desc=Path(path).name, disable=not progress, leave=False):
                ds = io.load(path, sample=int(i))
                if "phase" not in ds.truth:
                    raise ConfigError(f"{path}: sample {i} has no true phase")
                truth = np.asarray(ds.truth["phase"], np.float32)
                check_finite(truth, f"{path}:phase_{i}", what="phase value", hint="")
                snaps, model = ad_recipe_snapshots(ds, snapshots, n_epochs, device)
                epochs = epochs or sorted(snaps)
                last = snaps[max(snaps)]
                shape, sampling = last["phase"].shape, tuple(float(s) for s in model.sampling)
                if rows and shape != rows[0]["gt"].shape:
                    raise ShapeError(f"{path}:phase_{i}: AD's grid {shape} differs from the first sample's "
                                     f"{rows[0]['gt'].shape} (one geometry per pairs file)")
                here = json.loads(json.dumps({**dataset_optics(ds), "sampling": list(sampling)}))
                if optics is None:
                    optics = here
                check_training_optics({"data": {"optics": optics}}, here, f"{path}:phase_{i}")
                ts = tuple(float(s) for s in ds.truth.get("sampling", ds.sampling))
                row = {"gt": truth_on_grid(truth, ts, sampling, shape), "field": last["field"],
                       "sampling": np.asarray(sampling)}
                for e in epochs:
                    for c in CHANNELS:
                        check_finite(snaps[e][c], f"{path}:phase_{i} (AD {c}, epoch {e})", what="value", hint="")
                        row[f"epoch_{e}/{c}"] = snaps[e][c]
                rows.append(row)
                origin.append(f"{Path(path).name}:{seedfile.target_key(i, 'phase')}")
        if not rows or epochs is None:
            raise ConfigError("make-pairs: no phase images found")
        source = {"kind": "ad", "recipe": "phasestem reconstruct parameter-file defaults, probe refined",
                  "n_epochs": recipe.run.n_epochs, "snapshots": epochs, "grid": "AD's own (dataset frame)",
                  "truth_resampling": BAND_LIMITED, "params": recipe.model_dump_json(exclude={"data"})}
        with atomic_file(Path(out)) as tmp, h5py.File(tmp, "w") as f:
            chunk = (1, *rows[0]["gt"].shape)
            for key in rows[0]:
                data = np.stack([r[key] for r in rows])
                f.create_dataset(key, data=data, chunks=chunk if data.ndim == 3 else None)
            f["input"] = f[f"epoch_{epochs[-1]}/phase"][...]
            f.attrs.update({"format": PAIRS_FORMAT, "layout": LAYOUT, "epochs": json.dumps(epochs),
                            "optics": json.dumps(optics), "inputs_from": json.dumps(source),
                            "sources": json.dumps(origin), "units": "rad"})
        return Path(out)
