"""Live's readouts against the simulator's own: a scan replayed at several frame rates (``phasestem live
--replay``, the simulator started and stopped by phasestem), whole, one rate at a time.

    python benchmarks/live/make_scan.py DATA [--quick]
    python benchmarks/live/lag.py DATA --fps 20 50 --out OUT [--epochs 4] [--threads 2]

Per rate (``OUT/lag.json``, and a Markdown row each on stdout): frames the simulator's log says it sent, the frames
the detector's headers number, received and recorded (``stream.h5``); the rate and duration by the frames' clock
against the simulator's own figures; the lag from a frame's arrival to the end of its first AD update (median,
95th percentile); stall alarms the log rang (none is right for a steady stream); the load average after the run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import live_params  # noqa: E402


def one_rate(data: Path, out: Path, fps: float, epochs: int) -> dict:
    import h5py

    from phasestem.live.merlin import MerlinStream
    from phasestem.live.replay import MibReplay, simulator_account
    from phasestem.live.session import run_live

    params = live_params(data, out, epochs)
    t0 = time.perf_counter()
    with MibReplay(data / "scan.mib", tuple(params.scan.shape), fps, out.parent / f"simulator_{fps:g}.log") as sim:
        run_live(params, MerlinStream("127.0.0.1", sim.data_port), arm_timeout=120, rehearsal=sim)
    seconds = time.perf_counter() - t0
    s = json.loads((out / "live.json").read_text())
    sim_says = simulator_account(out.parent / f"simulator_{fps:g}.log")
    with h5py.File(out / "stream.h5") as f:
        in_file = f["patterns"].shape[0] * f["patterns"].shape[1] + int(f.attrs["incomplete_row_frames"])
    log = (out / "live.log").read_text()
    return {"fps_asked": fps, "simulator_sent": sim_says["sent"], "simulator_fps": sim_says["fps"],
            "frames_expected": s["frames_expected"], "frames_sent": s["frames_sent"],
            "frames_received": s["frames_received"], "frames_recorded": in_file, "fps": s["frames_per_second"],
            "scan_seconds": s["scan_seconds"], "simulator_seconds": sim_says["sent"] / sim_says["fps"],
            "lag_median_s": s["lag_median"], "lag_p95_s": s["lag_p95"], "updates": s["updates"],
            "stall_alarms": log.count("stalled?"), "epochs_live": s["epochs_live"], "n_epochs": s["n_epochs"],
            "run_seconds": seconds, "load_average": os.getloadavg()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="the folder make_scan.py wrote")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--fps", type=float, nargs="+", default=[20.0, 500.0], help="frame rates (default 20 500)")
    p.add_argument("--epochs", type=int, default=4, help="run.n_epochs of each run (default 4)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [one_rate(args.data, args.out / f"fps_{fps:g}", fps, args.epochs) for fps in args.fps]
    (args.out / "lag.json").write_text(json.dumps({"data": args.data.name, "threads": args.threads, "rows": rows},
                                                  indent=1, default=float))
    print("| scan | frames/s asked | sent (simulator) / received / recorded | frames/s: ours / simulator's | "
          "duration s: ours / simulator's | lag median / p95 (s) | stall alarms | load |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {args.data.name}, {r['frames_expected']} frames | {r['fps_asked']:g} | {r['simulator_sent']} / "
              f"{r['frames_received']} / {r['frames_recorded']} | {r['fps']:.1f} / {r['simulator_fps']:.1f} | "
              f"{r['scan_seconds']:.2f} / {r['simulator_seconds']:.2f} | {r['lag_median_s']:.2f} / "
              f"{r['lag_p95_s']:.2f} | {r['stall_alarms']} | {r['load_average'][0]:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
