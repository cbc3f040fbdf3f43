"""The settings of the scheduled constraints (:mod:`phasestem.recon.constraints` applies them): each one's schedule
``{start_iter, step, end_iter}`` and fields, as the parameter file's ``constraints`` section takes them."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ...base.configfile import StrictModel


class Schedule(StrictModel):
    """When a constraint runs: epochs start_iter, start_iter + step, … ≤ end_iter (1-based)."""

    enabled: bool = Field(False, description="apply this constraint")
    start_iter: int = Field(1, ge=1, description="first epoch (1-based) at which the constraint runs")
    step: int = Field(1, ge=1, description="run every `step` epochs (legacy name: freq)")
    end_iter: int | None = Field(None, description="last epoch at which it runs (null: to the end)")

    @model_validator(mode="before")
    @classmethod
    def _legacy_freq(cls, data):
        if isinstance(data, dict) and "freq" in data:
            data = dict(data)
            freq = data.pop("freq")
            if "step" not in data and freq is not None:
                data["step"] = freq
        return data

    def due(self, epoch: int) -> bool:
        if not self.enabled or epoch < self.start_iter or (self.end_iter is not None and epoch > self.end_iter):
            return False
        return (epoch - self.start_iter) % self.step == 0


class ProbeMask(Schedule):
    """Fourier probe mask."""

    radius_mrad: float = Field(30.0, gt=0, description="keep probe spectrum within this semi-angle (mrad)")
    width_mrad: float = Field(1.0, ge=0, description="soft edge width (mrad)")


class AutoSchedule(Schedule):
    """A schedule whose ``enabled`` (declared by each subclass) may be 'auto': it runs once a rule of the engine's
    sets it true for the run."""

    def due(self, epoch: int) -> bool:
        return self.enabled is True and super().due(epoch)

    def scheduled(self, epoch: int) -> bool:  # in the schedule, whatever `enabled` says ('auto' decides there)
        return super().due(epoch)


class ObjClamp(AutoSchedule):
    """Object amplitude / phase clamps, every slice: a specimen's potential is positive, so is each slice's phase
    shift, and it absorbs rather than amplifies. 'auto' decides after the first epoch
    (:func:`~phasestem.recon.crystal.obj_clamp_rule`): on for a multislice reconstruction of a crystal."""

    enabled: bool | Literal["auto"] = Field(
        "auto", description="true, false or auto: decided after the first epoch, on for a multislice reconstruction "
        "of a crystal (crystal.obj_clamp_rule: Bragg peaks hold ≥ 30 % of the projected phase's spectral power), "
        "whose columns otherwise settle in a wrong minimum of wrapped phase; the run log says which and why")
    amp_min: float = Field(0.0, description="lowest object amplitude")
    amp_max: float = Field(1.0, description="highest object amplitude")
    phase_min: float | None = Field(0.0, description="lowest object phase (rad; 0: the flat start's, the vacuum "
                                    "level); null: no limit")
    phase_max: float | None = Field(None, description="highest object phase (rad); null: no limit")


#: the blur's σ in object pixels where ``obj_blur.enabled`` is true and no σ is given
BLUR_SIGMA_PX = 0.5


class ObjBlur(AutoSchedule):
    """Lateral Gaussian blur of every slice; 'auto' decides its σ from the data's dose when a run starts
    (:func:`~phasestem.recon.dose_regularisation.obj_blur_rule`) and whether it applies from the first epoch's object
    (:func:`~phasestem.recon.dose_regularisation.obj_blur_crystal_rule`)."""

    enabled: bool | Literal["auto"] = Field(
        "auto", description="true, false or auto: on for counted data (Poisson noise) every epoch, σ from the dose per "
        "area: 0.4 px of 0.2 Å at 1e5 e⁻/Å², 0.8 at 1e3 (dose_regularisation.obj_blur_rule), unless the first "
        "epoch's object is a crystal (Bragg peaks hold ≥ 10 % of its spectral power: a blur takes its columns' "
        "detail; dose_regularisation.obj_blur_crystal_rule); off for noise-free data and above 1.2e5 e⁻/Å² (1e5, the "
        "highest dose it was chosen on, and the scatter of measured counts); the run log says which and why")
    sigma: float | None = Field(None, gt=0, description="Gaussian standard deviation in object pixels; null: the "
                                "dose rule's with enabled: auto, 0.5 px with enabled: true (a σ given here replaces "
                                "the rule's)")

    def sigma_px(self) -> float:
        """The σ in object pixels the blur applies: the one given or decided, else :data:`BLUR_SIGMA_PX`."""
        return BLUR_SIGMA_PX if self.sigma is None else self.sigma


class ObjBand(AutoSchedule):
    """The object held to its grid's anti-aliased band (2/3 of Nyquist, raised-cosine edge), every slice;
    'auto' decides when a run starts (:func:`~phasestem.recon.object_band.obj_band_rule`): on where the object is on
    a grid finer than the detector's (``model.upsampling`` > 1)."""

    enabled: bool | Literal["auto"] = Field(
        "auto", description="true, false or auto: on where model.upsampling > 1 (the object on pixels finer than "
        "the detector's λ/(N·Δk)), every epoch: beyond that band the detector sees the object only weakly (where "
        "the probe's disks barely overlap, and in its dark field's corners), and without it a run of uncounted data "
        "fills those frequencies with what the model cannot explain (object_band.obj_band_rule); the run log says "
        "which and why")


class KzFilter(Schedule):
    """Missing-wedge (k_z) filter."""

    beta: float = Field(1.0, gt=0, description="strength β of the wedge W = 1 − 2/π·atan(β²k_z²/(k_r²+ε))")
    alpha: float = Field(1.0, ge=0, le=1, description="mix: x ← (1−α)·x + α·filtered(x)")
    obj_type: str = Field("both", pattern="^(both|phase|amplitude)$", description="filter phase, amplitude or both")


class RzFilter(Schedule):
    """Real-space Gaussian depth filter."""

    sigma: float = Field(10.0, gt=0, description="Gaussian standard deviation along z in Å")


class TiltSmooth(Schedule):
    """Tilt smoothing over neighbouring positions."""

    sigma: float = Field(2.0, gt=0, description="Gaussian standard deviation over the scan in Å")


class PositionLimit(Schedule):
    """Position-shift limit."""

    max_shift: float = Field(2.0, gt=0, description="largest allowed correction of a position in Å")


class TotalVariation(Schedule):
    """Total-variation (TV) regularisation of the object, as a scheduled proximal-style step."""

    weight: float = Field(0.01, gt=0, description="step size per iteration (rad for the phase): how far each "
                          "iteration moves a pixel against the TV gradient (whose entries are of order 1)")
    n_iter: int = Field(1, ge=1, le=100, description="gradient steps per application")
    eps: float = Field(1e-3, gt=0, description="smoothing ε of √(|∇x|² + ε²) (same units as the object)")
    obj_type: str = Field("phase", pattern="^(both|phase|amplitude)$",
                          description="regularise phase, amplitude or both")


class ObjRamp(Schedule):
    """Phase-ramp transfer from the object to the probe (see :func:`transfer_phase_ramp`)."""

    smooth: float = Field(1.0, gt=0, description="low-pass σ of the phase before the fit, in scan steps")


class ObjShear(AutoSchedule):
    """Slice-shear transfer from the object to the specimen tilt
    (see :func:`~phasestem.recon.shear.transfer_slice_shear`)."""

    enabled: bool | Literal["auto"] = Field(
        "auto", description="true, false or auto: decided where it is first due, on for a mistilted crystal "
        "(shear.obj_shear_rule), or on at once where run.coarse_start: auto found one and straightened it; the run "
        "log says which and why")
    start_iter: int = Field(2, ge=1, description="first epoch (1-based) at which the constraint runs (and 'auto' "
                            "decides): the first epoch's object is the start the others correct")
    min_coherence: float = Field(0.3, ge=0, le=1, description="move nothing unless the slices, once aligned, "
                                 "correlate at least this much on average (a crystal's columns: 0.5–0.9; "
                                 "independent atoms per slice: near 0)")
    max_walk: float = Field(0.5, gt=0, description="largest shear searched, px per slice")


class ProbeAperture(AutoSchedule):
    """The probe's spectrum held to the nominal aperture (:func:`hold_probe_aperture`); 'auto' decides from the data
    when a run starts (:func:`~phasestem.recon.aperture_rule.probe_aperture_rule`)."""

    enabled: bool | Literal["auto"] = Field(
        "auto", description="true, false or auto: on where the mean pattern shows a strong scatterer (more than 1 % "
        "of its intensity beyond 1.1 × the bright-field disk) and the data's disk edge, at least 15 px in radius, is "
        "within 1.5 % of the nominal aperture's; the run log says which and why")


class Constraints(StrictModel):
    """All constraints with their schedules (every one is off by default, but probe_aperture, obj_clamp, obj_blur,
    obj_band and obj_shear: auto)."""

    ortho_probe: Schedule = Field(default_factory=Schedule, description="probe-mode orthogonalisation")
    probe_mask: ProbeMask = Field(default_factory=ProbeMask, description="Fourier probe mask")
    probe_aperture: ProbeAperture = Field(
        default_factory=ProbeAperture, description="hold the probe's spectrum amplitude (probe modes summed) to the "
        "nominal probe's, total intensity kept: the probe refines its aberrations only, in the epochs it is "
        "refined. For strong multislice specimens where the free probe takes up the object's scattering; it needs "
        "the semi-angle to about 1 % (hold_probe_aperture, probe_aperture_rule)")
    obj_clamp: ObjClamp = Field(default_factory=ObjClamp, description="object amplitude/phase clamps: the slices' "
                                "phase ≥ 0 and amplitude ≤ 1 by default, on ('auto') for a multislice crystal")
    obj_blur: ObjBlur = Field(default_factory=ObjBlur, description="lateral object blur; 'auto' (the default): on "
                              "for counted data but crystals, its σ from the dose (dose_regularisation)")
    obj_band: ObjBand = Field(default_factory=ObjBand, description="hold the object to its grid's anti-aliased "
                              "band; 'auto' (the default): on where the object's grid is finer than the detector's")
    kz_filter: KzFilter = Field(default_factory=KzFilter, description="k_z missing-wedge filter")
    rz_filter: RzFilter = Field(default_factory=RzFilter, description="r_z real-space Gaussian depth filter")
    tilt_smooth: TiltSmooth = Field(default_factory=TiltSmooth, description="tilt smoothing")
    position_limit: PositionLimit = Field(default_factory=PositionLimit, description="position-shift limits")
    position_affine: Schedule = Field(default_factory=Schedule, description="remove the affine part (shift, scale, "
                                      "rotation, shear) of the position corrections: the data cannot tell it from "
                                      "a warp of the object or a calibration error, and it takes up model mismatch; "
                                      "the local errors stay. On with --auto's position refinement")
    tv: TotalVariation = Field(default_factory=TotalVariation, description="total-variation regularisation")
    obj_ramp: ObjRamp = Field(default_factory=ObjRamp, description="move the object's phase ramp over the scanned "
                              "area into the probe as a tilt (same intensities: the data cannot tell them apart). "
                              "On in the files `phasestem calibrate` and `--auto` write, where the pattern centre is "
                              "only as good as its fit; off by default, where the untilted nominal probe decides")
    obj_shear: ObjShear = Field(default_factory=ObjShear, description="straighten the object's slices and move "
                                "their shear into the specimen tilt (same intensities: a global tilt and a shear of "
                                "the slices by depth × tan θ cannot be told apart). For crystals near a zone axis, "
                                "whose columns are straight in the specimen's frame; 'auto' (the default) turns it "
                                "on for mistilted crystals only: without columns the reconstruction's depth blur "
                                "still correlates neighbouring slices and the shear it measures drives the tilt "
                                "astray (benchmarks/independent/README.md, 'A mistilted crystal')")

