"""A coarse start: the first epoch of a thick specimen's reconstruction on the centre of the detector.

The central h × w pixels of every pattern (the bright-field disk and a margin of :data:`MARGIN` × the semi-angle)
are the patterns of the same scan through a probe window of h × w pixels, each H/h × W/w times the full model's
pixel: about a quarter of the work per transform at half the window. :func:`coarse_model` builds that model from
the full one (the probe's spectrum cut to the window, the same positions, slices, tilt, schedules and 'auto'
decisions, the object resampled onto the larger pixels); the engine runs ``run.coarse_start`` epochs on it
(:func:`phasestem.recon.engine.optimize`, the cropped patterns normalised by their own mean count as any data
are); :func:`take_coarse` then resamples its object onto the full model's pixels, carries tilt, positions,
decisions and the epochs' history over, and the run goes on with the whole detector.

Why: on a thick specimen the dark field of the first epochs, which the flat start cannot yet explain, pulls the
object into wrapped minima; a start from the bright field and its margin alone finds the coarse phase first.
Measured in ``benchmarks/independent/README.md`` ("A coarse start"): on thick crystals r rises (abTEM SrTiO3 and
GaAs, 20–30 nm, on axis and mistilted), on mistilted specimens without a lattice it falls. ``auto``, the default
(:func:`coarse_plan`), is :data:`AUTO_EPOCHS` epochs for a multislice model of at least :data:`THICK_NM` nm, judged
by :func:`coarse_verdict` after the first: kept for a crystal (its slices first straightened where they are
sheared, the shear moved into the tilt); otherwise the engine puts the model back and the run goes on as without a
coarse start.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..base.errors import ConfigError
from ..detector import centre_window
from ..physics.experiment import Experiment, object_frame
from ..physics.resample import sample_on_grid
from .run_state import COARSE_HISTORY_KEY
from .schedule import tilt_matters

#: the crop holds the bright-field disk out to this many × the probe semi-angle (each axis)
MARGIN = 1.2
#: a crop is worth a coarse stage when it keeps at most this fraction of the detector's width (each axis)
MAX_FRACTION = 2 / 3
#: ``auto``: a coarse start for multislice models at least this thick (nm)
THICK_NM = 10.0
#: ``auto``: epochs of the coarse start
AUTO_EPOCHS = 4


def coarse_verdict(model) -> tuple[str, str]:
    """What becomes of an ``auto`` coarse start after its first epoch, judged on the full model it was carried into,
    and why: ``"keep"`` for a crystal (:func:`~phasestem.recon.crystal.crystal_test`) whose slices are not measurably
    sheared (:func:`~phasestem.recon.shear.obj_shear_rule` off), i.e. on its zone axis, where the bright field alone
    gives the columns' coarse phase that the dark field's wrapped minima otherwise take; ``"straighten"`` for a
    mistilted crystal: the coarse model holds the tilt, so the columns it built are sheared, and the engine moves
    that shear into the tilt (:func:`~phasestem.recon.shear.transfer_slice_shear`) before the coarse epochs go on;
    ``"drop"`` for a specimen without a lattice, whose mistilt no test on the object can tell
    (benchmarks/independent: a random-atom specimen mistilted by 2–5 mrad loses up to 0.10 in r @ 20)."""
    from .crystal import crystal_test
    from .shear import obj_shear_rule

    crystal, words = crystal_test(model)
    if not crystal:
        return "drop", f"not a crystal ({words})"
    sheared, why = obj_shear_rule(model)
    if sheared:
        return "straighten", f"a mistilted crystal ({why.removeprefix('on: ')})"
    return "keep", f"a crystal on its zone axis ({why.removeprefix('off: ')})"


def straighten(coarse, constraints, why: str) -> str:
    """A mistilted crystal's coarse start (:func:`coarse_verdict` ``"straighten"``): the coarse model's slice shear
    moved into its tilt (:func:`~phasestem.recon.shear.transfer_slice_shear`), and ``obj_shear: auto``, if not yet
    decided, decided on for the run with ``why``: the straightened columns measure no walk at the rule's first
    epoch, but the tilt they give is refined by the same transfer every epoch after. Returns what was done, for the
    run log."""
    from .shear import transfer_slice_shear

    dty, dtx = transfer_slice_shear(coarse)
    done = f"its slices straightened, the tilt {dty:+.2f}, {dtx:+.2f} mrad"
    if constraints.obj_shear.enabled == "auto" and "obj_shear" not in coarse.history.decided:
        coarse.history.decided["obj_shear"] = True
        coarse.history.notes["obj_shear"] = f"on: the coarse start found {why} (epoch {coarse.epoch})"
        done += "; constraints.obj_shear auto: on"
    return done


def coarse_window(pattern_shape: tuple[int, int], angular_sampling: tuple[float, float] | None,
                  semiangle: float | None) -> tuple[int, int] | None:
    """The central crop (h, w), even sizes, that holds the bright-field disk out to :data:`MARGIN` × the semi-angle
    (mrad) on a detector of ``angular_sampling`` (mrad/px); None when it would keep more than
    :data:`MAX_FRACTION` of either axis (little to gain) or the optics are unknown."""
    if angular_sampling is None or not semiangle or semiangle <= 0:
        return None
    crop = []
    for n, dk in zip(pattern_shape, angular_sampling, strict=True):
        h = 2 * math.ceil(MARGIN * semiangle / float(dk))
        if h > MAX_FRACTION * n:
            return None
        crop.append(int(h))
    return crop[0], crop[1]


def coarse_plan(setting: int | str, model, dataset, optimizer: str, budget: Callable[[], float] = lambda: math.inf,
                run_epochs: int | None = None) -> tuple[int, tuple[int, int] | None, str]:
    """(epochs, crop, why) of the coarse start ``run.coarse_start`` asks for on a fresh ``model`` of ``dataset``:
    ``auto`` gives :data:`AUTO_EPOCHS` for a multislice model of ≥ :data:`THICK_NM` nm, an int that many epochs,
    in a run of ``run_epochs`` at most that number less one (the last stays on the whole detector); none (0, None)
    for a run of one epoch, for a model that has run epochs already, for L-BFGS, for an oversampled window or a probe
    support, where :func:`coarse_window` finds no crop worth it, or where the cropped patterns (held in memory,
    then twice more as the engine's data) would take more than ``budget()`` bytes (asked only then: it may read the
    host's free memory). ``why`` says which, for the run log."""
    if setting in (0, "0"):
        return 0, None, "off (run.coarse_start: 0)"
    if model.epoch > 0:
        return 0, None, f"off: the model has run {model.epoch} epochs already"
    thick = model.n_slices * float(model.slice_thickness.detach()) / 10.0
    if setting == "auto":
        if model.n_slices < 2 or thick < THICK_NM:
            return 0, None, f"off: {model.n_slices} slice(s), {thick:.3g} nm (auto: multislice ≥ {THICK_NM:g} nm)"
        epochs = AUTO_EPOCHS
    else:
        epochs = int(setting)
    if run_epochs is not None and epochs > run_epochs - 1:
        epochs = run_epochs - 1
        if epochs <= 0:
            return 0, None, "off: the run has one epoch"
    if optimizer == "lbfgs":
        return 0, None, "off: lbfgs takes whole-data steps of its own"
    if model.oversampling != 1:
        return 0, None, f"off: the probe window is {model.oversampling} × the detector"
    if model.probe_support is not None:
        return 0, None, "off: the probe has a real-space support (model.probe_support_radius)"
    if dataset.angular_sampling is None or not dataset.semiangle:
        return 0, None, "off: the detector's angular sampling or the probe semi-angle is not known"
    window = coarse_window(dataset.pattern_shape, dataset.angular_sampling, dataset.semiangle)
    if window is None:
        return 0, None, (f"off: the detector ({dataset.pattern_shape[0]} × {dataset.pattern_shape[1]} px) holds "
                         f"little beyond {MARGIN:g} × the semi-angle {dataset.semiangle} mrad")
    need = 3 * 4 * dataset.n_patterns * window[0] * window[1]  # float32: the crop, then the engine's two copies
    limit = budget()
    if need > limit:
        return 0, None, (f"off: the cropped patterns would take {need / 2**30:.3g} GiB, over the memory budget "
                         f"{limit / 2**30:.3g} GiB (run.memory_budget_gb)")
    return epochs, window, (f"{epochs} epoch(s) on the central {window[0]} × {window[1]} of "
                            f"{dataset.pattern_shape[0]} × {dataset.pattern_shape[1]} detector px ({thick:.3g} nm, "
                            f"{model.n_slices} slices)")


def _resample_planes(planes: torch.Tensor, sampling: tuple[float, float], origin: tuple[float, float],
                     target: Experiment) -> torch.Tensor:
    """Object planes (…, Ny, Nx) of pixels ``sampling`` Å whose frame puts the dataset's 0 Å at ``origin`` Å,
    sampled bilinearly on ``target``'s object frame (pixels and origin): (…, Ny', Nx') float32."""
    start = (origin[0] - target.origin[0], origin[1] - target.origin[1])  # target pixel 0 in the source frame, Å
    flat = planes.detach().cpu().reshape(-1, *planes.shape[-2:]).numpy()
    out = np.stack([sample_on_grid(p, sampling, target.sampling, target.object_shape, start=start) for p in flat])
    return torch.from_numpy(out).reshape(*planes.shape[:-2], *target.object_shape)


def coarse_probe(probe: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """Probe modes (M, ny, nx) → the same modes on a ``window`` of larger pixels over the same Å: the spectrum's
    central ``window`` (unitary transforms, so Σ|ψ|² keeps what lies inside the window)."""
    spectrum = torch.fft.fftshift(torch.fft.fft2(probe, norm="ortho"), dim=(-2, -1))
    cut = torch.fft.ifftshift(centre_window(spectrum, window), dim=(-2, -1))
    return torch.fft.ifft2(cut, norm="ortho")


def coarse_model(model, window: tuple[int, int]):
    """A model of the same scan on the detector's central ``window`` (see the module docstring): its own
    :class:`~phasestem.physics.experiment.Experiment`, the probe of :func:`coarse_probe`, the object, positions,
    tilt, thickness, weights, schedules and decisions of ``model`` (the object resampled onto its pixels). A tilt
    left to the solver's default follows the default rule at the coarse pixel (:func:`~phasestem.recon.schedule.
    tilt_matters`): held where 1 mrad walks the beam less than half a coarse pixel through the specimen."""
    if model.oversampling != 1 or model.probe_support is not None:
        raise ConfigError("run.coarse_start needs a probe window equal to the detector and no probe support")
    exp = model.experiment
    sampling = tuple(s * n / w for s, n, w in zip(exp.sampling, exp.window, window, strict=True))
    origin_shift = torch.tensor(exp.origin, device=model.device)
    dataset_positions = exp.positions - origin_shift
    shape, origin = object_frame(dataset_positions.cpu(), sampling, window)
    probe = coarse_probe(model.get_probe().detach(), window)
    coarse_exp = Experiment(probe.cpu(), dataset_positions.cpu() + torch.tensor(origin), shape, sampling,
                            exp.energy, origin, exp.forward_model.antialias, 1, exp.detector_blur,
                            None if exp.detector_shifts is None else exp.detector_shifts.cpu())
    tilt = model.tilt.detach().cpu()
    coarse = type(model)(coarse_exp, model.n_slices, model.n_object_modes, float(model.slice_thickness.detach()),
                          tilt=tilt, per_position_tilt=tilt.dim() == 2, object_weights=model.obj_weights.detach().cpu())
    with torch.no_grad():
        coarse.obj_phase.copy_(_resample_planes(model.obj_phase, exp.sampling, exp.origin, coarse_exp))
        coarse.obj_amplitude.copy_(_resample_planes(model.obj_amplitude, exp.sampling, exp.origin, coarse_exp))
        moved = model.positions.detach().cpu() - exp.positions.cpu()  # refinements so far (Å)
        coarse.positions.copy_(coarse_exp.positions + moved)
    for name, p in model.named_parameters():  # a parameter the user froze stays frozen
        getattr(coarse, name).requires_grad_(p.requires_grad)
    coarse.schedules = {k: s.model_copy() for k, s in model.schedules.items()}
    if coarse.schedules["tilt"].lr is None and not tilt_matters(model.n_slices, float(model.slice_thickness.detach()),
                                                                  min(sampling)):
        coarse.schedules["tilt"].lr = 0.0  # the default tilt rule at the coarse pixel: too small a walk to see
    coarse.history.decided, coarse.history.notes = dict(model.history.decided), dict(model.history.notes)
    coarse.obj_preblur = model.obj_preblur * exp.sampling[0] / sampling[0]
    return coarse.to(model.device)


def take_coarse(model, coarse) -> None:
    """Carry a coarse model's state into ``model`` (the full one it was built from, not yet run): object
    (resampled onto the full pixels), position refinements, tilt, thickness and weights, the 'auto' decisions, and
    the coarse epochs' loss and geometry history (each loss row marked with :data:`COARSE_HISTORY_KEY`); ``model.epoch``
    becomes the coarse model's. Called after every coarse epoch, so that what the caller sees of ``model`` between
    epochs is the run's state. The probe stays the full model's own (its spectrum beyond the crop has no coarse
    counterpart)."""
    exp, cexp = model.experiment, coarse.experiment
    with torch.no_grad():
        model.obj_phase.copy_(_resample_planes(coarse.obj_phase, cexp.sampling, cexp.origin, exp).to(model.device))
        model.obj_amplitude.copy_(_resample_planes(coarse.obj_amplitude, cexp.sampling, cexp.origin, exp)
                                  .to(model.device))
        moved = coarse.positions.detach() - cexp.positions
        model.positions.copy_(exp.positions + moved.to(model.device))
        model.tilt.copy_(coarse.tilt.detach().to(model.device))
        model.slice_thickness.copy_(coarse.slice_thickness.detach().to(model.device))
        model.obj_weights.copy_(coarse.obj_weights.detach().to(model.device))
    model.history.decided.update(coarse.history.decided)
    model.history.notes.update(coarse.history.notes)
    window = float(cexp.window[1])
    model.history.losses = [{**h, COARSE_HISTORY_KEY: window} for h in coarse.history.losses]
    model.history.geometry = [dict(g) for g in coarse.history.geometry]
    model.history.epoch = coarse.epoch
