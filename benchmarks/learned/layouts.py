"""Geometries of the learned-route benchmarks that train at (or near) the seed geometry: the probe, the cells, the
scan and the learned block settings, the ``phasestem simulate`` config of each (:func:`sim_config`), and the
``phasestem train`` configs of the three stages (:func:`stage_configs`; also :mod:`abtem_eval`'s, on its own blocks).
One definition for ``heldout.py``, ``scaling.py``, ``train_shipped.py`` and ``abtem_eval.py``.

The numbers are those of the held-out benchmark of issue 23 (item 1): the seed-geometry probe of
``benchmarks/learned_vs_ad`` (300 keV, 15 mrad, C10 = 100 Å, about 3 Å across) and 64² patterns at 0.98 mrad.

* ``seed``: the seed's layout, a 50 × 50 scan at 2 Å over a 100 Å cell (512² simulation grid, 0.195 Å), 256² phase
  (0.39 Å); blocks of 14 × 14 positions at stride 9, 76² phase patches (25 blocks).
* ``reduced``: the same step, probe, pattern size and pixels on a 50 Å cell: a 25 × 25 scan, 128² phase; 5 × 5
  blocks at stride 5, 32² patches. About 4× cheaper to simulate and 8× cheaper to train per sample.
* ``smoke``: a 6 × 6 scan of 32² patterns on a 12 Å cell, for the test suite.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

OPTICS = {"energy": 300e3, "semiangle": 15.0, "aberrations": {"C10": 100.0}}
LAYOUTS: dict[str, dict[str, Any]] = {
    "seed": {"extent": 100.0, "sim_gpts": 512, "phase_gpts": 256, "scan": 50, "pattern": 64,
             "learned": {"block": 14, "stride": 9, "patch": 76, "vit_patch": 8,
                         "preprocess": {"bin": 2, "normalize": "pattern", "scale": "sqrt"}}},
    "reduced": {"extent": 50.0, "sim_gpts": 256, "phase_gpts": 128, "scan": 25, "pattern": 64,
                "learned": {"block": 5, "stride": 5, "patch": 32, "vit_patch": 8,
                            "preprocess": {"bin": 2, "normalize": "pattern", "scale": "sqrt"}}},
    "smoke": {"extent": 12.0, "sim_gpts": 64, "phase_gpts": 32, "scan": 6, "pattern": 32,
              "learned": {"block": 3, "stride": 3, "patch": 16, "vit_patch": 8,
                          "preprocess": {"normalize": "pattern", "scale": "sqrt"}}},
}
#: random crystals of phasestem's generator: depth (Å), frozen phonons, their σ (Å), zone-axis tilt (°)
SPECIMEN = {"depth": [10.0, 20.0], "phonons": 4, "phonon_sigma": 0.1, "max_tilt": 3.0}


def sim_config(layout: str, n: int, seed: int, phonons: int | None = None, step: float = 2.0,
               prefix: str = "simulation_data", structures: list[Path] | None = None) -> dict[str, Any]:
    """A ``phasestem simulate`` config of ``layout``: ``n`` noise-free samples in one file, scan ``step`` (Å) over the
    whole cell, phasestem's random crystals (or the ``structures`` files), ``phonons`` frozen-phonon configurations
    (default :data:`SPECIMEN`'s)."""
    lay = LAYOUTS[layout]
    shape = int(round(lay["scan"] * 2.0 / step))
    spec = {"kind": "crystal", **SPECIMEN}
    if phonons is not None:
        spec["phonons"] = int(phonons)
    if structures is not None:
        spec = {**spec, "kind": "structures", "files": [str(Path(p).resolve()) for p in structures]}
    return {"optics": OPTICS, "grid": {"extent": [lay["extent"]] * 2, "sim_gpts": [lay["sim_gpts"]] * 2,
                                       "phase_gpts": [lay["phase_gpts"]] * 2},
            "scan": {"shape": [shape, shape], "step": [step, step]}, "detector": {"shape": [lay["pattern"]] * 2},
            "specimen": spec, "output": {"n_files": 1, "samples_per_file": int(n), "prefix": prefix},
            "compute": {"seed": int(seed), "batch": 64}}


#: learning rate of the patch and stitch stages per size (end2end: a third); small does not train at 3e-3
LR = {"tiny": 3e-3, "small": 1e-3, "base": 3e-4}
#: batch size per stage
BATCH = {"patch": 8, "stitch": 4, "end2end": 1}


def stage_configs(size: str, layout: str | dict[str, Any], files: list[Path], n: int | None, runs: Path,
                  epochs: dict[str, int], device: str = "cpu", amp: str = "off", lr: float | None = None, *,
                  data: dict[str, Any] | None = None, batch: dict[str, int] | None = None) -> dict[str, dict]:
    """``phasestem train`` configs of the three stages (patch, stitch, end2end from the other two's models) of
    ``size`` on ``files``, run folders under ``runs``: the first ``n`` samples (None: all), ``epochs`` per stage (at
    least 1), block geometry and preprocessing of ``layout`` (a name of :data:`LAYOUTS` or its ``learned`` dict),
    learning rate ``lr`` (default :data:`LR`; end2end a third of it); ``data`` and ``batch`` override the data
    block's defaults (10 % validation, augmentation on) and :data:`BATCH`. Pretrained backbones off (a run does not
    depend on what a machine has cached); a checkpoint after every epoch (``last/``: a stage resumes)."""
    learned = LAYOUTS[layout]["learned"] if isinstance(layout, str) else layout
    lr = lr or LR[size]
    bs = {**BATCH, **(batch or {})}
    common = {"files": [str(f) for f in files], "block": learned["block"], "stride": learned["stride"],
              "patch": learned["patch"], "val_fraction": 0.1, "test_fraction": 0.0, "augment": True,
              "preprocess": learned["preprocess"], **({} if n is None else {"max_samples": int(n)}), **(data or {})}

    def trainer(stage: str, rate: float) -> dict:
        return {"epochs": max(1, int(epochs[stage])), "lr": rate, "warmup_steps": 5, "device": device, "amp": amp,
                "monitor": "val/psnr", "monitor_mode": "max", "tensorboard": False, "progress": False,
                "checkpoint_every_epochs": 1}

    return {
        "patch": {"network": "patch", "out_dir": str(runs / "patch"), "data": {**common, "batch_size": bs["patch"]},
                  "model": {"size": size, "cnn_pretrained": None, "vit_pretrained": None},
                  "trainer": trainer("patch", lr)},
        "stitch": {"network": "stitch", "out_dir": str(runs / "stitch"),
                   "stitch_model": {"size": size, "vit_patch": learned["vit_patch"], "vit_pretrained": None},
                   "data": {**common, "batch_size": bs["stitch"], "stitch_noise": 0.05},
                   "trainer": trainer("stitch", lr)},
        "end2end": {"network": "end2end", "out_dir": str(runs / "end2end"), "patch_checkpoint": str(runs / "patch"),
                    "stitch_checkpoint": str(runs / "stitch"), "freeze_patch_epochs": 1,
                    "data": {**common, "batch_size": bs["end2end"]},
                    "loss": {"patch_weight": 0.5, "image_weight": 1.0}, "trainer": trainer("end2end", lr / 3)},
    }


def write_json(path: Path, data: Any) -> Path:
    """``data`` as JSON in ``path``, atomically (:func:`phasestem.base.safety.atomic_file`): a killed benchmark leaves
    the last complete file, which its resume reads."""
    import json

    from phasestem.base.safety import atomic_file

    with atomic_file(path, "benchmark record") as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=float))
    return path


def log_seconds(out: Path, key: str, seconds: float) -> None:
    """Record the wall seconds of one step under ``key`` in ``out/seconds.json``."""
    import json

    path = out / "seconds.json"
    d = json.loads(path.read_text()) if path.exists() else {}
    d[key] = round(seconds, 1)
    write_json(path, d)
