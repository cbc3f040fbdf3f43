"""Data-parallel reconstruction over processes with ``torch.distributed`` (gloo on CPU, nccl on GPUs).

Every rank holds the whole model and takes its share ``batch[rank::world]`` of each mini-batch;
:func:`phasestem.recon.engine.optimize` sums the gradients over ranks (loss terms are
normalised by the full batch size), so all ranks take the same steps and end with the same
model as a single process would (up to floating-point summation order). The PACBED term is
evaluated per share (an approximation when it is used). Only rank 0 writes files.

Use :func:`launch` to start ``n`` local processes running a picklable function, or start the
processes yourself (``torchrun`` / Accelerate) and call the engine inside them — it detects an
initialised process group.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world: int, init_file: str, backend: str, threads: int, fn, args) -> None:
    torch.set_num_threads(threads)
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


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _optimize_worker(dataset, n_epochs: int, model_options: dict, optimize_options: dict, result_path: str,
                     learning_rates: dict):
    from .model import Ptychography

    model = Ptychography.from_dataset(dataset, **model_options)
    model.set_learning_rates(**learning_rates)
    for _ in model.Adam_optimize(n_epochs, dataset, progress=False, **optimize_options):
        pass
    if is_main_process():
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        tmp = result_path + ".tmp"
        torch.save({"state": state, "loss": [h["loss"] for h in model.loss_history]}, tmp)
        os.replace(tmp, result_path)


def data_parallel_optimize(dataset, n_processes: int, n_epochs: int, model_options: dict | None = None,
                           optimize_options: dict | None = None, learning_rates: dict | None = None) -> dict:
    """Build ``Ptychography.from_dataset(dataset, **model_options)`` on ``n_processes`` ranks (with
    ``set_learning_rates(**learning_rates)``), run Adam for ``n_epochs`` and return rank 0's
    ``{"state": state_dict, "loss": [per-epoch loss]}``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "result.pt")
        launch(n_processes, _optimize_worker, dataset, n_epochs, model_options or {}, optimize_options or {}, path,
               learning_rates or {})
        return torch.load(path, weights_only=True)
