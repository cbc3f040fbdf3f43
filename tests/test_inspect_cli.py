"""phasestem inspect on a generic HDF5 file: calibrations from root attributes; errors name the CLI flags."""
import h5py
import numpy as np

from phasestem.cli import main


def _file(path, **attrs):
    with h5py.File(path, "w") as f:
        f["dp"] = np.random.default_rng(0).random((4, 4, 16, 16), dtype=np.float32)
        f.attrs.update(attrs)
    return path


def test_inspect_reads_energy_and_step_from_root_attributes(tmp_path, capsys):
    path = _file(tmp_path / "scan.h5", energy=300e3, scan_step=0.5, angular_sampling=1.0)
    assert main(["inspect", str(path), "--out", str(tmp_path / "a.png")]) == 0
    out = capsys.readouterr().out
    assert "step 0.5×0.5 Å" in out and "300 keV" in out
    assert (tmp_path / "a.png").stat().st_size > 0
    # the command line wins over the file
    assert main(["inspect", str(path), "--scan-step", "0.25", "--out", str(tmp_path / "b.png")]) == 0
    assert "step 0.25×0.25 Å" in capsys.readouterr().out


def test_inspect_without_calibrations_names_the_cli_flag(tmp_path, capsys):
    path = _file(tmp_path / "bare.h5")
    assert main(["inspect", str(path), "--out", str(tmp_path / "c.png")]) == 1
    err = capsys.readouterr().err
    assert "--energy" in err and len(err.strip().splitlines()) == 1
    assert main(["inspect", str(path), "--energy", "300e3", "--out", str(tmp_path / "c.png")]) == 1
    assert "--scan-step" in capsys.readouterr().err


def test_dataset_inspect_click_shows_the_pattern_of_that_position():
    """A click on a scan image puts that position's pattern in the pattern panel (interactive in a notebook)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backend_bases import MouseEvent

    from phasestem.dataset import FourDSTEM

    p = np.zeros((4, 5, 16, 16), np.float32)
    p[..., 8, 8] = 1.0
    p[2, 3, 3, 12] = 7.0  # one position with a bright off-axis pixel
    fig = FourDSTEM(p, energy=300e3, scan_step=(1.0, 1.0), angular_sampling=(2.0, 2.0), semiangle=4.0).inspect()
    bf_ax, pattern_ax = fig.axes[1], fig.axes[5]
    x, y = bf_ax.transData.transform((3, 2))  # (col, row) → display pixels
    fig.canvas.callbacks.process("button_press_event", MouseEvent("button_press_event", fig.canvas, x, y, 1))
    shown = pattern_ax.images[0].get_array()
    assert pattern_ax.get_title() == "pattern at scan (2, 3) (log)"
    assert np.unravel_index(np.argmax(shown), shown.shape) == (3, 12)
    fig.select_position((0, 0))
    assert pattern_ax.get_title() == "pattern at scan (0, 0) (log)"
