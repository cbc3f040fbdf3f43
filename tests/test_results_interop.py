"""results.emd (EMD 1.0): read back by the readers py4DSTEM and HyperSpy users have (emdfile, RosettaSciIO's EMD
reader), with the object and probe on Å axes."""
import h5py
import numpy as np
import pytest
import yaml

from phasestem.recon import Ptychography
from phasestem.recon.results import EMD_ROOT, load_results, save_emd
from phasestem.recon.synthetic import synthetic_scan, write_npz

emdfile = pytest.importorskip("emdfile")
rsciio_emd = pytest.importorskip("rsciio.emd")

CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fitted():
    ds = synthetic_scan(scan_shape=(4, 4), seed=5, max_phase=0.3)
    model = Ptychography.from_dataset(ds, n_slices=2, n_probe_modes=2)
    list(model.Adam_optimize(1, ds, batch_size=16, progress=False))
    return model


def _linear(dim: np.ndarray) -> tuple[float, float]:
    """(offset, step) of an EMD dim vector, checking it is linear."""
    dim = np.asarray(dim, dtype=float)
    step = dim[1] - dim[0]
    np.testing.assert_allclose(dim, dim[0] + step * np.arange(len(dim)), atol=1e-9)
    return float(dim[0]), float(step)


def test_emd_reads_back_through_emdfile_with_angstrom_axes(fitted, tmp_path):
    model = fitted
    path = model.save_results(tmp_path / "res.emd")
    assert [p.name for p in tmp_path.iterdir()] == ["res.emd"]  # written atomically: no temporary left
    dy, dx = model.sampling
    oy, ox = model.origin
    ref = model.save_results()  # the same results as a dict (results.h5's arrays)

    # the scanned field only: the object pixels inside the bounding box of the probe positions
    pos = ref["positions"]
    iy, ix = round(oy / dy), round(ox / dx)  # the first scan position (0 Å) in the whole object's pixels
    y1 = iy + int(np.ceil(pos[:, 0].max() / dy)) + 1
    x1 = ix + int(np.ceil(pos[:, 1].max() / dx)) + 1
    field = (slice(iy, y1), slice(ix, x1))
    assert (y1 - iy) * (x1 - ix) < ref["phase_sum"].size / 2  # the padding was most of the object
    phase = emdfile.read(path, emdpath=f"{EMD_ROOT}/object_phase")
    np.testing.assert_array_equal(phase.data, ref["phase_sum"][field])
    assert list(phase.dim_names) == ["y", "x"] and list(phase.dim_units) == ["A", "A"]
    assert _linear(phase.dims[0]) == pytest.approx((iy * dy - oy, dy))
    assert _linear(phase.dims[1]) == pytest.approx((ix * dx - ox, dx))
    # the first scan position sits at 0 Å, the field's first pixel
    assert phase.dims[0][0] == pytest.approx(0, abs=1e-6) and phase.dims[1][0] == pytest.approx(0, abs=1e-6)
    np.testing.assert_allclose(model.dataset_positions()[0].numpy(), 0, atol=1e-5)

    amp = emdfile.read(path, emdpath=f"{EMD_ROOT}/object_amplitude")
    np.testing.assert_array_equal(amp.data, ref["amplitude_prod"][field])
    slices = emdfile.read(path, emdpath=f"{EMD_ROOT}/slice_phases")
    np.testing.assert_array_equal(slices.data, ref["obj_phase"][0][(slice(None), *field)])
    assert _linear(slices.dims[0]) == pytest.approx((0.0, float(model.slice_thickness.detach())))

    probe = emdfile.read(path, emdpath=f"{EMD_ROOT}/probe")
    assert probe.data.dtype == np.complex64 and probe.data.shape == (2, 32, 32)
    np.testing.assert_array_equal(probe.data, ref["probe"])
    assert list(probe.dim_names) == ["mode", "y", "x"]
    assert _linear(probe.dims[1]) == pytest.approx((-16 * dy, dy))  # centred: 0 Å at pixel n//2

    h5 = model.save_results(tmp_path / "res.h5")  # an existing results.h5 converts to the same arrays
    converted = save_emd(load_results(h5), tmp_path / "converted.emd")
    for name in ("object_phase", "object_amplitude", "slice_phases", "probe"):
        a, b = (emdfile.read(p, emdpath=f"{EMD_ROOT}/{name}") for p in (path, converted))
        np.testing.assert_array_equal(a.data, b.data)
        for da, db in zip(a.dims, b.dims, strict=True):
            np.testing.assert_array_equal(da, db)

    meta = emdfile.read(path).metadata["phasestem"]
    assert meta["energy"] == pytest.approx(model.energy) and meta["epoch"] == 1
    np.testing.assert_allclose(meta["sampling"], model.sampling)
    np.testing.assert_allclose(meta["origin"], model.origin)
    assert list(meta["field"]) == [iy, y1, ix, x1] and list(meta["object_shape"]) == list(ref["phase_sum"].shape)


def test_hyperspy_reader_gives_signals_with_angstrom_axes(fitted, tmp_path):
    """RosettaSciIO's EMD reader is what ``hs.load("results.emd")`` calls."""
    model = fitted
    path = model.save_results(tmp_path / "res.emd")
    signals = {s["metadata"]["General"]["title"]: s for s in rsciio_emd.file_reader(str(path))}
    assert set(signals) == {"object_phase", "object_amplitude", "slice_phases", "probe"}
    ref = model.save_results()
    phase = signals["object_phase"]
    y0, y1, x0, x1 = emdfile.read(path).metadata["phasestem"]["field"]
    np.testing.assert_array_equal(np.asarray(phase["data"]), ref["phase_sum"][y0:y1, x0:x1])
    (ay, ax) = sorted(phase["axes"], key=lambda a: a["index_in_array"])
    assert (ay["name"], ax["name"]) == ("y", "x") and ay["units"] == ax["units"] == "Å"
    assert (ay["scale"], ay["offset"]) == pytest.approx((model.sampling[0], y0 * model.sampling[0] - model.origin[0]))
    assert (ax["scale"], ax["offset"]) == pytest.approx((model.sampling[1], x0 * model.sampling[1] - model.origin[1]))
    assert ay["offset"] == pytest.approx(0, abs=1e-6)  # the first scan position at 0 Å
    probe = signals["probe"]
    assert np.asarray(probe["data"]).dtype == np.complex64
    np.testing.assert_array_equal(np.asarray(probe["data"]), ref["probe"])


def test_single_mode_single_slice_gives_plain_images(tmp_path):
    ds = synthetic_scan(scan_shape=(3, 3), seed=6, max_phase=0.3)
    model = Ptychography.from_dataset(ds)
    path = model.save_results(tmp_path / "r.emd")
    with h5py.File(path, "r") as f:
        assert sorted(k for k in f[EMD_ROOT] if f[EMD_ROOT][k].attrs["emd_group_type"] == "array") == [
            "object_amplitude", "object_phase", "probe"]
    assert emdfile.read(path, emdpath=f"{EMD_ROOT}/probe").data.shape == (32, 32)  # one mode: a 2-D image


def test_cli_reconstruct_writes_results_emd_beside_results_h5(tmp_path, capsys):
    from phasestem.cli import main

    write_npz(tmp_path / "tiny.npz", scan_shape=(4, 4), seed=21)
    cfg = yaml.safe_load((CONFIGS / "reconstruct_tiny.yaml").read_text())
    cfg["data"]["file"] = str(tmp_path / "tiny.npz")
    cfg["scan"]["shape"] = [4, 4]
    cfg["run"].update(n_epochs=1, progress=False)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["reconstruct", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "run")]) == 0
    h5 = load_results(tmp_path / "run" / "results.h5")
    (phase,) = [s for s in rsciio_emd.file_reader(str(tmp_path / "run" / "results.emd"))
                if s["metadata"]["General"]["title"] == "object_phase"]
    y0, y1, x0, x1 = emdfile.read(tmp_path / "run" / "results.emd").metadata["phasestem"]["field"]
    np.testing.assert_array_equal(np.asarray(phase["data"]), h5["phase_sum"][y0:y1, x0:x1])
    assert phase["axes"][0]["scale"] == pytest.approx(h5["attrs"]["sampling"][0])


def test_the_sigma_map_reads_back_through_hyperspy_beside_the_phase(fitted, tmp_path):
    """With σ maps (issue 53) results.emd holds them on the phase's own field and axes, and RosettaSciIO still reads
    every array as its own signal. Issue 64: results.h5 and results.emd hold σ under the same names
    (``phase_sum_sigma``, ``phase_sigma`` per slice), the same arrays (results.emd's over the scanned field), both
    with the unit rad."""
    from phasestem.recon.uncertainty import phase_uncertainty

    model = fitted
    model.uncertainty = phase_uncertainty(model, 1e4)
    try:
        path = model.save_results(tmp_path / "res.emd")
        h5_path = model.save_results(tmp_path / "res.h5")
    finally:
        model.uncertainty = None
    signals = {s["metadata"]["General"]["title"]: s for s in rsciio_emd.file_reader(str(path))}
    assert set(signals) == {"object_phase", "object_amplitude", "slice_phases", "probe", "phase_sum_sigma",
                            "phase_sigma"}
    np.testing.assert_array_equal(np.asarray(signals["phase_sigma"]["data"]).shape,
                                  np.asarray(signals["slice_phases"]["data"]).shape)
    y0, y1, x0, x1 = emdfile.read(path).metadata["phasestem"]["field"]
    with h5py.File(h5_path, "r") as h5:
        for name in ("phase_sum_sigma", "phase_sigma"):
            stored = h5[f"uncertainty/{name}"]
            emd = emdfile.read(path, emdpath=f"{EMD_ROOT}/{name}")
            assert stored.attrs["units"] == "rad" and emd.units == "rad", name
            np.testing.assert_array_equal(emd.data, stored[...][..., y0:y1, x0:x1])
            np.testing.assert_array_equal(np.asarray(signals[name]["data"]), emd.data)
    axes = [(a["name"], a["scale"], a["offset"]) for a in signals["phase_sum_sigma"]["axes"]]
    assert axes == [(a["name"], a["scale"], a["offset"]) for a in signals["object_phase"]["axes"]]
