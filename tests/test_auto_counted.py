"""``reconstruct FILE --auto`` on counted files keeps what the file says (issue 64): the counted data term, error bars
and a checkpoint on the seed-000 layout (whole-number floats with a dose), the tutorial's abTEM HDF5 (uint16) and the
same seed scan as a Merlin .mib; a run killed with SIGKILL continues from its checkpoint with --resume; a finished
run is not run again silently."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from phasestem.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
TUTORIAL = REPO / "notebooks" / "data" / "abtem_srtio3.h5"
#: the seed-000 optics and detector (300 keV, 30 mrad, Cs 0.1 mm, 64² pixels of 0.984 mrad, 2 Å step) on a 20 Å
#: cell and a 10 × 10 scan, one phonon, 2500 e⁻/Å² (1e4 e⁻ per pattern): seconds to simulate
SEED_SETTINGS = ["output.n_files=1", "output.samples_per_file=1", "specimen.phonons=1", "scan.shape=[10,10]",
                 "grid.extent=[20,20]", "grid.sim_gpts=[128,128]", "grid.phase_gpts=[64,64]", "detector.dose=2500"]
SEED_FLAGS = ["--rotation", "0"]  # the step is 3× the probe: the centre of mass cannot give the rotation
MIB_FLAGS = ["--energy", "300e3", "--semiangle", "30", "--scan-step", "2", "--rotation", "0",
             "--set", "optics.aberrations.C30=1e6"]  # a .mib holds counts only
TUTORIAL_FLAGS = ["--energy", "300e3", "--semiangle", "21.4", "--scan-step", "0.45"]


@pytest.fixture(scope="module")
def counted_files(tmp_path_factory):
    """name → (file, the --auto flags it needs)."""
    from detector_files import mib_hdr, write_mib

    tmp = tmp_path_factory.mktemp("counted_files")
    sets = [a for s in SEED_SETTINGS for a in ("--set", s)]
    assert main(["simulate", str(REPO / "configs" / "simulate_seed.yaml"), "--out", str(tmp / "seed"), *sets]) == 0
    seed = tmp / "seed" / "simulation_data1.h5"
    with h5py.File(seed) as f:
        frames = f["dp_set_0"][...]
        assert f.attrs["dose"] == 2500 and frames.dtype == np.float32 and np.array_equal(frames, np.rint(frames))
    n = frames.shape[0] * frames.shape[1]
    write_mib(tmp / "seed.mib", frames.reshape(n, 64, 64)[:, ::-1], mib_hdr(n, frames.shape[1]))  # rsciio flips
    shutil.copy(TUTORIAL, tmp / "abtem_srtio3.h5")
    return {"seed": (seed, SEED_FLAGS), "tutorial": (tmp / "abtem_srtio3.h5", TUTORIAL_FLAGS),
            "mib": (tmp / "seed.mib", MIB_FLAGS)}


def _command(file: Path, out: Path, flags: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "phasestem.cli", "reconstruct", str(file), "--auto", *flags, "--out", str(out),
            *extra]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)


def _killed_mid_run(args: list[str], out: Path, epochs: int) -> None:
    """Start ``args``, SIGKILL it once its checkpoint exists and before its results do."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    err = out.parent / "killed_run.stderr"
    with open(err, "wb") as stderr:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    deadline = time.monotonic() + 300
    try:
        while not (out / "checkpoint.pt").exists():
            assert proc.poll() is None, f"the run ended before its first checkpoint: {err.read_text()[-2000:]}"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "results.h5").exists(), f"killed too late: all {epochs} epochs ran"


@pytest.mark.parametrize("name", ["seed", "tutorial", "mib"])
def test_auto_on_counted_files_runs_the_counted_term_with_error_bars_and_resumes(counted_files, name, tmp_path):
    from phasestem.recon.results import load_results

    file, flags = counted_files[name]
    out = tmp_path / "run"
    epochs = 6  # the run is killed after its first checkpoint (epoch 1 or 2)
    _killed_mid_run(_command(file, out, flags, "--epochs", str(epochs)), out, epochs)
    first = load_results_epoch(out / "checkpoint.pt")
    assert 1 <= first < epochs

    again = _run(_command(file, out, flags, "--epochs", str(epochs)))  # not silently from the start
    assert again.returncode != 0 and "holds an interrupted --auto run (checkpoint.pt); continue it with --resume" \
        in again.stderr and len(again.stderr.strip().splitlines()) == 1, again.stderr

    resumed = _run(_command(file, out, flags, "--epochs", str(epochs), "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    log = (out / "reconstruct.log").read_text()
    assert f"resumed from {out / 'checkpoint.pt'} after epoch {first}" in log
    results = load_results(out / "results.h5")
    assert results["loss"]["epoch"].tolist() == list(range(1, epochs + 1))  # the first part and the rest: one run
    assert "losses: gaussian 0.5, poisson 0.5 (chosen from the data:" in log
    assert "phase σ per pixel (shape: Fisher information of the data, Poisson counts" in log
    assert "uncertainty" in results and np.isfinite(results["uncertainty"]["phase_sigma"]).any()
    assert (out / "uncertainty.png").exists() and (out / "checkpoint.pt").exists()
    assert results["provenance"]["data.counts"]["value"] == "true"

    if name == "seed":  # a clean simulation: its band-limit corners are not dead pixels; the file's pixel is kept
        import json

        record = json.loads((out / "calibration" / "calibration.json").read_text())
        assert record["bad_pixels"] == {"hot": [], "dead": []}  # was 3 dead: (33, 63), (35, 63), (61, 21)
        with h5py.File(file) as f:
            assert record["angular_sampling_mrad"] == pytest.approx(float(f.attrs["angular_sampling"][0]), rel=1e-9)

    finished = _run(_command(file, out, flags))
    assert finished.returncode != 0 and finished.stderr.strip().splitlines() == [
        f"phasestem reconstruct: error: --out {out}: holds a finished --auto run (results.h5); continue it with "
        "--resume (--epochs N for more epochs), or give another --out"], finished.stderr


def load_results_epoch(path: Path) -> int:
    """The epoch a reconstruction checkpoint was written after (read as --resume reads it: tensors only)."""
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


def _first_hour_commands() -> list[list[str]]:
    """The bash lines of README's first hour at the seed geometry, split as a shell would."""
    import shlex

    text = (REPO / "README.md").read_text()
    block = text[text.index("The first hour at this geometry"):]
    block = block[block.index("```bash") + len("```bash"):]
    return [shlex.split(line) for line in block[:block.index("```")].strip().splitlines()]


def test_the_readme_first_hour_at_the_seed_geometry_runs_clean_and_shows_sigma(tmp_path, monkeypatch, capsys,
                                                                              caplog):
    """simulate → --auto --rotation 0 → restore → --prior, as README writes them (the simulation smaller, fewer
    epochs): every command exits 0, the run has σ, scaled by its bootstrap (the seed's Cs probe once eroded the
    whole block away: issue 86), no truncation warning (the 30 mrad probe fits model.upsampling=1's grid), restore
    prints its share beyond 3 σ against chance."""
    monkeypatch.chdir(tmp_path)
    commands = _first_hour_commands()
    assert [c[:2] for c in commands] == [["phasestem", "simulate"], ["phasestem", "reconstruct"],
                                         ["phasestem", "restore"], ["phasestem", "reconstruct"]]
    for args in commands:
        args = [str(REPO / a) if a.startswith("configs/") else a for a in args[1:]]
        if args[0] == "simulate":
            args += [a for s in SEED_SETTINGS for a in ("--set", s)]  # the same geometry, a smaller cell and scan
        args = [{"20": "3"}.get(a, a) if i and args[i - 1] == "--epochs" else a for i, a in enumerate(args)]
        if "--prior" in args:
            args += ["--epochs", "4"]
        assert main(args) == 0, (args, capsys.readouterr().err[-2000:])
    out = capsys.readouterr().out
    assert "losses: gaussian 0.5, poisson 0.5 (chosen from the data: calibration of simulation_data1.h5: the file " \
           "records a dose of 2500 e⁻/Å²" in out
    assert "% of the scanned field by more than 3 σ of the data (0.27 % would be chance" in out
    run = tmp_path / "runs" / "scan1"
    assert (run / "uncertainty.png").exists() and (run / "restored.png").exists()
    log = (run / "reconstruct.log").read_text()
    assert "phase σ per pixel" in log and "scaled by κ = " in log and "not scaled" not in log
    assert "silently truncated" not in caplog.text + log
    assert "phase σ per pixel" in (tmp_path / "runs" / "scan1_prior" / "reconstruct.log").read_text()
