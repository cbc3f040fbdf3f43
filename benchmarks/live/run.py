"""Live against offline: the same scan streamed by LiberTEM-live's Merlin simulator and reconstructed while it
arrives (``phasestem live``), or acquired first and then reconstructed (``phasestem reconstruct`` of the file).

    python benchmarks/live/make_scan.py DATA                      # the scan (independent NumPy multislice)
    python benchmarks/live/run.py DATA --out OUT [--fps 1000] [--epochs 20] [--threads 2]

Both routes run in this process, one after the other, with ``--threads`` torch threads, on the data of
``make_scan.py`` (``scan.mib``, ``truth.npz``, ``params.yaml``: phasestem's defaults, nothing tuned here).

* **live**: ``libertem-live-mib-sim DATA/scan.mib --dwelltime 1e6/fps`` (a process of its own, 127.0.0.1) and
  :func:`phasestem.live.session.run_live` with make_scan's ``live.yaml`` (``run.n_epochs`` = ``--epochs``: the
  live epochs and the recording's reconstruction's together, as the offline route's).
  The scan starts when the detector is armed (the receiver's clock).
* **offline**: the acquisition takes the scan's duration as the live route measured it (first to last frame at
  the same rate), then :func:`phasestem.recon.run.run_reconstruction` of ``DATA/scan.mib`` with the same
  parameter file and ``--epochs``.

Each route's object phase is copied at every page snapshot (live: at most every 0.5 s while streaming and after
every epoch of the finishing reconstruction, :meth:`~phasestem.live.feed.StreamFeed.page_arrays`; offline: after
every epoch) with its time; E_φ against the truth is computed
afterwards (:func:`phasestem.recon.truth.truth_metrics`, the scanned field, offsets removed, sub-pixel aligned),
so measuring costs the routes nothing. Reported (``OUT/live_benchmark.json``, and a Markdown table on stdout): the
frame rate by the frames' clock, frames expected / received / left out, the lag from a frame's arrival to its
first AD update (median, 95th percentile), the offline route's final E_φ and **the time from scan start until
each route's phase is within 5 % of it**, with the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "real_data"))
from make_mib import load_truth  # noqa: E402

sys.path.insert(0, str(HERE))
from check_scan import Scorer  # noqa: E402

#: a route reaches the offline accuracy when its E_φ is within this factor of the offline final E_φ; the second
#: factor marks a phase good enough to judge the specimen by (reported beside it)
WITHIN, ROUGH = 1.05, 1.25


def live_params(data: Path, out: Path, epochs: int):
    """``phasestem live``'s parameters (:func:`phasestem.live.session.live_params`) from make_scan's ``live.yaml``
    (written beside the scan when missing), ``run.n_epochs`` = ``epochs``, the run folder ``out``."""
    from make_scan import write_params

    from phasestem.live.session import live_params as parse

    if not (data / "live.yaml").exists():
        write_params(data / "params.yaml", load_truth(data / "truth.npz"))
    return parse(data / "live.yaml", {"run.n_epochs": epochs, "run.progress": False}, out)


def run_live_route(data: Path, out: Path, fps: float, epochs: int, scan_shape) -> dict:
    """The live route; returns its captures and the stream's account."""
    import torch

    from phasestem.live import feed as feed_module
    from phasestem.live.merlin import MerlinStream
    from phasestem.live.session import run_live

    captures: list[tuple[float, str, torch.Tensor]] = []
    armed = {}
    original = feed_module.StreamFeed.page_arrays

    def capturing(self, model):  # every page snapshot: streaming, the recording's reconstruction's epochs, done
        captures.append((time.perf_counter(), self.stage, model.obj_phase.detach().clone()))
        armed["at"] = self.receiver.started
        return original(self, model)

    feed_module.StreamFeed.page_arrays = capturing
    from phasestem.live.replay import MibReplay

    try:
        with MibReplay(data / "scan.mib", scan_shape, fps, out.parent / "simulator.log") as sim:
            t_call = time.perf_counter()
            model = run_live(live_params(data, out, epochs), MerlinStream("127.0.0.1", sim.data_port),
                             arm_timeout=120, rehearsal=sim)
    finally:
        feed_module.StreamFeed.page_arrays = original
    summary = json.loads((out / "live.json").read_text())
    import h5py

    with h5py.File(out / "stream.h5") as f:
        assert int(f.attrs["frames_received"]) == summary["frames_received"]
    return {"model": model, "captures": captures, "summary": summary, "armed_at": armed["at"], "t_call": t_call}


def run_offline_route(data: Path, out: Path, epochs: int) -> dict:
    from phasestem.recon.callbacks import Callback
    from phasestem.recon.params import load_params
    from phasestem.recon.run import run_reconstruction

    captures = []

    class Capture(Callback):
        def on_epoch_end(self, loop):
            captures.append((time.perf_counter(), "offline", loop.model.obj_phase.detach().clone()))

    params = load_params(data / "params.yaml", {"run.n_epochs": epochs, "run.progress": False})
    params.run.out_dir = out
    t0 = time.perf_counter()
    model = run_reconstruction(params, callback_hooks=[lambda model, dataset, twin: Capture()])
    return {"model": model, "captures": captures, "t0": t0, "seconds": time.perf_counter() - t0}


def errors(model, captures, scorer: Scorer) -> list[float]:
    """E_φ of each captured phase (put into ``model``, the route's final one: same grid and scan); the last
    capture's summed phase must be the results file's (checked)."""
    import torch

    from phasestem.recon.figures import summed_object

    kept = model.obj_phase.detach().clone()
    out = []
    with torch.no_grad():
        for _, _, phase in captures:
            model.obj_phase.copy_(phase)
            out.append(scorer(np.asarray(summed_object(model)[0], dtype=np.float64)))
        model.obj_phase.copy_(kept)
        final = np.asarray(summed_object(model)[0], dtype=np.float64)
    assert np.allclose(final, scorer.reference, atol=1e-5), "the summed phase is not the results file's"
    return out


def first_within(times, values, target) -> float:
    hit = [t for t, v in zip(times, values, strict=True) if v <= target]
    return min(hit) if hit else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="the folder make_scan.py wrote")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--fps", type=float, default=1000.0, help="frames per second the simulator sends (default 1000)")
    p.add_argument("--epochs", type=int, default=20,
                   help="epochs of each route, the live updates' whole scans counted (default 20)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = load_truth(args.data / "truth.npz")
    scan_shape = tuple(meta["scan"])
    live = run_live_route(args.data, args.out / "live", args.fps, args.epochs, scan_shape)
    offline = run_offline_route(args.data, args.out / "offline", args.epochs)
    s = live["summary"]
    scan_seconds = s["scan_seconds"]  # first to last frame, the acquisition the offline route waits for
    truth = load_truth(args.data / "truth.npz")
    e_off = errors(offline["model"], offline["captures"], Scorer(args.out / "offline" / "results.h5", truth))
    e_live = errors(live["model"], live["captures"], Scorer(args.out / "live" / "results.h5", truth))
    t0_live = live["armed_at"]
    t_live = [t - t0_live for t, _, _ in live["captures"]]
    t_off = [scan_seconds + t - offline["t0"] for t, _, _ in offline["captures"]]
    target = WITHIN * e_off[-1]
    result = {
        "fps_asked": args.fps, "fps_achieved": s["frames_per_second"],
        "frames_expected": s["frames_expected"], "frames_received": s["frames_received"],
        "frames_left_out": s["frames_expected"] - s["frames_received"], "live_updates": s["updates"],
        "lag_median_s": s["lag_median"], "lag_p95_s": s["lag_p95"], "scan_seconds": scan_seconds,
        "offline_final_e_phi": e_off[-1], "live_final_e_phi": e_live[-1], "target_e_phi": target,
        "live_seconds_to_target": first_within(t_live, e_live, target),
        "offline_seconds_to_target": first_within(t_off, e_off, target),
        "live_seconds_to_rough": first_within(t_live, e_live, ROUGH * e_off[-1]),
        "offline_seconds_to_rough": first_within(t_off, e_off, ROUGH * e_off[-1]),
        "live_e_phi_at_scan_end": [e for (_, st, _), e in zip(live["captures"], e_live, strict=True)
                                   if st == "streaming"][-1],
        "live_curve": list(zip(t_live, e_live, [st for _, st, _ in live["captures"]], strict=True)),
        "offline_curve": list(zip(t_off, e_off, strict=True)),
        "epochs": args.epochs, "threads": args.threads, "load_average": os.getloadavg(),
        "data": str(args.data.name), "meta": {k: meta[k] for k in ("scan", "dose") if k in meta},
    }
    (args.out / "live_benchmark.json").write_text(json.dumps(result, indent=1, default=float))
    print(f"| route | frames received / expected | lag median / p95 (s) | E_φ at scan end | final E_φ | s from scan "
          f"start to E_φ ≤ {ROUGH} × / ≤ {WITHIN} × offline final |")
    print("|---|---|---|---|---|---|")
    print(f"| live ({result['fps_achieved']:.0f} fps) | {s['frames_received']} / {s['frames_expected']} | "
          f"{s['lag_median']:.2f} / {s['lag_p95']:.2f} | {result['live_e_phi_at_scan_end']:.4f} | {e_live[-1]:.4f} | "
          f"{result['live_seconds_to_rough']:.1f} / {result['live_seconds_to_target']:.1f} |")
    print(f"| offline (acquire {scan_seconds:.1f} s, then reconstruct) | – | – | – | {e_off[-1]:.4f} | "
          f"{result['offline_seconds_to_rough']:.1f} / {result['offline_seconds_to_target']:.1f} |")
    print(f"load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
