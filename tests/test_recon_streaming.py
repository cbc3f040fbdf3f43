"""Streamed measured data (run.data_in_memory): the same reconstruction as in memory from a file 4× larger than
the memory budget, without holding more than the budget; the setting's validation and its way through the CLI."""
import logging

import h5py
import numpy as np
import pytest
import torch
import yaml

from phasestem.base.errors import ConfigError
from phasestem.recon import LossConfig, Ptychography
from phasestem.recon.engine import PreparedData, prepared_data
from phasestem.recon.params import load_params, run_sections
from phasestem.recon.streaming import READ_SLACK, StreamedData, choose_in_memory
from phasestem.recon.synthetic import synthetic_scan, write_npz

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GIB = 1024**3


@pytest.fixture(scope="module")
def ds():
    return synthetic_scan(scan_shape=(16, 16), seed=5, max_phase=0.4)


@pytest.fixture(scope="module")
def h5_ds(ds, tmp_path_factory):
    """The same scan with its patterns left in an HDF5 file (one chunk per pattern), read lazily."""
    path = tmp_path_factory.mktemp("stream") / "patterns.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("patterns", data=ds.patterns, chunks=(1, 1, *ds.pattern_shape))
    f = h5py.File(path, "r")
    yield ds._replace(patterns=f["patterns"])
    f.close()


class CountingArray:
    """A lazy (Sy, Sx, H, W) array-like that counts the patterns each read returns."""

    def __init__(self, arr):
        self.arr, self.shape, self.per_call = arr, arr.shape, []

    def __getitem__(self, key):
        out = self.arr[key]
        self.per_call.append(int(np.prod(out.shape[:-2])))
        return out


def _budget_gb(ds):
    """A budget of a quarter of the file (float32 patterns)."""
    return ds.patterns.size * 4 / 4 / GIB


@pytest.mark.parametrize("optimizer,losses", [("lsq", None), ("adam", LossConfig(gaussian=1.0, poisson=0.1,
                                                                                  pacbed=0.5))])
def test_streaming_from_a_file_4x_the_budget_matches_in_memory(ds, h5_ds, optimizer, losses):
    budget = _budget_gb(ds)
    assert ds.patterns.size * 4 == 4 * budget * GIB
    runs = {}
    for name, data_ds, opts in (("memory", ds, {}),
                                ("stream", h5_ds, {"data_in_memory": "auto", "memory_budget_gb": budget})):
        model = Ptychography.from_dataset(ds)
        run = model.LSQ_optimize if optimizer == "lsq" else model.Adam_optimize
        kw = {"losses": losses} if losses is not None else {}
        runs[name] = (list(run(3, data_ds, batch_size=6, progress=False, seed=7, **kw, **opts)), model)
    assert isinstance(runs["memory"][1]._data_cache[1], PreparedData)
    data = runs["stream"][1]._data_cache[1]
    assert isinstance(data, StreamedData)  # auto chose streaming: 2 copies are 8× the budget
    np.testing.assert_allclose(runs["stream"][0], runs["memory"][0], rtol=1e-5)
    for name in ("obj_phase", "obj_amplitude", "probe"):
        np.testing.assert_allclose(getattr(runs["stream"][1], name).detach().numpy(),
                                   getattr(runs["memory"][1], name).detach().numpy(), rtol=1e-4, atol=1e-5)
    for a, b in zip(runs["stream"][1].loss_history, runs["memory"][1].loss_history, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            if k != "seconds":
                assert a[k] == pytest.approx(b[k], rel=1e-5), k
    # never more than the budget of pattern buffers held at once, and no pattern read more than READ_SLACK× per epoch
    assert 0 < data.peak_bytes <= budget * GIB
    assert data.source.rows_read <= ds.n_patterns * (1 + 3 * READ_SLACK)


def test_streamed_rows_equal_the_in_memory_form_and_reads_stay_small(ds):
    model = Ptychography.from_dataset(ds)
    mem = PreparedData(ds, "cpu")
    src = CountingArray(np.asarray(ds.patterns))
    budget = ds.patterns.size * 4 // 4
    data = StreamedData(ds._replace(patterns=src), "cpu", budget=budget)
    assert data.counts == mem.counts and data.n == mem.n == ds.n_patterns
    assert torch.equal(data.pacbed_p, mem.pacbed_p)  # both summed in float64
    row = 4 * int(np.prod(ds.pattern_shape))
    assert sum(src.per_call) == ds.n_patterns and max(src.per_call) * row <= budget  # the one chunked pass
    src.per_call.clear()
    idx = torch.tensor([200, 3, 17, 3, 255, 16, 0])  # unsorted, repeated
    meas, meas_p = data.batch(idx)
    assert torch.equal(meas, mem.meas[idx]) and torch.equal(meas_p, mem.meas_p[idx])
    assert torch.equal(data.meas[idx], mem.meas[idx]) and torch.equal(data.meas_p[idx[:2]], mem.meas_p[idx[:2]])
    assert data.batch(idx, need_meas=False)[0] is None
    # a planned epoch: every batch prefetched, each read in sorted ranges of at most READ_SLACK× its rows
    src.per_call.clear()
    batches = list(torch.randperm(ds.n_patterns, generator=torch.Generator().manual_seed(1)).split(8))
    data.schedule(batches)
    for b in batches:
        torch.testing.assert_close(data.batch(b)[1], mem.meas_p[b], rtol=0, atol=0)
    assert sum(src.per_call) <= READ_SLACK * ds.n_patterns
    assert data.peak_bytes <= budget
    data.close()
    del model


def test_auto_keeps_data_that_fit_in_memory(ds):
    model = Ptychography.from_dataset(ds)
    assert isinstance(prepared_data(model, ds, 0.5, data_in_memory="auto"), PreparedData)
    # a cached form is reused by callers that do not say (e.g. the PtyRAD-loss report), replaced when asked
    tiny = _budget_gb(ds)
    streamed = prepared_data(model, ds, 0.5, data_in_memory="auto", memory_budget_gb=tiny)
    assert isinstance(streamed, StreamedData) and prepared_data(model, ds, 0.5) is streamed
    assert isinstance(prepared_data(model, ds, 0.5, data_in_memory=True, memory_budget_gb=tiny), PreparedData)
    assert choose_in_memory("false", 1e6, 4, (8, 8), "cpu") is False
    assert choose_in_memory(True, 1e-9, 4, (8, 8), "cpu") is True
    assert choose_in_memory("auto", 2 * 4 * 64 * 4 / GIB, 4, (8, 8), "cpu") is True  # exactly fits
    assert choose_in_memory("auto", 2 * 4 * 64 * 4 / GIB * 0.99, 4, (8, 8), "cpu") is False


def test_ptyrad_loss_report_reads_streamed_data(ds, h5_ds):
    from phasestem.recon.report import dataset_ptyrad_loss

    model = Ptychography.from_dataset(ds)
    whole = dataset_ptyrad_loss(model, ds, 0.5, batch_size=50)
    model._data_cache = None
    prepared_data(model, h5_ds, 0.5, data_in_memory=False, memory_budget_gb=_budget_gb(ds))
    assert dataset_ptyrad_loss(model, h5_ds, 0.5, batch_size=50) == pytest.approx(whole, rel=1e-6)


# ---- the setting ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stream_cli")
    write_npz(tmp / "tiny.npz", scan_shape=(6, 6), seed=21)
    cfg = {"data": {"file": str(tmp / "tiny.npz"), "patterns_key": "patterns"},
           "optics": {"energy": 300000.0, "semiangle": 15.0, "aberrations": {"C10": 50.0}, "sampling": 0.4},
           "scan": {"shape": [6, 6], "step": 1.0},
           "run": {"optimizer": "lsq", "n_epochs": 2, "batch_size": 6, "out_dir": str(tmp / "out"),
                   "progress": False, "check_optics": False, "checkpoint_every": 0}}
    return tmp, cfg


def _write(tmp_path, cfg):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("value,expected", [("auto", "auto"), (True, True), (False, False), ("false", False),
                                            ("True", True)])
def test_data_in_memory_values(tiny, tmp_path, value, expected):
    cfg = yaml.safe_load(yaml.safe_dump(tiny[1]))
    cfg["run"].update(data_in_memory=value, memory_budget_gb=0.5)
    params = load_params(_write(tmp_path, cfg))
    assert params.run.data_in_memory == expected
    opts = run_sections(params)
    assert opts["run"].data_in_memory == expected and opts["run"].memory_budget_gb == 0.5


def test_bad_settings_give_one_clear_error(tiny, tmp_path, capsys):
    from phasestem.cli import main

    cfg = yaml.safe_load(yaml.safe_dump(tiny[1]))
    cfg["run"]["data_in_memory"] = "sometimes"
    path = _write(tmp_path, cfg)
    with pytest.raises(ConfigError, match=r"run\.data_in_memory: must be auto, true or false") as err:
        load_params(path)
    assert str(err.value).count(":") == 2  # source: field: message, no second union branch
    code = main(["reconstruct", str(path)])
    stderr = capsys.readouterr().err
    assert code == 1 and "run.data_in_memory" in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1
    cfg["run"].update(data_in_memory="auto", memory_budget_gb=0)
    with pytest.raises(ConfigError, match=r"run\.memory_budget_gb"):
        load_params(_write(tmp_path, cfg))


def test_cli_streams_when_told(tiny, tmp_path, capsys, caplog):
    from phasestem.cli import main
    from phasestem.recon.results import load_results

    phases = {}
    for value in (True, False):
        cfg = yaml.safe_load(yaml.safe_dump(tiny[1]))
        cfg["run"].update(data_in_memory=value, out_dir=str(tmp_path / f"out_{value}"))
        with caplog.at_level(logging.INFO, logger="phasestem.recon"):
            caplog.clear()
            code = main(["reconstruct", str(_write(tmp_path, cfg))])
        assert code == 0, capsys.readouterr().err
        assert ("streamed from the data file" in caplog.text) == (not value)
        res = load_results(tmp_path / f"out_{value}" / "results.h5")
        phases[value] = np.asarray(res["obj_phase"])
    np.testing.assert_allclose(phases[False], phases[True], rtol=1e-4, atol=1e-5)


def test_two_processes_stream_their_shares_as_one_process_in_memory():
    """Under torch.distributed each rank streams the rows of its own share of every batch (gloo, 2 processes)."""
    from phasestem.recon.distributed import data_parallel_optimize

    ds = synthetic_scan(scan_shape=(6, 6), seed=31, max_phase=0.4)
    opts = {"batch_size": 12, "seed": 5}
    single = Ptychography.from_dataset(ds)
    ref = list(single.Adam_optimize(2, ds, progress=False, **opts))
    out = data_parallel_optimize(ds, 2, 2, {}, {**opts, "data_in_memory": False, "memory_budget_gb": _budget_gb(ds)})
    np.testing.assert_allclose(out["loss"], ref, rtol=1e-4)
    start = Ptychography.from_dataset(ds).state_dict()["obj_phase"]
    step_1, step_2 = single.obj_phase.detach() - start, out["state"]["obj_phase"] - start
    assert float((step_2 - step_1).norm() / step_1.norm()) < 1e-3  # float32 summation order across ranks


def test_every_kind_of_source_reads_the_same_rows(ds, h5_ds, tmp_path):
    from phasestem.recon.streaming import PatternSource

    arr = np.asarray(ds.patterns)
    mm = np.lib.format.open_memmap(tmp_path / "p.npy", mode="w+", dtype=np.uint16, shape=arr.shape)
    mm[...] = np.round(arr * 1000)
    sources = {"memmap": mm, "tensor": torch.as_tensor(arr), "hdf5": h5_ds.patterns, "counting": CountingArray(arr)}
    try:
        import dask.array as da

        sources["dask"] = da.from_array(arr, chunks=(4, 4, -1, -1))
    except ImportError:
        pass
    flat = np.array([0, 1, 2, 15, 16, 40, 41, 43, 200, 255])
    for name, src in sources.items():
        want = (np.round(arr * 1000) if name == "memmap" else arr).reshape(-1, *ds.pattern_shape)
        source = PatternSource(src)
        np.testing.assert_array_equal(source.read_sorted(flat), want[flat], err_msg=name)
        np.testing.assert_array_equal(source.read_range(14, 50), want[14:50], err_msg=name)
        assert source.read_sorted(flat).dtype == np.float32
