"""The command line: every sub-command has --help with an example; user errors are one actionable line."""
from __future__ import annotations

import argparse
import subprocess
import sys

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
