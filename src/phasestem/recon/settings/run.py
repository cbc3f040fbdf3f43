"""The ``run`` section of a reconstruction's parameter file: the solver and how to run it.

:func:`phasestem.recon.engine.optimize` takes it as validated; the rest of the parameter file is
:mod:`phasestem.recon.params`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from ...base.configfile import ConfigPath, FiniteModel


class RunConfig(FiniteModel):
    """How to run."""

    optimizer: Literal["lsq", "adam", "sgd", "lbfgs"] = Field(
        "lsq", description="lsq: illumination-preconditioned least-squares steps for object and probe (Adam for "
        "tilt and thickness, a per-position Adam for positions); or adam, sgd, lbfgs")
    precondition_reg: float = Field(0.1, gt=0, le=10, description="lsq: relative floor of the curvature (dim pixels "
                                    "step at most 1/reg of a bright pixel's step)")
    precondition_batches: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        "auto", description="lsq: add the whole scan's curvature / this number to every step's, so that an epoch "
        "takes about this many Gauss–Newton steps of the whole data whatever the batch size (noisy counts: fewer, "
        "better-averaged steps); null: each batch's own curvature; auto: 16 when the loss has a Poisson term "
        "(counted data), else null")
    check_optics: bool = Field(True, description="before the run, fit the scan centre briefly with C10 and −C10 and "
                               "warn when the flipped defocus sign fits the data far better")
    divergence_factor: float = Field(10.0, ge=0, description="stop (exit 1, last good state kept) when an epoch's "
                                     "loss exceeds this many times the best so far (0: only NaN/Inf)")
    backoff_factor: float = Field(1.5, ge=0, description="lsq/adam/sgd: when an epoch's loss exceeds this many times "
                                  "the best so far, restore the best epoch's state and halve every learning rate "
                                  "(at most 4 times in a run; a warning line each time), before the divergence check "
                                  "would stop the run; 0: off")
    holdout: Annotated[float, Field(ge=0, lt=0.5)] | Literal["auto"] = Field(
        0.0, description="fraction of the scan positions kept out of the fit to watch it start fitting noise: their "
        "loss after each epoch (log column 'heldout'); the run ends on the epoch where it was lowest and stops after "
        "run.holdout_patience epochs without a new lowest. A predictive check, not the phase error: on the "
        "benchmark's low-dose cases it kept the peak, on a small 1e3 e⁻ scan it stopped at epoch 1 while the phase "
        "still improved (phasestem.recon.holdout). auto: 0.05 for counted data (a Poisson term) of at most 3e4 counts "
        "per pattern and at least 400 positions, else 0; 0: off (default); one process only")
    holdout_counts: float = Field(
        0.0, ge=0, lt=0.5, description="share q of every pattern's counts held out of the fit by a binomial split "
        "(held ~ Binomial(counts, q), drawn per scan row with run.seed; the rest is fitted, so every position stays "
        "in the fit at (1 − q) × the counts): after each epoch the held counts' Poisson deviance under the model is "
        "log column 'heldout'; the run returns the epoch where it was lowest and stops after run.holdout_patience "
        "epochs without a new lowest; with --prior they judge the prior's plain-AD twin instead, whose restoration "
        "stays the target once the twin's deviance rises (phasestem.recon.count_split). Whole counts of a Poisson "
        "detector only (gain or charge sharing correlate the parts), one process, not with run.holdout; 0: off "
        "(default)")
    holdout_patience: int = Field(3, ge=1, description="epochs without a new lowest held-out loss before the run "
                                  "stops (run.holdout, run.holdout_counts)")
    n_epochs: int = Field(20, ge=1, description="number of epochs (iterations over all patterns)")
    coarse_start: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="the first epochs of a fresh run on the detector's centre (the bright-field disk and a "
        "margin of 1.2 × the semi-angle) at the larger real-space pixel it gives, the object then resampled onto the "
        "full pixels (phasestem.recon.coarse; counted in n_epochs; about a quarter of the work per epoch). On a thick "
        "crystal it keeps the start out of wrapped minima (abTEM SrTiO3 and GaAs, 20–30 nm, on axis and mistilted: r "
        "at 20 +0.01 to +0.27); on mistilted specimens without a lattice it lost r (−0.04 to −0.10). auto (default): "
        "4 epochs for a multislice model of at least 10 nm, judged after the first: kept for a crystal, whose slices' "
        "shear, where they are sheared (a mistilt), first moves into the tilt (and obj_shear: auto turns on); dropped "
        "otherwise (the run goes on as without it, logged); N: N epochs, kept; 0: off")
    batch_size: int = Field(32, ge=1, description="patterns per mini-batch")
    batch_mode: Literal["random", "compact"] = Field("random", description="random or spatially compact batches")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    lr_scale: float = Field(1.0, gt=0, description="multiplies every learning rate")
    lr_decay: Literal["auto", "none", "cosine"] = Field(
        "auto", description="cosine: every learning rate falls to lr_final × its value over the run's epochs "
        "(--resume continues it), which keeps noisy data from being over-fitted late in a run; none: constant; auto "
        "(default): for counted data (a Poisson term in the data loss) the cosine over the first 20 epochs to "
        "lr_final, where the run ends (a longer run would go on fitting the noise; logged); without counts none for "
        "a strong scatterer (more than 1 % of the mean pattern beyond 1.1 × the disk), whose slices full steps fit "
        "further, unless its first epoch shows a crystal, and the cosine otherwise "
        "(phasestem.recon.decay_rule.resolve_lr_decay; logged)")
    lr_final: float = Field(0.1, gt=0, le=1, description="final learning-rate fraction of lr_decay: cosine")
    seed: int = Field(0, description="seed of the batch order, the held-out positions and the count split")
    compile: Literal["auto", "none", "compile", "cuda_graph"] = Field(
        "auto", description="the mini-batch step: auto: cuda_graph on a CUDA device in one process with the data "
        "on the device and a solver other than lbfgs (the eager step if the graph cannot be captured, with a "
        "warning), none elsewhere; none: eager (on a CPU compile is no faster: −6 % to +9 % per "
        "iteration); compile: the forward pass and loss through torch.compile (reduce-overhead on CUDA; the first "
        "batches of each size compile, seconds to a minute; on an H100 slower than eager, complex numbers are not "
        "fused); cuda_graph (CUDA only, lsq/adam/sgd, one process): forward, loss, backward and preconditioning "
        "replayed as one CUDA graph per batch size (captured again when the active parameters change), to save the "
        "kernel launches of small batches: on an H100 at batch 32, 2.3-5.6x faster per iteration than none")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, auto")
    out_dir: Annotated[Path, ConfigPath()] = Field(Path("recon_out"),
                                                   description="output folder (relative to the YAML file's folder)")
    checkpoint_every: int = Field(5, ge=0, description="write a checkpoint every N epochs (0: never)")
    figures_every: int = Field(0, ge=0, description="write a figure every N epochs (0: only at the end)")
    n_processes: int = Field(1, ge=1, description="data-parallel processes (torch.distributed, gloo on CPU)")
    cpu_threads: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="torch's CPU threads during the run (on the CPU; a GPU run is left as it is). auto "
        "(default): the cores of this process that other work (niced too) leaves free when the run starts, measured "
        "over 0.2 s (a core more than half busy counts as taken), at least 1 and at most torch's own count; N: N "
        "threads. An OMP_NUM_THREADS in the environment wins over both; the run log says which and why "
        "(phasestem.base.threads). On a machine busy at start the phasestem command also lets idle OpenMP threads "
        "sleep (OMP_WAIT_POLICY=PASSIVE unless the environment names a policy): with one of 2 cores busy, spinning "
        "threads took about 3x the time of passive ones (benchmarks/threads/results.md)")
    progress: bool = Field(True, description="show a progress bar")
    uncertainty: Literal["auto", "fisher", "off"] = Field(
        "auto", description="after the run, the phase's standard deviation per pixel (results.h5 uncertainty/, "
        "uncertainty.png; phasestem.recon.uncertainty), under Poisson counts when the data are counts, under "
        "Gaussian noise when run.noise_sigma is given, else skipped with a log line. auto: the Fisher information's "
        "map scaled by a parametric bootstrap of the scan's central 16 x 16 positions reconstructed by this run's "
        "recipe three times, shaped as the power of the Fisher map their spread follows "
        "(phasestem.recon.sigma_bootstrap; 3 x 256 positions' worth of the run's time); fisher: "
        "the Fisher map alone (fast, but 1.6-3.3 x too small on a defocused probe); off: not computed")
    noise_sigma: float | None = Field(
        None, gt=0, description="Gaussian noise of the patterns, counts (the data's units) per detector pixel, for "
                                "data that are not counts: the noise model of run.uncertainty")
    ptyrad_loss: bool = Field(False, description="after every epoch also log PtyRAD's normalised Gaussian loss "
                              "√⟨(I^p − D^p)²⟩/⟨D^p⟩ over all patterns as loss_ptyrad (one more forward pass "
                              "per epoch, no gradients: about a third of an epoch's time)")
    data_in_memory: Literal["auto", True, False] = Field(
        "auto", description="true: every measured pattern on the device (two float32 copies: 8 bytes per pixel per "
        "pattern); false: patterns streamed from the data file per mini-batch (a chunked pass for the mean "
        "pattern, then each batch read in index order into host memory and copied to the device while the previous "
        "batch is computed); auto: stream when the two copies would exceed run.memory_budget_gb or half the free GPU "
        "memory")
    memory_budget_gb: float | None = Field(
        None, gt=0, description="memory (GiB, 2^30 bytes) the measured patterns may take: auto streams above it, and "
        "streaming holds at most about this much of pattern buffers at once (keep it above 8 × run.batch_size "
        "patterns); null: half the host memory available when the run starts")

    @field_validator("data_in_memory", mode="before")
    @classmethod
    def _in_memory(cls, v):
        if isinstance(v, bool):
            return v
        text = str(v).strip().lower() if isinstance(v, str) else None
        if text in ("auto", "true", "false"):
            return {"auto": "auto", "true": True, "false": False}[text]
        raise ValueError("must be auto, true or false")
