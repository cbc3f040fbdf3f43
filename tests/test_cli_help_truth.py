"""What the command line and README say about the command line is true (issue 64's L list): every option a help text
names exists where it is named, every file it names exists, and errors say what the user types."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import phasestem
from phasestem.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_reconstruct_help_names_only_its_own_options_and_calibrate_keeps_transpose():
    """``reconstruct --help`` recommended --transpose, which only calibrate has: the options its help names outside
    a quoted 'phasestem calibrate …' command are reconstruct's own."""
    commands = _subparsers(build_parser())
    recon, calib = commands["reconstruct"], commands["calibrate"]
    text = recon.format_help()
    assert "--transpose" not in _options(recon) and "--transpose" in _options(calib)
    own = re.sub(r"'phasestem calibrate [^']*'", "", text)
    own = "\n".join(line for line in own.splitlines() if not line.lstrip().startswith("torchrun"))
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", own))
    assert named <= _options(recon), named - _options(recon)
    assert "'phasestem calibrate FILE --rotation DEG --transpose yes'" in _flat(text)
    assert "(the transpose: --transpose, else no)" in _flat(calib.format_help())


def test_top_level_help_says_reconstruct_also_takes_a_data_file():
    text = _flat(build_parser().format_help())
    line = text[text.index("reconstruct "):text.index(" tune ")]
    assert "YAML parameter file" in line and "4D-STEM data file with --auto" in line, line


def test_demo_help_names_the_settings_file_where_it_is():
    """``demo --help`` named configs/demo.yaml, which is not in the repository: it is package data."""
    text = _flat(_subparsers(build_parser())["demo"].format_help())
    named = re.findall(r"[\w/]*configs/demo\.yaml", text)
    assert named == ["phasestem/configs/demo.yaml"], named
    assert (Path(phasestem.__file__).parent / "configs" / "demo.yaml").is_file()
    assert not (ROOT / "configs" / "demo.yaml").exists()


def test_readme_names_the_networks_train_offers():
    """README said five networks while ``phasestem train --help`` lists six (the pipeline's sentence now in
    docs/learned.md, README's API table names them)."""
    train = _subparsers(_subparsers(build_parser())["train"])
    readme = (ROOT / "README.md").read_text()
    count = {5: "five", 6: "six", 7: "seven"}[len(train)]
    learned = (ROOT / "docs" / "learned.md").read_text()
    listed = re.search(r"All (\w+) networks \(([^)]*)\) are one pipeline", learned)
    assert listed is not None and listed.group(1) == count
    assert re.findall(r"`(\w+)`", listed.group(2)) == list(train)
    assert f"| the {count} networks" in readme and "the five networks" not in readme


def test_a_missing_scan_shape_says_what_to_type(tmp_path):
    """The error said ``give scan_shape=(Sy, Sx)`` (Python) to a command-line user: it names the flag and the
    params-file key, and both forms work."""
    from phasestem import io

    path = tmp_path / "flat.npy"
    np.save(path, np.random.default_rng(0).poisson(5.0, (12, 8, 8)).astype(np.float32))
    run = subprocess.run([sys.executable, "-m", "phasestem.cli", "inspect", str(path), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    lines = [ln for ln in run.stderr.splitlines() if ln.strip() and "WARNING" not in ln and "INFO" not in ln]
    assert run.returncode != 0 and len(lines) == 1, run.stderr
    assert "12 patterns do not form a square scan" in lines[0]
    assert "give the scan shape, Sy·Sx = 12 (--scan-shape Sy Sx on the command line, " in lines[0]
    assert "data.reader_options.scan_shape: [Sy, Sx] in a parameter file" in lines[0]
    ok = subprocess.run([sys.executable, "-m", "phasestem.cli", "inspect", str(path), "--scan-shape", "3", "4",
                         "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    # the parameter file's list, as YAML reads it
    assert io.load(path, energy=300e3, scan_step=1.0, scan_shape=[3, 4]).scan_shape == (3, 4)


@pytest.mark.parametrize("command", [("calibrate",), ("reconstruct",), ("inspect",)])
def test_every_command_that_reads_a_data_file_has_the_scan_shape_flag(command):
    assert "--scan-shape" in _options(_subparsers(build_parser())[command[0]])
