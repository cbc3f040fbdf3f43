"""The autoencoder applied: latent maps of a 4D-STEM scan and the autoencoder's report.

``embed_file(scan, model, out)`` (what ``phasestem embed`` runs) is made of :func:`load_autoencoder`,
:func:`embed_scan` / :func:`embed_patterns` (patterns preprocessed as recorded in the model's metadata) and
:func:`write_latent_maps`; :func:`autoencoder_report` gives reconstruction metrics and a comparison figure,
:func:`show` a printed summary (parameters, shapes per input size, metrics on data).

Model files are those written by the shared trainer (``model.safetensors`` + ``meta``); a run folder
(``best/`` then ``last/``) or a file may be given.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from ... import metrics
from ...base.errors import ShapeError
from ...base.safety import atomic_file
from ...physics.resample import resize
from ...plot import STYLE, pyplot, save_figure, styled
from ..backbones import count_parameters
from ..meta import normalize_meta, require_kind
from ..nets.autoencoder import Autoencoder, scale_patterns
from ..trainer.loop import load_weights, resolve_device
from ..training.autoencoder import bin_patterns, build_autoencoder

__all__ = ["load_autoencoder", "embed_patterns", "embed_scan", "write_latent_maps", "embed_file",
           "autoencoder_report", "show"]


def load_autoencoder(path: str | Path, device: str | None = None) -> tuple[Autoencoder, dict[str, Any]]:
    """(model in eval mode, meta) from a model file or run folder written by ``train autoencoder``."""
    state, meta = load_weights(path)
    require_kind(meta, path, ("autoencoder",))
    model = build_autoencoder(meta["model"]["config"])
    model.load_state_dict(state)
    return model.to(resolve_device(device or "auto")).eval(), meta



def _preprocess(meta: dict[str, Any] | None) -> dict[str, Any]:
    """The pattern preprocessing recorded in an autoencoder's meta (any schema)."""
    return normalize_meta(meta or {}).get("data", {}).get("preprocess", {})


@torch.no_grad()
def embed_patterns(model: Autoencoder, patterns: np.ndarray | torch.Tensor, meta: dict[str, Any] | None = None,
                   batch_size: int = 256, progress: bool = True) -> np.ndarray:
    """Latent vectors (N, D) of raw patterns (N, H, W), preprocessed as recorded in ``meta``."""
    pre = _preprocess(meta)
    dev = next(model.parameters()).device
    n = len(patterns)
    out = np.empty((n, model.latent_dim), np.float32)
    it = range(0, n, batch_size)
    for s in tqdm(it, desc="embed", disable=not progress, leave=False):
        chunk = np.asarray(patterns[s:s + batch_size], dtype=np.float32)
        chunk = bin_patterns(chunk, int(pre.get("bin", 1)))
        x = scale_patterns(torch.from_numpy(chunk), pre.get("scaling", "log"), pre.get("log_floor", 1e-3))
        out[s:s + len(chunk)] = model.embed(x[:, None].to(dev)).float().cpu().numpy()
    return out


def embed_scan(model: Autoencoder, patterns, meta: dict[str, Any] | None = None, batch_size: int = 256,
               progress: bool = True) -> np.ndarray:
    """Latent maps (D, Sy, Sx) of a whole scan (Sy, Sx, H, W) (array-like, read row by row)."""
    if len(patterns.shape) != 4:
        raise ShapeError(f"embed needs a 4D-STEM scan (Sy, Sx, H, W), got {tuple(patterns.shape)}")
    sy, sx = patterns.shape[:2]
    rows_per = max(1, batch_size // sx)
    maps = np.empty((sy * sx, model.latent_dim), np.float32)
    for r in tqdm(range(0, sy, rows_per), desc="embed rows", disable=not progress, leave=False):
        block = np.asarray(patterns[r:r + rows_per], dtype=np.float32)
        flat = block.reshape(-1, *block.shape[-2:])
        maps[r * sx:r * sx + len(flat)] = embed_patterns(model, flat, meta, batch_size, progress=False)
    return maps.T.reshape(model.latent_dim, sy, sx)


def write_latent_maps(path: str | Path, maps: np.ndarray, attrs: dict[str, Any] | None = None,
                      png: str | Path | None = None) -> Path:
    """Write ``latent_maps`` (D, Sy, Sx) to HDF5 atomically (+ a PNG grid of the D maps when ``png``)."""
    path = Path(path)
    with atomic_file(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("latent_maps", data=maps.astype(np.float32))
        f.attrs["format"] = "phasestem-latent-maps"
        f.attrs["axes"] = "latent, scan_y, scan_x"
        for k, v in (attrs or {}).items():
            f.attrs[k] = v if isinstance(v, (int, float, str, np.ndarray)) else json.dumps(v, default=str)
    if png is not None:
        _latent_png(maps, Path(png))
    return path


@styled
def _latent_png(maps: np.ndarray, path: Path) -> Path:
    plt = pyplot()
    d = maps.shape[0]
    cols = int(np.ceil(np.sqrt(d)))
    rows = int(np.ceil(d / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 1.8 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < d:
            ax.imshow(maps[i], cmap="magma")
            ax.set_title(f"z{i} [{maps[i].min():.2g}, {maps[i].max():.2g}]", fontsize=6)
    fig.suptitle("latent channels over the scan grid (each on its own scale)", fontsize=8)
    return save_figure(fig, path, dpi=110, close=True)


def embed_file(data: str | Path, model_path: str | Path, out: str | Path | None = None, png: bool = True,
               device: str = "auto", batch_size: int = 256, report: int = 0, summary: bool = False,
               patterns_key: str | None = None, sample: int | None = None, bad_pixels: str = "refuse"
               ) -> dict[str, Any]:
    """4D-STEM file → HDF5 of the autoencoder's latent maps (D, Sy, Sx) (+ a PNG grid); with ``report`` N also
    the reconstruction metrics of N random patterns and their comparison figure. Returns what was written:
    ``out``, ``png``, ``comparison``, ``shape``, ``masked`` (non-finite values replaced) and ``report``."""
    from ... import io
    from ...base.lock import hold_output
    from ...base.safety import check_result_name, figure_beside, refuse_output_over_inputs

    out = Path(out or Path(data).with_suffix("").name + "_latent.h5")
    png_path = figure_beside(out) if png else None
    check_result_name(out)  # a figure suffix is refused, with or without the PNG
    comparison = out.with_name(out.stem + "_comparison.png") if report else None
    refuse_output_over_inputs([p for p in (out, png_path, comparison) if p], [data, model_path])
    with hold_output(out, "phasestem embed", file=True):
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


@torch.no_grad()
def autoencoder_report(model: Autoencoder, patterns: np.ndarray, meta: dict[str, Any] | None = None,
                       png: str | Path | None = None, n_show: int = 4) -> dict[str, float]:
    """PSNR / SSIM / MSE of reconstructions of raw patterns (N, H, W) on the [0, 1] model scale,
    and a comparison figure (input, reconstruction, difference) for ``n_show`` patterns."""
    pre = _preprocess(meta)
    dev = next(model.parameters()).device
    pats = bin_patterns(np.asarray(patterns, np.float32), int(pre.get("bin", 1)))
    x = scale_patterns(torch.from_numpy(pats), pre.get("scaling", "log"), pre.get("log_floor", 1e-3))[:, None]
    recs = []
    for s in range(0, len(x), 128):
        xb = x[s:s + 128].to(dev)
        r = model(xb).float()
        if r.shape[-2:] != xb.shape[-2:]:
            r = resize(r, tuple(xb.shape[-2:]))
        recs.append(r.cpu())
    rec = torch.cat(recs)
    res = {"psnr": float(metrics.psnr(rec, x, data_range=1.0)), "ssim": float(metrics.ssim(rec, x, data_range=1.0)),
           "mse": float(metrics.mse(rec, x)), "n": len(x)}
    if png is not None:
        plt = pyplot()
        with plt.rc_context(STYLE):
            k = min(n_show, len(x))
            fig, axes = plt.subplots(3, k, figsize=(2.2 * k, 6.6), squeeze=False)
            for j in range(k):
                for i, (name, im) in enumerate((("input", x[j, 0]), ("reconstruction", rec[j, 0]),
                                                ("difference", rec[j, 0] - x[j, 0]))):
                    axes[i, j].imshow(im.numpy(), cmap="RdBu_r" if i == 2 else "inferno")
                    axes[i, j].set_title(name, fontsize=7)
                    axes[i, j].axis("off")
            fig.suptitle(f"PSNR {res['psnr']:.2f} dB, SSIM {res['ssim']:.3f} (scaled patterns)", fontsize=8)
            save_figure(fig, png, dpi=110, close=True)
    return res


def show(model: Autoencoder, input_size: tuple[int, int, int] = (1, 256, 256),
         sizes: tuple[int, ...] = (32, 64, 128, 256, 512, 1024), print_fn=print, data: torch.Tensor | None = None,
         scale: str | None = "log", batch_size: int = 16) -> str:
    """Print and return a summary: parameter counts, per-stage shapes at ``input_size`` and
    latent/output shapes for each input size in ``sizes``; with ``data`` (patterns (N, H, W) or
    (N, 1, H, W); scaled by :func:`scale_patterns` with ``scale``, or taken as they are with None)
    also the model's metrics on them: the loss terms of :meth:`Autoencoder.compute_loss`, the
    reconstruction PSNR (dB, peak 1) and the fraction of latent units that are never active.

    Shapes are traced on a copy of the model on PyTorch's ``meta`` device (no arithmetic, instant
    even at 1024²); the model itself is not touched (the metrics run it in eval mode, no gradients,
    and restore its mode).
    """
    ghost = copy.deepcopy(model).to("meta").eval()
    lines = [
        f"Autoencoder(latent_dim={model.latent_dim}, out_shape={model.out_shape})",
        f"  parameters: total {count_parameters(model):,} = encoder {count_parameters(model.encoder):,}"
        f" + decoder {count_parameters(model.decoder):,}",
        f"  stages at input {tuple(input_size)}:",
    ]
    with torch.no_grad():
        x = torch.zeros((1, *input_size), device="meta")
        enc = ghost.encoder
        h = enc.conv_pre(enc.conv_input(x))
        lines.append(f"    conv_input/conv_pre   {tuple(h.shape[1:])}")
        for i, blk in enumerate(enc.blocks):
            h = blk(h)
            lines.append(f"    encoder block {i + 1}       {tuple(h.shape[1:])}")
        h = enc.conv_final(enc.conv_post(h))
        lines.append(f"    conv_post/conv_final  {tuple(h.shape[1:])}")
        out, z = ghost.encode_decode(x)
        lines.append(f"    latent                {tuple(z.shape[1:])}")
        lines.append(f"    output                {tuple(out.shape[1:])}")
        lines.append("  input size → latent, output:")
        for s in sizes:
            out, z = ghost.encode_decode(torch.zeros((1, 1, s, s), device="meta"))
            lines.append(f"    {s:>4}×{s:<4} → {tuple(z.shape)}, {tuple(out.shape)}")
    if data is not None:
        lines.extend(_data_metrics(model, data, scale, batch_size))
    text = "\n".join(lines)
    if print_fn is not None:
        print_fn(text)
    return text


def _data_metrics(model: Autoencoder, data: torch.Tensor, scale: str | None, batch_size: int) -> list[str]:
    """Summary lines of the model's loss terms, PSNR and dead latent units on ``data``."""
    x_all = torch.as_tensor(data)
    if x_all.ndim == 3:
        x_all = x_all[:, None]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums: dict[str, float] = {}
    active = None
    n = len(x_all)
    try:
        with torch.no_grad():
            for i in range(0, n, batch_size):
                x = x_all[i : i + batch_size].to(device)
                x = scale_patterns(x, scale) if scale is not None else x.float()
                x_hat, z = model.encode_decode(x)
                for k, v in model.compute_loss(x, x_hat, z).items():
                    sums[k] = sums.get(k, 0.0) + float(v) * len(x)
                hit = (z > 0).any(0)
                active = hit if active is None else active | hit
    finally:
        model.train(was_training)
    mean = {k: v / n for k, v in sums.items()}
    psnr = -10 * math.log10(max(mean["mse"], 1e-12))
    dead = 1.0 - float(active.float().mean())
    return [f"  on {n} patterns ({'scaled ' + scale if scale else 'as given'}):",
            "    " + ", ".join(f"{k} {v:.4g}" for k, v in mean.items()),
            f"    PSNR {psnr:.2f} dB; latent units never active {dead:.0%}"]
