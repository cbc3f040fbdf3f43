"""What a job's process starts with: ``python -I``, an environment cleaned to an allow-list, scratch folders inside
its run folder, and the kernel's confinement (Landlock, :mod:`phasestem.base.landlock`) that the job applies to
itself in :mod:`.job_main` before anything else is imported.

The confinement a job receives (:func:`job_confinement`): read and execute the Python installation and the
system's libraries (:func:`~phasestem.base.landlock.system_read_paths`, computed by the job under ``-I``); read,
never execute, the workspace root; write its run folder, the null device, shared memory and the GPUs' device
nodes; no TCP at all, except for a job of several local processes (torchrun, ``run.n_processes``, Dask workers,
a live job's rehearsal), whose processes bind ports of the ephemeral range and connect to the ephemeral range
(gloo, NCCL's bootstrap and Dask connect to one another's ephemeral ports, which no rule can name in advance), and
for a live job (``phasestem live``), which connects to its detector's data port.

A rehearsal (``phasestem live --replay SCAN.mib``, :func:`~.job_spec.rehearses`) is a job of several local
processes: ``phasestem live`` starts LiberTEM-live's simulator (``libertem-live-mib-sim``, run from the Python
installation, which jobs read and execute), which binds three ports on 127.0.0.1 that ``phasestem live`` found free
a moment before (ports of the ephemeral range, named on the simulator's command line: a bind to that port, not to
port 0), and connects to its data and control ports. It gets the same rule (``local_tcp``), and no detector port.

The live job's rule: connect, never bind, to the one TCP port its command line names (``--data-port``, read by the
command's own parser: :func:`~.job_spec.detector_ports`). Landlock's network rules name a port, not an address, so
the kernel lets the job connect to that port on any host; the host is the one its command line names (``--host``,
checked at submission to be a host name or address, :func:`~.job_spec.check_live`), and the job runs phasestem's
own code (:mod:`phasestem.live.merlin`), which connects there only and reads the data port passively (the control
port stays with the Merlin software); it needs no unix socket, shared memory or temporary folder of its own.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ..base.errors import PhasestemError
from ..base.hdf5_links import READ_ROOT_VARIABLE as READ_ROOT_ENV
from ..base.landlock import abi_version
from .job_main import CONFINEMENT_ENV, SCRATCH_VARIABLES
from .job_spec import rehearses
from .jobstore import FILES_FOLLOW, Job

#: variables a job or a data reader keeps from the server's environment, by name and by prefix
KEPT_NAMES = ("PATH", "HOME", "LANG", "TZ", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
              "HDF5_PLUGIN_PATH")
KEPT_PREFIXES = ("LC_", "CUDA_", "NVIDIA_")
#: the run folder's scratch folder: temporaries, caches and configuration of the libraries a job uses
SCRATCH = ".job"
#: Python's own flags for what torchrun starts (its workers run without ``-I``)
WORKER_FLAGS = {"PYTHONSAFEPATH": "1", "PYTHONNOUSERSITE": "1", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
#: the flag of ``phasestem serve`` that runs jobs without the kernel's confinement
NO_KERNEL_FLAG = "--no-kernel-confinement"


def isolated_argv(argv: list[str]) -> list[str]:
    """``python ARGS`` → ``python -I -B -u ARGS``: no ``PYTHON*`` variables, no user site, neither the working
    directory nor the script's folder on ``sys.path``; no bytecode written (the installation is read-only to a
    confined job), unbuffered output."""
    return [argv[0], "-I", "-B", "-u", *argv[1:]]


def _outside(entry: str, root: Path) -> bool:
    path = Path(entry)
    return path.is_absolute() and path.resolve() != root and root not in path.resolve().parents


def scratch_folders(run_dir: Path) -> dict[str, Path]:
    """The environment variables (:data:`~.job_main.SCRATCH_VARIABLES`) that point a job's libraries at its run
    folder's scratch folder, and where; the job makes them once confined (:mod:`.job_main`)."""
    scratch = Path(run_dir) / SCRATCH
    return {name: scratch / sub for name, sub in SCRATCH_VARIABLES.items()}


def kept_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's variables (``environ``, default ``os.environ``) a job or a data reader keeps: :data:`KEPT_NAMES`
    and :data:`KEPT_PREFIXES`; everything else, the token included, is dropped."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k in KEPT_NAMES or k.startswith(KEPT_PREFIXES)}


def job_environment(root: Path, run_dir: Path, environ: Mapping[str, str] | None = None,
                    confinement: dict[str, Any] | None = None) -> dict[str, str]:
    """A job's environment: the server's :data:`KEPT_NAMES` and :data:`KEPT_PREFIXES` variables (``PATH`` less
    relative folders and folders under the root), its scratch folders, :data:`WORKER_FLAGS`, ``MPLBACKEND=Agg``,
    ``HF_HUB_OFFLINE=1``, :data:`READ_ROOT_ENV` and, where given, its confinement."""
    root = Path(root).resolve()
    environ = os.environ if environ is None else environ
    env = kept_environment(environ)
    env["PATH"] = os.pathsep.join(p for p in environ.get("PATH", os.defpath).split(os.pathsep) if _outside(p, root))
    env.update((name, str(folder)) for name, folder in scratch_folders(run_dir).items())
    env.update(WORKER_FLAGS, MPLBACKEND="Agg", HF_HUB_OFFLINE="1")  # no network: never try a download
    env[READ_ROOT_ENV] = str(root)
    if confinement is not None:
        env[CONFINEMENT_ENV] = json.dumps(confinement)
    return env


def _yaml(path: Path) -> dict:
    try:
        if path.is_file() and path.stat().st_size < 1 << 20:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        pass
    return {}


def _section(data: dict, name: str) -> dict:
    value = data.get(name)
    return value if isinstance(value, dict) else {}


def _option(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def _count(value) -> int:
    try:
        return 0 if isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return 0


def uses_local_processes(root: Path, job: Job) -> bool:
    """Whether ``job`` runs several processes that talk over loopback TCP: torchrun (``processes`` > 1), a
    reconstruction whose ``params.yaml`` (written by the server) has ``run.n_processes`` > 1, a simulation with
    local Dask workers (``--workers`` or ``compute.workers``) and no ``compute.scheduler``, a live job's rehearsal
    (``--replay``: LiberTEM-live's simulator)."""
    if job.processes > 1 or rehearses(job):
        return True
    if job.command in ("reconstruct", "tune") and "--auto" not in job.argv:
        run = _section(_yaml(Path(root) / job.run_dir / "params.yaml"), "run")
        return _count(run.get("n_processes")) > 1
    if job.command == "simulate" and FILES_FOLLOW in job.argv[:-1]:
        compute = _section(_yaml(Path(root) / job.argv[job.argv.index(FILES_FOLLOW) + 1]), "compute")
        workers = _option(job.argv, "--workers") or compute.get("workers")
        return compute.get("scheduler") is None and _count(workers) > 0
    return False


def job_confinement(root: Path, run_dir: Path, local_processes: bool, connect: Iterable[int] = ()) -> dict[str, Any]:
    """The rules a job confines itself with (JSON for :data:`CONFINEMENT_ENV`): ``data`` (read, never execute):
    the root; ``write``: the run folder; ``local_tcp``: whether it binds ports of the ephemeral range and connects
    to them; ``tcp_connect``: the ports it may connect to besides (a live job's detector data port, see the module).
    The Python installation, the system's folders and devices are added by the job (:mod:`.job_main`)."""
    return {"data": [str(Path(root).resolve())], "write": [str(Path(run_dir).resolve())],
            "local_tcp": bool(local_processes), "tcp_connect": sorted({int(p) for p in connect})}


def kernel_confinement(enabled: bool) -> tuple[int, str]:
    """(Landlock ABI the jobs are confined with, 0: none; the banner's line saying so). A kernel without Landlock
    is refused unless ``enabled`` is False (:data:`NO_KERNEL_FLAG`)."""
    if not enabled:
        return 0, (f"phasestem serve: warning: {NO_KERNEL_FLAG}: jobs are NOT confined by the kernel; only the "
                   "path checks keep them inside the root")
    abi = abi_version()
    if abi == 0:
        raise PhasestemError("phasestem serve: this kernel has no Landlock (Linux >= 5.13 with 'landlock' among "
                             "its LSMs), so jobs cannot be confined to the workspace; start with "
                             f"{NO_KERNEL_FLAG} to run them with the path checks alone")
    tcp = ("no TCP but between the processes of one job and from a live job to its detector's data port" if abi >= 4
           else "TCP not confined (Landlock ABI < 4)")
    return abi, (f"phasestem serve: jobs confined by the kernel (Landlock ABI {abi}): each reads the Python "
                 f"installation and the root, writes only its run folder, {tcp}")

