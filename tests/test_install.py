"""The install: every module phasestem imports is declared in pyproject.toml, the core leaves the heavy extras out,
and the core works without them (a missing extra is one line naming it)."""
from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from phasestem.base.extras import EXTRAS, MissingExtraError, require

tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "phasestem"
#: the modules of the extras, hidden (as if not installed) to run the core
HIDDEN = tuple(EXTRAS)


def _name(requirement: str) -> str:
    """Normalised distribution name of a requirement string (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)).lower()


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _imported_top_level_modules() -> set[str]:
    names = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require" and node.args \
                    and isinstance(node.args[0], ast.Constant):  # extras.require("optuna", …)
                names.add(node.args[0].value.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"phasestem"}


def test_every_imported_module_is_declared():
    project = _project()
    declared = {_name(r) for r in project["dependencies"]}
    for reqs in project["optional-dependencies"].values():
        declared |= {_name(r) for r in reqs}
    providers = importlib.metadata.packages_distributions()
    undeclared = {}
    for module in sorted(_imported_top_level_modules()):
        dists = {_name(d) for d in providers.get(module, [])}
        assert dists, f"{module}: imported by phasestem but not installed here"
        if not dists & declared:
            undeclared[module] = sorted(dists)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_core_install_leaves_the_extras_out_and_each_extra_is_named_in_extras_py():
    project = _project()
    core = {_name(r) for r in project["dependencies"]}
    extras = project["optional-dependencies"]
    assert not core & {"abtem", "distributed", "hdf5plugin", "timm", "optuna", "numba", "scikit-image"}
    assert "dask[distributed]" not in " ".join(project["dependencies"])
    providers = importlib.metadata.packages_distributions()
    for module, extra in EXTRAS.items():  # the extra the error names exists and installs the module
        assert extra in extras, f"{module}: extras.py names [{extra}], which pyproject.toml lacks"
        dists = {_name(d) for d in providers.get(module, [])}
        named = {_name(r) for r in extras[extra]} | {_name(r) for r in " ".join(extras[extra]).split("[")[1:]}
        if module != "skimage":  # scikit-image comes with rosettasciio[blockfile]
            assert dists & named, f"{module}: [{extra}] does not install it ({extras[extra]})"
    assert set(extras["all"][0].split("[")[1].rstrip("]").split(",")) == set(extras) - {"all", "dev"}
    assert any(r.startswith("phasestem[all]") for r in extras["dev"])  # make test installs everything


@pytest.mark.parametrize("module", ["timm", "safetensors"])
def test_missing_extra_is_one_line_naming_it(module, monkeypatch, tmp_path):
    for name in [module] + [m for m in sys.modules if m.startswith(module + ".")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed (submodules imported earlier too)
    if module == "timm":
        from phasestem.learn.backbones import create_cnn

        call = lambda: create_cnn("resnet18")  # noqa: E731
    else:
        from phasestem.learn.trainer.checkpoint import save_weights

        call = lambda: save_weights({"w": torch.zeros(2)}, tmp_path / "w.safetensors")  # noqa: E731
    with pytest.raises(MissingExtraError) as err:
        call()
    assert "\n" not in str(err.value) and f"{module}, which is not installed" in str(err.value)
    assert "pip install 'phasestem[learn]'" in str(err.value)


def test_a_module_missing_inside_an_installed_package_is_not_hidden(monkeypatch, tmp_path):
    (tmp_path / "broken_pkg").mkdir()
    (tmp_path / "broken_pkg" / "__init__.py").write_text("import a_module_nobody_has\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as err:
        require("broken_pkg", "x")
    assert err.value.name == "a_module_nobody_has" and not isinstance(err.value, MissingExtraError)


def _phasestem_without_extras(runs: list[list[str]], cwd: Path) -> tuple[list[int], str]:
    """Exit codes of ``phasestem ARGS`` for each ARGS of ``runs``, in one fresh interpreter with every extra's
    modules hidden (None in sys.modules: importing one fails as for a package that is not installed), and the
    interpreter's stderr."""
    code = (f"import sys\nfor m in {HIDDEN!r}: sys.modules[m] = None\nfrom phasestem.cli import main\n"
            f"print([main(args) for args in {runs!r}])")
    env = {**os.environ, "PYTHONPATH": str(SRC.parent), "MPLBACKEND": "Agg"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert run.stdout.strip(), run.stderr
    return ast.literal_eval(run.stdout.strip().splitlines()[-1]), run.stderr


def test_core_simulates_without_the_extras_and_names_the_cluster_extra(tmp_path):
    cfg = yaml.safe_load((ROOT / "configs" / "simulate_tiny.yaml").read_text())
    cfg["output"].update(n_files=1, samples_per_file=1)
    cfg["specimen"]["phonons"] = 1
    cfg["scan"]["shape"] = [2, 2]
    (tmp_path / "sim.yaml").write_text(yaml.safe_dump(cfg))
    codes, err = _phasestem_without_extras([["simulate", "sim.yaml", "--out", "data"],
                                            ["simulate", "sim.yaml", "--out", "data2", "--workers", "2"]], tmp_path)
    assert codes == [0, 1] and "Traceback" not in err, err
    assert (tmp_path / "data" / "simulation_data1.h5").is_file()  # Kirkland potentials without abTEM
    (line,) = [x for x in err.splitlines() if "error:" in x]  # one line, naming the extra to install
    assert line.startswith("phasestem simulate: error:") and "distributed, which is not installed" in line
    assert line.endswith("pip install 'phasestem[cluster]'")
