"""benchmarks/learned/restorer_guards.py (issue 48, item 6): the guard specimens take away exactly the column found
in the true phase and the strip, and the table applies the rules it states."""
from __future__ import annotations

import numpy as np


def _script():
    from bench_scripts import load_bench

    return load_bench("restorer_guards")


def _square_lattice(tmp_path):
    """Columns of 3 atoms every 3 Å on a 30 Å cell (column (5, 5) sits at the centre), and their phase: Gaussians
    on a 0.3 Å grid."""
    from ase import Atoms
    from ase.io import write

    a, n = 3.0, 10
    yx = np.array([(i * a, j * a) for i in range(n) for j in range(n)])
    pos = np.array([(x, y, z) for y, x in yx for z in (0.0, 2.0, 4.0)])
    atoms = Atoms("Si" * len(pos), positions=pos, cell=[n * a, n * a, 6.0], pbc=[True, True, False])
    path = tmp_path / "crystal.xyz"
    write(path, atoms, format="extxyz")
    s = 0.3
    yy, xx = np.mgrid[:100, :100] * s
    phase = sum(np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 0.4 ** 2)) for y, x in yx)
    return path, phase, (s, s), yx


def test_guard_specimens_remove_the_central_column_and_the_strip(tmp_path):
    from ase.io import read

    mod = _script()
    path, phase, s, yx = _square_lattice(tmp_path)
    found = mod.column_peaks(phase, s)
    assert len(found) == 100
    layout = mod.guard_specimens(path, phase, s, tmp_path / "guards")
    np.testing.assert_allclose(layout["site"], [15.0, 15.0], atol=0.31)
    assert layout["removed_atoms"] == 3
    assert len(layout["neighbours"]) == 6
    d = np.hypot(*(np.asarray(layout["neighbours"]) - layout["site"]).T)
    assert d.max() <= 3.0 * np.sqrt(2) + 0.5  # the four nearest and two diagonal columns
    vacancy, vacuum = (read(f) for f in layout["files"])
    assert len(vacancy) == 297
    assert not np.any(np.hypot(vacancy.positions[:, 1] - 15.0, vacancy.positions[:, 0] - 15.0) < 1.0)
    x0, x1 = layout["strip_x"]
    assert (x0, x1) == (10.5, 19.5)
    x = vacuum.positions[:, 0]
    assert not np.any((x >= x0) & (x < x1)) and len(vacuum) == 300 - 3 * 10 * 3  # columns at x = 12, 15, 18


def test_guard_table_applies_its_rules():
    mod = _script()
    guards = [{"specimen": "vacancy", "electrons": None, "truth": 0.02, "ad_2": 0.3, "restored_2": 0.7},
              {"specimen": "vacuum", "electrons": 1e4, "truth": 0.001, "ad_2": 0.05, "restored_2": 0.04}]
    residuals = [{"file": "pairs_val", "row": "val:0|none", "residual_ratio_2": 1.1, "truth_residual_ratio_2": 0.5},
                 {"file": "pairs_val", "row": "val:1|none", "residual_ratio_2": 1.3, "truth_residual_ratio_2": 0.7}]
    text = mod.table({"guards": guards, "residuals": residuals})
    lines = text.splitlines()
    assert lines[2].endswith("| NOT met |") and "0.300 → **0.700**" in lines[2]  # the column came back
    assert lines[3].endswith("| met |")
    assert "| pairs_val, none | 1.20, max 1.30 (0.60) |" in text
    assert np.all(mod.strip_mask((2, 10), (1.0, 1.0), 2.0, 5.0)[:, [2, 3, 4]])
    assert mod.strip_mask((2, 10), (1.0, 1.0), 2.0, 5.0).sum() == 6
