"""Evaluate a trained End2End on the held-out test split: PSNR, SSIM, phase error, data residual → table + figure.

The test split is the one the model was trained with (files, split seed and fractions are stored
in the model's meta), unless other files are given. Baseline row: predicting the mean training
target image for every sample (what a model that learned nothing would score).

``residual`` is the measurement consistency of the predicted phase (:mod:`phasestem.learn.consistency`: the
phase pushed through the forward model with the nominal probe, against the sample's measured patterns; no
ground truth needed), ``truth_residual`` the same for the true phase (the floor that noise and the model's
approximations leave). Both are NaN for files that do not record the optics (original-generator files).
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..base.errors import ConfigError, InputFileError
from ..base.safety import atomic_file, check_bad_pixel_mode
from ..metrics import phase_error, psnr, ssim
from ..plot import save_figure
from .consistency import MeasurementModel
from .data import Preprocess, SampleDataset, SampleIndex, Symmetry
from .data.files import recorded_index
from .trainer.loop import resolve_device

log = logging.getLogger("phasestem.learn")

#: the files ``write_report`` writes into its output folder
REPORT_FILES = ("metrics.csv", "summary.md", "examples.png")


def test_index(meta: dict[str, Any], files: list[str] | None = None, split: str = "test"
               ) -> tuple[SampleIndex, SampleIndex | None]:
    """(evaluation index, training index) from the model's stored data settings (or other ``files``)."""
    d, g = meta["data"], meta["data"]["geometry"]
    kw = dict(block=g["block"], stride=g["stride"], patch=g["patch"])
    try:
        stored = recorded_index(meta)
    except InputFileError:
        if not files:
            shipped = (meta.get("pretrained") or {}).get("name")
            if shipped:  # a model shipped with phasestem (phasestem.learn.pretrained) comes without its data
                raise InputFileError(f"{shipped}: a pretrained model, shipped without its training files: give the "
                                     "data to evaluate it on with --files") from None
            raise
        log.warning("training files %s not found: no training-mean baseline", d["files"])
        index = SampleIndex.from_paths(files, target=d["target"], **kw)
        check_shapes(meta, index)
        return index, None
    splits = stored.split(d["val_fraction"], d["test_fraction"], d["split_seed"])
    if files:
        index = SampleIndex.from_paths(files, target=d["target"], **kw)
        check_shapes(meta, index)
        return index, splits["train"]
    if len(splits[split]) == 0:
        raise ValueError(f"the stored '{split}' split is empty (test_fraction = {d['test_fraction']}); "
                         "pass --files to evaluate on other data")
    return splits[split], splits["train"]


def check_shapes(meta: dict[str, Any], index: SampleIndex) -> None:
    """Refuse, before any sample is read, files whose scan or pattern shape is not the model's (as predict does)."""
    from .apply.phase import check_training_optics, check_training_shapes

    for fi in index.files:
        check_training_shapes(meta, fi.geometry.scan_shape, fi.pattern_shape, str(fi.path))
        check_training_optics(meta, fi.optics() or {}, str(fi.path))


@torch.no_grad()
def evaluate_model(model, meta: dict[str, Any], index: SampleIndex, train_index: SampleIndex | None = None,
                   batch_size: int = 2, device: str = "cpu", max_samples: int | None = None,
                   max_mean_samples: int = 256, bad_pixels: str = "refuse", residual: bool = True
                   ) -> dict[str, Any]:
    """Per-sample metrics of ``model`` (End2End) on ``index``; returns rows, means and a few examples.

    The baseline is the mean target of (at most ``max_mean_samples``) training samples. NaN/Inf in the
    data are refused naming file, dataset and index, or masked (``bad_pixels='mask'``; the count is
    returned as ``bad_pixels_masked``). ``residual``: add the measurement-consistency columns ``residual`` and
    ``truth_residual`` (module docstring).
    """
    check_bad_pixel_mode(bad_pixels)
    pre = Preprocess(**meta["data"]["preprocess"])
    if max_samples is not None:
        index = index.subset(range(min(max_samples, len(index))))
    ds = SampleDataset(index, pre, bad_pixels=bad_pixels)
    mean_img = None
    tds = None
    if train_index is not None and len(train_index):
        tds = SampleDataset(train_index, pre, bad_pixels=bad_pixels)
        entries = train_index.entries[:max_mean_samples]
        mean_img = np.mean([tds.read_target(e, Symmetry()) for e in entries], axis=0)
    device = resolve_device(device)
    model = model.to(device).eval()
    residuals = _Residuals(index, bad_pixels) if residual else None
    rows, examples = [], []
    position = 0
    for batch in DataLoader(ds, batch_size=batch_size):
        out = model(batch["patterns"].to(device), batch["coords"].to(device), batch["centres"].to(device))
        pred = out["phase"].float().cpu()
        gt = batch["phase"].float()
        vals = {"psnr": psnr(pred, gt, reduction="none"), "ssim": ssim(pred, gt, reduction="none"),
                "phase_error": phase_error(pred.numpy(), gt.numpy(), align=False, reduction="none")}
        base = None
        if mean_img is not None:
            m = torch.from_numpy(mean_img).float().expand_as(gt)
            base = {"baseline_psnr": psnr(m, gt, reduction="none"),
                    "baseline_phase_error": phase_error(m.numpy(), gt.numpy(), align=False, reduction="none")}
        for j in range(len(gt)):
            row = {"sample": int(batch["sample"][j])}
            row.update({k: float(v[j]) for k, v in vals.items()})
            if residuals is not None:
                row.update(residuals(index.entries[position], pred[j], gt[j]))
            if base is not None:
                row.update({k: float(v[j]) for k, v in base.items()})
            position += 1
            rows.append(row)
            if len(examples) < 4:
                examples.append((row["sample"], pred[j].numpy(), gt[j].numpy()))
    means = {k: _mean([r[k] for r in rows]) for k in rows[0] if k != "sample"}
    masked = ds.bad_pixels_masked + (tds.bad_pixels_masked if tds is not None else 0)
    return {"rows": rows, "mean": means, "examples": examples, "target": meta["data"]["target_description"],
            "bad_pixels_masked": masked}


def _mean(values: list[float]) -> float:
    """Mean over the finite values (NaN when there are none, e.g. a residual no file could give)."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


class _Residuals:
    """Measurement-consistency residuals of predicted and true phase, one measurement model per file."""

    def __init__(self, index: SampleIndex, bad_pixels: str):
        self.index = index
        self.reader = SampleDataset(index, Preprocess(), bad_pixels=bad_pixels)  # raw patterns, own NaN count
        self.models: dict[int, MeasurementModel | None] = {}

    def _model(self, k: int) -> MeasurementModel | None:
        if k not in self.models:
            fi = self.index.files[k]
            scale = fi.sigma if self.index.target == "potential" else 1.0
            try:
                self.models[k] = MeasurementModel.from_file(fi.path, fi.geometry, fi.pattern_shape, phase_scale=scale)
            except ConfigError as exc:  # no optics recorded: the columns stay NaN, said once per file
                log.warning("%s: no measurement residual (%s)", fi.path, exc)
                self.models[k] = None
        return self.models[k]

    def __call__(self, entry: tuple[int, int], pred: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
        model = self._model(entry[0])
        if model is None:
            return {"residual": float("nan"), "truth_residual": float("nan")}
        g = self.index.files[entry[0]].geometry
        raw = self.reader.read_patterns(entry, np.arange(g.scan_shape[0]), np.arange(g.scan_shape[1]), Symmetry())
        meas = torch.from_numpy(raw).reshape(-1, *raw.shape[2:])
        return {"residual": float(model.residual_per_pattern(pred.float(), meas).double().mean()),
                "truth_residual": float(model.residual_per_pattern(truth.float(), meas).double().mean())}


def format_table(result: dict[str, Any]) -> str:
    """Markdown table of the mean metrics (model vs mean-image baseline, and the measurement residual)."""
    m = result["mean"]
    res = "residual" in m

    def r(key: str) -> str:
        return f" {m[key]:.4g} |" if key in m and np.isfinite(m[key]) else " – |"

    lines = ["| predictor | PSNR (dB) | SSIM | phase error |" + (" data residual |" if res else ""),
             "|---|---|---|---|" + ("---|" if res else ""),
             f"| model | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['phase_error']:.3f} |" + (r("residual") if res else "")]
    if "baseline_psnr" in m:
        lines.append(f"| training-mean image | {m['baseline_psnr']:.2f} | – | {m['baseline_phase_error']:.3f} |"
                     + (" – |" if res else ""))
    if res:
        lines.append("| true phase | – | – | – |" + r("truth_residual"))
    lines.append(f"\n{len(result['rows'])} samples; target: {result['target']}")
    if res:
        lines.append("data residual: Σ(√I_model − √I_meas)² / Σ I_meas, patterns of the phase through the forward "
                     "model with the nominal probe vs the measured ones, each normalised to one (0 = identical)")
    return "\n".join(lines)


def write_report(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """metrics.csv (per sample), summary.md (table) and examples.png (truth / prediction / difference)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    with atomic_file(out / "metrics.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(result["rows"][0]))
        w.writeheader()
        w.writerows(result["rows"])
    paths["csv"] = out / "metrics.csv"
    with atomic_file(out / "summary.md") as tmp:
        tmp.write_text(format_table(result) + "\n")
    paths["table"] = out / "summary.md"
    paths["figure"] = _figure(result, out / "examples.png")
    return paths


def _figure(result: dict[str, Any], path: Path) -> Path:
    """examples.png: truth / prediction / difference of the first examples (:func:`phasestem.plot.examples_figure`),
    each prediction's E_φ, PSNR and SSIM in its title."""
    from ..plot import examples_figure

    by_sample = {r["sample"]: r for r in result["rows"]}
    examples = [(f"sample {sid}", pred, gt) for sid, pred, gt in result["examples"]]
    metrics = {f"sample {sid}": by_sample.get(sid) for sid, _, _ in result["examples"]}
    save_figure(examples_figure(examples, label=result["target"], metrics=metrics), path, close=True)
    return path
