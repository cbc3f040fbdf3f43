"""A Merlin ``.mib`` scan replayed over TCP by LiberTEM-live's own simulator (``libertem-live-mib-sim``, a process of
its own on 127.0.0.1), for the tests of ``phasestem live`` and its page."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from detector_files import mib_hdr, write_mib

#: detector pixels on the wire per pattern pixel: 128² frames, as a binned Merlin would send (a quarter of its side)
UPSAMPLE = 4


def write_scan(folder: Path, scan_shape=(12, 12)) -> tuple[Path, Path, np.ndarray]:
    """A small counted scan (phasestem's simulator: plumbing only) as ``folder/mib/scan.mib`` (its own folder:
    LiberTEM's reader takes every ``.mib`` of a prefix) and a parameter file for ``phasestem live`` (optics and
    scan, ``data.bin`` undoing the upsampling). Returns (mib, params, frames as the readers present them)."""
    from phasestem.recon.synthetic import synthetic_scan

    ds = synthetic_scan(window=(32, 32), scan_shape=scan_shape, scan_step=0.8, dose=2000, seed=1)
    counts = np.round(np.asarray(ds.patterns).reshape(-1, 32, 32)).astype(np.uint16)
    frames = np.kron(counts, np.ones((UPSAMPLE, UPSAMPLE), np.uint16))
    (folder / "mib").mkdir(parents=True)
    mib = folder / "mib" / "scan.mib"
    write_mib(mib, frames[:, ::-1], mib_hdr(len(frames), scan_shape[1]))  # a .mib stores its rows upside down
    params = folder / "params.yaml"
    params.write_text(yaml.safe_dump({
        "data": {"bin": UPSAMPLE},
        "optics": {"energy": float(ds.energy), "semiangle": float(ds.semiangle),
                   "angular_sampling": [float(a) / UPSAMPLE for a in ds.angular_sampling],
                   "aberrations": {"C10": 50.0}},
        "scan": {"step": 0.8, "shape": list(scan_shape)},
        "run": {"n_epochs": 4, "batch_size": 16, "out_dir": "out", "progress": False}}))
    return mib, params, frames.reshape(*scan_shape, *frames.shape[1:])


def ReplayedScan(mib: Path, scan_shape, dwell_us: int, log: Path):
    """``libertem-live-mib-sim MIB`` on free ports of 127.0.0.1 at one frame per ``dwell_us`` µs
    (:class:`phasestem.live.replay.MibReplay`), armed and triggered at once: a detector whose scan starts when its
    client connects (``phasestem live --data-port``)."""
    from phasestem.live.replay import MibReplay

    sim = MibReplay(mib, scan_shape, 1e6 / dwell_us, log)
    sim.start_scan()
    return sim


def sent_by_simulator(log: Path) -> int:
    """Frames LiberTEM-live's simulator sent, by its own log (:func:`phasestem.live.replay.simulator_account`); a
    log of several acquisitions is refused: a rehearsal replays one."""
    from phasestem.live.replay import simulator_account

    account = simulator_account(log)
    assert account["acquisitions"] <= 1, f"{log}: the simulator started {account['acquisitions']} acquisitions"
    return account["sent"]
