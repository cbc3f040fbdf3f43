"""The held-out benchmark of both routes (benchmarks/learned/heldout.py) end to end at the smoke layout: abTEM
specimens of the unseen kinds, training, every route, the report; a rerun reads everything back."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("abtem")


def _module(name: str):
    from bench_scripts import load_bench

    return load_bench(name)


def test_unseen_specimen_kinds():
    samples = _module("abtem_samples")
    rng = np.random.default_rng(0)
    for kind in ("wurtzite", "mos2"):
        atoms = samples.random_specimen(rng, kind, (12.0, 12.0), 12.0, 3.0)
        assert atoms.info["name"].startswith(kind) and len(atoms) > 20
        assert (atoms.positions[:, :2] >= 0).all() and (atoms.positions[:, 0] < 12).all()
    atoms = samples.random_specimen(rng, "amorphous", (12.0, 12.0), 10.0, 3.0)
    density = len(atoms) / (12 * 12 * 10)
    assert density in (pytest.approx(0.09, rel=0.02), pytest.approx(0.05, rel=0.02))
    d = atoms.get_all_distances(mic=True)  # periodic in x and y
    assert d[np.triu_indices(len(atoms), 1)].min() >= 1.3 - 1e-9
    with pytest.raises(ValueError, match="specimen kind"):
        samples.random_specimen(rng, "quasicrystal", (12.0, 12.0), 10.0, 3.0)


def test_smoke_run_and_resume(tmp_path):
    heldout = _module("heldout")
    args = ["--out", str(tmp_path / "o"), "--layout", "smoke", "--n-heldout", "2", "--n-train", "4",
            "--epochs-scale", "0.1", "--ad-epochs", "2", "--default-epochs", "2", "--settings", "c", "--in-process"]
    res = heldout.main(args)
    assert set(res["settings"]) == {"c"}  # the dense setting: counted copy, prediction from every other position
    for r in res["settings"].values():
        assert r["kinds"] == ["crystal", "crystal"]
        for half in ("dev", "val"):
            t = r["table"][half]
            for route in heldout.ROUTES:
                e, m = t[route]["best_error"][0], t[route]
                assert np.isfinite(e) and e > 0 and np.isfinite(m["psnr"][0]) and np.isfinite(m["residual"][0])
            # AD's best is the lowest mean best E_φ on the development half, so never worse there than its defaults
            if half == "dev":
                assert t["ad_best"]["best_error"][0] <= t["ad_default"]["best_error"][0] + 1e-12
            assert set(t["acceptance"]) == {"i_learned", "i_hybrid", "ii_wall", "ii_cpu", "iii_wall", "iii_cpu",
                                            "iii_flat_wall", "iii_flat_cpu"}
        assert {"ad_best", "ad_sweep_dev", "hybrid", "hybrid_dev"} <= set(r["choices"])
    assert res["settings"]["c"]["choices"]["model"] in ("clean", "lowdose")  # chosen on development
    curve = heldout._load(heldout.result_path(tmp_path / "o", "c", 0, "ad_default"))
    assert len(curve["errors"]) == len(curve["seconds"]) == 3 and np.all(np.diff(curve["seconds"]) > 0)
    learned = heldout._load(heldout.result_path(tmp_path / "o", "c", 1, "learned"))
    assert learned["subsample"] == 2  # the dense scan's prediction from every other position
    files = sorted((tmp_path / "o" / "results").rglob("*.json"))
    stamps = [f.stat().st_mtime_ns for f in files]
    again = heldout.main(args)  # resumes: nothing is recomputed, the same report
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert json.dumps(again["settings"]["c"]["table"]) == json.dumps(res["settings"]["c"]["table"])
    assert "| hybrid (AD from the prediction) | val |" in (tmp_path / "o" / "result.md").read_text()


def test_acceptance_ratios_and_the_flat_start_control():
    """(i)–(iii) per sample from hand-made curves, and the control: AD's best settings from a flat start to AD's
    final error, which says how much of the hybrid's head start is its settings rather than its prediction."""
    heldout = _module("heldout")

    def curve(errors, seconds, **kw):
        return {"sample": 0, "errors": errors, "seconds": seconds, "cpu_seconds": [2 * s for s in seconds],
                "best_error": min(errors), "best_seconds": seconds[int(np.argmin(errors))],
                "best_cpu_seconds": 2 * seconds[int(np.argmin(errors))], **kw}

    rows = {"learned": [{"sample": 0, "phase_error": 0.6, "seconds": 0.5, "cpu_seconds": 1.0}],
            "ad_default": [curve([1.0, 0.5, 0.4], [0.0, 5.0, 10.0])],
            "ad_best": [curve([1.0, 0.4, 0.2], [0.0, 2.0, 8.0])],
            "hybrid": [curve([0.6, 0.3, 0.2], [0.0, 1.5, 3.5])]}
    a = heldout.acceptance(rows)
    assert a["i_learned"] == [pytest.approx(3.0)] and a["i_hybrid"] == [pytest.approx(1.0)]
    assert a["ii_wall"] == [pytest.approx(8.0 / 4.0)]  # AD's best (0.2) at 8 s; the hybrid's at 0.5 + 3.5 s
    assert a["iii_wall"] == [pytest.approx(2.0 / 10.0)] and a["iii_cpu"] == [pytest.approx(4.0 / 20.0)]
    assert a["iii_flat_wall"] == [pytest.approx(2.0 / 10.0)] and a["iii_flat_cpu"] == [pytest.approx(4.0 / 20.0)]
    rows["ad_best"] = [curve([1.0, 0.45, 0.41], [0.0, 2.0, 8.0])]  # never reaches the defaults' final 0.4
    assert heldout.acceptance(rows)["iii_flat_wall"] == [None]
