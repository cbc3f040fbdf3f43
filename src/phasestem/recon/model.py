"""The optimisable state of an AD ptychographic reconstruction (CDTools-style Python interface).

Typical use::

    from phasestem.recon import Ptychography
    model = Ptychography.from_dataset(dataset, n_slices=1, n_probe_modes=1)
    for i, loss in enumerate(model.Adam_optimize(20, dataset, batch_size=32)):
        print(i, loss)                      # one item per epoch (mean total loss)
    model.save_results("out/results.h5")

Parameters (all ``nn.Parameter``; set ``requires_grad = False`` to freeze one):

=================  ======================  ===============================================
name               shape                   meaning
=================  ======================  ===============================================
``obj_amplitude``  (K, S, Ny, Nx)          object amplitude per object mode K and slice S
``obj_phase``      (K, S, Ny, Nx)          object phase (rad)
``probe``          (M, ny, nx, 2)          probe modes, real view, scaled by sqrt(ny·nx)
``positions``      (N, 2)                  probe centres (Å) in the object frame
``tilt``           (2,) or (N, 2)          specimen tilt (θy, θx) in mrad
``slice_thickness``  ()                    slice thickness Δz (Å)
``obj_weights``    (K,)                    object-mode occupancies (frozen by default)
=================  ======================  ===============================================

Each parameter has a :class:`~phasestem.recon.schedule.ParamSchedule` in ``model.schedules`` (learning rate,
first and last epoch; object and probe rates ``None``: the solver's default; the others off) — change them with
``model.set_learning_rates(positions={"lr": 0.03, "start": 3}, probe=0.3)``. CDTools' tutorial calls work as
written (``from_dataset(dataset, oversampling=2, probe_support_radius=90)``, ``translation_offsets``,
``inspect(dataset)`` in the epoch loop, ``save_results(dataset)`` as a dict). Intensities are in normalised units
(the engine divides the measured patterns by their mean total count; the probe has Σ|ψ|² = 1). Model patterns come
from the scan's :class:`phasestem.physics.experiment.Experiment` (no second forward model).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..base.errors import ConfigError, ShapeError
from ..physics import optics
from ..physics.experiment import Experiment
from ..physics.multislice import PolarTransmission
from .budget import check_object_memory
from .history import RunHistory
from .inputs import load_phase_image
from .report import describe
from .schedule import PARAM_NAMES, ParamSchedule, default_schedules
from .settings.model import ModelOptions


class Ptychography(nn.Module):
    """Mixed-state multislice ptychography model: object, probe, positions, tilt, slice thickness and object-mode
    weights optimised over an :class:`~phasestem.physics.experiment.Experiment` (probe window, object frame, nominal
    positions, forward model, detector response), with their learning-rate schedules and per-epoch history.

    Parameters
    ----------
    experiment : the scan's experiment; its nominal probe (Σ_m Σ|ψ_m|² = 1) and positions are the start values.
    n_slices, n_object_modes : S and K.
    slice_thickness : Δz (Å); tilt : (2,) global or (N, 2) per-position tilt in mrad.
    """

    def __init__(self, experiment: Experiment, n_slices: int = 1, n_object_modes: int = 1,
                 slice_thickness: float = 10.0, tilt: torch.Tensor | tuple[float, float] | None = None,
                 per_position_tilt: bool = False, object_weights: torch.Tensor | None = None):
        super().__init__()
        self.experiment = experiment
        self.probe_scale = math.sqrt(self.window[0] * self.window[1])
        K, S = int(n_object_modes), int(n_slices)
        Ny, Nx = experiment.object_shape
        if Ny < self.window[0] or Nx < self.window[1]:
            raise ShapeError(f"object {(Ny, Nx)} is smaller than the probe window {self.window}")
        positions = experiment.positions
        self.obj_amplitude = nn.Parameter(torch.ones(K, S, Ny, Nx))
        self.obj_phase = nn.Parameter(torch.zeros(K, S, Ny, Nx))
        probe = experiment.probe.to(torch.complex64) * self.probe_scale
        self.probe = nn.Parameter(torch.view_as_real(probe).contiguous())
        self.positions = nn.Parameter(positions.clone())
        self.register_buffer("initial_positions", positions.clone())
        tilt_t = torch.zeros(2) if tilt is None else torch.as_tensor(tilt, dtype=torch.float32).clone()
        if per_position_tilt and tilt_t.dim() == 1:
            tilt_t = tilt_t.expand(positions.shape[0], 2).clone()
        if tilt_t.shape not in ((2,), (positions.shape[0], 2)):
            raise ShapeError(f"tilt must be (2,) or (N, 2) = ({positions.shape[0]}, 2) mrad, got {tuple(tilt_t.shape)}")
        self.tilt = nn.Parameter(tilt_t)
        self.slice_thickness = nn.Parameter(torch.tensor(float(slice_thickness)))
        w = torch.full((K,), 1.0 / K) if object_weights is None else torch.as_tensor(object_weights).float()
        self.obj_weights = nn.Parameter(w.clone())
        self.schedules: dict[str, ParamSchedule] = default_schedules(S, float(slice_thickness), min(self.sampling))
        self.obj_preblur = 0.0  # Gaussian σ in object pixels applied to the object the forward model sees (0: off)
        self.register_buffer("probe_support", None, persistent=False)  # real-space probe support (ny, nx) or None
        self._inspect_figure = None
        self.history = RunHistory()  # epochs, losses, geometry, decisions: what the engine records
        self.solver: str | None = None  # the last solver that optimised the model (engine.optimize), for repr
        self.counts_per_pattern: float | None = None  # the measured patterns' mean total count (engine.optimize)
        self.data_total: float | None = None  # the patterns' mean total in the data's units (engine.optimize)
        self.uncertainty = None  # the phase's σ maps (recon.uncertainty.PhaseUncertainty), when computed
        self._data_cache: tuple | None = None

    window = property(lambda self: self.experiment.window, doc="(ny, nx) probe window, px")
    sampling = property(lambda self: self.experiment.sampling, doc="(dy, dx) real-space pixel, Å")
    energy = property(lambda self: self.experiment.energy, doc="beam energy, eV")
    origin = property(lambda self: self.experiment.origin, doc="(y, x) Å of the dataset's 0 Å in the object frame")
    forward_model = property(lambda self: self.experiment.forward_model, doc="the forward operator")
    oversampling = property(lambda self: self.experiment.oversampling, doc="window / detector pixels")
    upsampling = property(lambda self: self.experiment.upsampling, doc="detector's pixel λ/(N·Δk) / object pixel")
    detector_shape = property(lambda self: self.experiment.detector_shape, doc="pattern shape the model produces")
    detector_shifts = property(lambda self: self.experiment.detector_shifts,
                               doc="(N, 2) px: each measured pattern's zero frequency off the central pixel, or None")

    detector_blur = property(lambda self: self.experiment.detector_blur,
                             lambda self, sigma: setattr(self.experiment, "detector_blur", float(sigma)),
                             doc="Gaussian σ in detector pixels applied to model patterns (0: off)")

    def set_detector_shifts(self, shifts: np.ndarray | torch.Tensor | None) -> None:
        """Displace the model pattern of position j by ``shifts[j]`` (N, 2) detector px (row, col), toward larger
        indices: the descan of data whose patterns were not resampled to a common centre (None: no shifts)."""
        self.experiment.set_detector_shifts(shifts)

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def from_dataset(cls, dataset, options: ModelOptions | None = None, **keywords) -> Ptychography:
        """Build a model matched to ``dataset`` (a :class:`phasestem.dataset.FourDSTEM`) as ``options`` say
        (:class:`~phasestem.recon.settings.model.ModelOptions`); CDTools-style keywords name any of its fields and
        replace it (``from_dataset(ds, n_slices=8, n_probe_modes=4)``). The experiment (probe, frame, detector) is
        :meth:`phasestem.physics.experiment.Experiment.from_dataset`'s of the same options; each option says what it
        does where it is declared (its field's description)."""
        o = (options or ModelOptions()).replaced(**keywords)
        experiment = Experiment.from_dataset(dataset, o)
        if o.upsampling == "auto":
            logging.getLogger("phasestem.recon").info("model.upsampling auto: %s", experiment.upsampling_reason)
        check_object_memory(experiment.object_shape, o.n_slices, o.n_object_modes)
        slice_thickness = o.slice_thickness
        if slice_thickness is None:
            slice_thickness = 10.0 if o.n_slices > 1 else 1.0
        model = cls(experiment, n_slices=o.n_slices, n_object_modes=o.n_object_modes,
                    slice_thickness=slice_thickness, tilt=torch.tensor(o.tilt), per_position_tilt=o.per_position_tilt)
        if o.probe_support_radius is not None:
            model.set_probe_support(o.probe_support_radius)
        if o.initial_phase is not None:
            phase = o.initial_phase
            if isinstance(phase, str | Path):
                phase = load_phase_image(phase, o.initial_phase_key)
            model.set_initial_phase(np.asarray(phase), o.initial_phase_sampling or experiment.detector_sampling)
        if o.random_phase:
            model.randomize_phase(o.random_phase, o.random_seed)
        if o.learning_rates:
            model.set_learning_rates(**o.learning_rates)
        model.obj_preblur = float(o.obj_preblur)
        from .results import optics_record

        model.optics_record = optics_record(dataset, model.sampling, model.upsampling)  # results.h5's geometry
        return model

    def set_initial_phase(self, phase: np.ndarray, sampling: tuple[float, float] | None = None) -> None:
        """Start the object phase from a 2-D image (rad) in the dataset frame (hybrid start).

        The image is resampled to the object pixel when ``sampling`` (Å) differs, placed at the
        object-frame origin (:meth:`Experiment.image_region`), raised so that its lowest value is 0, the flat
        start's level (a constant phase is not measured; a positive object, ``constraints.obj_clamp``, then keeps
        all of it), and divided evenly over the slices (all object modes).
        """
        img, (sy, sx) = self.experiment.image_region(phase, sampling)
        with torch.no_grad():
            self.obj_phase[:, :, sy, sx] = (img - img.min()).to(self.obj_phase) / self.n_slices

    def randomize_phase(self, scale: float = 0.1, seed: int = 0) -> None:
        """Add uniform noise in [−``scale``, ``scale``] rad to the object phase (every mode and slice), drawn from a
        generator seeded with ``seed``: the same seed gives the same start on any device."""
        gen = torch.Generator().manual_seed(int(seed))
        noise = (torch.rand(self.obj_phase.shape, generator=gen) * 2 - 1) * float(scale)
        with torch.no_grad():
            self.obj_phase.add_(noise.to(self.obj_phase))

    def set_probe_support(self, radius_px: float | None) -> None:
        """Real-space probe support: a circle of ``radius_px`` window pixels about the centre (None: none). The
        probe is multiplied by it wherever it is used and renormalised once now."""
        if radius_px is None:
            self.probe_support = None
            return
        mask = optics.circular_support(self.window, radius_px).to(self.probe.device)
        with torch.no_grad():
            p = torch.view_as_complex(self.probe.data) * mask
            total = p.abs().square().sum().sqrt().clamp_min(1e-30)
            self.probe.data.copy_(torch.view_as_real(p / total * self.probe_scale))
        self.probe_support = mask

    @property
    def translation_offsets(self) -> nn.Parameter:
        """CDTools' name for the scan-position parameter (here :attr:`positions`, Å):
        ``model.translation_offsets.requires_grad = False`` freezes the positions."""
        return self.positions

    def set_learning_rates(self, **rates) -> None:
        """Set learning rates, e.g. ``set_learning_rates(probe=1e-3, positions=0)``; also accepts
        ``{name: {"lr": .., "start": .., "end": ..}}`` (or a ``model.learning_rates`` entry) for the full schedule."""
        for name, val in rates.items():
            if name not in self.schedules:
                raise ConfigError(f"unknown parameter '{name}' for a learning rate: expected one of {PARAM_NAMES}")
            if val is not None and not isinstance(val, int | float):
                self.schedules[name] = ParamSchedule.model_validate({**dict(self.schedules[name]), **dict(val)})
            else:
                self.schedules[name].lr = None if val is None else float(val)

    def __repr__(self) -> str:
        return describe(self)

    # ---- properties --------------------------------------------------------------------
    @property
    def n_slices(self) -> int:
        return self.obj_phase.shape[1]

    @property
    def n_object_modes(self) -> int:
        return self.obj_phase.shape[0]

    @property
    def n_probe_modes(self) -> int:
        return self.probe.shape[0]

    @property
    def object_shape(self) -> tuple[int, int]:
        return tuple(self.obj_phase.shape[-2:])

    @property
    def device(self) -> torch.device:
        return self.obj_phase.device

    def get_probe(self) -> torch.Tensor:
        """Probe modes (M, ny, nx) complex in physical normalisation (Σ|ψ|² ≈ 1), inside the probe support if set."""
        probe = torch.view_as_complex(self.probe) / self.probe_scale
        return probe if self.probe_support is None else probe * self.probe_support

    def transmission(self) -> PolarTransmission:
        """The object's amplitude and phase (K, S, Ny, Nx), as the forward operator takes them."""
        return PolarTransmission(self.obj_amplitude, self.obj_phase)

    def get_object(self) -> torch.Tensor:
        """Complex transmission (K, S, Ny, Nx) = amplitude · exp(i·phase)."""
        return self.transmission().complex()

    def blurred_object(self, sigma: float) -> PolarTransmission:
        """Amplitude and phase (K, S, Ny, Nx) each blurred laterally by a periodic Gaussian of σ = ``sigma`` object
        pixels (differentiable; the object's padding absorbs the wrap-around)."""
        ny, nx = self.obj_phase.shape[-2:]
        u = torch.fft.fftfreq(ny, device=self.device)[:, None]
        v = torch.fft.rfftfreq(nx, device=self.device)[None, :]
        mtf = torch.exp(-2 * math.pi**2 * sigma**2 * (u**2 + v**2))

        def blur(x: torch.Tensor) -> torch.Tensor:
            return torch.fft.irfft2(torch.fft.rfft2(x) * mtf, s=(ny, nx))

        return PolarTransmission(blur(self.obj_amplitude), blur(self.obj_phase))

    def dataset_positions(self) -> torch.Tensor:
        """Current positions (N, 2) Å in the dataset frame."""
        return self.positions.detach() - torch.tensor(self.origin, device=self.device)

    # ---- forward -----------------------------------------------------------------------
    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """Model intensities (B, ny, nx), fftfreq order (unshifted), for flat scan indices ``index``.

        The intensities come from :meth:`Experiment.intensities` (the forward operator, the fused node of
        :mod:`phasestem.physics.fused`, then the detector response). The object goes in as amplitude and phase, made
        complex on the batch's windows only.
        """
        tilt = self.tilt if self.tilt.dim() == 1 else self.tilt[index]
        obj = self.transmission() if self.obj_preblur <= 0 else self.blurred_object(self.obj_preblur)
        return self.experiment.intensities(obj, self.get_probe(), self.positions[index], index=index,
                                           dz=self.slice_thickness, tilt=tilt,
                                           object_weights=self.obj_weights if self.n_object_modes > 1 else None)

    def simulate(self, index=None) -> torch.Tensor:
        """Model patterns (B, ny, nx) fftshift-ed like measured data, without gradients."""
        if index is None:
            index = torch.arange(self.positions.shape[0], device=self.device)
        with torch.no_grad():
            return torch.fft.fftshift(self.forward(torch.as_tensor(index, device=self.device)), dim=(-2, -1))

    # ---- optimisation (generators: one mean loss per epoch) ----------------------------
    def _optimize(self, optimizer: str, n_epochs: int, dataset, **options):
        from .engine import optimize_with_options  # the engine stands above the model: imported when used
        return optimize_with_options(self, dataset, n_epochs, optimizer=optimizer, **options)

    def Adam_optimize(self, n_epochs: int, dataset, batch_size: int = 32, **options):
        """Adam for ``n_epochs`` epochs; yields the mean total loss of each epoch.

        Options (see :func:`phasestem.recon.engine.optimize`): ``batch_mode`` ('random' |
        'compact'), ``losses`` (:class:`~phasestem.recon.losses.LossConfig`), ``constraints``
        (:class:`~phasestem.recon.constraints.Constraints`), ``lr_scale``, ``checkpoint_path``,
        ``checkpoint_every``, ``figures_every``, ``out_dir``, ``seed``, ``progress``.
        """
        return self._optimize("adam", n_epochs, dataset, batch_size=batch_size, **options)

    def LSQ_optimize(self, n_epochs: int, dataset, batch_size: int = 32, **options):
        """Illumination-preconditioned least-squares steps for object and probe (Adam for tilt, thickness and
        weights; :class:`~phasestem.recon.optimizers.RowAdam` for positions: a position steps when its pattern is in
        the batch); learning rates of object and probe are fractions of a Gauss–Newton step
        (:mod:`phasestem.recon.precondition`). Same options as :meth:`Adam_optimize`."""
        return self._optimize("lsq", n_epochs, dataset, batch_size=batch_size, **options)

    def SGD_optimize(self, n_epochs: int, dataset, batch_size: int = 32, momentum: float = 0.9, **options):
        """SGD with momentum (same options as :meth:`Adam_optimize`)."""
        return self._optimize("sgd", n_epochs, dataset, batch_size=batch_size, momentum=momentum, **options)

    def LBFGS_optimize(self, n_epochs: int, dataset, batch_size: int | None = None, **options):
        """L-BFGS (full batch by default; same options as :meth:`Adam_optimize`)."""
        return self._optimize("lbfgs", n_epochs, dataset, batch_size=batch_size, **options)

    # ---- results -----------------------------------------------------------------------
    def phase_in_dataset_frame(self, shape: tuple[int, int] | None = None, summed: bool = True) -> np.ndarray:
        """Object phase (rad) cropped to the dataset frame (pixel (0,0) at dataset 0 Å).

        ``summed``: sum over slices and (occupancy-weighted) object modes → (Ny', Nx');
        else (K, S, Ny', Nx'). ``shape`` limits the crop (e.g. the truth image shape). Dataset pixels before
        the object frame (a scan far from 0 Å: negative origin) are 0.
        """
        ph = self.obj_phase.detach().cpu()
        if summed:
            w = self.obj_weights.detach().cpu()
            ph = (ph.sum(1) * (w / w.sum())[:, None, None]).sum(0)
        return self.experiment.in_dataset_frame(ph, shape).numpy()

    def inspect(self, dataset=None, path=None, truth: np.ndarray | None = None, metrics: dict | None = None):
        """Figure of the current state over the scanned field (phase, amplitude, diffractogram, loss, probe
        amplitude and phase, moved positions; E_φ / FRC against ``truth`` or the dataset's own ground truth);
        PNG if ``path`` (:func:`phasestem.recon.figures.plot_model`).

        Without ``path`` (interactive use, e.g. once per epoch in the optimisation loop as in CDTools) every call
        redraws the same figure while it is open, instead of opening a new one; with ``path`` a new figure is
        made, written and returned (the caller closes it)."""
        from .figures import inspect_model

        return inspect_model(self, dataset, path, truth, metrics)

    def compare(self, dataset=None, truth: np.ndarray | None = None, path=None, metrics: dict | None = None):
        """Measured vs modelled patterns and (when known) reconstructed vs true phase with E_φ / FRC; PNG if
        ``path`` (:func:`phasestem.recon.figures.plot_compare`)."""
        from .figures import plot_compare

        return plot_compare(self, dataset=dataset, truth=truth, path=path, metrics=metrics)

    def save_results(self, path_or_dataset=None, config_text: str | None = None, metrics: dict | None = None,
                     provenance: list | None = None):
        """With a path (str or ``Path``): write the results HDF5 (see :mod:`phasestem.recon.results`) atomically and
        return the path. With a dataset or nothing (CDTools' ``model.save_results(dataset)``): return the results
        as a plain dict of numpy arrays and numbers (the keys of :func:`~phasestem.recon.results.load_results`),
        ready for ``pickle.dump`` or ``np.savez``. ``provenance``: the run's settings and their sources
        (:class:`phasestem.base.provenance.Setting` rows), written to ``provenance/``."""
        from .results import results_dict, save_results

        if isinstance(path_or_dataset, str | Path):
            return save_results(self, path_or_dataset, config_text=config_text, metrics=metrics,
                                provenance=provenance)
        return results_dict(self, metrics=metrics)

    # ---- per-epoch history -------------------------------------------------------------
    epoch = property(lambda self: self.history.epoch, doc="completed epochs (the history's)")
    loss_history = property(lambda self: self.history.losses, doc="one record per epoch (the history's)")

    def geometry_arrays(self) -> dict[str, np.ndarray]:
        """Per-epoch history as arrays: ``epoch`` (E,), ``slice_thickness`` (E,) Å, ``tilt`` (E, 2) or (E, N, 2) mrad
        (epochs up to :attr:`epoch`, one row each)."""
        rows = [g for g in self.history.geometry if int(g["epoch"]) <= self.epoch]
        if not rows:
            return {"epoch": np.zeros(0, np.int64), "slice_thickness": np.zeros(0),
                    "tilt": np.zeros((0, *self.tilt.shape))}
        return {"epoch": np.array([int(g["epoch"]) for g in rows]),
                "slice_thickness": np.array([float(g["slice_thickness"]) for g in rows]),
                "tilt": np.stack([g["tilt"].numpy() for g in rows]).astype(np.float64)}

    # ---- checkpoints -------------------------------------------------------------------
    def state_for_checkpoint(self) -> dict:
        return {"params": {k: v.detach().clone() for k, v in self.state_dict().items()}, **self.history.to_checkpoint(),
                "schedules": {k: [-1.0 if s.lr is None else s.lr, s.start, -1 if s.end is None else s.end]
                              for k, s in self.schedules.items()}}

    def load_checkpoint_state(self, state: dict) -> None:
        self.load_state_dict(state["params"])
        self.history = RunHistory.from_checkpoint(state)
        for k, (lr, start, end) in state["schedules"].items():
            self.schedules[k] = ParamSchedule(lr=None if float(lr) < 0 else float(lr), start=int(start),
                                              end=None if int(end) < 0 else int(end))
