"""Figures of a reconstruction: the numbers are gathered from the model here and drawn by
:mod:`phasestem.plot.recon` (``model.inspect`` → ``reconstruction.png``, ``model.compare`` → ``compare.png``)."""
from __future__ import annotations

import numpy as np
import torch

from ..physics.experiment import scanned_field
from ..physics.optics import wavelength
from ..plot import compare_figure, reconstruction_figure

#: a dataset's own ground truth is used when its pixel matches the model's within this fraction
SAMPLING_TOLERANCE = 0.01


def ground_truth(model, dataset=None, truth: np.ndarray | None = None) -> np.ndarray | None:
    """``truth`` (rad, dataset frame, the model's pixel), else the dataset's own truth phase when its pixel (if it
    states one) is the model's; None otherwise."""
    if truth is not None:
        return np.asarray(truth)
    own = getattr(dataset, "truth", None) or {}
    if own.get("phase") is None:
        return None
    if own.get("sampling") is not None:
        ts = np.broadcast_to(np.asarray(own["sampling"], dtype=np.float64), (2,))
        if np.any(np.abs(ts / np.asarray(model.sampling) - 1) > SAMPLING_TOLERANCE):
            return None
    return np.asarray(own["phase"])


def summed_object(model) -> tuple[np.ndarray, np.ndarray]:
    """(phase summed over slices (Ny, Nx) rad, amplitude multiplied over slices (Ny, Nx)), object modes weighted."""
    with torch.no_grad():
        w = model.obj_weights / model.obj_weights.sum()
        phase = (model.obj_phase.sum(1) * w[:, None, None]).sum(0).cpu().numpy()
        amp = (model.obj_amplitude.prod(1) * w[:, None, None]).sum(0).cpu().numpy()
    return phase, amp


def _truth_comparison(model, truth: np.ndarray | None, metrics: dict | None):
    """(metrics with the FRC curve, (frequencies, curve)) against ``truth``; (None, None) without one."""
    if truth is None:
        return None, None
    if metrics is None or "frc_curve" not in metrics:
        from .truth import truth_metrics

        metrics = truth_metrics(model, truth, curve=True)
    frc = (metrics["frc_frequencies"], metrics["frc_curve"]) if "frc_curve" in metrics else None
    return metrics, frc


def inspect_model(model, dataset=None, path=None, truth: np.ndarray | None = None, metrics: dict | None = None):
    """:meth:`Ptychography.inspect`: with ``path`` a new :func:`plot_model` figure written there and returned;
    without, the model's one interactive figure redrawn while it is open (a new one once it was closed)."""
    if path is not None:
        return plot_model(model, dataset=dataset, path=path, truth=truth, metrics=metrics)
    import matplotlib.pyplot as plt

    fig = model._inspect_figure
    if fig is None or not plt.fignum_exists(fig.number):
        fig = None
    model._inspect_figure = plot_model(model, dataset=dataset, fig=fig, truth=truth, metrics=metrics)
    if plt.isinteractive():
        plt.pause(0.001)
    return model._inspect_figure


def plot_model(model, dataset=None, path=None, fig=None, truth: np.ndarray | None = None,
               metrics: dict | None = None):
    """Phase and amplitude over the scanned field, their diffractogram, the loss history, the probe (amplitude and
    phase in real space and in the aperture plane, other modes), moved positions and, with a ground truth
    (``truth`` or the dataset's own), E_φ / FRC printed and the FRC drawn. ``fig``: redraw that figure (cleared
    first) instead of making a new one. ``metrics``: :func:`phasestem.recon.truth.truth_metrics` with
    ``curve=True`` when already computed."""
    phase, amp = summed_object(model)
    fy, fx = scanned_field(model.positions, model.sampling, model.object_shape)
    with torch.no_grad():
        probe = model.get_probe().cpu().numpy()
    power = (np.abs(probe) ** 2).sum((-2, -1))
    order = np.argsort(-power)
    probe, power = probe[order], power[order] / max(power.sum(), 1e-30)
    s = np.asarray(model.sampling)
    corner = np.array([fy.start, fx.start]) * s
    start = model.initial_positions.cpu().numpy() - corner
    now = model.positions.detach().cpu().numpy() - corner
    metrics, frc = _truth_comparison(model, ground_truth(model, dataset, truth), metrics)
    h, w = phase[fy, fx].shape
    slices = f", Σ {model.n_slices} slices × {float(model.slice_thickness):.3g} Å" if model.n_slices > 1 else ""
    title = (f"after {model.epoch} epochs: scanned field {h * s[0]:.3g} × {w * s[1]:.3g} Å ({h} × {w} px of "
             f"{s[0]:.3g} Å){slices}")
    return reconstruction_figure(phase[fy, fx], amp[fy, fx], model.sampling, probe, wavelength(model.energy),
                                 history=model.loss_history, mode_power=power, positions=(start, now),
                                 metrics=metrics, frc=frc, title=title, path=path, fig=fig)


def plot_compare(model, dataset=None, truth=None, path=None, index: int | None = None, metrics: dict | None = None):
    """Measured vs modelled pattern at ``index`` (log, their difference and radial profiles) and, with a ground
    truth (``truth`` or the dataset's own), the aligned reconstruction, the truth, their difference and the FRC,
    with E_φ / FRC printed."""
    truth = ground_truth(model, dataset, truth)
    kw: dict = {"sampling": model.sampling}
    if truth is not None:
        from ..metrics import align_to
        from .truth import truth_field

        rec, t = truth_field(model, truth)
        if min(rec.shape) >= 4:
            aligned = align_to(rec, t)
            metrics, frc = _truth_comparison(model, truth, metrics)
            kw.update(reconstruction=aligned, truth=t, metrics=metrics, frc=frc)
    if "truth" not in kw:
        phase, _ = summed_object(model)
        fy, fx = scanned_field(model.positions, model.sampling, model.object_shape)
        kw["reconstruction"] = phase[fy, fx]
    if dataset is not None:
        i = dataset.n_patterns // 2 if index is None else index
        meas = dataset.get_patterns([i])[0].numpy()
        sim = model.simulate([i])[0].cpu().numpy() * float(np.sum(meas))
        ang = dataset.angular_sampling
        kw.update(measured=meas, modelled=sim, index=i, pattern_mrad=None if ang is None else float(np.mean(ang)))
    return compare_figure(title=f"after {model.epoch} epochs", path=path, **kw)


def plot_uncertainty(model, path=None, scale: float = 2.0):
    """The phase over the scanned field, its σ map over the whole object (where the data constrain nothing shown)
    and the significance view (:func:`phasestem.plot.recon.uncertainty_figure`), from ``model.uncertainty``
    (:mod:`phasestem.recon.uncertainty`); ``scale`` Å: the local mean's Gaussian. None when the model has no σ
    maps."""
    from ..plot.recon import uncertainty_figure
    from .uncertainty import SIGNIFICANT, significance

    u = model.uncertainty
    if u is None:
        return None
    phase, _ = summed_object(model)
    fy, fx = scanned_field(model.positions, model.sampling, model.object_shape)
    z = significance(phase[fy, fx], u.sigma_sum[fy, fx], scale / float(np.mean(model.sampling)))
    z = np.where(u.constrained[fy, fx], z, np.nan)
    return uncertainty_figure(phase[fy, fx], u.sigma_sum, u.constrained, (fy.start, fy.stop, fx.start, fx.stop), z,
                              model.sampling, SIGNIFICANT, u.noise, scale,
                              title=f"after {model.epoch} epochs: phase error bars ({u.noise}; local mean over "
                                    f"{scale:g} Å)", path=path)
