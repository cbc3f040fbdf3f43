"""``phasestem demo --quick``: every stage runs and the report, figures and figures of merit are written."""
from __future__ import annotations

import math

import pytest
import yaml

from phasestem.demo import run_demo

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
