"""``phasestem demo --quick``: every stage runs and the report, figures and figures of merit are written."""
from __future__ import annotations

import math

import pytest
import yaml

from phasestem.cli.demo import run_demo

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: two threads are slower on a shared machine

ROUTES = ("AD ptychography", "learned (end2end)", "learned + Phaseformer", "hybrid (AD from learned)")


def test_quick_demo_writes_report_figures_and_finite_metrics(tmp_path):
    report = run_demo(tmp_path / "demo", quick=True)
    out = report.parent
    assert report == out / "report.md" and report.is_file()
    text = report.read_text()
    for png in ("routes.png", "hybrid.png", "simulation.png", "inspect.png"):
        assert (out / png).stat().st_size > 1000, png
    for name in ROUTES:
        assert f"| {name} |" in text
    assert "Hybrid route" in text and "learned start: epochs" in text
    fom = yaml.safe_load((out / "figures_of_merit.yaml").read_text())
    for name in ROUTES:
        m = fom["routes"][name]
        for key in ("psnr", "ssim", "phase_error"):
            assert math.isfinite(m[key]), (name, key, m[key])
        assert 0 <= m["phase_error"] < 5
        assert fom["route_seconds"][name] > 0
    # AD from a flat start improves on the flat object (E_φ of a flat start is ≈ the truth's relative spread)
    assert fom["flat_errors"][-1] < fom["flat_errors"][0]
    assert len(fom["flat_errors"]) == len(fom["hybrid_errors"])
    assert fom["hybrid"]["flat_epochs"] <= len(fom["flat_errors"]) - 1
    assert fom["solver"] == "lsq" and "the `lsq` solver (phasestem's default)" in text


def test_quick_demo_without_the_learned_routes_on_the_cpu(tmp_path, capsys):
    """``phasestem demo --quick --skip-learned --device cpu``: simulation and AD alone (no training folders, no
    learned row, no hybrid section), with the lsq solver (the default of ``phasestem reconstruct``)."""
    from phasestem.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--skip-learned", "--device", "cpu", "--out", str(out)]) == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    text = (out / "report.md").read_text()
    assert "| AD ptychography |" in text and "the `lsq` solver" in text
    for name in ROUTES[1:]:
        assert f"| {name} |" not in text
    assert "Hybrid route" not in text and "skipped (`--skip-learned`)" in text
    assert not (out / "runs").exists() and not (out / "data" / "train").exists() and not (out / "hybrid.png").exists()
    fom = yaml.safe_load((out / "figures_of_merit.yaml").read_text())
    assert list(fom["routes"]) == ["AD ptychography"] and fom["device"] == "cpu" and fom["solver"] == "lsq"
    assert fom["flat_errors"][-1] < fom["flat_errors"][0]
    assert (out / "routes.png").stat().st_size > 1000


def _fake_full_run(out):
    """The files a full demo leaves (names only: no demo is run)."""
    (out / "runs" / "end2end").mkdir(parents=True)
    (out / "data" / "train").mkdir(parents=True)
    for name in ("report.md", "figures_of_merit.yaml", "routes.png", "hybrid.png", "simulation.png", "inspect.png",
                 "runs/end2end/model.safetensors", "data/train/sim_0.h5"):
        (out / name).write_text("from the full run")


def test_a_folder_holding_another_run_is_refused_in_one_line(tmp_path):
    """``phasestem demo --skip-learned --out DIR`` after a full demo in DIR: refused, naming DIR (before: report.md
    rewritten, the full run's hybrid.png and runs/ left beside it)."""
    import subprocess
    import sys

    out = tmp_path / "demo"
    _fake_full_run(out)
    proc = subprocess.run([sys.executable, "-m", "phasestem.cli", "demo", "--skip-learned", "--quick", "--out",
                           str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"--out {out} holds another demo run (report.md" in proc.stderr and "--overwrite" in proc.stderr
    assert (out / "report.md").read_text() == "from the full run" and (out / "hybrid.png").exists()


def test_overwrite_clears_the_previous_run_first_and_keeps_other_files(tmp_path, monkeypatch):
    import phasestem.cli.demo as demo

    out = tmp_path / "demo"
    _fake_full_run(out)
    (out / "my_notes.txt").write_text("not the demo's")
    seen = {}

    def fake_run(folder, quick, cfg, device, learned=True):  # what the run finds when it starts
        seen["files"] = sorted(p.name for p in folder.iterdir())
        (folder / "report.md").write_text("new")
        return folder / "report.md"

    monkeypatch.setattr(demo, "_run_demo", fake_run)
    assert demo.run_demo(out, quick=True, learned=False, overwrite=True) == out / "report.md"
    assert seen["files"] == [".phasestem.lock", "my_notes.txt"], seen
    assert (out / "report.md").read_text() == "new" and not (out / "hybrid.png").exists()
    assert (out / "my_notes.txt").exists() and not (out / "runs").exists()


def test_the_report_table_rounds_as_routes_png(tmp_path):
    """Issue 64: report.md's table printed PSNR 23.46 and E_φ 0.046 where routes.png said 23.5 dB and 0.0457; both
    now write each figure of merit with the same digits."""
    import matplotlib.pyplot as plt
    import numpy as np

    from phasestem.cli.demo import DemoRecon, _write_report
    from phasestem.plot import phase_panels

    fom = {"AD ptychography": {"psnr": 23.456, "ssim": 0.912345, "phase_error": 0.045678}}
    report = _write_report(tmp_path, "a held-out sample", fom, {"AD ptychography": 1.23}, {"simulate": 0.5}, None,
                           False, DemoRecon())
    row = next(ln for ln in report.read_text().splitlines() if ln.startswith("| AD ptychography |"))
    assert row == "| AD ptychography | 23.5 | 0.912 | 0.0457 | 1.2 |", row
    image = np.random.default_rng(0).normal(size=(8, 8))
    fig = phase_panels({"truth": image, "AD ptychography": image}, metrics=fom)
    title = next(ax.get_title() for ax in fig.axes if ax.get_title().startswith("AD ptychography\n"))
    plt.close(fig)
    assert "E_φ = 0.0457" in title and "PSNR 23.5 dB" in title and "SSIM 0.912" in title, title
