"""Figures of a reconstruction: state overview (``model.inspect``) and comparisons (``model.compare``)."""
from __future__ import annotations

import numpy as np
import torch

from ..plot import _plt, _save


def plot_model(model, dataset=None, path=None, fig=None):
    """Summed phase, amplitude, probe modes (real and Fourier), positions and loss history; ``fig``: redraw that
    figure (cleared first) instead of making a new one."""
    plt = _plt()
    M = model.n_probe_modes
    ncol = max(4, M)
    if fig is None:
        fig, ax = plt.subplots(3, ncol, figsize=(3 * ncol, 9), squeeze=False)
    else:
        fig.clf()
        ax = fig.subplots(3, ncol, squeeze=False)
    for a in ax.ravel():
        a.axis("off")
    with torch.no_grad():
        w = model.obj_weights / model.obj_weights.sum()
        phase = (model.obj_phase.sum(1) * w[:, None, None]).sum(0).cpu().numpy()
        amp = (model.obj_amplitude.prod(1) * w[:, None, None]).sum(0).cpu().numpy()
        probe = model.get_probe().cpu().numpy()
    im = ax[0, 0].imshow(phase, cmap="gray")
    ax[0, 0].set_title(f"phase Σ slices (rad), epoch {model.epoch}")
    fig.colorbar(im, ax=ax[0, 0], shrink=0.7)
    im = ax[0, 1].imshow(amp, cmap="gray")
    ax[0, 1].set_title("amplitude")
    fig.colorbar(im, ax=ax[0, 1], shrink=0.7)
    pos = model.positions.detach().cpu().numpy() / np.asarray(model.sampling)
    ini = model.initial_positions.cpu().numpy() / np.asarray(model.sampling)
    a = ax[0, 2]
    a.axis("on")
    a.imshow(phase, cmap="gray")
    a.plot(ini[:, 1], ini[:, 0], ".", ms=2, color="tab:blue", label="start")
    a.plot(pos[:, 1], pos[:, 0], ".", ms=2, color="tab:red", label="now")
    a.legend(fontsize=7)
    a.set_title("positions (px)")
    if model.loss_history:
        a = ax[0, 3]
        a.axis("on")
        ep = [h["epoch"] for h in model.loss_history]
        a.semilogy(ep, [h["loss"] for h in model.loss_history], label="total")
        for k in ("gaussian", "poisson", "pacbed", "sparsity"):
            if k in model.loss_history[-1]:
                a.semilogy(ep, [h.get(k, np.nan) for h in model.loss_history], "--", label=k)
        a.legend(fontsize=7)
        a.set_xlabel("epoch")
        a.set_title("loss")
    power = (np.abs(probe) ** 2).sum((-2, -1))
    for m in range(M):
        ax[1, m].imshow(np.abs(probe[m]) ** 2, cmap="magma")
        ax[1, m].set_title(f"probe mode {m} |ψ|² ({power[m] / power.sum():.0%})")
        spec = np.fft.fftshift(np.fft.fft2(probe[m], norm="ortho"))
        ax[2, m].imshow(np.abs(spec), cmap="magma")
        ax[2, m].set_title(f"mode {m} |ψ(k)|")
    fig.tight_layout()
    return _save(fig, path)


def plot_compare(model, dataset=None, truth=None, path=None, index: int | None = None):
    """Measured vs modelled pattern (log) at ``index`` and reconstructed vs true phase when given."""
    plt = _plt()
    if truth is None and dataset is not None and dataset.truth is not None:
        truth = dataset.truth.get("phase")
    ncol = 3 if truth is not None else 2
    nrow = 2 if dataset is not None else 1
    fig, ax = plt.subplots(nrow, ncol, figsize=(3.5 * ncol, 3.5 * nrow), squeeze=False)
    rec = model.phase_in_dataset_frame(None if truth is None else np.asarray(truth).shape)
    ax[0, 0].imshow(rec, cmap="gray")
    ax[0, 0].set_title("reconstructed phase (rad)")
    if truth is not None:
        t = np.asarray(truth)[: rec.shape[0], : rec.shape[1]]
        ax[0, 1].imshow(t, cmap="gray")
        ax[0, 1].set_title("true phase (rad)")
        d = (rec - rec.mean()) - (t - t.mean())
        ax[0, 2].imshow(d, cmap="RdBu_r")
        ax[0, 2].set_title("difference (offset removed)")
    if dataset is not None:
        i = dataset.n_patterns // 2 if index is None else index
        meas = dataset.get_patterns([i])[0].numpy()
        sim = model.simulate([i])[0].cpu().numpy() * float(np.sum(meas))
        for a, img, title in ((ax[1, 0], meas, f"measured #{i}"), (ax[1, 1], sim, "model")):
            a.imshow(np.log1p(np.maximum(img, 0) / (img.max() + 1e-30) * 1e3), cmap="inferno")
            a.set_title(title)
        if ncol == 3:
            ax[1, 2].axis("off")
    for a in ax.ravel():
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    return _save(fig, path)
