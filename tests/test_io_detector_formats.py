"""Detector formats: rsciio round trips (blockfile, hspy), files built from the documented byte layouts
(Merlin .mib + .hdr, EMPAD .xml + .raw, MRC, Gatan DM4 tags, Dectris master + data files) and bad input."""
from __future__ import annotations

import struct

import h5py
import numpy as np
import pytest
from detector_files import mib_hdr as _mib_hdr
from detector_files import write_mib as _write_mib

from phasestem import io
from phasestem.base.errors import InputFileError, PhasestemError, ShapeError
from phasestem.detector import PixelatedDetector
from phasestem.physics.optics import energy_from_wavelength, wavelength

pytest.importorskip("rsciio")

SCAN = (3, 4)


def _frames(h: int, w: int, dtype=np.uint16, seed: int = 0) -> np.ndarray:
    """(Sy·Sx, h, w) distinct frames."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 1000, size=(SCAN[0] * SCAN[1], h, w)).astype(dtype)


def _is_lazy(ds) -> bool:
    return hasattr(ds.patterns, "compute") and not isinstance(ds.patterns, np.ndarray)


# ---- Merlin / Medipix .mib (+ .hdr) --------------------------------------------------------------
def test_mib_with_hdr_scan_shape_lazy_and_flipped_like_rsciio(tmp_path):
    frames = _frames(6, 5)
    path = tmp_path / "scan.mib"
    _write_mib(path, frames, _mib_hdr(12, SCAN[1]))
    ds = io.load(path, energy=300e3, scan_step=0.5, angular_sampling=1.0)
    assert ds.scan_shape == SCAN and ds.pattern_shape == (6, 5)
    assert _is_lazy(ds)
    # rsciio shows Merlin frames flipped up-down relative to the byte order (as HyperSpy/pyxem do)
    expect = frames[:, ::-1, :].reshape(*SCAN, 6, 5)
    np.testing.assert_array_equal(np.asarray(ds.patterns), expect)
    np.testing.assert_array_equal(ds.get_patterns([7, 2]).numpy(), expect.reshape(-1, 6, 5)[[7, 2]])
    assert set(ds.metadata["missing_from_file"]) == {"energy", "scan_step", "angular_sampling"}
    # memory-mapped chunks of 2 frames: a batch or a block of rows computes only the chunks it needs
    chunked = io.load(path, energy=300e3, scan_step=0.5, reader_options={"chunks": (2, 6, 5)})
    assert chunked.patterns.numblocks[:2] == (3, 2)
    np.testing.assert_array_equal(chunked.get_patterns([11, 3]).numpy(), expect.reshape(-1, 6, 5)[[11, 3]])
    np.testing.assert_allclose(chunked.mean_pattern(chunk=4), expect.mean((0, 1)), rtol=1e-6)
    with pytest.raises(ShapeError, match=r"scan\.mib: the file's metadata says a 3×4 scan but scan_shape is 4×3"):
        io.load(path, energy=300e3, scan_step=0.5, scan_shape=(4, 3))


def test_mib_without_hdr_needs_scan_shape(tmp_path):
    frames = _frames(4, 4, seed=1)
    path = tmp_path / "nohdr.mib"
    _write_mib(path, frames)
    with pytest.raises(ShapeError, match=r"nohdr\.mib: the file holds 12 frames and no scan shape; give the scan "
                       r"shape, Sy·Sx = 12 \(--scan-shape Sy Sx on the command line"):
        io.load(path, energy=300e3, scan_step=0.5)
    ds = io.load(path, energy=300e3, scan_step=0.5, scan_shape=SCAN)
    np.testing.assert_array_equal(np.asarray(ds.patterns), frames[:, ::-1].reshape(*SCAN, 4, 4))
    assert "scan_shape" in ds.metadata["missing_from_file"]
    with pytest.raises(ShapeError, match=r"holds 12 frames but scan_shape 5×3 needs 15"):
        io.load(path, energy=300e3, scan_step=0.5, scan_shape=(5, 3))


def test_garbage_or_misnamed_files_fail_in_one_line(tmp_path):
    junk = np.random.default_rng(0).integers(0, 255, 4096, dtype=np.uint8).tobytes()
    for name, what in [("junk.mib", "Merlin MIB header"), ("junk.blo", "blockfile header"),
                       ("junk.hspy", "HDF5 signature")]:
        (tmp_path / name).write_bytes(b"XYZ" + junk)
        with pytest.raises(InputFileError, match=rf"{name}: not a \w+ file: expected .*{what}") as err:
            io.load(tmp_path / name, energy=300e3, scan_step=0.5)
        assert "\n" not in str(err.value)
    (tmp_path / "junk.dm4").write_bytes(junk)
    with pytest.raises(PhasestemError, match=r"junk\.dm4: not readable as digitalmicrograph") as err:
        io.load(tmp_path / "junk.dm4", energy=300e3, scan_step=0.5)
    assert "\n" not in str(err.value)
    # an HDF5 file that is not a HyperSpy file, named .hspy
    with h5py.File(tmp_path / "plain.hspy", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(InputFileError, match=r"plain\.hspy: not readable as hspy"):
        io.load(tmp_path / "plain.hspy", energy=300e3, scan_step=0.5)


# ---- EMPAD .xml + .raw ----------------------------------------------------------------------------
def _write_empad(tmp_path, frames128: np.ndarray, raw_name="scan_x4_y3.raw", fov_m=1.2e-9, calibrated=2.0e-10):
    """EMPAD: 128 × 130 float32 frames (2 footer rows), little endian; the .xml names the .raw."""
    n = frames128.shape[0]
    raw = np.full((n, 130, 128), 7.0e9, dtype="<f4")  # footer rows hold junk the reader must skip
    raw[:, :128] = frames128
    raw.tofile(tmp_path / raw_name)
    xml = ("<root><timestamp isoformat=\"2020-01-01T00:00:00\"/>"
           f"<pix_x>{SCAN[1]}</pix_x><pix_y>{SCAN[0]}</pix_y><raw_file filename=\"{raw_name}\"/>"
           f"<iom_measurements><full_scan_field_of_view x=\"{fov_m}\" scale_factor=\"1.0\"/>"
           f"<calibrated_pixelsize>{calibrated}</calibrated_pixelsize></iom_measurements></root>")
    (tmp_path / "acquisition.xml").write_text(xml)
    return tmp_path / "acquisition.xml", tmp_path / raw_name


def test_empad_xml_raw_calibrations_and_raw_dispatch(tmp_path):
    frames = np.random.default_rng(2).random((12, 128, 128)).astype(np.float32)
    xml, raw = _write_empad(tmp_path, frames)
    ds = io.load(xml, energy=300e3)
    assert ds.scan_shape == SCAN and ds.pattern_shape == (128, 128) and _is_lazy(ds)
    np.testing.assert_array_equal(np.asarray(ds.patterns), frames.reshape(*SCAN, 128, 128))
    # scan step: field of view 1.2 nm over the 4 columns → 0.3 nm = 3 Å
    assert ds.scan_step == pytest.approx((3.0, 3.0))
    # detector pixel: rsciio reads calibrated_pixelsize × 1e9 as 1/nm: 0.2 1/nm = 0.02 1/Å → λ·k in mrad
    assert ds.angular_sampling == pytest.approx((0.02 * wavelength(300e3) * 1e3,) * 2)
    assert ds.metadata["missing_from_file"] == ["energy"]
    # the .raw with its .xml beside it: read through the .xml (same arrays, same calibrations)
    for kwargs in ({}, {"detector": "empad"}):
        again = io.load(raw, energy=300e3, **kwargs)
        np.testing.assert_array_equal(np.asarray(again.patterns), np.asarray(ds.patterns))
        assert again.scan_step == ds.scan_step and again.metadata["format"] == "rsciio:empad"
    with pytest.raises(ShapeError, match=r"acquisition\.xml: the file holds a 3×4 scan but scan_shape is 4×3"):
        io.load(xml, energy=300e3, scan_shape=(4, 3))
    # without the .xml the raw preset still reads the frames (the behaviour users had)
    xml.unlink()
    plain = io.load(raw, detector="empad", energy=300e3, scan_step=3.0, scan_shape=SCAN)
    np.testing.assert_array_equal(np.asarray(plain.patterns), frames.reshape(*SCAN, 128, 128))


# ---- rsciio writers: blockfile and HyperSpy HDF5 --------------------------------------------------
def _signal(data, nav_nm: float, sig_scale: float, sig_units: str, energy_kev: float | None = None,
            original_metadata: dict | None = None) -> dict:
    names = ["y", "x", "ky", "kx"]
    axes = [{"size": int(data.shape[i]), "index_in_array": i, "name": names[i],
             "scale": nav_nm if i < 2 else sig_scale, "offset": 0.0,
             "units": "nm" if i < 2 else sig_units, "navigate": i < 2} for i in range(4)]
    md = {"General": {"title": "test"}, "Signal": {"signal_type": "electron_diffraction"}}
    if energy_kev is not None:
        md["Acquisition_instrument"] = {"TEM": {"beam_energy": energy_kev}}
    return {"data": data, "axes": axes, "metadata": md, "original_metadata": original_metadata or {},
            "attributes": {"_lazy": False}, "tmp_parameters": {}, "learning_results": {}, "models": {},
            "package_info": {"name": "phasestem-test", "version": "0"}}


@pytest.mark.parametrize("sig_units, sig_scale, expect_mrad", [
    ("mrad", 0.8, 0.8),
    ("rad", 0.0008, 0.8),
    ("1/nm", 0.5, 0.05 * wavelength(200e3) * 1e3),
])
def test_hspy_round_trip(tmp_path, sig_units, sig_scale, expect_mrad):
    from rsciio.hspy import file_writer

    data = np.random.default_rng(3).random((*SCAN, 6, 8)).astype(np.float32)
    file_writer(str(tmp_path / "s.hspy"), _signal(data, 0.05, sig_scale, sig_units, energy_kev=200.0))
    ds = io.load(tmp_path / "s.hspy")
    assert _is_lazy(ds)
    np.testing.assert_array_equal(np.asarray(ds.patterns), data)
    assert ds.energy == pytest.approx(200e3)
    assert ds.scan_step == pytest.approx((0.5, 0.5))
    assert ds.angular_sampling == pytest.approx((expect_mrad, expect_mrad))
    assert ds.metadata["missing_from_file"] == []
    with pytest.raises(ShapeError, match=r"s\.hspy: the file holds a 3×4 scan but scan_shape is 2×6"):
        io.load(tmp_path / "s.hspy", scan_shape=(2, 6))


def test_blockfile_round_trip(tmp_path):
    pytest.importorskip("skimage")
    from rsciio.blockfile import file_writer

    data = np.random.default_rng(4).integers(0, 255, size=(*SCAN, 8, 8)).astype(np.uint8)
    header = {"Beam_energy": 200000, "Note": ""}  # V, as the format stores it
    sig = _signal(data, 0.12, 0.5, "cm", original_metadata={"blockfile_header": header})
    file_writer(str(tmp_path / "s.blo"), sig, show_progressbar=False)
    ds = io.load(tmp_path / "s.blo", angular_sampling=0.9)
    np.testing.assert_array_equal(np.asarray(ds.patterns), data)
    assert ds.energy == pytest.approx(200e3)
    assert ds.scan_step == pytest.approx((1.2, 1.2))
    # the blockfile's detector pixel is a length on the camera: not turned into an angle by a guess
    assert ds.metadata["missing_from_file"] == ["angular_sampling"]
    assert ds.angular_sampling == (0.9, 0.9)


# ---- MRC stack by its documented 1024-byte header ---------------------------------------------------
def test_mrc_stack_by_byte_layout(tmp_path):
    frames = np.random.default_rng(5).random((12, 6, 7)).astype("<f4")
    header = np.zeros(1024, np.uint8)
    ints = np.array([7, 6, 12, 2, 0, 0, 0, 7, 6, 12], "<i4")  # NX, NY, NZ, MODE 2 (float32), starts, MX MY MZ
    header[:40] = np.frombuffer(ints.tobytes(), np.uint8)
    header[64:76] = np.frombuffer(np.array([1, 2, 3], "<i4").tobytes(), np.uint8)  # MAPC, MAPR, MAPS
    header[208:212] = np.frombuffer(b"MAP ", np.uint8)
    header[212:216] = np.array([0x44, 0x44, 0, 0], np.uint8)
    with open(tmp_path / "stack.mrc", "wb") as f:
        f.write(header.tobytes())
        f.write(frames.tobytes())
    ds = io.load(tmp_path / "stack.mrc", energy=300e3, scan_step=1.0, angular_sampling=0.5, scan_shape=SCAN)
    np.testing.assert_array_equal(np.asarray(ds.patterns), frames.reshape(*SCAN, 6, 7))
    ds_f = io.load(tmp_path / "stack.mrc", energy=300e3, scan_step=1.0, angular_sampling=0.5, scan_shape=SCAN,
                   scan_order="F")  # frames numbered with y fastest
    np.testing.assert_array_equal(np.asarray(ds_f.patterns)[2, 1], frames[2 + 1 * SCAN[0]])


# ---- Gatan DM4 by its tag-file layout ----------------------------------------------------------------
def _dm4_name(tag_type: int, name: str) -> bytes:
    return struct.pack(">bH", tag_type, len(name)) + name.encode("latin-1")


def _dm4_data(name: str, info: list[int], payload: bytes) -> bytes:
    """A data tag: header, 8-byte size, '%%%%', info-array length and entries (big endian), then the
    value in the file's byte order (little endian here)."""
    body = b"%%%%" + struct.pack(">Q", len(info)) + b"".join(struct.pack(">Q", i) for i in info) + payload
    return _dm4_name(21, name) + struct.pack(">Q", len(body)) + body


def _dm4_group(name: str, tags: list[bytes]) -> bytes:
    """A tag group: header, 8-byte size, sorted and open flags, 8-byte tag count, the tags."""
    body = struct.pack(">bbQ", 0, 1, len(tags)) + b"".join(tags)
    return _dm4_name(20, name) + struct.pack(">Q", len(body)) + body


def _dm4_long(name: str, v: int) -> bytes:
    return _dm4_data(name, [3], struct.pack("<i", v))


def _dm4_float(name: str, v: float) -> bytes:
    return _dm4_data(name, [6], struct.pack("<f", v))


def _dm4_double(name: str, v: float) -> bytes:
    return _dm4_data(name, [7], struct.pack("<d", v))


def _dm4_text(name: str, text: str) -> bytes:  # DM strings: arrays of 2-byte characters
    return _dm4_data(name, [20, 4, len(text)], text.encode("utf-16-le"))


def _write_dm4(path, data: np.ndarray, nav_nm: float, sig_per_nm: float, voltage: float) -> None:
    """A DM4 image of float32 ``data`` (Sy, Sx, H, W): ImageList/TagGroup0/{ImageData, ImageTags, Name}."""
    sy, sx, h, w = data.shape
    dims = [w, h, sx, sy]  # DM lists dimensions x fastest
    cal = [(sig_per_nm, "1/nm"), (sig_per_nm, "1/nm"), (nav_nm, "nm"), (nav_nm, "nm")]
    image_data = _dm4_group("ImageData", [
        _dm4_group("Calibrations", [
            _dm4_group("Brightness", [_dm4_float("Origin", 0.0), _dm4_float("Scale", 1.0), _dm4_text("Units", "")]),
            _dm4_group("Dimension", [_dm4_group("", [_dm4_float("Origin", 0.0), _dm4_float("Scale", sc),
                                                     _dm4_text("Units", u)]) for sc, u in cal]),
        ]),
        _dm4_data("Data", [20, 6, data.size], data.astype("<f4").tobytes()),
        _dm4_long("DataType", 2),  # real4
        _dm4_group("Dimensions", [_dm4_long("", d) for d in dims]),
        _dm4_long("PixelDepth", 4),
    ])
    tags = _dm4_group("ImageTags", [_dm4_group("Microscope Info", [
        _dm4_double("Voltage", voltage), _dm4_text("Illumination Mode", "STEM")])])
    image = _dm4_group("", [image_data, tags, _dm4_text("Name", "4D scan")])
    root = struct.pack(">bbQ", 0, 1, 1) + _dm4_group("ImageList", [image])
    body = root + b"\0" * 8
    path.write_bytes(struct.pack(">iQi", 4, len(body), 1) + body)


def test_dm4_by_tag_layout(tmp_path):
    data = np.random.default_rng(8).random((*SCAN, 6, 5)).astype(np.float32)
    _write_dm4(tmp_path / "scan.dm4", data, nav_nm=0.04, sig_per_nm=0.25, voltage=300e3)
    ds = io.load(tmp_path / "scan.dm4")
    assert _is_lazy(ds)
    np.testing.assert_array_equal(np.asarray(ds.patterns), data)
    assert ds.energy == pytest.approx(300e3)
    assert ds.scan_step == pytest.approx((0.4, 0.4), rel=1e-6)
    assert ds.angular_sampling == pytest.approx((0.025 * wavelength(300e3) * 1e3,) * 2, rel=1e-6)
    assert ds.metadata["missing_from_file"] == []


# ---- Dectris Arina/Eiger master + data files --------------------------------------------------------
def _write_dectris(tmp_path, blocks, nimages=SCAN[1], ntrigger=SCAN[0], energy=300e3, mask=None):
    h, w = blocks[0].shape[1:]
    for k, b in enumerate(blocks, 1):
        with h5py.File(tmp_path / f"run_data_{k:06d}.h5", "w") as f:
            f.create_dataset("entry/data/data", data=b, chunks=(1, h, w), compression="gzip")
    master = tmp_path / "run_master.h5"
    with h5py.File(master, "w") as f:
        for k in range(1, len(blocks) + 1):
            f[f"entry/data/data_{k:06d}"] = h5py.ExternalLink(f"run_data_{k:06d}.h5", "/entry/data/data")
        f["entry/instrument/beam/incident_wavelength"] = wavelength(energy)
        det = f.create_group("entry/instrument/detector")
        det["x_pixel_size"] = 75e-6
        det["y_pixel_size"] = 75e-6
        det["detector_distance"] = 0.1
        det["beam_center_x"] = 3.0
        det["beam_center_y"] = 2.5
        spec = det.create_group("detectorSpecific")
        spec["nimages"] = nimages
        spec["ntrigger"] = ntrigger
        if mask is not None:
            spec["pixel_mask"] = mask.astype(np.uint32)
    return master


def test_dectris_master_concatenates_links_lazily_with_metadata(tmp_path, monkeypatch):
    frames = _frames(5, 6, seed=6)
    mask = np.zeros((5, 6), bool)
    mask[1, 2] = mask[4, 0] = True
    master = _write_dectris(tmp_path, [frames[:8], frames[8:]], mask=mask)
    monkeypatch.chdir(tmp_path.parent)  # links resolve beside the master file, not in the working folder
    ds = io.load(master, scan_step=0.4)
    assert ds.scan_shape == SCAN and _is_lazy(ds)
    np.testing.assert_array_equal(np.asarray(ds.patterns), frames.reshape(*SCAN, 5, 6))
    np.testing.assert_array_equal(ds.get_patterns([11, 0, 8]).numpy(), frames[[11, 0, 8]].astype(np.float32))
    assert ds.energy == pytest.approx(300e3, rel=1e-9)
    assert ds.angular_sampling == pytest.approx((0.75, 0.75))
    assert ds.metadata["missing_from_file"] == ["scan_step"]
    det = PixelatedDetector.from_dataset(ds)
    np.testing.assert_array_equal(det.bad_pixels, mask)
    assert det.centre == (2.5, 3.0)
    with pytest.raises(ShapeError, match=r"run_master\.h5: the file's metadata says a 3×4 scan but scan_shape is 2×6"):
        io.load(master, scan_step=0.4, scan_shape=(2, 6))
    assert energy_from_wavelength(wavelength(80e3)) == pytest.approx(80e3, rel=1e-9)


def test_dectris_scan_shape_from_options_and_missing_data_file(tmp_path):
    frames = _frames(4, 4, seed=7)
    master = _write_dectris(tmp_path, [frames], nimages=12, ntrigger=1)
    with pytest.raises(ShapeError, match=r"run_master\.h5: the file holds 12 frames and no scan shape"):
        io.load(master, scan_step=0.4)
    ds = io.load(master, scan_step=0.4, scan_shape=SCAN)
    np.testing.assert_array_equal(np.asarray(ds.patterns), frames.reshape(*SCAN, 4, 4))
    (tmp_path / "run_data_000001.h5").unlink()
    with pytest.raises(InputFileError, match=r"run_master\.h5: /entry/data/data_000001 links to "
                                             r"run_data_000001\.h5:/entry/data/data, which cannot be opened"):
        io.load(master, scan_step=0.4, scan_shape=SCAN)


def test_dectris_undecodable_compression_fails_at_open(tmp_path):
    frames = _frames(4, 4, seed=8)
    master = _write_dectris(tmp_path, [frames])
    with h5py.File(tmp_path / "run_data_000001.h5", "w") as f:  # chunks marked as passed through a filter
        d = f.create_dataset("entry/data/data", shape=frames.shape, dtype=frames.dtype, chunks=(1, 4, 4),
                             compression=32123, allow_unknown_filter=True)  # that HDF5 here does not have
        for i, frame in enumerate(frames):
            d.id.write_direct_chunk((i, 0, 0), frame.tobytes(), filter_mask=0)
    with pytest.raises(InputFileError, match=r"run_master\.h5: cannot decode the frames of .*run_data_000001\.h5"):
        io.load(master, scan_step=0.4)
