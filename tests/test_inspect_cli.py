"""phasestem inspect: a first look at any file without calibrations (disk fit, virtual images, centre of mass),
calibrations from the file or the flags, output in the working folder, the click-a-position browser."""
import re

import h5py
import numpy as np
import pytest

import phasestem
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


def _disk_frames(n: int, shape=(32, 32), centre=(17.3, 14.6), radius=6.5, dose=3000.0, seed=1) -> np.ndarray:
    """(n, H, W) uint16 Poisson counts of a bright-field disk (sub-pixel edge) on a weak background."""
    H, W = shape
    sub = 8  # supersampling of the edge
    yy, xx = (np.mgrid[0 : H * sub, 0 : W * sub] + 0.5) / sub - 0.5
    disk = (np.hypot(yy - centre[0], xx - centre[1]) <= radius).reshape(H, sub, W, sub).mean((1, 3))
    lam = dose * disk / disk.sum() + 0.05
    return np.random.default_rng(seed).poisson(lam, size=(n, H, W)).astype(np.uint16)


def test_inspect_mib_without_calibration_draws_the_fitted_disk_in_the_working_folder(tmp_path, capsys, monkeypatch):
    """The first own-data step of the README: a Merlin file and nothing else. The disk is fitted (centre and radius
    near the truth), the figure goes to the working directory or --out, never beside the (read-only) input."""
    pytest.importorskip("rsciio")
    from detector_files import mib_hdr, write_mib

    truth_centre, truth_radius = (17.3, 14.6), 6.5
    data = tmp_path / "data"
    data.mkdir()
    frames = _disk_frames(12, centre=truth_centre, radius=truth_radius)
    write_mib(data / "scan.mib", frames[:, ::-1], mib_hdr(12, 4))  # rsciio flips Merlin frames up-down on reading
    data.chmod(0o555)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    try:
        assert main(["inspect", str(data / "scan.mib")]) == 0
        out = capsys.readouterr().out
        assert main(["inspect", str(data / "scan.mib"), "--out", "looks", "--at", "1", "2"]) == 0
    finally:
        data.chmod(0o755)
    assert sorted(p.name for p in data.iterdir()) == ["scan.hdr", "scan.mib"]  # nothing beside the input
    assert (work / "scan_inspect.png").stat().st_size > 1000
    assert (work / "looks" / "scan_inspect.png").stat().st_size > 1000
    assert "3×4 scan, step unknown" in out and "energy unknown" in out
    m = re.search(r"centre \(y, x\) = \(([\d.]+), ([\d.]+)\) px, radius ([\d.]+) px", out)
    assert m, out
    assert abs(float(m[1]) - truth_centre[0]) < 0.1 and abs(float(m[2]) - truth_centre[1]) < 0.1
    assert abs(float(m[3]) - truth_radius) < 0.15

    # the figure: the disk drawn where it was fitted, pixels as units, virtual images over scan indices
    from phasestem import io

    ds = io.load(data / "scan.mib", require_calibration=False)
    assert ds.metadata["uncalibrated"] == ["energy", "scan_step"]
    fig = phasestem.inspect(ds)
    disk = [p for p in fig.axes[0].patches if p.get_gid() == "disk"]
    assert len(disk) == 1
    assert np.allclose(disk[0].center[::-1], truth_centre, atol=0.1) and abs(disk[0].radius - truth_radius) < 0.15
    assert fig.axes[0].get_xlabel() == "detector x (px)" and fig.axes[1].get_xlabel() == "scan x (index)"
    titles = [a.get_title() for a in fig.axes[:6]]
    assert titles[1].startswith("virtual bright field") and titles[2].startswith("virtual annular dark field")
    assert titles[3].startswith("centre of mass x") and titles[4].startswith("centre of mass y")


def test_inspect_help_lists_the_detector_formats_and_calibrates_reader_flags(capsys):
    with pytest.raises(SystemExit):
        main(["inspect", "--help"])
    text = capsys.readouterr().out
    for word in (".mib", ".dm4", ".xml", "_master.h5", "--format", "--reader-option", "--semiangle", "--out"):
        assert word in text, word


def test_inspect_with_calibrations_uses_angstrom_and_mrad(tmp_path, capsys):
    """Known step and semi-angle: scale bars in Å over the scan, the detector in mrad from the fitted disk."""
    from phasestem.dataset import FourDSTEM
    from phasestem.plot import scalebars

    p = _disk_frames(16, radius=6.0).reshape(4, 4, 32, 32).astype(np.float32)
    fig = phasestem.inspect(FourDSTEM(p, energy=300e3, scan_step=(0.5, 0.5), semiangle=12.0))
    assert fig.first_look.pixel_mrad == pytest.approx(12.0 / fig.first_look.radius)
    assert [b.txt_label.get_text() for b in scalebars(fig.axes[1])] == ["0.5 Å"]
    assert scalebars(fig.axes[0])[0].txt_label.get_text().endswith("mrad")
    assert "mrad" in fig.axes[1].get_title()


def test_dataset_inspect_click_shows_the_pattern_of_that_position():
    """A click on a scan image puts that position's pattern in the pattern panel (interactive in a notebook)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backend_bases import MouseEvent

    from phasestem.dataset import FourDSTEM

    p = np.zeros((4, 5, 16, 16), np.float32)
    p[..., 8, 8] = 1.0
    p[2, 3, 3, 12] = 7.0  # one position with a bright off-axis pixel
    fig = phasestem.inspect(FourDSTEM(p, energy=300e3, scan_step=(1.0, 1.0), angular_sampling=(2.0, 2.0),
                                              semiangle=4.0))
    bf_ax, pattern_ax = fig.axes[1], fig.axes[5]
    x, y = bf_ax.transData.transform((3, 2))  # (col, row) → display pixels
    fig.canvas.callbacks.process("button_press_event", MouseEvent("button_press_event", fig.canvas, x, y, 1))
    shown = pattern_ax.images[0].get_array()
    assert pattern_ax.get_title() == "pattern at scan (2, 3) (log)"
    assert np.unravel_index(np.argmax(shown), shown.shape) == (3, 12)
    fig.select_position((0, 0))
    assert pattern_ax.get_title() == "pattern at scan (0, 0) (log)"


def test_one_table_of_extensions_feeds_the_readers_the_help_and_the_files_page(capsys):
    from phasestem import io
    from phasestem.serve.endpoints import KINDS

    with pytest.raises(SystemExit):
        main(["inspect", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for ext, module in io.EXTENSIONS.items():
        assert io.reader_module(f"scan{ext.upper()}").__name__ == f"phasestem.io.{module}"
        assert KINDS[ext] == "data", ext
        assert ext in help_text, ext
    assert io.reader_module("run_master.h5").__name__ == "phasestem.io.dectris" and "*_master.h5" in help_text
