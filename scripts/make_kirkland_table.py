"""Write phasestem's Kirkland parameter table (``src/phasestem/data/kirkland.json``) from abTEM's copy.

Run once, with abTEM installed, from the repository root::

    python scripts/make_kirkland_table.py

The numbers are Kirkland's fitted electron scattering factors (three Lorentzians and three Gaussians per
element, H to Lr): E. J. Kirkland, *Advanced Computing in Electron Microscopy*, 2nd ed., Springer (2010).
abTEM ships them as ``abtem/parametrizations/data/kirkland.json`` (rows a, b, c, d; q in Å⁻¹
without 2π); this script copies the values unchanged into phasestem's own file, with the citation and units,
so that phasestem simulates without abTEM installed. ``tests/test_specimen.py`` checks that the two files
hold the same numbers whenever abTEM is installed.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "phasestem" / "data" / "kirkland.json"

CITATION = ("E. J. Kirkland, Advanced Computing in Electron Microscopy, 2nd ed., Springer (2010): "
            "fitted electron scattering factors")
FORMULA = "f(q) = sum_i a_i/(q^2 + b_i) + c_i exp(-d_i q^2), q in 1/Angstrom (no 2 pi), f in Angstrom"
UNITS = {"a": "1/Angstrom", "b": "1/Angstrom^2", "c": "Angstrom", "d": "Angstrom^2"}


def abtem_table() -> dict[str, list[list[float]]]:
    """abTEM's Kirkland table: element symbol → [[a1, a2, a3], [b…], [c…], [d…]] (abTEM is found, not imported)."""
    spec = importlib.util.find_spec("abtem")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("abTEM is not installed: pip install abtem")
    path = Path(list(spec.submodule_search_locations)[0]) / "parametrizations" / "data" / "kirkland.json"
    return json.loads(path.read_text())


def main() -> None:
    table = abtem_table()
    head = {"citation": CITATION, "formula": FORMULA, "rows": ["a", "b", "c", "d"], "units": UNITS,
            "source": "copied unchanged from abTEM's abtem/parametrizations/data/kirkland.json by "
                      "scripts/make_kirkland_table.py"}
    lines = [f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in head.items()]
    rows = [f"  {json.dumps(el)}: {json.dumps(coef)}" for el, coef in table.items()]  # one element a line
    OUT.write_text("{\n" + "\n".join(lines) + '\n "elements": {\n' + ",\n".join(rows) + "\n }\n}\n")
    print(f"wrote {OUT} ({len(table)} elements)")


if __name__ == "__main__":
    main()
