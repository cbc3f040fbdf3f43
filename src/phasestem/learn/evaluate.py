"""Evaluate a trained End2End on the held-out test split: PSNR, SSIM, phase error → table + figure.

The test split is the one the model was trained with (files, split seed and fractions are stored
in the model's meta), unless other files are given. Baseline row: predicting the mean training
target image for every sample (what a model that learned nothing would score).
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..errors import InputFileError
from ..metrics import phase_error, psnr, ssim
from ..plot import save_figure
from ..safety import atomic_file, check_bad_pixel_mode
from .data import Preprocess, SampleDataset, SampleIndex, Symmetry

log = logging.getLogger("phasestem.learn")

#: the files ``write_report`` writes into its output folder
REPORT_FILES = ("metrics.csv", "summary.md", "examples.png")


def test_index(meta: dict[str, Any], files: list[str] | None = None, split: str = "test"
               ) -> tuple[SampleIndex, SampleIndex | None]:
    """(evaluation index, training index) from the model's stored data settings (or other ``files``)."""
    d, g = meta["data"], meta["data"]["geometry"]
    kw = dict(block=g["block"], stride=g["stride"], patch=g["patch"])
    try:
        stored = SampleIndex.from_paths(d["files"], target=d["target"], **kw)
    except InputFileError:
        if not files:
            raise
        log.warning("training files %s not found: no training-mean baseline", d["files"])
        return SampleIndex.from_paths(files, target=d["target"], **kw), None
    if d.get("max_samples"):
        stored = stored.subset(range(min(d["max_samples"], len(stored))))
    splits = stored.split(d["val_fraction"], d["test_fraction"], d["split_seed"])
    if files:
        return SampleIndex.from_paths(files, target=d["target"], **kw), splits["train"]
    if len(splits[split]) == 0:
        raise ValueError(f"the stored '{split}' split is empty (test_fraction = {d['test_fraction']}); "
                         "pass --files to evaluate on other data")
    return splits[split], splits["train"]


@torch.no_grad()
def evaluate_model(model, meta: dict[str, Any], index: SampleIndex, train_index: SampleIndex | None = None,
                   batch_size: int = 2, device: str = "cpu", max_samples: int | None = None,
                   max_mean_samples: int = 256, bad_pixels: str = "refuse") -> dict[str, Any]:
    """Per-sample metrics of ``model`` (End2End) on ``index``; returns rows, means and a few examples.

    The baseline is the mean target of (at most ``max_mean_samples``) training samples. NaN/Inf in the
    data are refused naming file, dataset and index, or masked (``bad_pixels='mask'``; the count is
    returned as ``bad_pixels_masked``).
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
    model = model.to(device).eval()
    rows, examples = [], []
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
            if base is not None:
                row.update({k: float(v[j]) for k, v in base.items()})
            rows.append(row)
            if len(examples) < 4:
                examples.append((row["sample"], pred[j].numpy(), gt[j].numpy()))
    means = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "sample"}
    masked = ds.bad_pixels_masked + (tds.bad_pixels_masked if tds is not None else 0)
    return {"rows": rows, "mean": means, "examples": examples, "target": meta["data"]["target_description"],
            "bad_pixels_masked": masked}


def format_table(result: dict[str, Any]) -> str:
    """Markdown table of the mean metrics (model vs mean-image baseline)."""
    m = result["mean"]
    lines = ["| predictor | PSNR (dB) | SSIM | phase error |", "|---|---|---|---|",
             f"| model | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['phase_error']:.3f} |"]
    if "baseline_psnr" in m:
        lines.append(f"| training-mean image | {m['baseline_psnr']:.2f} | – | {m['baseline_phase_error']:.3f} |")
    lines.append(f"\n{len(result['rows'])} samples; target: {result['target']}")
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ex = result["examples"]
    fig, axes = plt.subplots(len(ex), 3, figsize=(9, 3 * len(ex)), squeeze=False)
    for i, (sid, pred, gt) in enumerate(ex):
        lo, hi = float(gt.min()), float(gt.max())
        d = float(np.abs(pred - gt).max())
        panels = ((gt, "truth", "gray", lo, hi), (pred, "prediction", "gray", lo, hi),
                  (pred - gt, "prediction − truth", "RdBu_r", -d, d))
        for ax, (img, title, cmap, vmin, vmax) in zip(axes[i], panels, strict=True):
            im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_title(f"sample {sid}: {title}", fontsize=9)
            ax.axis("off")
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    save_figure(fig, path, dpi=100, close=True)
    return path
