"""Input bombs (issue 24, items 6 and 7): build each in a temporary folder, run the command that must refuse it, and
report the refusal's time and memory.

    python benchmarks/reliability/bombs.py                # every bomb
    python benchmarks/reliability/bombs.py --only npz     # bombs whose name contains 'npz'

Each bomb runs in its own process: ``phasestem.cli``, its command modules and the readers are imported
first (torch, h5py, dask, rsciio: the same for every command), then ``cli.main(argv)`` is timed and the rise
of the process's peak resident memory over its resident memory before the call is read (``ru_maxrss`` after −
``VmRSS`` before): the cost of the refusal itself. The whole process (imports included) is measured too
(``os.wait4``). The command must exit 1 with one error line on stderr (``phasestem <command>: error: <file>:
…``; log lines aside, no traceback). A process still running after ``--timeout`` seconds is killed and
reported as a hang. Acceptance: every refusal under 2 s and 500 MB.

The files are sparse or tiny (a few MB on disk) except ``npz-expands``, whose 3.9 GB of zeros deflate to
≈ 4 MB (building it takes ≈ 10-20 s). The builders are also used by ``tests/test_reliability_bombs.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: one EMPAD frame: 130 rows (128 + 2 footer rows) × 128 float32
EMPAD_FRAME = 130 * 128 * 4
CALIB = ["--energy", "300e3", "--scan-step", "1", "--angular-sampling", "1"]


# ----------------------------------------------------------------------------------------------- builders
def empad(folder: Path, scan: tuple[int, int], frames: int, name: str = "acquisition", raw: str = "scan.raw"
          ) -> Path:
    """An EMPAD ``NAME.xml`` declaring a ``scan`` (Sy, Sx) over ``raw`` holding ``frames`` frames (zeros)."""
    with open(folder / raw, "wb") as f:
        f.truncate(frames * EMPAD_FRAME)
    xml = (f'<root><pix_x>{scan[1]}</pix_x><pix_y>{scan[0]}</pix_y><raw_file filename="{raw}"/>'
           '<iom_measurements><full_scan_field_of_view x="1.2e-9" scale_factor="1.0"/>'
           "<calibrated_pixelsize>2e-10</calibrated_pixelsize></iom_measurements></root>")
    (folder / f"{name}.xml").write_text(xml)
    return folder / f"{name}.xml"


def npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    """A version-1.0 ``.npy`` header declaring ``shape`` of ``dtype`` (the data are not part of it)."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def npz(path: Path, shape: tuple[int, ...], data_bytes: int | None = None, compress: bool = False,
        dtype: str = "<f4", member: str = "patterns.npy") -> Path:
    """An ``.npz`` whose ``member`` declares ``shape`` of ``dtype`` and holds ``data_bytes`` zero bytes (the whole
    array by default), deflated (``compress``) or stored; written in 64 MiB pieces (never held whole)."""
    full = int(np.prod(shape)) * np.dtype(dtype).itemsize
    left = full if data_bytes is None else int(data_bytes)
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method, allowZip64=True) as z:
        with z.open(member, "w", force_zip64=True) as f:
            f.write(npy_header(shape, dtype))
            piece = bytes(min(left, 64 * 1024**2))
            while left > 0:
                f.write(piece[: min(left, len(piece))])
                left -= len(piece)
    return path


def hdf5_unwritten(path: Path, shape: tuple[int, ...], dtype: str = "float32", key: str = "patterns") -> Path:
    """An HDF5 file with a chunked dataset of ``shape`` that was never written (no chunk allocated)."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset(key, shape=shape, dtype=dtype, chunks=(1,) * (len(shape) - 2) + tuple(shape[-2:]))
    return path


def arina_unwritten(folder: Path, scan: tuple[int, int], frame: tuple[int, int], written: int = 0) -> Path:
    """A Dectris ``run_master.h5`` linking ``run_data_000001.h5`` whose (Sy·Sx, H, W) uint16 frames were never
    written (the first ``written`` frames excepted)."""
    import h5py

    n = scan[0] * scan[1]
    with h5py.File(folder / "run_data_000001.h5", "w") as f:
        d = f.create_dataset("entry/data/data", shape=(n, *frame), dtype="uint16", chunks=(1, *frame))
        for i in range(written):
            d[i] = np.full(frame, i + 1, np.uint16)
    master = folder / "run_master.h5"
    with h5py.File(master, "w") as f:
        f["entry/data/data_000001"] = h5py.ExternalLink("run_data_000001.h5", "/entry/data/data")
        spec = f.create_group("entry/instrument/detector/detectorSpecific")
        spec["nimages"], spec["ntrigger"] = scan[1], scan[0]
    return master


def deep_flow(depth: int) -> str:
    """A YAML/JSON value nested ``depth`` lists deep: ``[[[…]]]``."""
    return "[" * depth + "]" * depth


# ----------------------------------------------------------------------------------------------- bombs
def _empad(folder: Path) -> list[str]:
    return ["inspect", str(empad(folder, (60000, 60000), 63)), *CALIB, "--out", str(folder / "o.png")]


def _npz_expands(folder: Path) -> list[str]:
    path = npz(folder / "bomb.npz", (3720, 512, 512), compress=True)  # 3.9 GB of zeros, ≈ 4 MB deflated
    return ["inspect", str(path), *CALIB, "--out", str(folder / "o.png")]


def _npz_declared(folder: Path) -> list[str]:
    path = npz(folder / "declared.npz", (40 * 1024, 512, 512), data_bytes=2**20)  # 40 GiB declared, 1 MiB held
    return ["inspect", str(path), *CALIB, "--out", str(folder / "o.png")]


def _hdf5(folder: Path) -> list[str]:
    path = hdf5_unwritten(folder / "scan.h5", (400, 500, 256, 256))  # 52 GB declared, nothing written
    return ["inspect", str(path), *CALIB, "--out", str(folder / "o.png")]


def _arina(folder: Path) -> list[str]:
    master = arina_unwritten(folder, (400, 1000), (256, 256))  # 52 GB declared, nothing written
    return ["inspect", str(master), *CALIB, "--out", str(folder / "o.png")]


def _yaml_file(folder: Path) -> list[str]:
    (folder / "deep.yaml").write_text("data: " + deep_flow(50000) + "\n")
    return ["reconstruct", str(folder / "deep.yaml"), "--out", str(folder / "run")]


def _yaml_set(folder: Path) -> list[str]:
    config = Path(__file__).resolve().parents[2] / "configs" / "train_patch_tiny.yaml"
    return ["train", "patch", str(config), "--out-dir", str(folder / "run"), "--set", "trainer.lr=" + deep_flow(50000)]


def _yaml_reader_option(folder: Path) -> list[str]:
    data = folder / "scan.npy"
    np.save(data, np.ones((4, 4, 8, 8), np.float32))
    return ["calibrate", str(data), "--energy", "300e3", "--semiangle", "20", "--scan-step", "1", "--out",
            str(folder / "calib"), "--reader-option", "scan_order=" + deep_flow(50000)]


BOMBS: dict[str, tuple[str, Callable[[Path], list[str]]]] = {
    "empad-60000²-scan": ("EMPAD .xml declaring a 60000² scan over a 4 MB .raw", _empad),
    "npz-expands": ("2-4 MB .npz whose member expands to 3.9 GB", _npz_expands),
    "npz-40GiB-declared": (".npz member declaring 40 GiB, holding 1 MiB", _npz_declared),
    "hdf5-52GB-unwritten": ("HDF5 dataset declared at 52 GB, never written", _hdf5),
    "arina-52GB-unwritten": ("Dectris master + data file declared at 52 GB, never written", _arina),
    "yaml-50000-deep": ("parameter file nested 50000 deep", _yaml_file),
    "set-50000-deep": ("--set value nested 50000 deep", _yaml_set),
    "reader-option-50000-deep": ("calibrate --reader-option value nested 50000 deep", _yaml_reader_option),
}

# the driver run in each child: imports first, then the command, measured
_DRIVER = r"""
import importlib, json, resource, sys, time
import phasestem.cli as cli
cli.build_parser()  # imports every command module (torch, ...)
for name in ("dask.array", "h5py", "phasestem.io", "phasestem.calibrate.files", "phasestem.recon.params",
             *(f"phasestem.io.{m}" for m in ("hdf5", "numpy", "raw", "rosetta", "dectris", "arrays")),
             *(f"rsciio.{m}" for m in ("empad", "blockfile", "digitalmicrograph"))):
    importlib.import_module(name)  # the readers' own imports: not part of a refusal
def rss():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS:")) * 1024
before = rss()
t0 = time.perf_counter()
rc = cli.main(sys.argv[1:])
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"rc": rc, "seconds": seconds, "added_bytes": max(0, peak - before)}), file=sys.stdout)
"""


def run(argv: list[str], timeout: float) -> dict:
    """Run the driver on ``argv`` in a child process: its report, wall time, whole-process peak and stderr."""
    env = dict(os.environ, MPLBACKEND="Agg")
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # files: a long traceback never blocks
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER, *argv], stdout=out, stderr=err, text=True, env=env)
    hung = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            hung = True
            break
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    stdout, stderr = out.read(), err.read()
    report = {}
    for line in stdout.splitlines()[::-1]:
        if line.startswith("{"):
            report = json.loads(line)
            break
    return {"hung": hung, "wall": wall, "peak": usage.ru_maxrss * 1024, "rc": proc.returncode, "stderr": stderr,
            **report}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="run the bombs whose name contains this text")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds before a command counts as hung")
    args = ap.parse_args()
    rows, ok = [], True
    with tempfile.TemporaryDirectory() as tmp:
        base = run(["inspect", str(Path(tmp) / "missing.h5")], args.timeout)
        for name, (what, build) in BOMBS.items():
            if args.only not in name:
                continue
            folder = Path(tmp) / name
            folder.mkdir()
            argv = build(folder)
            on_disk = sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())
            r = run(argv, args.timeout)
            lines = [ln for ln in r["stderr"].splitlines() if ln.strip()]
            errors = [ln for ln in lines if ln.startswith("phasestem") and ": error: " in ln]
            refused = not r["hung"] and r["rc"] == 1 and len(errors) == 1 and "Traceback" not in r["stderr"]
            lines = errors or lines
            fast = refused and r.get("seconds", 1e9) < 2 and r.get("added_bytes", 1e18) < 500e6
            ok &= fast
            message = lines[-1] if lines else ""
            message = message.replace(str(folder) + os.sep, "")
            rows.append((name, what, on_disk, r, fast, message))
            print(f"{name}: {'hung' if r['hung'] else 'exit ' + str(r['rc'])}, "
                  f"{r.get('seconds', float('nan')):.2f} s, +{r.get('added_bytes', 0) / 1e6:.0f} MB "
                  f"(process {r['wall']:.1f} s, {r['peak'] / 1e6:.0f} MB): {message[:160]}", flush=True)
    print(f"\nbaseline (imports + 'inspect missing.h5'): process {base['wall']:.1f} s, {base['peak'] / 1e6:.0f} MB\n")
    print("| bomb | on disk | refusal | added peak memory | whole process | within 2 s / 500 MB | message |")
    print("|---|---|---|---|---|---|---|")
    for name, what, on_disk, r, fast, message in rows:
        took = "hung (killed)" if r["hung"] else f"{r.get('seconds', float('nan')):.2f} s"
        print(f"| {name}: {what} | {on_disk / 1e6:.1f} MB | {took} | {r.get('added_bytes', 0) / 1e6:.0f} MB | "
              f"{r['wall']:.1f} s, {r['peak'] / 1e6:.0f} MB | {'yes' if fast else 'NO'} | `{message[:200]}` |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
