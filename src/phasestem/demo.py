"""``phasestem demo``: the whole story on a built-in example, ending in a Markdown report with PNGs."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from .optics import make_probe
from .plot import simulation_overview
from .simulate import load_config, simulate_dataset

log = logging.getLogger("phasestem.demo")

BUILTIN_CONFIG = Path(__file__).parent / "configs" / "simulate_demo.yaml"


def run_demo(out: Path, quick: bool = False) -> Path:
    """Run every stage into ``out``; returns the report path."""
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    cfg = load_config(BUILTIN_CONFIG)
    files = simulate_dataset(cfg, out / "data")
    timings["simulate"] = time.perf_counter() - t0
    from . import io

    ds = io.load(files[0], sample=0)
    g, o = cfg.grid, cfg.optics
    sampling = (g.extent[0] / g.sim_gpts[0], g.extent[1] / g.sim_gpts[1])
    probe = make_probe(g.sim_gpts, sampling, o.energy, o.semiangle, o.aberrations)
    simulation_overview(ds.truth["phase"], probe, np.asarray(ds.patterns[...]), out / "simulation.png",
                        ds.summary())
    ds.inspect(path=out / "inspect.png")
    report = out / "report.md"
    lines = ["# phasestem demo", "", f"Dataset: {ds.summary()}", "", "![simulation](simulation.png)", "",
             "![inspect](inspect.png)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    report.write_text("\n".join(lines) + "\n")
    return report
