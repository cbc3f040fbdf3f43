"""The output folder of ``phasestem demo``: what a run writes there, and a folder that holds another run refused
(or, with ``--overwrite``, cleared of that run's files first, so no figure of an earlier run stays beside a new
report)."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ..base.errors import ConfigError

log = logging.getLogger("phasestem.cli.demo")

#: every file and folder a demo run writes into its output folder (besides its lock)
DEMO_OUTPUTS = ("report.md", "figures_of_merit.yaml", "routes.png", "hybrid.png", "simulation.png", "inspect.png",
                "data", "runs")


def previous_run(out: Path) -> list[str]:
    """The names of :data:`DEMO_OUTPUTS` that ``out`` already holds."""
    return [name for name in DEMO_OUTPUTS if (Path(out) / name).exists() or (Path(out) / name).is_symlink()]


def prepare_output(out: Path, overwrite: bool = False) -> None:
    """Refuse ``out`` when it holds another demo run (one line naming the folder and what it holds); with
    ``overwrite`` remove that run's files (only :data:`DEMO_OUTPUTS`: anything else in the folder is kept)."""
    found = previous_run(out)
    if not found:
        return
    if not overwrite:
        raise ConfigError(f"--out {out} holds another demo run ({', '.join(found)}): give --overwrite to replace it "
                          "(make demo DEMO_ARGS=--overwrite), or another --out")
    for name in found:
        path = Path(out) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    log.info("--overwrite: removed the previous run's %s from %s", ", ".join(found), out)
