"""The checks that keep the README's numbers and the defaults honest (issue 86): ``benchmarks/readme_figures.py``
finds every number it checks where the README prints it, and ``benchmarks/independent/regression.py`` names a case
that got worse by its tolerances, whatever the others won."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "independent"))

import readme_figures  # noqa: E402
import regression  # noqa: E402


@pytest.mark.parametrize("figure", readme_figures.FIGURES, ids=lambda f: f.name)
def test_every_checked_number_is_where_the_readme_prints_it(figure):
    value = readme_figures.documented(figure)
    assert value > 0 and figure.job in readme_figures.JOBS


@pytest.mark.parametrize("doc", readme_figures.STAMPED, ids=lambda p: p.name)
def test_the_readme_and_docs_say_when_its_figures_were_last_checked(doc):
    text = doc.read_text()
    stamped = readme_figures.stamp(text, "2030-01-01 on abc1234")
    assert "README figures checked: 2030-01-01 on abc1234" in stamped and stamped != text
    with pytest.raises(LookupError, match="README figures checked"):
        readme_figures.stamp("no such line", "today")


def test_a_moved_number_is_reported(tmp_path, monkeypatch):
    figure = readme_figures.Figure("plan: expected E_φ", "README.md", readme_figures._PLAN_E, "plan",
                                   lambda out: out["value"], 0.006)
    documented = readme_figures.documented(figure)
    for fresh, moved in ((documented + 0.004, False), (documented + 0.05, True)):
        monkeypatch.setattr(readme_figures, "FIGURES", [figure])
        monkeypatch.setitem(readme_figures.JOBS, "plan", (lambda work, v=fresh: {"value": v}, False))
        rows = readme_figures.check(["plan"], tmp_path)
        assert [r["moved"] for r in rows] == [moved], rows
    assert "**moved**" in readme_figures.report(rows)


def _line(commit, r, e):
    return {"commit": commit, "cases": {"thin": {"20": {"r": r, "E": e}}, "plan": {"10": {"r": 0.95, "E": 0.200}}}}


def test_the_guard_names_a_case_worse_by_either_tolerance():
    before = _line("aaa", 0.9990, 0.040)
    assert regression.drops(before, _line("bbb", 0.9965, 0.040)) == [
        "thin at 20 epochs: r 0.9990 → 0.9965, E_φ 0.0400 → 0.0400 (aaa → bbb)"]
    assert regression.drops(before, _line("bbb", 0.9990, 0.0412))  # E_φ 3 % worse: named
    assert regression.drops(before, _line("bbb", 0.9985, 0.0405)) == []  # within 0.002 in r and 2 % in E_φ
    worse_plan = _line("bbb", 0.9990, 0.040)
    worse_plan["cases"]["plan"]["10"]["E"] = 0.386  # one regime lost, whatever the others won
    assert [d.split(":")[0] for d in regression.drops(before, worse_plan)] == ["plan at 10 epochs"]
    table = regression.table(before, worse_plan)
    assert "| plan | dev |" in table and "**worse**" in table and "| thin | dev |" in table


def test_the_first_hour_runs_the_readmes_own_commands_in_its_work_folder(tmp_path):
    commands = readme_figures.first_hour_commands(tmp_path)
    assert [c[0] for c in commands] == ["simulate", "reconstruct", "restore", "reconstruct"]
    assert "--auto" in commands[1] and commands[1][1] == str(tmp_path / "data/seed/simulation_data1.h5")
    assert all(not w.startswith(("data/", "runs/")) for c in commands for w in c)  # nothing written beside the repo
