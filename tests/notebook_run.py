"""Run a notebook of ``notebooks/`` the way a user does, on a copy, for the tests.

The notebook is copied into a temporary folder with what it reads (``notebooks/data/`` beside it, ``configs/`` one
level up, as in the repository) and executed there with nbclient, cell by cell in a fresh kernel; the committed
file is only read, never rewritten. A cell that raises fails the test with the cell's traceback. The kernel runs
torch on one thread (``OMP_NUM_THREADS=1``), as the suite's modules do (``conftest.one_torch_thread``): on a shared
2-core machine two threads made an epoch of the reconstruction tutorial 6× slower (8.0 s against 1.4 s at load 13).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def execute_notebook(name: str, workdir: Path, timeout: int = 300):
    """Execute ``notebooks/<name>`` in ``workdir/notebooks`` (each cell within ``timeout`` s); returns the executed
    notebook (nbformat node) and the folder it ran in."""
    import nbformat
    from nbclient import NotebookClient

    folder = Path(workdir) / "notebooks"
    folder.mkdir(parents=True)
    shutil.copy2(ROOT / "notebooks" / name, folder / name)
    if (ROOT / "notebooks" / "data").is_dir():
        shutil.copytree(ROOT / "notebooks" / "data", folder / "data")
    shutil.copytree(ROOT / "configs", Path(workdir) / "configs")
    nb = nbformat.read(folder / name, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(folder)}})
    client.execute(env={**os.environ, "OMP_NUM_THREADS": "1"})
    return nb, folder


def cell_text(nb) -> str:
    """Every stream and text/plain output of the executed notebook, joined."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out:
                parts.append(out["data"].get("text/plain", ""))
    return "\n".join(parts)
