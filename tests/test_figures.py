"""The figures a microscopist publishes: reconstruction.png and compare.png over the scanned field with Å scale
bars, colour bars in rad, the probe's amplitude and phase, and E_φ / FRC when a ground truth is given; the probe
phase of simulation.png only where the probe is. Checked on the figures' artists, not on pixels."""
from __future__ import annotations

import numpy as np
import pytest

from phasestem.physics.experiment import scanned_field
from phasestem.plot import scalebars
from phasestem.recon import Ptychography
from phasestem.recon.synthetic import synthetic_scan

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run():
    import matplotlib

    matplotlib.use("Agg")
    ds = synthetic_scan(scan_shape=(6, 6), seed=3, max_phase=0.4)
    model = Ptychography.from_dataset(ds)
    list(model.Adam_optimize(2, ds, batch_size=12, progress=False))
    return ds, model


def _axes(fig, title_start: str):
    found = [a for a in fig.axes if a.get_title().startswith(title_start)]
    assert len(found) == 1, [a.get_title() for a in fig.axes]
    return found[0]


def _colorbar_labels(fig) -> list[str]:
    return [a.get_ylabel() for a in fig.axes if a.get_label() == "<colorbar>"]


def test_reconstruction_figure_scanned_field_scale_bar_probe_phase_and_truth_metrics(run):
    import matplotlib.pyplot as plt

    ds, model = run
    fig = model.inspect(ds)  # the dataset carries its ground truth
    try:
        phase_ax = _axes(fig, "object phase")
        fy, fx = scanned_field(model.positions, model.sampling, model.object_shape)
        shown = phase_ax.images[0].get_array().shape
        assert shown == (fy.stop - fy.start, fx.stop - fx.start)
        assert shown[0] < model.object_shape[0] and shown[1] < model.object_shape[1]  # not the padded object
        bars = scalebars(phase_ax)
        assert len(bars) == 1 and bars[0].txt_label.get_text().endswith(" Å")
        probe_phase = _axes(fig, "probe phase arg ψ(r)")
        assert scalebars(probe_phase) and np.ma.getmaskarray(probe_phase.images[0].get_array()).any()  # where |ψ| is
        _axes(fig, "probe amplitude |ψ(r)|")
        _axes(fig, "probe phase arg ψ(k)")
        _axes(fig, "diffractogram")
        _axes(fig, "convergence")
        _axes(fig, "FRC against the ground truth")
        assert {"phase (rad)", "amplitude", "|ψ| / peak"} <= set(_colorbar_labels(fig))
        title = fig._suptitle.get_text()
        assert "E_φ = " in title and "FRC (1/7) " in title and "scanned field" in title
        for ax in fig.axes:  # no empty panels
            assert ax.images or ax.lines or ax.collections or ax.get_label() == "<colorbar>", ax.get_title()
    finally:
        plt.close(fig)
    fig = model.inspect(None)  # no ground truth: no figures of merit, no FRC panel
    try:
        assert "E_φ" not in fig._suptitle.get_text()
        assert not [a for a in fig.axes if a.get_title().startswith("FRC")]
    finally:
        plt.close(fig)


def test_compare_figure_prints_metrics_and_labels_the_difference(run, tmp_path):
    import matplotlib.pyplot as plt

    ds, model = run
    fig = model.compare(ds, path=tmp_path / "compare.png")
    try:
        assert (tmp_path / "compare.png").stat().st_size > 1000
        diff = _axes(fig, "reconstruction − truth")
        assert scalebars(diff)
        assert "difference (rad)" in _colorbar_labels(fig)
        assert "E_φ = " in fig._suptitle.get_text()
        _axes(fig, "measured pattern")
        _axes(fig, "radial profiles")
    finally:
        plt.close(fig)


def test_simulation_overview_masks_the_probe_phase_and_scales_patterns_logarithmically():
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    from phasestem.physics.optics import make_probe, wavelength
    from phasestem.plot import simulation_overview

    ds = synthetic_scan(scan_shape=(3, 3), seed=1)
    probe = make_probe(ds.pattern_shape, ds.sampling, ds.energy, ds.semiangle, ds.aberrations)
    fig = simulation_overview(ds.truth["phase"], ds.sampling, probe, ds.sampling, wavelength(ds.energy),
                              np.asarray(ds.patterns), pattern_mrad=ds.angular_sampling[0], scan_box=(0, 0, 2, 2))
    try:
        masked = np.ma.getmaskarray(_axes(fig, "probe phase arg ψ(r)").images[0].get_array())
        amp = np.asarray(_axes(fig, "probe amplitude |ψ(r)|").images[0].get_array())
        assert masked[amp < 0.05].all() and not masked[amp > 0.2].any()
        pattern = _axes(fig, "pattern at scan (1, 1)").images[0]
        assert isinstance(pattern.norm, LogNorm) and pattern.norm.vmin < 1e-2 * pattern.norm.vmax
        assert scalebars(_axes(fig, "specimen phase"))[0].txt_label.get_text().endswith(" Å")
    finally:
        plt.close(fig)
