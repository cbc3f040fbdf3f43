"""Issue 63, reproduction 1: an HDF5 file of a few kB must not read a file outside its folder (or outside
PHASESTEM_READ_ROOT) through external storage, an external link (also behind a soft link or found by HDF5 in the
working folder), a virtual dataset, a Dectris master's data links, an EMD datacube, a CXI data entry, a MATLAB v7.3
array, a HyperSpy file or a forged results.h5; a virtual dataset over missing sources declaring 1 TiB is refused
at once. Each hostile file is built here; every reader refuses it in one line naming the file and the dataset, and
no byte of the secret comes back. The user may opt in (API and CLI) where PHASESTEM_READ_ROOT is not set."""
from __future__ import annotations

import time
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from phasestem import io
from phasestem.base.errors import InputFileError
from phasestem.base.hdf5_links import READ_ROOT_VARIABLE
from phasestem.cli import main
from phasestem.recon.results import FORMAT, load_results
from phasestem.serve.outcome import loss_history

#: the outside file an attacker wants: 40 bytes, as in the issue (40 'total' values were its 40 bytes)
SECRET = b"the server's private key: 7c1e9a40f2b3d5"
CAL = {"energy": 300e3, "scan_step": 1.0, "angular_sampling": 1.0}
SHAPE = (2, 2, 2, 5)  # 40 uint8 values: the secret as a 4-D scan


@pytest.fixture
def place(tmp_path, monkeypatch):
    """``data/`` (the file's folder, also the working folder) and ``outside/`` holding the secret."""
    assert len(SECRET) == 40
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    with h5py.File(outside / "stolen.h5", "w") as f:  # the secret as an HDF5 dataset, for links and sources
        f.create_dataset("x", data=np.frombuffer(SECRET, np.uint8).reshape(SHAPE), chunks=SHAPE)
    monkeypatch.delenv(READ_ROOT_VARIABLE, raising=False)
    monkeypatch.chdir(data)
    return SimpleNamespace(root=tmp_path, data=data, outside=outside, secret=outside / "secret.txt",
                           stolen=outside / "stolen.h5")


def refused(call, *needles: str) -> str:
    """``call()`` raises one InputFileError line holding every needle and no byte of the secret."""
    with pytest.raises(InputFileError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message, message
    assert all(n in message for n in needles), message
    assert SECRET.decode() not in message and SECRET.decode()[-10:] not in message
    return message


def as_bytes(ds) -> bytes:
    return np.asarray(ds.patterns, dtype=np.float32).astype(np.uint8).tobytes()


def external_storage(group: h5py.Group, name: str, target, shape=SHAPE, dtype="u1") -> None:
    group.create_dataset(name, shape=shape, dtype=dtype, external=[(str(target), 0, len(SECRET))])


def virtual_over(group: h5py.Group, name: str, file_name: str, source: str = "x", shape=SHAPE) -> None:
    layout = h5py.VirtualLayout(shape=shape, dtype="u1")
    layout[...] = h5py.VirtualSource(file_name, source, shape=shape)
    group.create_virtual_dataset(name, layout, fillvalue=0)


# ---- the generic HDF5 reader: every way out of the folder --------------------------------------------------------
def _external_storage(f, p):
    external_storage(f, "patterns", p.secret)


def _external_link(f, p):
    f["patterns"] = h5py.ExternalLink(str(p.stolen), "/x")


def _soft_link_to_external_link(f, p):
    f["hidden/deep"] = h5py.ExternalLink("../outside/stolen.h5", "/x")
    f["patterns"] = h5py.SoftLink("/hidden/deep")


def _virtual_dataset(f, p):
    virtual_over(f, "patterns", str(p.stolen))


def _symbolic_link_in_the_folder(f, p):
    (p.data / "innocent.bin").symlink_to(p.secret)
    external_storage(f, "patterns", "innocent.bin")


HOSTILE = {
    "external storage": (_external_storage, ":patterns", "external file"),
    "external link": (_external_link, ":patterns", "external link"),
    "soft link to an external link": (_soft_link_to_external_link, ":hidden/deep", "external link"),
    "virtual dataset": (_virtual_dataset, ":patterns", "virtual dataset over"),
    "symbolic link inside the folder": (_symbolic_link_in_the_folder, ":patterns", "external file innocent.bin"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_generic_hdf5_refuses_every_way_out_and_the_opt_in_reads_it(place, case):
    build, where, what = HOSTILE[case]
    path = place.data / "scan.h5"
    with h5py.File(path, "w") as f:
        build(f, place)
    refused(lambda: io.load(path, patterns_key="patterns", **CAL), f"scan.h5{where}", what, "outside",
            str(place.data), "--allow-external-links")
    # the file is truly hostile: with the user's opt-in it reads the secret
    assert as_bytes(io.load(path, patterns_key="patterns", allow_external_links=True, **CAL)) == SECRET


def test_a_relative_link_that_hdf5_would_find_in_the_working_folder_is_refused(place, monkeypatch):
    """HDF5 looks for a relative target beside the file, then in the working folder: the second is outside."""
    path = place.data / "scan.h5"
    with h5py.File(path, "w") as f:
        f["patterns"] = h5py.ExternalLink("stolen.h5", "/x")
    monkeypatch.chdir(place.outside)
    refused(lambda: io.load(path, patterns_key="patterns", **CAL), "scan.h5:patterns", "external link to stolen.h5",
            f"found at {place.stolen}")


def test_links_and_sources_inside_the_folder_still_read(place):
    part = place.data / "part.h5"
    frames = np.arange(40, dtype=np.uint8).reshape(SHAPE)
    with h5py.File(part, "w") as f:
        f["x"] = frames
    path = place.data / "scan.h5"
    with h5py.File(path, "w") as f:
        f["linked"] = h5py.ExternalLink("part.h5", "/x")
        virtual_over(f, "virtual", "part.h5")
        f["soft"] = h5py.SoftLink("/linked")
    for key in ("linked", "virtual", "soft"):
        np.testing.assert_array_equal(np.asarray(io.load(path, patterns_key=key, **CAL).patterns), frames)


# ---- declared sizes: a few kB declaring a terabyte ------------------------------------------------------------------
def test_virtual_dataset_over_missing_sources_declaring_a_tebibyte_is_refused_at_once(place):
    path = place.data / "huge.h5"
    shape = (1024, 1024, 512, 512)  # float32: 1 TiB
    layout = h5py.VirtualLayout(shape=shape, dtype="f4")
    layout[0, 0] = h5py.VirtualSource("absent.h5", "x", shape=(512, 512))
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("patterns", layout, fillvalue=0)
    assert path.stat().st_size < 10_000
    start = time.perf_counter()
    refused(lambda: io.load(path, patterns_key="patterns", **CAL), "huge.h5:patterns",
            "absent.h5:x, which does not exist", "fill value")
    assert time.perf_counter() - start < 5
    # missing sources are never an opt-in matter
    refused(lambda: io.load(path, patterns_key="patterns", allow_external_links=True, **CAL), "absent.h5:x")


def test_virtual_dataset_whose_sources_fill_a_sliver_of_a_tebibyte_is_refused(place):
    with h5py.File(place.data / "part.h5", "w") as f:
        f["x"] = np.ones((512, 512), np.float32)
    path = place.data / "huge.h5"
    layout = h5py.VirtualLayout(shape=(1024, 1024, 512, 512), dtype="f4")
    layout[0, 0] = h5py.VirtualSource("part.h5", "x", shape=(512, 512))
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("patterns", layout, fillvalue=0)
    refused(lambda: io.load(path, patterns_key="patterns", **CAL), "huge.h5:patterns", "1.1 TB",
            "sources map only 1.05 MB", "fill value")


def test_external_storage_shorter_than_declared_is_refused(place):
    (place.data / "short.bin").write_bytes(bytes(40))
    path = place.data / "scan.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("patterns", shape=(4, 4, 16, 16), dtype="u1", external=[("short.bin", 0, 4096)])
    refused(lambda: io.load(path, patterns_key="patterns", **CAL), "scan.h5:patterns", "hold only 40 bytes",
            "read as zeros")


# ---- the other readers --------------------------------------------------------------------------------------------
def _dectris_master(folder, data_file: str, frames_file=None) -> None:
    with h5py.File(folder / "run_master.h5", "w") as f:
        f["entry/data/data_000001"] = h5py.ExternalLink(data_file, "/entry/data/data")
        f["entry/instrument/beam/incident_wavelength"] = 0.0197
    if frames_file is not None:
        with h5py.File(frames_file, "w") as f:
            f["entry/data/data"] = np.frombuffer(SECRET, np.uint8).reshape(2, 4, 5)


def _dectris(place, where: str) -> dict:
    options = {"scan_step": 1.0, "scan_shape": (1, 2)}
    if where == "outside, absolute":
        _dectris_master(place.data, str(place.outside / "run_data_000001.h5"), place.outside / "run_data_000001.h5")
    elif where == "outside, relative":
        _dectris_master(place.data, "../outside/run_data_000001.h5", place.outside / "run_data_000001.h5")
    else:  # a data file in the folder whose frames are external storage over the secret
        _dectris_master(place.data, "run_data_000001.h5")
        with h5py.File(place.data / "run_data_000001.h5", "w") as f:
            external_storage(f, "entry/data/data", place.secret, shape=(2, 4, 5))
    return options


@pytest.mark.parametrize("where", ["outside, absolute", "outside, relative", "data file over the secret"])
def test_dectris_master_linking_out_is_refused(place, where):
    options = _dectris(place, where)
    needle = "entry/data/data_000001" if where.startswith("outside") else "run_data_000001.h5:entry/data/data"
    refused(lambda: io.load(place.data / "run_master.h5", **options), "run_master.h5", needle, "outside")


def test_dectris_master_with_its_data_files_in_its_folder_still_reads(place):
    frames = np.arange(40, dtype=np.uint16).reshape(2, 4, 5)
    _dectris_master(place.data, "run_data_000001.h5")
    with h5py.File(place.data / "run_data_000001.h5", "w") as f:
        f["entry/data/data"] = frames
    ds = io.load(place.data / "run_master.h5", scan_step=1.0, scan_shape=(1, 2))
    np.testing.assert_array_equal(np.asarray(ds.patterns), frames.reshape(1, 2, 4, 5))


def _emd(path, place):
    with h5py.File(path, "w") as f:
        f.attrs["emd_group_type"] = "root"
        g = f.create_group("scan/datacube")
        g.attrs["emd_group_type"] = "array"
        g.attrs["python_class"] = "DataCube"
        external_storage(g, "data", place.secret)


def _cxi(path, place):
    with h5py.File(path, "w") as f:
        f["entry_1/data_1/data"] = h5py.ExternalLink(str(place.outside / "frames.h5"), "/x")
    with h5py.File(place.outside / "frames.h5", "w") as f:
        f["x"] = np.frombuffer(SECRET, np.uint8).reshape(4, 2, 5)


def _mat_v73(path, place):
    with h5py.File(path, "w", userblock_size=512) as f:
        virtual_over(f, "dp", str(place.stolen))


def _hspy(path, place):
    """A HyperSpy file written by rsciio whose data are then replaced by an external link to the secret."""
    pytest.importorskip("rsciio")
    from rsciio.hspy import file_writer

    axes = [{"size": n, "index_in_array": i, "name": name, "scale": 1.0, "offset": 0.0, "units": "",
             "navigate": i < 2} for i, (n, name) in enumerate(zip(SHAPE, ("y", "x", "ky", "kx"), strict=True))]
    file_writer(str(path), {"data": np.zeros(SHAPE, np.uint8), "axes": axes, "metadata": {"General": {"title": "t"}},
                            "original_metadata": {}, "attributes": {"_lazy": False}, "tmp_parameters": {},
                            "learning_results": {}, "models": {}, "package_info": {"name": "test", "version": "0"}})
    with h5py.File(path, "a") as f:
        del f["Experiments/t/data"]
        f["Experiments/t/data"] = h5py.ExternalLink(str(place.stolen), "/x")


READERS = {  # file name, builder, reader options, the dataset named
    "emd": ("scan.emd", _emd, {}, "scan.emd:scan/datacube/data"),
    "cxi": ("scan.cxi", _cxi, {"scan_shape": (2, 2)}, "scan.cxi:entry_1/data_1/data"),
    "mat v7.3": ("scan.mat", _mat_v73, {}, "scan.mat:dp"),
    "hspy": ("scan.hspy", _hspy, {}, "scan.hspy:Experiments/t/data"),
}


@pytest.mark.parametrize("reader", READERS)
def test_every_hdf5_reader_refuses_data_from_outside(place, reader):
    name, build, options, needle = READERS[reader]
    build(place.data / name, place)
    refused(lambda: io.load(place.data / name, **CAL, **options), needle, "outside")


def test_a_small_array_file_over_the_secret_is_refused(place):
    from phasestem.io.arrays import load_array

    path = place.data / "positions.h5"
    with h5py.File(path, "w") as f:
        external_storage(f, "positions", place.secret, shape=(5, 2), dtype="<f4")
    refused(lambda: load_array(path, "positions", "positions file"), "positions.h5:positions", "outside")


def test_a_materials_file_over_the_secret_is_refused(place):
    """The simulation's structure file (physics.specimen, below the data layer) is checked alike."""
    pytest.importorskip("ase")
    from phasestem.physics.specimen import read_materials_h5

    path = place.data / "materials.h5"
    with h5py.File(path, "w") as f:
        f["si/atomic_numbers"] = np.array([14])
        external_storage(f["si"], "positions", place.secret, shape=(1, 3), dtype="<f8")  # 24 of its bytes
        f["si/lattice"] = np.eye(3) * 5.43
    refused(lambda: read_materials_h5(path), "materials.h5:si/positions", "outside")


def _forged_results(path, place, forged: str) -> None:
    """A results.h5 as phasestem writes it, but for dataset ``forged``: external storage over the secret."""
    probe = np.ones((1, 2, 2), np.complex64)
    arrays = {"object/phase": np.zeros((1, 1, 2, 5), np.float32), "object/amplitude": np.ones((1, 1, 2, 5), np.float32),
              "object/phase_sum": np.zeros((2, 5), np.float32), "object/amplitude_prod": np.ones((2, 5), np.float32),
              "probe/real_space": probe, "probe/fourier_space": probe,
              "positions": np.zeros((1, 2)), "positions_initial": np.zeros((1, 2)), "tilt": np.zeros(2),
              "slice_thickness": np.float64(1.0), "loss/loss": np.ones(5)}
    with h5py.File(path, "w") as f:
        f.attrs.update(format=FORMAT, sampling=[1.0, 1.0], energy=300e3, origin=[0.0, 0.0], epoch=1)
        for key, value in arrays.items():
            if key == forged:  # the secret's 40 bytes as the array's values
                external_storage(f, key, place.secret, shape=value.shape, dtype=value.dtype)
            else:
                f[key] = value


def test_forged_results_file_is_refused_by_load_results_and_the_server(place):
    for forged in ("object/phase_sum", "loss/loss"):
        run = place.data / forged.replace("/", "_")
        run.mkdir()
        _forged_results(run / "results.h5", place, forged)
        refused(lambda run=run: load_results(run / "results.h5"), f"results.h5:{forged}", "external file",
                "outside")
    assert loss_history(place.data / "loss_loss") is None  # the job page's loss: not the secret's bytes as float64


# ---- the opt-in on the command line, and PHASESTEM_READ_ROOT over it ----------------------------------------------
@pytest.fixture
def linked_out(place):
    """data/scan.h5 whose patterns are an external link to a scan on another disk (outside/other_disk.h5)."""
    with h5py.File(place.outside / "other_disk.h5", "w") as f:
        f["x"] = np.random.default_rng(0).random((4, 4, 16, 16), dtype=np.float32)
    with h5py.File(place.data / "scan.h5", "w") as f:
        f["patterns"] = h5py.ExternalLink("../outside/other_disk.h5", "/x")
    return place.data / "scan.h5"


def inspect(path, *flags: str) -> int:
    return main(["inspect", str(path), "--key", "patterns", "--out", str(path.with_suffix(".png")),
                 *flags])


def test_cli_refuses_a_link_out_unless_the_user_opts_in(linked_out, capsys):
    assert inspect(linked_out) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "scan.h5:patterns" in err and "--allow-external-links" in err, err
    assert inspect(linked_out, "--allow-external-links") == 0
    assert linked_out.with_suffix(".png").stat().st_size > 0


def test_read_root_overrides_the_opt_in(linked_out, place, monkeypatch, capsys):
    monkeypatch.setenv(READ_ROOT_VARIABLE, str(place.data))
    assert inspect(linked_out, "--allow-external-links") == 1
    err = capsys.readouterr().err
    assert "scan.h5:patterns" in err and "--allow-external-links" not in err, err
    refused(lambda: io.load(linked_out, patterns_key="patterns", allow_external_links=True, **CAL), "outside")
    # the root, not the file's folder, is what may be read: a root holding both folders reads the link
    monkeypatch.setenv(READ_ROOT_VARIABLE, str(place.root))
    assert io.load(linked_out, patterns_key="patterns", **CAL).scan_shape == (4, 4)
    assert inspect(linked_out) == 0
