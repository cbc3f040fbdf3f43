"""The first code a serve job's process runs: its confinement by the kernel, then phasestem's command line (or
torchrun's), with a ``sys.path`` that holds neither the job's working directory (the workspace root) nor this
file's folder.

The server starts ``python -I -u job_main.py ARGS`` (:func:`phasestem.serve.job_isolation.isolated_argv`): no
``PYTHONPATH``, no user site, no ``sitecustomize`` from the root, neither the working directory nor this folder on
``sys.path`` (an uploaded ``yaml.py`` or ``numpy.py`` is never imported). Before torch, numpy or any command module
is imported, the job confines itself and every process it starts with the rules the server put in
:data:`CONFINEMENT_ENV` (:func:`phasestem.base.landlock.confine`; :func:`~phasestem.serve.job_isolation.
job_confinement`). torchrun's workers start this file again by its path, without ``-I``: the server's
``PYTHONSAFEPATH``/``PYTHONNOUSERSITE`` and :func:`_clean_path` keep their ``sys.path`` as clean, and they inherit
the confinement. ``python job_main.py ARGS`` runs ``phasestem ARGS``; ``python job_main.py --torchrun ARGS`` runs
``torchrun ARGS``.
"""
import json
import os
import runpy
import sys

#: the environment variable that carries the job's confinement (JSON: ``data``, ``write``, ``local_tcp``,
#: ``tcp_connect``); read once and removed, so that what the job starts inherits the confinement rather than
#: applying it again
CONFINEMENT_ENV = "PHASESTEM_JOB_CONFINEMENT"
#: the variables that point the libraries a job uses at its run folder's scratch folder (``.job/``), and which
#: folder of it each names: temporaries, caches, configuration (matplotlib, fontconfig, triton, CUDA's JIT cache)
SCRATCH_VARIABLES = {"TMPDIR": "tmp", "XDG_CACHE_HOME": "cache", "XDG_CONFIG_HOME": "config",
                     "MPLCONFIGDIR": "matplotlib", "TRITON_CACHE_DIR": "cache/triton", "CUDA_CACHE_PATH": "cache/nv"}


def _clean_path() -> None:
    unsafe = {os.path.dirname(os.path.abspath(__file__)), os.getcwd()}
    sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) not in unsafe]


def _confine() -> None:
    """Apply the server's rules (:data:`CONFINEMENT_ENV`; absent: the server runs jobs unconfined): read the
    Python installation and the system, read but not execute the root, write the run folder and the system's
    devices; TCP only between the job's own processes (``local_tcp``: bind port 0 or a port of the ephemeral range,
    as a simulator started on ports found free does; connect to the ephemeral range) and out to the ports of
    ``tcp_connect`` (a live job's detector data port), else none."""
    text = os.environ.pop(CONFINEMENT_ENV, None)
    if not text:
        return
    from phasestem.base.landlock import confine, ephemeral_ports, system_read_paths, system_write_paths

    rules = json.loads(text)
    local = ephemeral_ports() if rules.get("local_tcp") else ()
    connect = [*local, *(int(p) for p in rules.get("tcp_connect", ()))]
    confine(system_read_paths(), [*system_write_paths(), *rules["write"]], data=rules["data"],
            tcp_connect=connect, tcp_bind=(0, *local) if local else ())


def _make_scratch_folders() -> None:
    """The scratch folders the server named (:data:`SCRATCH_VARIABLES`), made by the job itself once confined."""
    for name in SCRATCH_VARIABLES:
        if os.environ.get(name):
            os.makedirs(os.environ[name], exist_ok=True)


def main() -> None:
    _clean_path()
    try:
        _confine()
        _make_scratch_folders()
    except Exception as exc:  # noqa: BLE001 - one line in the job's log, never a job that runs unconfined
        sys.exit(f"phasestem job: not started: {exc}")
    if sys.argv[1:2] == ["--torchrun"]:
        sys.argv = ["torchrun", *sys.argv[2:]]
        runpy.run_module("torch.distributed.run", run_name="__main__", alter_sys=True)
    else:
        sys.argv = ["phasestem", *sys.argv[1:]]
        runpy.run_module("phasestem.cli", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
