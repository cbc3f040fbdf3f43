"""benchmarks/learned/restorer_report.py: AD's best is the lowest E_φ of any AD run, epoch or swept setting, with the
seconds to it; the learned route's time to it is AD's to the first epoch whose restoration reaches it plus the
restorer's; ratios and reach per half and dose."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def report():
    from bench_scripts import load_bench

    return load_bench("restorer_report")


def _row(file, row, electrons, ad, restored, seconds, kind="crystal", restore_s=0.5):
    r = {"file": file, "row": row, "electrons": electrons, "kind": kind, "restore_seconds": restore_s}
    for e, a, b, s in zip((2, 20), ad, restored, seconds, strict=True):
        r |= {f"ad_aligned_{e}": a, f"restored_aligned_{e}": b, f"seconds_{e}": s}
    return r


def test_ad_best_over_runs_and_settings_and_the_speedup(report):
    rows = [_row("pairs_val", 0, None, (0.5, 0.4), (0.3, 0.25), (1.0, 10.0)),
            _row("pairs_val", 1, 1e4, (0.7, 0.5), (0.6, 0.45), (1.0, 10.0)),
            _row("long_val", 0, None, (0.5, 0.35), (0.3, 0.2), (1.0, 50.0)),
            _row("long_val", 1, 1e4, (0.7, 0.6), (0.6, 0.5), (1.0, 50.0))]
    sweep = {"val:0|1e+04|lsq0.7-mixed": {"best": 0.46, "best_seconds": 20.0, "best_epoch": 40}}
    samples = {s["electrons"]: s for s in report.per_sample({"rows": rows}, sweep)}
    clean, counted = samples[None], samples[1e4]
    assert clean["ad_best"] == 0.35 and clean["ad_best_seconds"] == 50.0  # the long run's end
    assert clean["learned_seconds_to_ad_best"] == 1.5 and clean["speedup"] == pytest.approx(50 / 1.5)
    assert counted["ad_best"] == 0.46 and counted["ad_best_seconds"] == 20.0  # the swept setting
    assert counted["learned_seconds_to_ad_best"] == 10.5  # epoch 2's restoration (0.6) does not reach 0.46
    summary = report.summarize(list(samples.values()))
    g = summary["by_dose"]["val, noise-free"]
    assert g["ratio_2"] == pytest.approx(0.3 / 0.35) and g["reached"] == "1/1"
    assert "| val, 1e+04 |" in report.markdown(summary)
    # quiet timings replace the recorded seconds: AD's per-epoch cost × epochs, the restorer's own
    speed = {"val:0|none": {"seconds_per_epoch": 0.2, "restore_seconds": 0.6}}
    clean = next(s for s in report.per_sample({"rows": rows}, sweep, speed) if s["electrons"] is None)
    assert clean["ad_best_seconds"] == pytest.approx(0.2 * 20) and clean["timed_quietly"]
    assert clean["learned_seconds_to_ad_best"] == pytest.approx(0.2 * 2 + 0.6)
