"""Every phasestem figure: one style, one home.

* :mod:`.core` — the house style, scale bars, colour bars, images in physical units, log-scaled patterns and
  the atomic PNG writer;
* :mod:`.panels` — probe (real space and aperture plane), diffractogram, loss history, FRC, figures of merit;
* :mod:`.dataset` — the first look at a 4D-STEM scan (``phasestem inspect``), with the pattern browser;
* :mod:`.recon` — ``reconstruction.png`` and ``compare.png`` from plain arrays;
* :mod:`.simulation` — simulated data, phase images side by side, one phase image with its diffractogram.
* :mod:`.restoration` — ``phasestem restore``'s figure: input, restoration, difference and change / σ.

The calibration figures (:mod:`phasestem.calibrate.figures`), the reconstruction's
(:mod:`phasestem.recon.figures`) and the learned route's gather their numbers and draw with these.
"""
from .core import (
                   CMAPS,
                   STYLE,
                   add_colorbar,
                   add_scalebar,
                   draw_disk,
                   log_norm,
                   nice_length,
                   pyplot,
                   save_figure,
                   save_if_asked,
                   scalebars,
                   show_image,
                   show_pattern,
                   styled,
)
from .dataset import inspect_dataset
from .panels import diffractogram_panel, frc_panel, loss_panel, metrics_text, probe_panels
from .recon import compare_figure, reconstruction_figure
from .simulation import examples_figure, phase_figure, phase_panels, simulation_overview

__all__ = ["CMAPS", "STYLE", "add_colorbar", "add_scalebar", "compare_figure", "diffractogram_panel", "draw_disk",
           "examples_figure",
           "frc_panel", "inspect_dataset", "log_norm", "loss_panel", "metrics_text", "nice_length", "phase_figure",
           "phase_panels", "probe_panels", "reconstruction_figure", "save_figure", "scalebars", "show_image",
           "show_pattern", "simulation_overview", "styled", "pyplot", "save_if_asked"]
