"""Issue 24, items 1, 2 and 10: one output lock for every command that writes a run folder (or a result file), a
result file never shares its path with its figure, and no fixed temporary names.

Two real processes each time: the first is frozen with SIGSTOP once it holds its output (the overlap is certain,
not timed), the second must be refused in one line naming the holder and must leave the folder as it was; the
first then finishes with its own results. Plumbing tests on phasestem's own tiny simulated data.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import torch
import yaml
from held_output import PHASESTEM, assert_refused_naming, second_while_held, wait_for_lock_holder

from phasestem.base.errors import ConfigError
from phasestem.base.lock import LOCK_NAME, FolderBusyError, OutputLock, file_lock_path, hold_output
from phasestem.recon.synthetic import write_npz

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def recon_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("locks")
    write_npz(tmp / "tiny.npz", scan_shape=(6, 6), seed=5)
    return tmp / "tiny.npz"


def recon_params(tmp_path: Path, data: Path, **run) -> Path:
    cfg = yaml.safe_load((CONFIGS / "reconstruct_tiny.yaml").read_text())
    cfg["data"]["file"] = str(data)
    cfg["scan"]["shape"] = [6, 6]
    cfg["run"].update({"out_dir": str(tmp_path / "out"), "n_epochs": 3, "progress": False, "check_optics": False,
                       "checkpoint_every": 1, **run})
    cfg["tune"].update(n_epochs=1, learning_rates={})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# ---- item 1: a second writer is refused, the first finishes with its own results ------------------------------
def test_second_reconstruct_is_refused_naming_the_holder_and_the_first_finishes(recon_data, tmp_path):
    params = recon_params(tmp_path, recon_data)
    out = tmp_path / "out"
    first, second, holder = second_while_held(
        [*PHASESTEM, "reconstruct", str(params), "--epochs", "3"],
        [*PHASESTEM, "reconstruct", str(params), "--epochs", "1"], out / LOCK_NAME)
    assert_refused_naming(second, holder, "phasestem reconstruct")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "reconstruction: 3 epochs" in first.stdout
    # everything in the folder is the first run's: 3 epochs, its config, no temporaries, the lock gone with it
    with h5py.File(out / "results.h5") as f:
        assert int(f.attrs["epoch"]) == 3 and len(f["loss/loss"]) == 3
        assert yaml.safe_load(f.attrs["config"])["run"]["n_epochs"] == 3
    assert yaml.safe_load((out / "config.yaml").read_text())["run"]["n_epochs"] == 3
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 3
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["checkpoint.pt", "compare.png", "config.yaml", "live.npz", "reconstruct.log", "reconstruction.png",
         "results.emd", "results.h5"])


def test_second_train_is_refused_naming_the_holder_and_the_first_finishes(tmp_path):
    from phasestem.learn.data import write_synthetic_file

    write_synthetic_file(tmp_path / "simulation_data1.h5", 4, 0, extent=24.0, phase_px=48, scan=12, window=8,
                         c10=100.0, n_blobs=8)
    cfg = {"stage": "patch", "out_dir": str(tmp_path / "run"), "model": {"size": "tiny"},
           "data": {"files": [str(tmp_path / "simulation_data1.h5")], "block": 6, "stride": 3, "patch": 24,
                    "val_fraction": 0.25, "test_fraction": 0.0, "batch_size": 9},
           "trainer": {"epochs": 2, "progress": False, "tensorboard": False}}
    path = tmp_path / "patch.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    first, second, holder = second_while_held(
        [*PHASESTEM, "train", "patch", str(path)],
        [*PHASESTEM, "train", "patch", str(path), "--epochs", "1", "--resume"], run / LOCK_NAME)
    assert_refused_naming(second, holder, "phasestem train patch")
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["epochs"] == 2
    assert (run / "best" / "model.safetensors").is_file() and (run / "last" / "trainer_state.pt").is_file()
    assert not [p.name for p in run.iterdir() if p.name.endswith((".tmp", ".prev", ".lock"))]


def test_second_tune_is_refused_naming_the_holder_and_the_first_finishes(recon_data, tmp_path):
    pytest.importorskip("optuna")
    params = recon_params(tmp_path, recon_data)
    out = tmp_path / "out"
    first, second, holder = second_while_held(
        [*PHASESTEM, "tune", str(params), "--n-trials", "2"],
        [*PHASESTEM, "tune", str(params), "--n-trials", "1"], out / LOCK_NAME)
    assert_refused_naming(second, holder, "phasestem tune")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "(2 trials in the study)" in first.stdout  # the refused run added none
    assert sorted(p.name for p in out.iterdir()) == ["tune.db"]


def test_lock_is_released_when_its_holder_is_killed_and_the_rerun_removes_its_temporaries(recon_data, tmp_path):
    params = recon_params(tmp_path, recon_data, n_epochs=500)
    out = tmp_path / "out"
    proc = subprocess.Popen([*PHASESTEM, "reconstruct", str(params)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_lock_holder(out / LOCK_NAME, proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    # what a kill in the middle of writing the results and a checkpoint leaves (the killed process's names)
    stale = [out / f"results.h5.{proc.pid}.tmp", out / f"checkpoint.pt.{proc.pid}.tmp"]
    for path in stale:
        path.write_bytes(b"torn")
    (out / "results.h5.tmp").write_text("a user's file: not the run's name")
    again = subprocess.run([*PHASESTEM, "reconstruct", str(params), "--epochs", "1"], capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not any(p.exists() for p in stale)
    assert (out / "results.h5.tmp").read_text() == "a user's file: not the run's name"
    assert not (out / LOCK_NAME).exists()
    with h5py.File(out / "results.h5") as f:
        assert int(f.attrs["epoch"]) == 1


def test_a_file_output_is_locked_beside_it_and_other_files_of_its_folder_are_free(tmp_path):
    """make-pairs writes one file: a second writer of that file is refused, one writing another file proceeds."""
    from phasestem.learn.data import write_synthetic_file

    write_synthetic_file(tmp_path / "sim.h5", 2, 0, extent=12.0, phase_px=24, scan=6, window=8, n_blobs=4)
    from phasestem.cli import main

    target = tmp_path / "pairs" / "train.h5"
    with OutputLock(target, "phasestem make-pairs (this test)", file=True):
        holder = json.loads(file_lock_path(target).read_text())
        refused = subprocess.run([*PHASESTEM, "make-pairs", str(tmp_path / "sim.h5"), "--out-file", str(target)],
                                 capture_output=True, text=True, timeout=300)
        assert main(["make-pairs", str(tmp_path / "sim.h5"), "--out-file", str(target.with_name("val.h5"))]) == 0
    assert holder["pid"] == os.getpid()
    assert_refused_naming(refused, holder, "phasestem make-pairs (this test)")
    assert not target.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["val.h5"]  # both lock files gone with their holders


def _try_to_hold(folder: str, results: str) -> None:
    """One rank of a process group: try to hold ``folder`` and write what happened to ``results/rank<R>.txt``."""
    import torch.distributed as dist

    try:
        with hold_output(folder, "phasestem reconstruct"):
            outcome = "held"
    except FolderBusyError as exc:
        outcome = str(exc)
    Path(results, f"rank{dist.get_rank()}.txt").write_text(outcome)


def test_every_rank_of_a_process_group_learns_that_the_folder_is_held(tmp_path):
    """Rank 0 alone takes the lock and broadcasts a refusal, so no rank goes on (or waits) without it."""
    from phasestem.recon.distributed import launch

    out = tmp_path / "out"
    with OutputLock(out, "phasestem reconstruct (the first run)"):
        launch(2, _try_to_hold, str(out), str(tmp_path))
    for rank in (0, 1):
        text = (tmp_path / f"rank{rank}.txt").read_text()
        assert "'phasestem reconstruct (the first run)'" in text and f"pid {os.getpid()}" in text, (rank, text)


def test_nested_holds_in_one_process_are_one_lock_and_an_empty_folder_it_made_goes(tmp_path):
    out = tmp_path / "new"
    with hold_output(out, "phasestem reconstruct --auto"):
        with hold_output(out, "phasestem reconstruct"):  # run_auto → run_reconstruction: the same holder
            pass
        assert json.loads((out / LOCK_NAME).read_text())["command"] == "phasestem reconstruct --auto"
    assert not out.exists()


# ---- item 2: a result file and its figure never share a path -----------------------------------------------
@pytest.fixture(scope="module")
def apply_inputs(tmp_path_factory):
    """A 4D-STEM file, a phase image and the tiny stored models that fit them (before this rule, each command
    wrote its HDF5 result and then its figure to the one path, exit 0)."""
    import numpy as np

    from phasestem.learn.data import write_synthetic_file

    tmp = tmp_path_factory.mktemp("apply")
    write_synthetic_file(tmp / "scan.h5", 1, 0, extent=24.0, phase_px=48, scan=12, window=16, c10=100.0, n_blobs=8)
    write_synthetic_file(tmp / "scan32.h5", 1, 0, extent=12.0, phase_px=24, scan=4, window=32, n_blobs=4)
    np.save(tmp / "phase.npy", np.zeros((48, 48), np.float32))
    models = Path(__file__).resolve().parent / "data" / "legacy_models"
    return {"predict": ["predict", str(tmp / "scan.h5"), "--sample", "0", "--model", str(models / "end2end")],
            "embed": ["embed", str(tmp / "scan32.h5"), "--sample", "0", "--model", str(models / "autoencoder")],
            "refine": ["refine", str(tmp / "phase.npy"), "--model", str(models / "phaseformer"), "--size", "0"]}


@pytest.mark.parametrize("command", ["predict", "embed", "refine"])
@pytest.mark.parametrize("name", ["p.png", "p.PDF", "p.svg"])
def test_result_out_with_a_figure_suffix_is_refused_without_writing_anything(tmp_path, apply_inputs, command, name,
                                                                             capsys):
    from phasestem.cli import main

    args = apply_inputs[command]
    out = tmp_path / "same" / name
    for flag in ("--out-file", "--out"):  # --out FILE: the older spelling, taken as the file too
        assert main([*args, flag, str(out)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{flag} {out}: has a figure suffix" in err, err
        assert not (tmp_path / "same").exists()


def test_figure_beside_a_result_is_never_the_result():
    from phasestem.base.safety import figure_beside

    assert figure_beside("run/phase.h5") == Path("run/phase.png")
    assert figure_beside("run/phase") == Path("run/phase.png")
    with pytest.raises(ConfigError, match="figure suffix"):
        figure_beside("run/phase.png")


# ---- items 2 and 10: every atomic write takes a per-process temporary name ------------------------------------
WRITER = r"""
import json, sys
from pathlib import Path

renames = []
sys.addaudithook(lambda event, args: renames.append([str(args[0]), str(args[1])]) if event == "os.rename" else None)
import torch
from phasestem.learn.trainer.checkpoint import commit_folder, save_weights
from phasestem.plot import pyplot, save_figure
from phasestem.recon import Ptychography
from phasestem.recon.engine import save_checkpoint
from phasestem.recon.synthetic import synthetic_scan, write_npz

out = Path(sys.argv[1])
model = Ptychography.from_dataset(synthetic_scan(scan_shape=(3, 3), seed=1))
save_checkpoint(out / "checkpoint.pt", model)
model.save_results(out / "results.h5")
save_weights({"w": torch.zeros(2)}, out / "model.safetensors")
commit_folder(out / "last", lambda tmp: [(tmp / "a.txt").write_text("a") and "a.txt"])
save_figure(pyplot().figure(), out / "figure.png", close=True)
write_npz(out / "data.npz", scan_shape=(3, 3), seed=1)
print(json.dumps(renames))
"""
TARGETS = ("checkpoint.pt", "results.h5", "model.safetensors", "last", "figure.png", "data.npz")


def test_two_processes_writing_one_target_use_their_own_temporary_names(tmp_path):
    """Checkpoints, results, weights, checkpoint folders, figures and data files: each write goes through a
    temporary name that carries the writer's pid, never a fixed one two processes could share."""
    seen: dict[str, list[str]] = {t: [] for t in TARGETS}
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path)], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        for src, dst in json.loads(proc.stdout.strip().splitlines()[-1]):
            if Path(dst).name in TARGETS and Path(dst).parent == tmp_path:
                seen[Path(dst).name].append(Path(src).name)
    for target, temporaries in seen.items():
        assert len(temporaries) == 2 and temporaries[0] != temporaries[1], (target, temporaries)
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name or "partial" in p.name]
