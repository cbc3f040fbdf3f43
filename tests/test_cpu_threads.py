"""The CPU threads of a reconstruction (:mod:`phasestem.base.threads`, issue 86, item 6): ``run.cpu_threads: auto``
takes the cores other work leaves free at the start, an ``OMP_NUM_THREADS`` in the environment wins, a number is
taken as it is; the ``phasestem`` command lets idle OpenMP threads sleep; the choice is in the run log."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from numpy_cases import tiny_params

from phasestem.base.errors import ConfigError
from phasestem.base.threads import (
    Decision,
    busy_cores,
    cpu_threads,
    cpu_times,
    decide_cpu_threads,
    prefer_passive_wait,
)
from phasestem.recon.params import dump_params
from phasestem.recon.synthetic import synthetic_scan

#: (cores, busy, OMP_NUM_THREADS, run.cpu_threads, torch's count now) → (threads, the line starts, it holds)
TABLE = [
    ((2, 1.9, None, "auto", None), (1, "run.cpu_threads auto: 1 of 2 cores (load average 1.9 at start)", "")),
    ((2, 0.1, None, "auto", None), (2, "run.cpu_threads auto: 2 of 2 cores", "")),
    ((2, 0.49, None, "auto", 2), (2, "run.cpu_threads auto: 2 of 2 cores", "")),  # a core less than half busy: free
    ((2, 0.6, None, "auto", 2), (1, "run.cpu_threads auto: 1 of 2 cores", "")),
    ((2, 7.0, None, "auto", 2), (1, "run.cpu_threads auto: 1 of 2 cores", "")),  # at least one
    ((16, 2.2, None, "auto", 16), (14, "run.cpu_threads auto: 14 of 16 cores", "")),
    ((16, None, None, "auto", 16), (16, "run.cpu_threads auto: 16 of 16 cores (load unknown)", "")),
    ((16, 0.0, None, "auto", 4), (4, "run.cpu_threads auto: 4 of 16 cores", "torch was set to 4 before the run")),
    ((2, 1.9, None, 2, 2), (2, "run.cpu_threads 2: 2 of 2 cores", "")),  # a number: as it is, load or not
    ((2, 0.0, None, 4, 2), (4, "run.cpu_threads 4: 4 of 2 cores", "")),
    ((2, 1.9, "3", "auto", 3), (3, "run.cpu_threads: 3 threads from OMP_NUM_THREADS=3 in the environment", "")),
    ((2, 0.0, "4,2", "auto", 4), (4, "run.cpu_threads: 4 threads from OMP_NUM_THREADS=4,2", "")),  # nested: the first
    ((2, 0.0, "1", 2, 1), (1, "run.cpu_threads: 1 thread from OMP_NUM_THREADS=1", "run.cpu_threads 2 not applied")),
    ((2, 1.9, "many", "auto", 2), (1, "run.cpu_threads auto: 1 of 2 cores", "OMP_NUM_THREADS='many' is not a count")),
    ((2, 0.0, "0", "auto", 2), (2, "run.cpu_threads auto: 2 of 2 cores", "OMP_NUM_THREADS='0' is not a count")),
]


@pytest.mark.parametrize(("given", "expected"), TABLE)
def test_the_thread_count_follows_the_cores_the_load_the_environment_and_the_setting(given, expected):
    threads, start, holds = expected
    decision = decide_cpu_threads(*given)
    assert decision.threads == threads and decision.line.startswith(start) and holds in decision.line, decision


def test_the_load_in_words_is_the_measurement_s():
    d = decide_cpu_threads(2, 1.0, None, "auto", 2, "other work on 1.0 of them over 0.2 s; load average 5.1 at start")
    assert d == Decision(1, "run.cpu_threads auto: 1 of 2 cores (other work on 1.0 of them over 0.2 s; load average "
                            "5.1 at start)")


STAT_BEFORE = """cpu  300 900 100 700 0 0 0 0 0 0
cpu0 100 0 50 350 0 0 0 0 0 0
cpu1 200 900 50 350 0 0 0 0 0 0
intr 1 2 3
"""
STAT_AFTER = """cpu  380 930 100 790 0 0 0 0 0 0
cpu0 120 0 50 430 0 0 0 0 0 0
cpu1 260 930 50 360 0 0 0 0 0 0
"""


def test_other_work_is_read_from_proc_stat_per_cpu_niced_work_included():
    # 100 ticks per CPU: cpu0 20 user (10 of them this process's), cpu1 60 user and 30 niced
    before, after = cpu_times(STAT_BEFORE, {0, 1}), cpu_times(STAT_AFTER, {0, 1})
    assert before == (1300.0, 2000.0) and after == (1410.0, 2200.0)
    assert busy_cores(before, after, 2, own_ticks=10.0) == pytest.approx(1.0)
    assert cpu_times(STAT_BEFORE, {0}) == (150.0, 500.0)  # only the CPUs of this process's affinity
    assert cpu_times(STAT_BEFORE, {5}) is None


@pytest.mark.parametrize("value", [0, -1, "many", 1.5])
def test_a_thread_count_below_one_or_not_a_number_is_refused_in_one_line(tmp_path, value):
    with pytest.raises(ConfigError) as err:
        tiny_params(tmp_path / "d.npz", 1.0, tmp_path / "r", cpu_threads=value)
    text = str(err.value)
    assert "run.cpu_threads" in text and "\n" not in text.strip(), text
    assert tiny_params(tmp_path / "d.npz", 1.0, tmp_path / "r", cpu_threads=3).run.cpu_threads == 3
    assert tiny_params(tmp_path / "d.npz", 1.0, tmp_path / "r").run.cpu_threads == "auto"


def test_the_block_runs_on_the_decided_count_and_torch_s_is_restored(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    with cpu_threads(1) as decision:
        assert torch.get_num_threads() == 1 and decision.threads == 1
    assert torch.get_num_threads() == before
    with cpu_threads(3, device="cuda:0") as decision:  # a GPU run: nothing changed, nothing to log
        assert decision is None and torch.get_num_threads() == before
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with cpu_threads(2) as decision:
        assert torch.get_num_threads() == 1 and "run.cpu_threads 2 not applied" in decision.line
    assert torch.get_num_threads() == before


def test_the_passive_wait_policy_only_before_torch_and_never_over_the_user_s():
    assert not prefer_passive_wait({})  # torch is loaded in this process: too late, left alone
    code = ("import sys; from phasestem.base.threads import prefer_passive_wait as p; a, b, c = {}, "
            "{'OMP_WAIT_POLICY': 'ACTIVE'}, {}; print(p(a, busy=1.0), a, p(b), b, p(c, busy=0.1), c, "
            "'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout.strip()
    # busy: passive; the user's policy: kept; an idle machine: OpenMP's own wait
    assert out == "True {'OMP_WAIT_POLICY': 'PASSIVE'} False {'OMP_WAIT_POLICY': 'ACTIVE'} False {} False", out


def test_the_run_log_says_the_thread_count_and_why(tmp_path):
    """A real small reconstruction in this process: the decision's line in reconstruct.log, torch's count
    restored after; through the command (a fresh process) with the passive wait policy."""
    from phasestem.recon.run import run_reconstruction

    data = tmp_path / "tiny.npy"
    np.save(data, np.asarray(synthetic_scan(scan_shape=(6, 6), seed=3).patterns, dtype=np.float32))
    before = torch.get_num_threads()
    run_reconstruction(tiny_params(data, 1.0, tmp_path / "r1", n_epochs=1, uncertainty="off", cpu_threads=1))
    log_text = (tmp_path / "r1" / "reconstruct.log").read_text()
    assert f"run.cpu_threads 1: 1 of {len(os.sched_getaffinity(0))} cores" in log_text, log_text
    assert log_text.count("run.cpu_threads") == 1 and torch.get_num_threads() == before

    params = tiny_params(data, 1.0, tmp_path / "r2", n_epochs=1, uncertainty="off")
    (tmp_path / "p.yaml").write_text(dump_params(params))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    proc = subprocess.run([sys.executable, "-m", "phasestem.cli", "reconstruct", str(tmp_path / "p.yaml")],
                          capture_output=True, text=True, timeout=600, env=env | {"MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [s for s in (tmp_path / "r2" / "reconstruct.log").read_text().splitlines() if "run.cpu_threads" in s]
    assert len(line) == 1 and "run.cpu_threads auto: " in line[0] and " cores (other work on " in line[0], line
    # passive where the start found other work on half a core or more (this machine may be idle or not)
    busy = float(line[0].split("other work on ")[1].split(" of them")[0])
    assert line[0].endswith("; OMP_WAIT_POLICY=PASSIVE") == (busy >= 0.5), line
