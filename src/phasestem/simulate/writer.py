"""The seed-000 training-data writer: sharded, resumable, parallel through Dask.

Layout: ``<prefix>1.h5`` … ``<prefix>N.h5``; file k holds global samples
[(k−1)·n, k·n) as ``dp_set_{i}`` (Sy, Sx, H, W), ``phase_{i}`` (rad) and ``potential_{i}``
(V·Å). Each sample is first written atomically to ``.work/sample_{i}.h5`` (temporary name,
then rename), so a run killed at any point loses at most the samples in flight; a file is
assembled (again under a temporary name) only when all its samples exist, and its sample
files are removed only after the rename. Rerunning the same command skips what is done.
Sample i depends only on (seed, i), so the result is the same whatever the number of
processes or machines.

The run only ever creates, and only ever deletes, its own names: the shards, ``<prefix>_config.yaml``,
the ``.work`` folder and temporary files ``.phasestem-<name>.<pid>.partial``, so a user's files in the folder
are never touched. The driver process holds the folder's lock (:mod:`phasestem.base.lock`) for the whole run; Dask
workers do not take it (they only write their own per-sample work files).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from ..base.configfile import loads_yaml
from ..base.errors import ConfigError
from ..base.extras import require
from ..base.lock import hold_output
from ..base.safety import atomic_file
from ..io import seed
from ..physics.optics import interaction_constant
from .budget import check_memory
from .config import SimulationConfig

log = logging.getLogger("phasestem.simulate")

WORK_DIR = ".work"
#: prefix of every temporary file the run creates (and the only ``*.partial`` files it ever deletes)
TMP_PREFIX = ".phasestem-"


def temporary_path(path: Path) -> Path:
    """Where ``path`` is written before its atomic rename: ``.phasestem-<name>.<pid>.partial`` beside it (one name
    per process, so that two writers of one file never share a temporary)."""
    return path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}.partial")


def file_name(cfg: SimulationConfig, k: int) -> str:
    """Name of shard k (1-based)."""
    return seed.file_name(k, cfg.output.prefix)


def sample_path(out: Path, index: int) -> Path:
    return out / WORK_DIR / f"sample_{index:07d}.h5"


def _write_sample(path: Path, result: dict) -> None:
    with atomic_file(path, "sample", temporary_path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("patterns", data=result["patterns"], track_times=False)
        f.create_dataset("phase", data=result["phase"], track_times=False)
        f.create_dataset("potential", data=result["potential"], track_times=False)
        for k, v in result["attrs"].items():
            f.attrs[k] = v
        f.attrs["angular_sampling"] = result["angular_sampling"]


def run_sample(cfg_json: str, out: str, index: int, threads: int = 0) -> int:
    """Simulate sample ``index`` into its work file (skips a finished one). Returns ``index``.

    Takes the config as JSON so it can be shipped to Dask workers.
    """
    import torch

    from .scan import simulate_sample

    if threads:
        torch.set_num_threads(threads)
    path = sample_path(Path(out), index)
    if path.exists():
        return index
    cfg = SimulationConfig.model_validate_json(cfg_json)
    device = worker_device(cfg.compute.device)
    if device != cfg.compute.device:
        cfg = cfg.model_copy(update={"compute": cfg.compute.model_copy(update={"device": device})})
    _write_sample(path, simulate_sample(cfg, index))
    return index


def gpu_for_worker(device: str, worker_name, n_gpus: int) -> str:
    """The GPU of a Dask worker: ``cuda`` (no index) becomes ``cuda:k`` with k = the worker's number mod the
    GPUs of its machine, so N local workers on N GPUs use one GPU each. The number is the worker's name
    when it is an integer (``LocalCluster``: 0 … N−1) or the name's trailing ``-k`` (``dask worker
    --nworkers N`` names its workers ``…-0`` … ``…-(N−1)``); any other name, an explicit index (``cuda:1``),
    a CPU device or one GPU keep ``device`` as given."""
    if device != "cuda" or n_gpus <= 1:
        return device
    text = str(worker_name)
    tail = text.rsplit("-", 1)[-1]
    if not tail.isdigit():
        return device
    return f"cuda:{int(tail) % n_gpus}"


def worker_device(device: str) -> str:
    """``device`` for this process: inside a Dask worker on a machine with several GPUs, its own GPU
    (:func:`gpu_for_worker`); elsewhere unchanged."""
    if device != "cuda":
        return device
    import torch

    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):  # not inside a Dask worker
        return device
    return gpu_for_worker(device, name, torch.cuda.device_count() if torch.cuda.is_available() else 0)


def root_attrs(cfg: SimulationConfig, k: int, angular_sampling) -> dict:
    g, o = cfg.grid, cfg.optics
    return {
        "format": seed.FORMAT,
        "version": 1,
        "phase_convention": seed.PHASE_CONVENTION,
        "energy": o.energy,
        "semiangle": o.semiangle,
        "aberrations": json.dumps(o.aberrations, sort_keys=True),
        "scan_shape": np.asarray(cfg.scan.shape),
        "scan_step": np.asarray(cfg.scan.step),
        "scan_origin": np.asarray(cfg.scan.origin),
        "extent": np.asarray(g.extent),
        "sim_gpts": np.asarray(g.sim_gpts),
        "phase_shape": np.asarray(g.phase_gpts),
        "phase_sampling": np.asarray([g.extent[0] / g.phase_gpts[0], g.extent[1] / g.phase_gpts[1]]),
        "pattern_shape": np.asarray(cfg.detector.shape),
        "angular_sampling": np.asarray(angular_sampling),
        "sigma": interaction_constant(o.energy),
        "dose": -1.0 if cfg.detector.dose is None else cfg.detector.dose,
        "samples_per_file": cfg.output.samples_per_file,
        "first_sample": (k - 1) * cfg.output.samples_per_file,
        "config": cfg.results_yaml(),
    }


def _shuffled_deflate(block: np.ndarray, level: int) -> bytes:
    """One chunk through HDF5's shuffle filter (byte k of every element together) and its deflate filter."""
    import zlib

    raw = np.ascontiguousarray(block).view(np.uint8).reshape(-1, block.dtype.itemsize).T
    return zlib.compress(np.ascontiguousarray(raw).tobytes(), level)


def write_chunked(f: h5py.File, name: str, data: np.ndarray, chunks: tuple[int, ...], level: int) -> h5py.Dataset:
    """``f[name] = data`` in ``chunks``, gzip ``level`` with the shuffle filter (0: uncompressed).

    The chunks are compressed on all CPU cores (zlib releases the GIL) and written as raw chunks
    (``write_direct_chunk``): the file is the one h5py's own gzip + shuffle writes, read back by any
    HDF5 reader, ~the core count times faster to write (the shard assembly was the slowest step of a
    GPU simulation: 1.0 s per seed sample single-threaded vs 0.3 s to simulate it).
    """
    if not level:
        return f.create_dataset(name, data=data, chunks=chunks, track_times=False)
    from concurrent.futures import ThreadPoolExecutor
    from itertools import product

    d = f.create_dataset(name, shape=data.shape, dtype=data.dtype, chunks=chunks, compression="gzip",
                         compression_opts=level, shuffle=True, track_times=False)
    offsets = list(product(*(range(0, n, c) for n, c in zip(data.shape, chunks, strict=True))))

    def chunk(offset: tuple[int, ...]) -> bytes:
        block = data[tuple(slice(o, o + c) for o, c in zip(offset, chunks, strict=True))]
        if block.shape != chunks:  # an edge chunk is stored whole: pad with the fill value (0)
            full = np.zeros(chunks, dtype=data.dtype)
            full[tuple(slice(0, n) for n in block.shape)] = block
            block = full
        return _shuffled_deflate(block, level)

    with ThreadPoolExecutor(max_workers=min(len(offsets), os.cpu_count() or 1)) as pool:
        for offset, payload in zip(offsets, pool.map(chunk, offsets), strict=True):
            d.id.write_direct_chunk(offset, payload)
    return d


def assemble_file(cfg: SimulationConfig, out: Path, k: int) -> Path:
    """Gather the samples of shard k into ``<prefix>k.h5`` (atomically), then drop the work files."""
    n = cfg.output.samples_per_file
    indices = range((k - 1) * n, k * n)
    final = out / file_name(cfg, k)
    H, W = cfg.detector.shape
    sy, sx = cfg.scan.shape
    chunks = (min(5, sy), min(5, sx), H, W)
    with atomic_file(final, "output", temporary_path) as tmp, h5py.File(tmp, "w", track_order=True) as f:
        ang = None
        for i in indices:
            with h5py.File(sample_path(out, i), "r") as s:
                ang = s.attrs["angular_sampling"]
                d = write_chunked(f, seed.patterns_key(i), s["patterns"][...], chunks, cfg.output.compression)
                for key, val in s.attrs.items():
                    if key != "angular_sampling":
                        d.attrs[key] = val
                f.create_dataset(seed.phase_key(i), data=s["phase"][...], track_times=False)
                f.create_dataset(seed.potential_key(i), data=s["potential"][...], track_times=False)
        for key, val in root_attrs(cfg, k, ang).items():
            f.attrs[key] = val
    for i in indices:
        sample_path(out, i).unlink(missing_ok=True)
    return final


def pending_samples(cfg: SimulationConfig, out: Path) -> tuple[list[int], list[int]]:
    """(files still to assemble, their samples not yet simulated)."""
    n = cfg.output.samples_per_file
    files = [k for k in range(1, cfg.output.n_files + 1) if not (out / file_name(cfg, k)).exists()]
    todo = [i for k in files for i in range((k - 1) * n, k * n) if not sample_path(out, i).exists()]
    return files, todo


def _shard_config(path: Path) -> str | None:
    """The results config stored in a shard (None when unreadable or absent)."""
    try:
        with h5py.File(path, "r") as f:
            value = f.attrs.get("config")
    except OSError:
        return None
    return value.decode() if isinstance(value, bytes) else value


def run_files(out: Path, stamp_text: str) -> tuple[list[Path], list[Path]]:
    """The committed files of the unfinished run whose stamp is ``stamp_text``: (its work samples, its shards).

    Shards count only when they store that same config, so a user's file of the same name is never the run's.
    """
    samples = sorted((out / WORK_DIR).glob("sample_*.h5"))
    try:
        old = loads_yaml(stamp_text, "run stamp")["output"]
        names = [out / f"{old['prefix']}{k}.h5" for k in range(1, int(old["n_files"]) + 1)]
    except (ConfigError, KeyError, TypeError, ValueError):
        names = []
    shards = [p for p in names if p.is_file() and _shard_config(p) == stamp_text]
    return samples, shards


def _write_stamp(stamp: Path, text: str) -> None:
    with atomic_file(stamp, "output", temporary_path) as tmp:
        tmp.write_text(text)


def _check_out(cfg: SimulationConfig, out: Path, restart: bool = False) -> None:
    """Refuse to mix runs: a folder keeps the config it was started with, unless nothing of the old run was
    committed yet (its stamp is replaced) or ``restart`` (the old run's own files are deleted first)."""
    stamp = out / WORK_DIR / "config.yaml"
    text = cfg.results_yaml()
    done = out / f"{cfg.output.prefix}_config.yaml"
    if not stamp.exists() and done.exists() and done.read_text() != text:
        raise ConfigError(f"{out}: holds a finished run with a different configuration ({done}); use another folder")
    if stamp.exists() and stamp.read_text() != text:
        samples, shards = run_files(out, stamp.read_text())
        if samples or shards:
            if not restart:
                raise ConfigError(
                    f"{out}: holds an unfinished run with a different configuration ({stamp}; {len(samples)} "
                    f"sample(s) and {len(shards)} file(s) done): rerun with that config to resume, use another "
                    "--out, or add --restart to delete that run's own files and start this one")
            for path in samples + shards:
                path.unlink()
            log.warning("--restart: deleted %d sample(s) and %d file(s) of the previous run in %s",
                        len(samples), len(shards), out)
        else:
            log.info("%s: the previous run committed no sample; its configuration is replaced", out)
        _write_stamp(stamp, text)
    if not stamp.exists():
        _write_stamp(stamp, text)


def _remove_own_temporaries(out: Path) -> None:
    """Delete what a killed run of this folder left mid-write: only the run's own temporary names."""
    stale = list(out.glob(f"{TMP_PREFIX}*.partial"))
    if (out / WORK_DIR).is_dir():
        stale += list((out / WORK_DIR).glob("*.partial"))  # the work folder is the run's own
    for path in stale:
        path.unlink(missing_ok=True)


def simulate_dataset(cfg: SimulationConfig, out: str | Path, progress: bool = True,
                     restart: bool = False) -> list[Path]:
    """Write (or finish writing) the seed-layout files of ``cfg`` into ``out``. Returns the file paths.

    Refuses (ConfigError) a sample that does not fit in memory before anything is written, and
    (FolderBusyError) a folder that another run holds. ``restart``: delete the files of an unfinished
    run with another configuration instead of refusing.
    """
    out = Path(out)
    if cfg.compute.workers > 0 or cfg.compute.scheduler is not None:  # before anything is written
        require("distributed", "simulation with Dask workers (compute.workers > 0 or compute.scheduler)")
    check_memory(cfg, processes=max(1, cfg.compute.workers) if cfg.compute.scheduler is None else 1)
    with hold_output(out, "phasestem simulate"):
        _remove_own_temporaries(out)
        _check_out(cfg, out, restart)
        return _simulate_locked(cfg, out, progress)


def _drop_unreadable_samples(out: Path) -> None:
    """Delete work samples that cannot be read whole (a torn write from outside this run's atomic renames): they
    are the run's own files and are simulated again, instead of breaking the assembly of their shard."""
    for path in sorted((out / WORK_DIR).glob("sample_*.h5")):
        try:
            with h5py.File(path, "r") as f:
                ok = all(k in f for k in ("patterns", "phase", "potential")) and "angular_sampling" in f.attrs
        except OSError:
            ok = False
        if not ok:
            log.warning("%s: unreadable work sample, simulating it again", path)
            path.unlink()


def _simulate_locked(cfg: SimulationConfig, out: Path, progress: bool) -> list[Path]:
    _drop_unreadable_samples(out)
    files, todo = pending_samples(cfg, out)
    log.info("%d file(s) to write, %d sample(s) to simulate into %s", len(files), len(todo), out)
    cfg_json = cfg.model_dump_json()
    n = cfg.output.samples_per_file
    done_per_file = {k: sum(sample_path(out, i).exists() for i in range((k - 1) * n, k * n)) for k in files}
    bar = tqdm(total=len(todo), desc="samples", unit="sample", disable=not progress)

    def finished(index: int) -> None:
        bar.update(1)
        k = index // n + 1
        done_per_file[k] += 1
        if done_per_file[k] == n:
            path = assemble_file(cfg, out, k)
            log.info("wrote %s", path)

    for k in [k for k in files if done_per_file[k] == n]:  # complete but not assembled
        assemble_file(cfg, out, k)
        done_per_file[k] = -1
    c = cfg.compute
    if c.workers == 0 and c.scheduler is None:
        for i in todo:
            finished(run_sample(cfg_json, str(out), i))
    else:
        _run_dask(cfg_json, out, todo, c, finished)
    bar.close()
    paths = [out / file_name(cfg, k) for k in range(1, cfg.output.n_files + 1)]
    if all(p.exists() for p in paths):  # finished: keep the config beside the files, drop the work folder
        work = out / WORK_DIR
        os.replace(work / "config.yaml", out / f"{cfg.output.prefix}_config.yaml")
        for leftover in work.glob("*"):
            leftover.unlink()
        work.rmdir()
    return paths


def _run_dask(cfg_json: str, out: Path, todo: list[int], c, finished) -> None:
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if c.scheduler:
        client = Client(c.scheduler)
    else:
        cluster = LocalCluster(n_workers=c.workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        futures = [client.submit(run_sample, cfg_json, str(out.resolve()), i, c.threads_per_worker, pure=False)
                   for i in todo]
        for fut in as_completed(futures):
            finished(fut.result())
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
