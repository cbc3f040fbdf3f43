"""Does watching a reconstruction live slow it down? 20 page clients on one run vs none (``phasestem serve``).

A workspace with a simulated scan (16 × 16 positions, 64² patterns by default) is served by a real
``phasestem serve`` process on 127.0.0.1; rounds alternate between a reconstruction job that nobody watches and
the same job watched by ``--clients`` push-channel clients (Server-Sent Events, as the live page opens), each
reading every payload (snapshot images, loss curve, log tail) for the whole run. The clients live in this process
(one thread, non-blocking sockets), on the same machine as the server and the job, so their own cost counts too.

The reconstruction's time is its epochs' wall time (epoch 1's own time from ``results.h5`` plus the time from its
end to the last epoch's end in ``reconstruct.log``: the per-epoch live snapshot included, the process start-up not);
the figure is the median over rounds of watched / unwatched − 1. On a shared machine that ratio carries the other
load's noise, so the CPU time the watching costs is measured too: the server's and the clients' CPU seconds
(``/proc``) with the watchers minus without, per CPU second of the job — the slowdown a saturated machine would show.

Usage: python benchmarks/serve_load.py [--rounds 3] [--clients 20] [--epochs 20] [--scan 16] [--window 64]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

from phasestem.recon.results import load_results
from phasestem.recon.synthetic import write_npz

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "reconstruct_tiny.yaml"
TOKEN = "benchmark-token"


def workspace(root: Path, scan: int, window: int, epochs: int) -> None:
    (root / "data").mkdir(parents=True)
    write_npz(root / "data" / "scan.npz", scan_shape=(scan, scan), window=(window, window), seed=1)
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg.pop("tune", None)
    cfg["data"] = {"file": "data/scan.npz", "patterns_key": "patterns"}
    cfg["scan"]["shape"] = [scan, scan]
    cfg["run"].update(n_epochs=epochs, batch_size=32, checkpoint_every=0, check_optics=False, progress=False)
    (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))


def request(url: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(url + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as res:
        return json.loads(res.read())


class Watchers:
    """``n`` SSE clients of one job, read in a background thread until their streams end."""

    def __init__(self, port: int, job_id: int, n: int):
        self.sel = selectors.DefaultSelector()
        self.bytes = 0
        self.events = 0
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(f"GET /api/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                      f"Authorization: token {TOKEN}\r\nAccept: text/event-stream\r\n\r\n".encode())
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ)
        self.open = n
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while self.open:
            for key, _ in self.sel.select(timeout=1.0):
                data = key.fileobj.recv(1 << 16)
                if not data:
                    self.sel.unregister(key.fileobj)
                    key.fileobj.close()
                    self.open -= 1
                    continue
                self.bytes += len(data)
                self.events += data.count(b"\ndata: ") + data.startswith(b"data: ")

    def close(self) -> None:
        self.thread.join(timeout=60)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc; 0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_job(url: str, port: int, root: Path, clients: int, server_pid: int) -> dict:
    """One reconstruction job, watched by ``clients`` pages: its epochs' time, and the CPU seconds the job, the
    server and the clients (this process) spent meanwhile."""
    server0, own0 = cpu_seconds(server_pid), sum(os.times()[:2])
    job = request(url, "/api/jobs", {"command": "reconstruct", "config": "tiny.yaml"})
    watchers = Watchers(port, job["id"], clients) if clients else None
    start = time.perf_counter()
    job_cpu = 0.0
    while True:
        info = request(url, f"/api/jobs/{job['id']}")
        if info["state"] in ("done", "failed", "cancelled"):
            break
        if info["pid"]:
            job_cpu = max(job_cpu, cpu_seconds(info["pid"]))  # sampled until it exits
        time.sleep(0.2)
    wall = time.perf_counter() - start
    if info["state"] != "done":
        raise SystemExit(f"job {job['id']} {info['state']}: see {root / job['run_dir'] / 'job.log'}")
    if watchers:
        watchers.close()
    return {"recon": reconstruction_seconds(root / job["run_dir"]), "wall": wall, "job_cpu": job_cpu,
            "server_cpu": cpu_seconds(server_pid) - server0, "clients_cpu": sum(os.times()[:2]) - own0,
            "events": watchers.events if watchers else 0, "bytes": watchers.bytes if watchers else 0}


def reconstruction_seconds(run: Path) -> float:
    """Epoch 1's own time + the wall time from its end to the last epoch's end (reconstruct.log's timestamps), so
    everything between epochs (the live snapshot, checkpoints) counts."""
    from datetime import datetime

    stamps = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
              for m in re.finditer(r"^(\S+ \S+) INFO epoch \d+ loss", (run / "reconstruct.log").read_text(), re.M)]
    first = float(load_results(run / "results.h5")["loss"]["seconds"][0])
    return first + (stamps[-1] - stamps[0]).total_seconds()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--scan", type=int, default=16)
    ap.add_argument("--window", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        workspace(root, args.scan, args.window, args.epochs)
        server = subprocess.Popen([sys.executable, "-m", "phasestem.cli", "serve", "--root", str(root), "--port", "0",
                                   "--token", TOKEN], stdout=subprocess.PIPE, text=True,
                                  env=dict(os.environ, MPLBACKEND="Agg"))
        try:
            url = None
            while url is None:
                line = server.stdout.readline()
                if not line:
                    raise SystemExit("phasestem serve did not start")
                m = re.search(r"(http://127\.0\.0\.1:(\d+))/\?token=", line)
                url, port = (m.group(1), int(m.group(2))) if m else (None, 0)
            rows = []
            for r in range(args.rounds):
                for clients in (0, args.clients) if r % 2 == 0 else (args.clients, 0):
                    x = run_job(url, port, root, clients, server.pid)
                    rows.append((r, clients, x))
                    print(f"round {r}: {clients:2d} clients  reconstruction {x['recon']:7.2f} s  (job wall "
                          f"{x['wall']:6.1f} s; CPU s: job {x['job_cpu']:.1f}, server {x['server_cpu']:.2f}, clients "
                          f"{x['clients_cpu']:.2f}" + (f"; {x['events']} pushes, {x['bytes'] / 1e6:.1f} MB sent)"
                                                       if clients else ")"), flush=True)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    ratios, shares = [], []
    for r in range(args.rounds):
        alone = next(x for i, c, x in rows if i == r and c == 0)
        watched = next(x for i, c, x in rows if i == r and c == args.clients)
        ratios.append(watched["recon"] / alone["recon"] - 1)
        extra = (watched["server_cpu"] + watched["clients_cpu"]) - (alone["server_cpu"] + alone["clients_cpu"])
        shares.append(extra / watched["job_cpu"])
    print(f"slowdown with {args.clients} clients watching: median {100 * statistics.median(ratios):+.1f} % "
          f"(rounds: {', '.join(f'{100 * x:+.1f} %' for x in ratios)}); {args.epochs} epochs of a {args.scan}² scan "
          f"of {args.window}² patterns")
    print(f"CPU the watching cost (server + clients, watched minus unwatched) per CPU second of the job: median "
          f"{100 * statistics.median(shares):.2f} % (rounds: {', '.join(f'{100 * x:.2f} %' for x in shares)})")


if __name__ == "__main__":
    main()
