"""Data-parallel reconstruction over processes with ``torch.distributed`` (gloo on CPU, nccl on GPUs).

Every rank holds the whole model. The scan is split once into ``world`` spatially compact blocks
of positions (:func:`phasestem.recon.batches.shard_owners`, recursive bisection as for compact mini-batches); each rank
evaluates only the positions of its own block in every mini-batch and
:func:`phasestem.recon.engine.optimize` sums the gradients over ranks (loss terms are normalised
by the full batch size), so all ranks take the same steps and end with the same model as a single
process would (up to floating-point summation order). A per-position parameter (positions,
per-position tilt) gets its gradient only from the rank that owns the position; the sum over
ranks is then that rank's value, which keeps the global position array identical on every rank
(the lsq preconditioner, compact batches and checkpoints need it) at a cost of 2 numbers per
position and step. The PACBED term is evaluated per share (an approximation when it is used).
Only rank 0 writes files.

Three ways to run:

* ``torchrun --nproc_per_node N -m phasestem.cli reconstruct params.yaml`` (also multi-node):
  :func:`init_from_environment` sees ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and joins the group
  (nccl when the run's device is CUDA, gloo otherwise); :func:`rank_device` puts each rank on
  ``cuda:LOCAL_RANK``;
* ``run.n_processes: N`` — a single-node shortcut that starts the N processes with
  :func:`launch` (``torch.multiprocessing.spawn``);
* start the processes yourself, initialise a group and call the engine inside them: it detects
  an initialised process group.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..base.runtime import process_group, rank_and_world

#: the variables ``torchrun`` (torch.distributed.run) sets in every process it starts
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def _worker(rank: int, world: int, init_file: str, backend: str, threads: int, fn, args) -> None:
    torch.set_num_threads(threads)
    os.environ["LOCAL_RANK"] = str(rank)  # one node: the local rank is the rank
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        fn(*args)
    finally:
        dist.destroy_process_group()


def launch(n_processes: int, fn, *args, backend: str = "gloo", threads_per_process: int | None = None) -> None:
    """Run ``fn(*args)`` in ``n_processes`` local processes joined in one process group."""
    threads = threads_per_process or max(1, torch.get_num_threads() // n_processes)
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "pg_init")
        mp.spawn(_worker, args=(n_processes, init_file, backend, threads, fn, args), nprocs=n_processes, join=True)


def is_initialized() -> bool:
    return process_group() is not None


def is_main_process() -> bool:
    return rank_and_world()[0] == 0


def torchrun_world() -> int:
    """The world size ``torchrun`` announced in the environment (1 when not started by it)."""
    if not all(k in os.environ for k in TORCHRUN_VARIABLES):
        return 1
    try:
        return max(1, int(os.environ["WORLD_SIZE"]))
    except ValueError:
        return 1


def env_rank() -> int:
    """This process's rank as ``torchrun`` announced it (0 when not started by it)."""
    try:
        return int(os.environ.get("RANK", "0")) if torchrun_world() > 1 else 0
    except ValueError:
        return 0


def local_rank() -> int:
    """The rank of this process on its node (``LOCAL_RANK``; else the global rank)."""
    try:
        return int(os.environ["LOCAL_RANK"])
    except (KeyError, ValueError):
        return rank_and_world()[0]


def uses_cuda(device: str) -> bool:
    """Whether a run with ``run.device`` = ``device`` computes on a GPU."""
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def backend_for(device: str) -> str:
    """nccl when the run computes on GPUs, gloo otherwise."""
    return "nccl" if uses_cuda(device) and torch.cuda.is_available() else "gloo"


def rank_device(device: str) -> str:
    """The torch device of this rank: :func:`phasestem.base.runtime.resolve_device` of ``run.device`` ('auto' → a GPU
    when there is one, else 'cpu'; a CUDA device that is not there refused), and for 'cuda'/'auto' with GPUs in a
    process group of several ranks ``cuda:LOCAL_RANK``."""
    from ..base.runtime import resolve_device

    resolved = str(resolve_device(device, field="run.device"))
    if resolved == "cuda" and rank_and_world()[1] > 1:
        return f"cuda:{local_rank() % torch.cuda.device_count()}"
    return resolved


def init_from_environment(device: str) -> bool:
    """Join the process group ``torchrun`` describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT); returns True when this call initialised it (the caller then destroys it)."""
    if is_initialized() or torchrun_world() <= 1:
        return False
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    dist.init_process_group(backend, init_method="env://")
    return True


def _optimize_worker(dataset, n_epochs: int, model_options: dict, optimize_options: dict, result_path: str,
                     learning_rates: dict):
    from .model import Ptychography

    model = Ptychography.from_dataset(dataset, **model_options)
    model.set_learning_rates(**learning_rates)
    for _ in model.Adam_optimize(n_epochs, dataset, progress=False, **optimize_options):
        pass
    if is_main_process():
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        from ..base.safety import atomic_file

        with atomic_file(result_path, field="result") as tmp:
            history = [{k: v for k, v in h.items() if isinstance(v, int | float)} for h in model.loss_history]
            torch.save({"state": state, "loss": [h["loss"] for h in model.loss_history], "history": history}, tmp)


def data_parallel_optimize(dataset, n_processes: int, n_epochs: int, model_options: dict | None = None,
                           optimize_options: dict | None = None, learning_rates: dict | None = None) -> dict:
    """Build ``Ptychography.from_dataset(dataset, **model_options)`` on ``n_processes`` ranks (with
    ``set_learning_rates(**learning_rates)``), run Adam for ``n_epochs`` and return rank 0's
    ``{"state": state_dict, "loss": [per-epoch loss], "history": [per-epoch record: loss, each term, …]}``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "result.pt")
        launch(n_processes, _optimize_worker, dataset, n_epochs, model_options or {}, optimize_options or {}, path,
               learning_rates or {})
        return torch.load(path, weights_only=True)
