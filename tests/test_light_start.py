"""A light start (issue 50, defect 8): ``phasestem --version``, ``--help``, ``COMMAND --help`` and argument refusals
import no torch (they took ~3 s: every command module's package imported the physics). Not a timing test: what is
imported is checked, in a fresh interpreter."""
from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "scipy", "matplotlib", "h5py")
CODE = """
import sys
from phasestem.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(sorted(m for m in {heavy!r} if m in sys.modules), code)
"""


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["reconstruct", "--help"], ["simulate", "--help"],
                                  ["train", "patch", "--help"], ["calibrate", "--help"],
                                  ["reconstruct", "p.yaml", "--foo"], ["simulate", "--workers", "two"]],
                         ids=" ".join)
def test_version_help_and_refusals_import_no_torch(args):
    proc = subprocess.run([sys.executable, "-c", CODE.format(heavy=HEAVY), *args], capture_output=True, text=True,
                          timeout=120)
    modules, code = proc.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert modules == "[]", (args, modules)
    assert code == ("2" if args[-1] in ("--foo", "two") else "0"), proc.stderr


def test_the_physics_constants_import_without_torch():
    code = ("import sys; from phasestem.physics.optics import wavelength, ANTIALIAS_FRACTION; wavelength(300e3); "
            "assert 'torch' not in sys.modules; from phasestem.physics.optics import make_probe; "
            "p = make_probe((8, 8), (0.2, 0.2), 300e3, 20.0, {}); print(type(p).__module__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "torch", proc.stderr  # torch once a tensor is made
