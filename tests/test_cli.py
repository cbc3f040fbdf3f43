"""The command line: every sub-command has --help with an example; user errors are one actionable line."""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

import pytest

from phasestem.cli import build_parser, main


def _commands() -> list[tuple[str, ...]]:
    parser = build_parser()
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
                if nested:
                    out += [(name, n) for n in nested[0].choices]
                else:
                    out.append((name,))
    return out


COMMANDS = _commands()


def test_all_areas_registered():
    names = {c[0] for c in COMMANDS}
    assert {"simulate", "probe-extent", "inspect", "demo", "plan"} <= names
    assert {"reconstruct", "tune", "train", "predict", "evaluate", "embed", "refine", "serve"} <= names
    assert {("train", n) for n in ("patch", "stitch", "end2end", "autoencoder", "phaseformer")} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_exits_zero_and_shows_an_example(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    assert "example" in capsys.readouterr().out.lower()


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_user_error_is_one_actionable_line(command, tmp_path):
    missing = str(tmp_path / "missing.yaml")
    model = str(tmp_path / "no_model")
    args = {
        ("demo",): ["--out", str(tmp_path / "f.txt" / "x")],
        ("predict",): [missing, "--model", model],
        ("evaluate",): ["--model", model],
        ("embed",): [missing, "--model", model],
        ("refine",): [missing, "--model", model],
        ("restore",): [missing, "--model", model, "--out-file", str(tmp_path / "restored.h5")],
        ("make-pairs",): [missing],
        ("serve",): ["--root", missing, "--port", "0"],
    }.get(command, [missing])
    if command == ("demo",):
        (tmp_path / "f.txt").write_text("a file where a folder is needed")
    proc = subprocess.run([sys.executable, "-m", "phasestem.cli", *command, *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "WARNING" not in ln and "INFO" not in ln]
    assert len(lines) == 1, proc.stderr
    assert "error" in lines[0] and "Traceback" not in proc.stderr


def test_probe_extent_by_encircled_intensity_matches_the_airy_disk_and_sees_the_aberrated_halo(capsys):
    """An aberration-free probe holds 1 − J0(v)² − J1(v)² of its intensity within r, v = 2π α r / λ (the Airy
    disk); at the seed's 30 mrad and Cs 0.1 mm the 5 %-of-peak rule sees 3.7 Å of a probe whose intensity spreads
    over tens of Å."""
    from scipy.optimize import brentq
    from scipy.special import j0, j1

    from phasestem.physics.optics import make_probe, wavelength
    from phasestem.simulate.probe_extent import encircled_diameter

    lam, alpha, s = wavelength(300e3), 0.030, 0.01
    inten = make_probe((2048, 2048), (s, s), 300e3, 30.0, {}, on_band_limit="ignore").abs().square().double().numpy()
    for fraction in (0.5, 0.7, 0.8):
        v = brentq(lambda v, f=fraction: 1 - j0(v) ** 2 - j1(v) ** 2 - f, 0.01, 3.83)
        expected = 2 * v * lam / (2 * math.pi * alpha)
        got = encircled_diameter(inten, s, fraction)
        assert abs(got - expected) < 0.04 * expected, (fraction, got, expected)  # measured within 2.5 %
    seed = str(Path(__file__).resolve().parents[1] / "configs" / "simulate_seed.yaml")
    assert main(["probe-extent", seed, "--step", "2"]) == 0
    assert "3.71 Å across" in capsys.readouterr().out  # the seed's 76 px patches come from this
    assert main(["probe-extent", seed, "--step", "2", "--fraction", "0.9"]) == 0
    out = capsys.readouterr().out
    diameter = float(out.split("intensity: ")[1].split(" Å")[0])
    assert 30 < diameter < 60, out  # geometric halo radius Cs·α³ = 27 Å
