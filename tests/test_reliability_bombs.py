"""Readers refuse bombs in bounded time, and every bad input is one line naming the file (issue 24, items 6, 7,
8 and the EMPAD pairing of 10).

* declared sizes are checked against the file before anything is mapped or read: an EMPAD .xml declaring a
  60000² scan over a 4 MB .raw, .npz members that expand 1000× or declare 40 GiB over 1 MiB, HDF5 and Dectris
  datasets declared at 52 GB but never written;
* large data are screened for NaN/Inf by a spread sample, every value on request;
* nesting deeper than 100 levels in YAML/JSON/``--set``/``--reader-option`` is one line (the random-config
  property test covers every loader: ``tests/test_config_property.py``);
* truncated files, 0 × 0 frames, empty scans, symbolic-link loops and h5py's errors name the file.

The files are tiny or sparse; the bombs are built by ``benchmarks/reliability/bombs.py`` (which also measures the
refusals' time and memory on the full-size bombs). Each test runs under a 30 s alarm: before these changes
the bombs hung.
"""
from __future__ import annotations

import os
import re
import signal
import struct
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from phasestem import io
from phasestem.base.errors import InputFileError, PhasestemError
from phasestem.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "reliability"))
import bombs  # noqa: E402

CALIB = ["--energy", "3e5", "--scan-step", "1", "--angular-sampling", "1"]


class _Hang(Exception):
    pass


@pytest.fixture(autouse=True)
def alarm():
    """Fail (instead of hanging the suite) when a refusal takes more than 30 s."""
    def on_alarm(signum, frame):
        raise _Hang("took more than 30 s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _one_line(capsys, code: int, *needles: str) -> str:
    """The command failed with one error line holding ``needles`` (log lines and progress bars aside)."""
    err = [ln for ln in re.split(r"[\r\n]+", capsys.readouterr().err)
           if ln.strip() and " INFO " not in ln and "it/s]" not in ln]
    assert code == 1, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    for n in needles:
        assert n in err[0], (n, err[0])
    return err[0]


def _inspect(capsys, path: Path, *extra: str, needles=()) -> str:
    code = main(["inspect", str(path), *CALIB, *extra, "--out", str(path.parent / "o.png")])
    return _one_line(capsys, code, path.name, *needles)


# ---- item 6: bombs ------------------------------------------------------------------------------------------
def test_empad_xml_declaring_a_huge_scan_over_a_small_raw_is_refused_naming_both(tmp_path, capsys):
    pytest.importorskip("rsciio")
    xml = bombs.empad(tmp_path, (60000, 60000), 63)  # 240 TB declared over a 4 MB .raw
    pattern = r"scan\.raw: holds 4\.19 MB but .*acquisition\.xml declares a 60000×60000 scan: .*240 TB"
    with pytest.raises(InputFileError, match=pattern):
        io.load(xml, energy=3e5)
    with pytest.raises(InputFileError, match=pattern):  # the .raw, read through its .xml
        io.load(tmp_path / "scan.raw", energy=3e5)
    _inspect(capsys, xml, needles=("60000×60000", "240 TB"))


def test_npz_member_expanding_more_than_200x_is_refused_before_decompressing(tmp_path, capsys):
    import tracemalloc

    path = bombs.npz(tmp_path / "bomb.npz", (16, 32, 256, 256), compress=True)  # 128 MiB of zeros → ≈ 130 kB
    assert path.stat().st_size < 1e6
    tracemalloc.start()
    with pytest.raises(InputFileError, match=r"bomb\.npz:patterns: .* would expand 1,0\d\d× to 16×32×256×256 float32"):
        io.load(path, energy=3e5, scan_step=1.0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16e6, peak  # nothing decompressed
    _inspect(capsys, path, needles=("200×",))
    # compressed data that do not expand like a bomb are read, and stored members are memory-mapped
    rng = np.random.default_rng(0)
    data = rng.random((4, 4, 8, 8)).astype(np.float32)
    np.savez_compressed(tmp_path / "ok_compressed.npz", patterns=data)
    np.savez(tmp_path / "ok_stored.npz", patterns=data, energy=3e5)
    for name in ("ok_compressed.npz", "ok_stored.npz"):
        ds = io.load(tmp_path / name, energy=3e5, scan_step=1.0)
        np.testing.assert_array_equal(np.asarray(ds.patterns), data)
    assert isinstance(io.load(tmp_path / "ok_stored.npz", energy=3e5, scan_step=1.0).patterns, np.memmap)


def test_npz_or_npy_declaring_more_than_it_holds_is_refused(tmp_path, capsys):
    path = bombs.npz(tmp_path / "declared.npz", (40 * 1024, 512, 512), data_bytes=2**20)  # 40 GiB over 1 MiB
    with pytest.raises(InputFileError, match=r"declared\.npz:patterns: its header declares 40960×512×512 float32 "
                                             r"\(42\.9 GB\) but the archive lists 1\.05 MB of data for it"):
        io.load(path, energy=3e5, scan_step=1.0)
    _inspect(capsys, path, needles=("42.9 GB",))
    # the same header in a .npy
    (tmp_path / "declared.npy").write_bytes(bombs.npy_header((40 * 1024, 512, 512)) + bytes(2**20))
    with pytest.raises(InputFileError, match=r"declared\.npy: its header declares .* but the file holds 1\.05 MB"):
        io.load(tmp_path / "declared.npy", energy=3e5, scan_step=1.0)


def test_unwritten_hdf5_and_dectris_datasets_are_refused_before_reading(tmp_path, capsys):
    path = bombs.hdf5_unwritten(tmp_path / "scan.h5", (400, 500, 256, 256))  # 52 GB declared, nothing written
    assert path.stat().st_size < 1e6
    with pytest.raises(InputFileError, match=r"scan\.h5:patterns: declared as 400×500×256×256 float32, 52\.4 GB but "
                                             r"only 0 of its 200,000 chunks were written"):
        io.load(path, energy=3e5, scan_step=1.0)
    _inspect(capsys, path, needles=("52.4 GB",))
    master = bombs.arina_unwritten(tmp_path, (400, 1000), (256, 256))
    _inspect(capsys, master, needles=("run_data_000001.h5", "400000×256×256 uint16", "0 of its 400,000 chunks"))
    # an interrupted acquisition: 3 of 12 frames written
    (tmp_path / "part").mkdir()
    master = bombs.arina_unwritten(tmp_path / "part", (3, 4), (8, 8), written=3)
    with pytest.raises(InputFileError, match=r"only 3 of its 12 chunks were written .* fill value 0"):
        io.load(master, energy=3e5, scan_step=1.0)


def test_compressed_hdf5_expanding_more_than_200x_stays_on_disk(tmp_path):
    """128 MiB of zeros stored as 512 gzip chunks of ≈ 300 bytes are read lazily, not into one 128 MiB buffer."""
    import zlib

    zero_chunk = zlib.compress(bytes(256 * 256 * 4))
    with h5py.File(tmp_path / "zeros.h5", "w") as f:
        d = f.create_dataset("patterns", shape=(16, 32, 256, 256), dtype="float32", chunks=(1, 1, 256, 256),
                             compression="gzip")
        for iy in range(16):
            for ix in range(32):
                d.id.write_direct_chunk((iy, ix, 0, 0), zero_chunk)
    assert (tmp_path / "zeros.h5").stat().st_size < 1e6
    ds = io.load(tmp_path / "zeros.h5", energy=3e5, scan_step=1.0)
    assert not isinstance(ds.patterns, np.ndarray)  # on disk
    assert float(np.asarray(ds.patterns[15, 31]).sum()) == 0.0


def test_large_data_are_screened_by_sample_and_fully_on_request(tmp_path, monkeypatch):
    from phasestem.io import _common

    data = np.ones((16, 16, 8, 8), np.float32)
    data[9, 7, 2, 3] = np.nan  # not in the sample below
    with h5py.File(tmp_path / "big.h5", "w") as f:
        f["patterns"] = data
    # 64 kB of data count as large here (1 GiB by default): a 4 kB sample in 4 runs of 4 patterns
    monkeypatch.setattr(_common, "SCREEN_FULL_BYTES", 32 * 1024)
    monkeypatch.setattr(_common, "SCREEN_SAMPLE_BYTES", 4 * 1024)
    monkeypatch.setattr(_common, "SCREEN_WINDOWS", 4)
    ds = io.load(tmp_path / "big.h5", energy=3e5, scan_step=1.0)
    assert ds.metadata["screened"] == "16 of 256 patterns"
    with pytest.raises(InputFileError, match=r"big\.h5:patterns: pattern value at index \(9, 7, 2, 3\) is nan"):
        io.load(tmp_path / "big.h5", energy=3e5, scan_step=1.0, screen="full")
    data[15, 15, 0, 0] = np.inf  # the last pattern is always in the sample
    with h5py.File(tmp_path / "big.h5", "w") as f:
        f["patterns"] = data
    with pytest.raises(InputFileError, match=r"index \(15, 15, 0, 0\) is inf"):
        io.load(tmp_path / "big.h5", energy=3e5, scan_step=1.0)


# ---- item 7: tracebacks ---------------------------------------------------------------------------------------
def test_deep_nesting_is_one_line_in_set_and_reader_option(tmp_path, capsys):
    config = Path(__file__).resolve().parents[1] / "configs" / "train_patch_tiny.yaml"
    deep = bombs.deep_flow(50000)
    code = main(["train", "patch", str(config), "--out", str(tmp_path / "r"), "--set", "trainer.lr=" + deep])
    _one_line(capsys, code, "--set trainer.lr: nested more than 100 levels deep")
    np.save(tmp_path / "scan.npy", np.ones((4, 4, 8, 8), np.float32))
    calibrate = ["calibrate", str(tmp_path / "scan.npy"), "--energy", "3e5", "--semiangle", "20", "--scan-step", "1",
                 "--out", str(tmp_path / "calib")]
    code = main([*calibrate, "--reader-option", "scan_order=" + deep])
    _one_line(capsys, code, "--reader-option scan_order: nested more than 100 levels deep")
    code = main([*calibrate, "--reader-option", "scan_order=!!python/object/apply:os.system ['echo hi']"])
    _one_line(capsys, code, "--reader-option scan_order: not a plain YAML value")


def test_deep_json_in_data_and_model_files_is_one_line(tmp_path):
    from phasestem.base.configfile import loads_json
    from phasestem.learn.trainer.checkpoint import load_weights

    with pytest.raises(PhasestemError, match="x: nested more than 100 levels deep"):
        loads_json(bombs.deep_flow(50000), "x")
    assert loads_json('{"a": "[[[[[[[[", "b": [1, [2]]}', "x") == {"a": "[[[[[[[[", "b": [1, [2]]}
    ds = io.load(_own_file(tmp_path / "own.h5"))  # phasestem's own 4D-STEM file, aberrations as JSON
    with h5py.File(tmp_path / "own.h5", "a") as f:
        f.attrs["aberrations"] = bombs.deep_flow(50000)
    with pytest.raises(PhasestemError, match=r"own\.h5: attribute 'aberrations': nested more than 100"):
        io.load(tmp_path / "own.h5")
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "m.safetensors"), metadata={"phasestem": bombs.deep_flow(5000)})
    with pytest.raises(InputFileError, match=r"m\.safetensors: its 'phasestem' metadata: nested more than 100"):
        load_weights(tmp_path / "m.safetensors")
    assert ds.scan_shape == (3, 4)


def _own_file(path: Path) -> Path:
    from phasestem.dataset import FourDSTEM

    ds = FourDSTEM(patterns=np.ones((3, 4, 8, 8), np.float32), energy=3e5, scan_step=(1.0, 1.0),
                   angular_sampling=(1.0, 1.0), aberrations={"C10": 10.0})
    from phasestem.io.hdf5 import write

    return write(path, ds)


def _recon_config(tmp_path: Path, **data) -> Path:
    from phasestem.recon.synthetic import write_npz

    write_npz(tmp_path / "tiny.npz", scan_shape=(6, 6), seed=21)
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "reconstruct_tiny.yaml").read_text())
    cfg["data"].update(file=str(tmp_path / "tiny.npz"), **data)
    cfg["scan"]["shape"] = [6, 6]
    cfg["run"].update(out_dir=str(tmp_path / "out"), n_epochs=1, progress=False)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "p.yaml"


def test_reconstruct_input_array_declaring_more_than_it_holds_is_one_line(tmp_path, capsys):
    """The reconstruction's input arrays (here data.detector_shifts) go through the same size checks: a .npy
    header declaring 40 GiB over 1 MiB was a MemoryError traceback."""
    (tmp_path / "shifts.npy").write_bytes(bombs.npy_header((40 * 1024, 512, 512)) + bytes(2**20))
    code = main(["reconstruct", str(_recon_config(tmp_path, detector_shifts="shifts.npy")), "--out",
                 str(tmp_path / "run")])
    _one_line(capsys, code, "data.detector_shifts", "shifts.npy: its header declares 40960×512×512 float32 (42.9 GB) "
              "but the file holds 1.05 MB")


def test_scan_shape_0_0_on_an_empty_dectris_file_is_one_line(tmp_path, capsys):
    master = bombs.arina_unwritten(tmp_path, (1, 1), (4, 4))
    with h5py.File(tmp_path / "run_data_000001.h5", "w") as f:
        f.create_dataset("entry/data/data", shape=(0, 4, 4), dtype="uint16")
    _inspect(capsys, master, "--scan-shape", "0", "0", needles=("holds no patterns",))


# ---- item 8: errors name the file ----------------------------------------------------------------------------
def test_truncated_empad_blockfile_and_dm4_name_the_file_and_the_sizes(tmp_path, capsys):
    pytest.importorskip("rsciio")
    from test_io_detector_formats import _signal, _write_dm4

    (tmp_path / "empad").mkdir()
    xml = bombs.empad(tmp_path / "empad", (3, 4), 10)  # 12 frames declared, 10 held
    with pytest.raises(InputFileError, match=r"scan\.raw: holds 666 kB but .*acquisition\.xml declares a 3×4 scan"):
        io.load(xml, energy=3e5)
    _inspect(capsys, xml, needles=("scan.raw", "3×4 scan"))

    pytest.importorskip("skimage")
    from rsciio.blockfile import file_writer

    data = np.zeros((3, 4, 8, 8), np.uint8)
    file_writer(str(tmp_path / "s.blo"), _signal(data, 0.1, 0.5, "cm"), show_progressbar=False)
    os.truncate(tmp_path / "s.blo", (tmp_path / "s.blo").stat().st_size - 200)
    with pytest.raises(InputFileError, match=r"s\.blo: holds .* but its header declares a 3×4 scan of 8×8 uint8"):
        io.load(tmp_path / "s.blo", angular_sampling=0.9)
    _inspect(capsys, tmp_path / "s.blo", needles=("truncated",))

    _write_dm4(tmp_path / "scan.dm4", np.zeros((3, 4, 6, 5), np.float32), 0.04, 0.25, 300e3)
    raw = bytearray((tmp_path / "scan.dm4").read_bytes())
    at = raw.find(struct.pack("<i", 3), raw.find(b"Dimensions"))  # the scan rows: 3 → 60000
    raw[at:at + 4] = struct.pack("<i", 60000)
    (tmp_path / "big.dm4").write_bytes(bytes(raw))
    with pytest.raises(InputFileError, match=r"big\.dm4: holds .* but its tags declare an image of "
                                             r"60000×4×6×5 float32 .*28\.8 MB: truncated"):
        io.load(tmp_path / "big.dm4")


def test_empty_frames_and_symlink_loops_name_the_file(tmp_path, capsys):
    from detector_files import mib_header

    with open(tmp_path / "zero.mib", "wb") as f:
        for i in range(4):
            f.write(mib_header(i + 1, 0, 0))
    _inspect(capsys, tmp_path / "zero.mib", "--scan-shape", "2", "2", needles=("frames of 0×0 pixels",))
    os.symlink(tmp_path / "b.h5", tmp_path / "a.h5")
    os.symlink(tmp_path / "a.h5", tmp_path / "b.h5")
    os.symlink(tmp_path / "nowhere.h5", tmp_path / "dangling.h5")
    _inspect(capsys, tmp_path / "a.h5", needles=("a loop of symbolic links",))
    _inspect(capsys, tmp_path / "dangling.h5", needles=("a symbolic link to", "nowhere.h5, which does not exist"))


def test_train_autoencoder_and_make_pairs_name_the_bad_hdf5_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("text.h5").write_text("not HDF5")
    with h5py.File("group.h5", "w") as f:
        f.create_group("dp_set_0")
        f.create_group("phase_0")
    os.symlink("loop2.h5", "loop1.h5")
    os.symlink("loop1.h5", "loop2.h5")
    config = Path(__file__).resolve().parents[1] / "configs" / "train_autoencoder_tiny.yaml"
    for name, needle in (("text.h5", "not a readable"), ("group.h5", "dp_set_0: is a group; expected a dataset"),
                         ("loop1.h5", "a loop of symbolic links")):
        code = main(["train", "autoencoder", str(config), "--set", f"data.files=[{tmp_path / name}]",
                     "--out", str(tmp_path / "ae")])
        _one_line(capsys, code, name, needle)
        Path("mp.yaml").write_text(f"files: [{name}]\nout: pairs.h5\n")
        code = main(["make-pairs", "mp.yaml"])
        _one_line(capsys, code, name, needle.replace("dp_set_0", "phase_0"))


# ---- item 10: which .xml a .raw is read through ---------------------------------------------------------------
def test_a_raw_is_read_through_its_own_xml_and_several_candidates_are_refused(tmp_path, capsys):
    pytest.importorskip("rsciio")
    bombs.empad(tmp_path, (2, 3), 6, name="first", raw="scan.raw")
    bombs.empad(tmp_path, (3, 2), 6, name="second", raw="scan.raw")
    bombs.empad(tmp_path, (1, 6), 6, name="other", raw="other.raw")  # names another .raw: not a candidate
    with pytest.raises(InputFileError, match=r"scan\.raw: 2 EMPAD \.xml files beside it name it as their raw file "
                                             r"\(first\.xml, second\.xml\)"):
        io.load(tmp_path / "scan.raw", energy=3e5)
    _inspect(capsys, tmp_path / "scan.raw", needles=("first.xml, second.xml",))
    (tmp_path / "second.xml").rename(tmp_path / "scan.xml")  # the .xml with the .raw's stem wins
    assert io.load(tmp_path / "scan.raw", energy=3e5).scan_shape == (3, 2)
    (tmp_path / "scan.xml").unlink()  # a single candidate
    assert io.load(tmp_path / "scan.raw", energy=3e5).scan_shape == (2, 3)
    xml = (tmp_path / "first.xml").read_text().replace('filename="scan.raw"', 'filename="../scan.raw"')
    (tmp_path / "first.xml").write_text(xml)
    with pytest.raises(InputFileError, match=r"first\.xml: raw_file '\.\./scan\.raw' is not the name of a file beside"):
        io.load(tmp_path / "first.xml", energy=3e5)


def test_npz_member_sizes_are_read_from_headers_only(tmp_path):
    """Choosing the patterns array of an .npz reads only the members' headers (not every array)."""
    path = tmp_path / "two.npz"
    with zipfile.ZipFile(path, "w") as z:
        with z.open("patterns.npy", "w") as f:
            np.save(f, np.ones((2, 2, 4, 4), np.float32))
        with z.open("junk.npy", "w") as f:  # a 2-D member whose data were cut
            f.write(bombs.npy_header((64, 64)) + bytes(100))
    with pytest.raises(InputFileError, match=r"two\.npz:junk: its header declares 64×64 float32 .* lists 100 bytes"):
        io.load(path, energy=3e5, scan_step=1.0)
