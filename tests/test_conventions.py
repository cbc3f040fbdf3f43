"""One set of conventions (issue 25, item 5; docs/cli.md): every command's --dump-config is documented and
portable, relative paths in a config follow one rule (from the YAML's folder), old flag spellings still work with
one deprecation line, ``phasestem train`` alone lists the networks, and the public Python names (with the module
paths of earlier releases as deprecated aliases) import from short paths."""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from phasestem.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]

# configs written into proj/cfg/ whose relative paths name proj/data, proj/runs, …; (command, config, paths
# that must resolve against proj/cfg/, as dotted keys)
ROUTE = {"files": ["../data/sim*.h5"], "block": 4, "stride": 2, "patch": 32}
CASES = {
    "simulate": (["simulate"], {"out": "../sim_out", "specimen": {"files": ["../structures/a.cif"]},
                                "output": {"n_files": 1, "samples_per_file": 1}},
                 {"out": "sim_out", "specimen.files": ["structures/a.cif"]}),
    "reconstruct": (["reconstruct"], {"data": {"file": "../data/scan.npz", "detector_shifts": "shifts.npy"},
                                      "optics": {"energy": 300e3}, "scan": {"positions_file": "../pos.npy"},
                                      "model": {"initial_phase": {"file": "../init/phase.npy"}},
                                      "run": {"out_dir": "../runs/recon"}},
                    {"data.file": "data/scan.npz", "data.detector_shifts": "cfg/shifts.npy",
                     "scan.positions_file": "pos.npy", "model.initial_phase.file": "init/phase.npy",
                     "run.out_dir": "runs/recon"}),
    "tune": (["tune"], {"data": {"file": "../data/scan.npz"}, "optics": {}, "scan": {},
                        "tune": {"n_trials": 2, "C10": {"low": -10.0, "high": 10.0}}},
             {"data.file": "data/scan.npz", "run.out_dir": "cfg/recon_out"}),
    "train patch": (["train", "patch"], {"network": "patch", "out_dir": "../runs/patch", "data": ROUTE,
                                         "model": {"size": "tiny", "cnn_pretrained": "auto"}},
                    {"out_dir": "runs/patch", "data.files": ["data/sim*.h5"]}),
    "train stitch": (["train", "stitch"], {"network": "stitch", "data": ROUTE},
                     {"out_dir": "cfg/runs/learn", "data.files": ["data/sim*.h5"]}),
    "train end2end": (["train", "end2end"], {"network": "end2end", "out_dir": "../runs/e2e", "data": ROUTE,
                                             "patch_checkpoint": "../runs/patch", "stitch_checkpoint": "../runs/st"},
                      {"patch_checkpoint": "runs/patch", "stitch_checkpoint": "runs/st", "out_dir": "runs/e2e"}),
    "train autoencoder": (["train", "autoencoder"], {"out_dir": "../runs/ae", "data": {"files": ["../data/a.h5"]}},
                          {"out_dir": "runs/ae", "data.files": ["data/a.h5"]}),
    "train phaseformer": (["train", "phaseformer"],
                          {"out_dir": "../runs/pf", "data": {"train": ["../data/a.h5", "../pairs"],
                                                             "test": ["../data/t.h5"]},
                           "loss": {"components": ["charbonnier"], "perceptual_weights": "../vgg16.pth"}},
                          {"data.train": ["data/a.h5", "pairs"], "data.test": ["data/t.h5"],
                           "loss.perceptual_weights": "vgg16.pth"}),
    "make-pairs": (["make-pairs"], {"files": ["../data/sim1.h5"], "out": "../pairs/p.h5",
                                    "inputs_from": "stitch:../runs/e2e", "stitch_model": "../runs/st"},
                   {"files": ["data/sim1.h5"], "out": "pairs/p.h5", "inputs_from": "stitch:" + "{proj}/runs/e2e",
                    "stitch_model": "runs/st"}),
    "demo": (["demo"], {"heldout_seed": 7, "recon": {"n_epochs": 3}}, {}),
    "plan": (["plan"], {"out": "../plan_out", "scan": {"step": 0.5}, "detector": {"angular_sampling": 1.0},
                        "specimen": {"kind": "structures", "files": ["../structures/a.cif"]}},
             {"out": "plan_out", "specimen.files": ["structures/a.cif"]}),
}


def _get(tree, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def _dump(capsys, argv: list[str]) -> str:
    assert main([*argv, "--dump-config"]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def _documented(text: str) -> None:
    """Every key line of a dump follows a comment line (its field's description)."""
    lines = text.splitlines()
    assert lines[0].startswith("# phasestem")
    keys = [i for i, ln in enumerate(lines) if re.match(r"^\s*[A-Za-z_][\w]*:", ln)]
    assert keys
    undocumented = [lines[i] for i in keys if not lines[i - 1].lstrip().startswith("#")]
    assert undocumented == []


@pytest.mark.parametrize("name", list(CASES))
def test_dump_config_is_documented_and_works_saved_in_another_folder(name, tmp_path, monkeypatch, capsys):
    command, config, paths = CASES[name]
    proj = tmp_path / "proj"
    (proj / "cfg").mkdir(parents=True)
    cfg = proj / "cfg" / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths follow the YAML's folder, not the working directory
    text = _dump(capsys, [*command, os.path.relpath(cfg)])
    _documented(text)
    dumped = yaml.safe_load(text)
    for key, rel in paths.items():
        expected = ([str(proj / p) for p in rel] if isinstance(rel, list)
                    else rel.format(proj=proj) if "{proj}" in rel else str(proj / rel))
        assert _get(dumped, key) == expected, key
    # saved in another folder and read from a third working directory: the same config
    saved = tmp_path / "other" / "deeper" / "dumped.yaml"
    saved.parent.mkdir(parents=True)
    saved.write_text(text)
    third = tmp_path / "third"
    third.mkdir()
    monkeypatch.chdir(third)
    assert _dump(capsys, [*command, str(saved)]) == text


def test_config_loaders_take_relative_paths_from_the_yaml_folder(tmp_path, monkeypatch):
    """The Python loaders follow the same rule (a default path too: run.out_dir of a reconstruction)."""
    from phasestem.learn.registry import load_run_config
    from phasestem.recon.params import load_params
    from phasestem.simulate.config import load_config

    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    (folder / "sim.yaml").write_text("out: data\nspecimen: {files: [s.cif]}\n")
    (folder / "rec.yaml").write_text("data: {file: scan.npy}\noptics: {}\nscan: {}\n")
    (folder / "ae.yaml").write_text("out_dir: run\ndata: {files: ['*.h5']}\n")
    monkeypatch.chdir(tmp_path)
    sim = load_config("a/b/sim.yaml")
    assert Path(sim.out).resolve() == folder / "data" and sim.specimen.files[0].resolve() == folder / "s.cif"
    rec = load_params("a/b/rec.yaml")
    assert rec.data.file.resolve() == folder / "scan.npy" and rec.run.out_dir.resolve() == folder / "recon_out"
    ae = load_run_config("a/b/ae.yaml", "autoencoder", {"data.files": ["x.h5"]})  # the command line: cwd
    assert Path(ae.out_dir).resolve() == folder / "run" and ae.data.files == ["x.h5"]


def test_old_flag_spellings_still_work_with_one_deprecation_line(tmp_path, capsys):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"network": "patch", "data": ROUTE}))
    out = _dump(capsys, ["train", "patch", str(cfg), "--out-dir", str(tmp_path / "run")])
    assert yaml.safe_load(out)["out_dir"] == str(tmp_path / "run")
    assert main(["train", "patch", str(cfg), "--out-dir", str(tmp_path / "run"), "--dump-config"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["phasestem train patch: deprecated: --out-dir; use --out (the old spelling still works for now)"]

    pairs = tmp_path / "pairs.yaml"
    pairs.write_text("files: [sim1.h5]\nout: p.h5\n")
    assert main(["make-pairs", "--config", str(pairs), "--dump-config"]) == 0
    captured = capsys.readouterr()
    assert yaml.safe_load(captured.out)["out"] == str(tmp_path / "p.h5")
    assert "make-pairs: deprecated: --config" in captured.err and len(captured.err.strip().splitlines()) == 1

    sim = tmp_path / "sim.yaml"
    sim.write_text("optics: {energy: 200000.0, semiangle: 20.0}\n")
    assert main(["probe-extent", "--config", str(sim), "--block", "2"]) == 0
    captured = capsys.readouterr()
    assert "Å across" in captured.out and "probe-extent: deprecated: --config" in captured.err

    from phasestem.base.cliargs import result_file

    parser = build_parser()
    args = parser.parse_args(["embed", "scan.h5", "--checkpoint", "m", "--patterns-key", "k", "--out", "ae.h5"])
    assert (args.model, args.patterns_key) == ("m", "k")
    assert result_file(args, "scan_latent.h5") == Path("ae.h5")  # --out FILE.h5: the older meaning
    err = capsys.readouterr().err
    for old in ("--checkpoint", "--patterns-key", "--out ae.h5"):
        assert f"phasestem embed: deprecated: {old}" in err
    assert len(err.strip().splitlines()) == 3


def test_out_is_the_folder_and_out_file_the_file(tmp_path, capsys):
    from phasestem.base.cliargs import result_file
    from phasestem.base.errors import ConfigError

    parser = build_parser()
    args = parser.parse_args(["predict", "scan.h5", "--model", "m", "--key", "/entry/data", "--out", str(tmp_path)])
    assert args.patterns_key == "/entry/data"
    assert result_file(args, "scan_phase.h5") == tmp_path / "scan_phase.h5"
    args = parser.parse_args(["predict", "scan.h5", "--model", "m", "--out-file", "p.h5"])
    assert result_file(args, "scan_phase.h5") == Path("p.h5")
    args = parser.parse_args(["refine", "img.npy", "--model", "m"])
    assert result_file(args, "img_refined.h5") == Path("img_refined.h5")  # the working directory by default
    assert capsys.readouterr().err == ""
    args = parser.parse_args(["predict", "scan.h5", "--model", "m", "--out", "d", "--out-file", "p.h5"])
    with pytest.raises(ConfigError, match="not both"):
        result_file(args, "scan_phase.h5")


def _every_parser(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _every_parser(sub, (*prefix, name))
    if prefix:
        yield prefix, parser


def test_flags_are_the_same_everywhere():
    """--out is a folder (DIR) wherever it exists; no command spells the pattern key or the run folder otherwise;
    every command that reads a config takes it positionally and has --dump-config; --device wherever torch works."""
    takes_config = {("simulate",), ("reconstruct",), ("tune",), ("make-pairs",), ("demo",),
                    *[("train", n) for n in ("patch", "stitch", "end2end", "autoencoder", "phaseformer")]}
    device = takes_config - {("make-pairs",)} | {("predict",), ("evaluate",), ("embed",), ("refine",)}
    seen = set()
    for path, parser in _every_parser(build_parser()):
        options = {s: a for a in parser._actions for s in a.option_strings}
        visible = {s for s, a in options.items() if a.help != argparse.SUPPRESS}
        assert not visible & {"--out-dir", "--patterns-key", "--config"}, path  # old spellings: hidden
        if "--out" in options:
            assert options["--out"].metavar == "DIR", path
        positionals = [a.dest for a in parser._actions if not a.option_strings]
        if path in takes_config:
            seen.add(path)
            assert "--dump-config" in options and set(positionals) & {"config", "params", "inputs"}, path
        if path in device:
            assert "--device" in options, path
    assert seen == takes_config


def test_train_alone_lists_the_networks():
    proc = subprocess.run([sys.executable, "-m", "phasestem.cli", "train"], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("usage: phasestem train")
    for name in ("patch", "stitch", "end2end", "autoencoder", "phaseformer"):
        assert any(re.match(rf"^\s+{name}\s+train \w", ln) for ln in lines), (name, proc.stderr)


def test_import_phasestem_stays_light():
    code = ("import sys, phasestem, phasestem.learn; "
            "print(sorted(m for m in ('torch', 'timm', 'h5py', 'matplotlib') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_public_names_resolve_from_short_paths():
    import phasestem
    import phasestem.learn
    from phasestem.dataset import FourDSTEM
    from phasestem.io import load
    from phasestem.learn.nets.autoencoder import Autoencoder
    from phasestem.recon.model import Ptychography

    assert phasestem.Ptychography is Ptychography and phasestem.load is load and phasestem.FourDSTEM is FourDSTEM
    assert phasestem.learn.Autoencoder is Autoencoder
    for module in (phasestem, phasestem.learn):
        for name in module.__all__:
            assert getattr(module, name) is not None, name
        assert set(module.API) <= set(dir(module))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        phasestem.Nope  # noqa: B018


# old module path -> (a name it had, the module that defines it now)
OLD_PATHS = {
    "phasestem.learn.autoencoder": ("Autoencoder", "phasestem.learn.nets.autoencoder"),
    "phasestem.learn.end2end": ("End2End", "phasestem.learn.nets.end2end"),
    "phasestem.learn.patch_recovery": ("PatchRecoveryNet", "phasestem.learn.nets.patch"),
    "phasestem.learn.phase_stitching": ("PhaseStitchingNet", "phasestem.learn.nets.stitch"),
    "phasestem.learn.phaseformer": ("Phaseformer", "phasestem.learn.nets.phaseformer"),
    "phasestem.learn.pipeline": ("train_run", "phasestem.learn.training.route"),
    "phasestem.learn.predict": ("predict_file", "phasestem.learn.apply.phase"),
    "phasestem.learn.restore_apply": ("refine_phase", "phasestem.learn.apply.refine"),
    "phasestem.learn.restore_config": ("MakePairsConfig", "phasestem.learn.config"),
    "phasestem.learn.restore_train": ("train_autoencoder", "phasestem.learn.training.autoencoder"),
    "phasestem.learn.commands_restore": ("register", "phasestem.cli.learn"),
    "phasestem.recon.commands": ("run_reconstruction", "phasestem.recon.run"),
    "phasestem.learn.restore": ("load_restorer", "phasestem.learn.apply.restorer"),
    "phasestem.learn.restorer_config": ("RestorerRunConfig", "phasestem.learn.config"),
    "phasestem.simulate.lock": ("FolderBusyError", "phasestem.base.lock"),
}


def test_old_module_paths_import_with_a_deprecation_warning():
    """In a fresh interpreter (an import warns once): ``from OLD import NAME`` gives the object of the new module,
    with one DeprecationWarning naming the new path."""
    code = f"""
import importlib, warnings
for old, (name, new) in {OLD_PATHS!r}.items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        obj = getattr(importlib.import_module(old), name)
    assert obj is getattr(importlib.import_module(new), name), old
    dep = [w for w in caught if issubclass(w.category, DeprecationWarning) and old in str(w.message)]
    assert len(dep) == 1 and new in str(dep[0].message), (old, [str(w.message) for w in caught])
from phasestem.learn.autoencoder import Autoencoder
from phasestem.learn.nets.autoencoder import Autoencoder as New
assert Autoencoder is New
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_readme_python_api_table_names_resolve():
    """Every name of README's "Python API" table is in the lazy tables of phasestem / phasestem.learn."""
    import phasestem
    import phasestem.learn

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Command line and Python API"):]
    section = section[:section.index("\n## ", 5)]
    rows = [ln for ln in section.splitlines() if ln.startswith("| `phasestem")]
    assert len(rows) >= 8
    for row in rows:
        names = re.findall(r"`([\w.]+)", row.split("|")[1])
        module = phasestem.learn if names[0].startswith("phasestem.learn.") else phasestem
        for name in names:
            short = name.rpartition(".")[2]
            assert short in module.API, (row, short)


def test_serve_job_files_keep_the_path_rule(tmp_path):
    """The parameter files `phasestem serve` writes into a run folder name the same files as the configs they come
    from: a reconstruction's params.yaml relative to the run folder, a simulation's copy absolute; a train job says
    --out."""
    from phasestem.recon.params import load_params
    from phasestem.serve.jobs import JobStore, build_job
    from phasestem.simulate.config import load_config

    root = tmp_path / "ws"
    (root / "configs").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "data" / "scan.npz").write_bytes(b"")
    (root / "configs" / "rec.yaml").write_text("data: {file: ../data/scan.npz}\noptics: {}\nscan: {}\n")
    (root / "configs" / "sim.yaml").write_text("specimen: {files: [../structures/a.cif]}\n")
    (root / "configs" / "train.yaml").write_text(yaml.safe_dump({"network": "patch", "data": ROUTE}))
    store = JobStore(root / ".phasestem-serve" / "jobs.sqlite")
    job = build_job(root, store, {"command": "reconstruct", "config": "configs/rec.yaml"})
    written = root / job.run_dir / "params.yaml"
    assert yaml.safe_load(written.read_text())["data"]["file"] == "../../data/scan.npz"
    assert load_params(written).data.file.resolve() == root.resolve() / "data" / "scan.npz"
    job = build_job(root, store, {"command": "simulate", "config": "configs/sim.yaml",
                                  "set": {"output.n_files": 1}})
    copy = load_config(root / job.run_dir / "simulate.yaml")
    assert copy.specimen.files[0].is_absolute() and copy.output.n_files == 1
    assert copy.specimen.files[0].resolve() == root.resolve() / "structures" / "a.cif"
    job = build_job(root, store, {"command": "train", "network": "patch", "config": "configs/train.yaml"})
    assert "--out" in job.argv and "--out-dir" not in job.argv
