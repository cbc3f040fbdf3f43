"""The scaling study (benchmarks/learned/scaling.py): the power-law fit recovers known parameters, and the step logic
(nested training parts, chunked stages resumed from the trainer's checkpoint, points scored on abTEM samples,
reruns that skip what exists) runs on a smoke layout."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _scaling():
    from bench_scripts import load_bench

    return load_bench("scaling")


def test_power_law_fit_recovers_known_parameters():
    s = _scaling()
    n = np.array([16, 64, 256, 1024, 3500], float)
    a, b, c = 2.0, 0.45, 0.12
    e = s.power_law(n, a, b, c)
    fit = s.fit_power_law(list(n), list(e), [0.005] * len(n))
    assert fit["a"] == pytest.approx(a, rel=1e-3) and fit["b"] == pytest.approx(b, rel=1e-3)
    assert fit["c"] == pytest.approx(c, abs=1e-4) and fit["at_seed"] == pytest.approx(s.power_law(3500, a, b, c))
    # with noise of known size the parameters stay within a few standard errors
    rng = np.random.default_rng(1)
    noisy = s.fit_power_law(list(n), list(e + rng.normal(0, 0.002, len(n))), [0.002] * len(n))
    assert abs(noisy["b"] - b) < 4 * noisy["errors"][1] + 0.02
    # two points: a pure power law through both (c = 0); one point: no fit
    two = s.fit_power_law([64, 256], [0.5, 0.25])
    assert two["b"] == pytest.approx(0.5) and two["c"] == 0 and two["at_seed"] == pytest.approx(0.5 * (64 / 3500) ** .5)
    assert s.fit_power_law([64], [0.5]) is None
    # the epochs rule: the same sample passes as at 64 samples, with a floor
    assert s.stage_epochs("tiny", 64) == s.REF_EPOCHS["tiny"]
    assert s.stage_epochs("tiny", 3500) == {k: max(s.MIN_EPOCHS[k], round(v * 64 / 3500))
                                            for k, v in s.REF_EPOCHS["tiny"].items()}
    assert s.stage_epochs("tiny", 16, {"patch": 4, "stitch": 8, "end2end": 2}, 32) == {"patch": 8, "stitch": 16,
                                                                                       "end2end": 4}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    pytest.importorskip("abtem")
    s = _scaling()
    out = tmp_path_factory.mktemp("scaling")
    argv = ["--out", str(out), "--layout", "smoke", "--sizes", "tiny", "--n-train", "4", "8", "--part", "4",
            "--phonons", "1", "--heldout-phonons", "1", "--n-heldout", "2", "--epochs", "1", "1", "1",
            "--ref-samples", "4"]
    assert s.main(argv) == 0
    return s, out, argv


def test_smoke_study_points_fit_and_rerun(smoke):
    s, out, argv = smoke
    result = json.loads((out / "scaling.json").read_text())
    points = result["points"]["tiny"]
    assert [p["n"] for p in points] == [4, 8]
    for p in points:
        assert np.isfinite(p["phase_error"]) and np.isfinite(p["baseline_phase_error"]) and p["n_heldout"] == 2
        assert set(p["train_seconds"]) == {"patch", "stitch", "end2end"}
    # nested training sets: n = 8 adds a second part to the first
    parts = sorted((out / "data" / "smoke_ph1_part4").glob("part_*/simulation_data1.h5"))
    assert len(parts) == 2
    assert result["fits"]["tiny"]["form"].startswith("a·n^-b (2 points")
    assert (out / "scaling.png").stat().st_size > 0 and "extrapolated" in (out / "scaling.md").read_text()
    # a rerun finds every step done: nothing is trained or simulated again
    assert points[1]["epochs"] == {"patch": 2, "stitch": 3, "end2end": 1}  # n = 8: the passes of n = 4, the floors
    model = out / "runs" / "tiny_n8_e2-3-1" / "end2end" / "best" / "model.safetensors"
    stamp = model.stat().st_mtime_ns
    assert s.main(argv) == 0
    assert model.stat().st_mtime_ns == stamp


def test_stage_chunks_resume_from_the_checkpoint(smoke, tmp_path):
    """A stage of 2 epochs in chunks of 1: the first step stops after one epoch with a checkpoint, the second resumes
    it and finishes the stage; a third call does nothing."""
    s, out, _ = smoke
    files = sorted((out / "data" / "smoke_ph1_part4").glob("part_*/simulation_data1.h5"))
    cfg = s.stage_configs("tiny", "smoke", files, 8, tmp_path / "runs", {"patch": 1, "stitch": 2, "end2end": 1})
    budget = s.Budget(None)
    path = tmp_path / "stitch.yaml"
    assert s.train_stage(cfg["stitch"], path, 1, budget) is False
    assert s._epochs_done(tmp_path / "runs" / "stitch")[0] == 1
    assert not (tmp_path / "runs" / "stitch.done").exists()
    assert s.train_stage(cfg["stitch"], path, 1, budget) is True
    assert s._epochs_done(tmp_path / "runs" / "stitch")[0] == 2
    done = json.loads((tmp_path / "runs" / "stitch.done").read_text())
    assert done["epochs"] == 2
    assert s.train_stage(cfg["stitch"], path, 1, budget) is True
    # an invocation whose time is up stops before a step, with the exit status that asks for a rerun
    with pytest.raises(s.OutOfTime):
        s.Budget(0.0).check(1.0, "a step")
