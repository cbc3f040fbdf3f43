"""Restorer training pairs from phasestem's own AD reconstructions (``phasestem make-pairs --inputs-from ad``).

Each sample of a simulation file is reconstructed with one fixed, recorded recipe
(:func:`phasestem.learn.hybrid.ad_recipe`: ``phasestem reconstruct``'s parameter-file defaults, probe refined, flat
start) and kept on **AD's own grid** (the dataset frame at the object pixel, pixel (0, 0) at 0 Å); the true phase
is brought to that grid by the band-limited resampler (:data:`phasestem.physics.resample.BAND_LIMITED`; a simulated
phase is periodic over its cell, so points beyond it take the periodic continuation).

File layout (HDF5, ``format`` = ``phasestem-pairs``, ``layout`` = :data:`LAYOUT`); N rows (one per sample and
dose: noise-free and Poisson-counted copies, :func:`counted`), H × W AD pixels:

=============================  =================  =====================================================
``input``                      (N, H, W) float32  AD's phase (rad) at its last epoch (what ``H5Pairs`` and
                                                  Phaseformer read: the file is an ordinary pairs file too)
``gt``                         (N, H, W) float32  the true phase (rad) on AD's grid
``field``                      (N, H, W) float32  1 inside the scanned field (the positions' rectangle)
``epoch_{e}/phase``            (N, H, W) float32  AD's phase after epoch e, for every e in ``attrs['epochs']``
``epoch_{e}/amplitude``        (N, H, W) float32  AD's object amplitude after epoch e
``epoch_{e}/illumination``     (N, H, W) float32  Σ_j |P(r − r_j)|² ÷ its maximum, probe of epoch e
``epoch_{e}/seconds``          (N,) float64       AD's wall seconds to epoch e (one process, its threads)
``sampling``                   (N, 2) float64     AD's pixel (Å)
``electrons``                  (N,) float64       e⁻ per pattern of the counted copy (NaN: noise-free)
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

from ..base.errors import ConfigError, ShapeError
from ..physics.resample import BAND_LIMITED, sample_on_grid

LAYOUT = "ad-epochs/1"
CHANNELS = ("phase", "amplitude", "illumination")
DEFAULT_SNAPSHOTS = (2, 4, 8)

__all__ = ["LAYOUT", "CHANNELS", "DEFAULT_SNAPSHOTS", "truth_on_ad_grid", "counted", "make_ad_pairs",
           "stored_epochs"]


def truth_on_ad_grid(truth: np.ndarray, truth_sampling: tuple[float, float], sampling: tuple[float, float],
                     shape: tuple[int, int]) -> np.ndarray:
    """The true phase (H', W'), pixel (0, 0) at 0 Å, on ``shape`` pixels of ``sampling`` Å (band-limited,
    periodic beyond its cell): (H, W) float32. The pairs' own frame is the truth's (a simulation), so no
    position fit is needed here, unlike :func:`phasestem.metrics.truth_on_grid` for a calibrated scan."""
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


class _RowWriter:
    """Appends rows (dicts of arrays) to resizable datasets of an open HDF5 file, one image per chunk."""

    def __init__(self, f: h5py.File):
        self.f, self.n = f, 0

    def append(self, row: dict[str, np.ndarray]) -> None:
        for key, value in row.items():
            value = np.asarray(value)
            if self.n == 0:
                chunks = (1, *value.shape) if value.ndim >= 2 else None
                self.f.create_dataset(key, shape=(0, *value.shape), maxshape=(None, *value.shape),
                                      dtype=value.dtype, chunks=chunks or True)
            ds = self.f[key]
            if ds.shape[1:] != value.shape:
                raise ShapeError(f"{key}: {value.shape} differs from the first sample's {ds.shape[1:]} (one "
                                 "geometry per pairs file: AD's grid must agree)")
            ds.resize(self.n + 1, axis=0)
            ds[self.n] = value
        self.n += 1


def counted(dataset, electrons: float | None, rng: np.random.Generator):
    """``dataset`` with Poisson counts of ``electrons`` e⁻ per pattern (the patterns scaled to sum to 1 on average
    first: :func:`phasestem.physics.noise.poisson_counts`); the dataset itself for None (noise-free)."""
    if electrons is None:
        return dataset
    from ..physics.noise import poisson_counts

    p = np.asarray(dataset.patterns, np.float64)
    p = p / max(float(p.sum(axis=(-2, -1)).mean()), 1e-30)
    return dataset._replace(patterns=poisson_counts(p, float(electrons), rng))


def make_ad_pairs(files: list[str], out: str | Path, n_epochs: int | None = None,
                  snapshots: tuple[int, ...] = DEFAULT_SNAPSHOTS, device: str = "cpu", progress: bool = True,
                  electrons: tuple[float | None, ...] = (None,), seed: int = 0) -> Path:
    """Write the pairs file of the module docstring for every sample of the simulation ``files``: AD with the
    recipe (``n_epochs``: None = ``reconstruct``'s default), channels after ``snapshots`` and at the end; one row per
    sample and entry of ``electrons`` (e⁻ per pattern of Poisson counts drawn with ``seed``; None: noise-free).
    Rows are written as they are made (memory: one sample)."""
    from ..base.lock import hold_output
    from ..base.safety import atomic_file, check_finite
    from ..io import seed as seedfile
    from .apply.phase import check_training_optics, dataset_optics
    from .data import expand_paths
    from .hybrid import ad_recipe, ad_recipe_snapshots
    from .pairs import PAIRS_FORMAT, simulation_samples

    recipe = ad_recipe(n_epochs, device)
    doses = tuple(None if e is None else float(e) for e in electrons) or (None,)
    if any(e is not None and not e > 0 for e in doses):
        raise ConfigError(f"electrons per pattern must be positive (or null: noise-free), got {list(electrons)}")
    with hold_output(out, "phasestem make-pairs", file=True), atomic_file(Path(out)) as tmp, \
            h5py.File(tmp, "w") as f:
        rows = _RowWriter(f)
        origin: list[str] = []
        epochs: list[int] | None = None
        optics: dict | None = None
        for j, path, i, clean, truth in simulation_samples(expand_paths(files), progress):
            for k, dose in enumerate(doses):
                ds = counted(clean, dose, np.random.default_rng((seed, j, int(i), k)))
                snaps, model = ad_recipe_snapshots(ds, snapshots, n_epochs, device)
                epochs = epochs or sorted(snaps)
                last = snaps[max(snaps)]
                shape, sampling = last["phase"].shape, tuple(float(s) for s in model.sampling)
                here = json.loads(json.dumps({**dataset_optics(ds), "sampling": list(sampling)}))
                optics = optics or here
                check_training_optics({"data": {"optics": optics}}, here, f"{path}:phase_{i}")
                ts = tuple(float(s) for s in ds.truth.get("sampling", ds.sampling))
                row = {"gt": truth_on_ad_grid(truth, ts, sampling, shape), "field": last["field"],
                       "input": last["phase"], "sampling": np.asarray(sampling),
                       "electrons": np.float64(np.nan if dose is None else dose)}
                for e in epochs:
                    for c in CHANNELS:
                        check_finite(snaps[e][c], f"{path}:phase_{i} (AD {c}, epoch {e})", what="value",
                                     hint="")
                        row[f"epoch_{e}/{c}"] = snaps[e][c]
                    row[f"epoch_{e}/seconds"] = snaps[e]["seconds"]
                rows.append(row)
                origin.append(f"{Path(path).name}:{seedfile.target_key(i, 'phase')}")
        if not rows.n or epochs is None:
            raise ConfigError("make-pairs: no phase images found")
        source = {"kind": "ad", "recipe": "phasestem reconstruct parameter-file defaults, probe refined",
                  "n_epochs": recipe.run.n_epochs, "snapshots": epochs, "grid": "AD's own (dataset frame)",
                  "truth_resampling": BAND_LIMITED, "electrons": list(doses), "seed": seed,
                  "params": recipe.model_dump_json(exclude={"data"})}
        f.attrs.update({"format": PAIRS_FORMAT, "layout": LAYOUT, "epochs": json.dumps(epochs),
                        "optics": json.dumps(optics), "inputs_from": json.dumps(source),
                        "sources": json.dumps(origin), "units": "rad"})
    return Path(out)
