"""Process-level settings: the compute device (:func:`resolve_device`), the run log of a command
(:func:`log_to_file`) and the allocator behaviour that makes long CPU runs faster.

PyTorch's CPU allocator takes every tensor from the C library's ``malloc``. glibc hands
buffers above its mmap threshold straight back to the kernel when they are freed, and trims
the top of the heap, so an optimisation loop that creates and frees the same few
multi-megabyte tensors every step pays page faults (the kernel zeroing fresh pages) on every
one of them. Measured on the AD benchmark batch (32 patterns of 128², 2 threads): the median
step went from 17 ms to 11 ms with the settings below.

:func:`retain_freed_memory` keeps freed memory inside the process for reuse instead. The price
is that the resident size stays at its peak until the process exits. Set the environment
variable ``PHASESTEM_KEEP_FREED_MEMORY=0`` to leave the C library's defaults alone.
:func:`flush_denormals` flushes denormal floats to zero while optimisation calls run.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

#: the format of every run log (``reconstruct.log``, ``train.log``, …)
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def resolve_device(name, field: str = "device"):
    """The ``torch.device`` of a device setting: ``"auto"`` → the GPU when torch sees one, else the CPU; any other
    name (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``) as torch reads it. A CUDA device that is not
    there is refused in one line naming ``field`` (:class:`~phasestem.base.errors.ConfigError`) instead of failing
    deep inside torch."""
    import torch

    from .errors import ConfigError

    if isinstance(name, str) and name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"{field}: {name!r} is not a device (expected 'auto', 'cpu', 'cuda' or 'cuda:N')") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{field}: {str(name)!r} but torch sees no CUDA GPU here (torch {torch.__version__}); "
                              "use 'cpu', or 'auto' to take a GPU only when there is one")
        if (device.index or 0) >= torch.cuda.device_count():
            raise ConfigError(f"{field}: {str(name)!r} but this machine has {torch.cuda.device_count()} GPU(s) "
                              f"(cuda:0 … cuda:{torch.cuda.device_count() - 1})")
    return device


class RunLogHandler(logging.FileHandler):
    """A run log's handler: a record it cannot write (no space left, a file-size limit) stops it with one line on
    stderr naming the log (once per log, however many handlers write to it), instead of logging's traceback after
    every record; the command goes on."""

    failed: set[str] = set()  # the logs already said to be lost, in this process

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            super().handleError(record)
            return
        if self.baseFilename not in RunLogHandler.failed:
            RunLogHandler.failed.add(self.baseFilename)
            print(f"phasestem: run log {self.baseFilename}: not written from here on ({exc.strerror or exc})",
                  file=sys.stderr)
        self.setLevel(logging.CRITICAL + 1)  # nothing more is tried
        stream, self.stream = self.stream, None
        try:
            if stream is not None:
                stream.close()  # the file is closed even when its buffer cannot be flushed
        except OSError:
            pass


@contextmanager
def log_to_file(logger: logging.Logger | str, path: str | Path | None,
                level: int | None = logging.INFO) -> Iterator[None]:
    """Copy ``logger``'s records into ``path`` (appended, :data:`LOG_FORMAT`) while the block runs: the one run-log
    handler of every command. ``level``: the logger passes records from that level on during the block (its own
    level is restored after); None: the logger's levels are left as they are. ``path`` None: nothing."""
    if path is None:
        yield
        return
    logger = logging.getLogger(logger) if isinstance(logger, str) else logger
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = RunLogHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    old_level = logger.level
    logger.addHandler(handler)
    if level is not None and (logger.level == logging.NOTSET or logger.level > level):
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(old_level)


# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's upper limit on 64-bit systems
_TRIM_THRESHOLD = 2**31 - 1  # trim the heap only above 2 GiB of free memory at its top (mallopt takes an int)
_TOP_PAD = 64 << 20  # grow the heap in 64 MiB steps

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Tell glibc to keep freed buffers (up to 32 MiB each) for reuse; ``True`` when applied.

    Idempotent and process-wide; a no-op (``False``) off Linux/glibc or when
    ``PHASESTEM_KEEP_FREED_MEMORY=0``.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("PHASESTEM_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another C library without mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (_M_TOP_PAD, _TOP_PAD)))
    _applied = ok
    log.debug("glibc mallopt (keep freed memory for reuse): %s", "applied" if ok else "refused")
    return ok


_flush_holders = 0  # optimisation calls under way that want denormals flushed (calls may nest)


def flush_denormals(on: bool) -> None:
    """Flush denormal floats to zero on the CPU while an optimisation call runs (tiny gradients in the padding
    otherwise slow the steps down): ``True`` when a call starts, ``False`` when it ends. Calls nest (a reconstruction's
    coarse start runs one inside another), so flushing is switched off only when the outermost call ends."""
    import torch

    global _flush_holders
    _flush_holders = _flush_holders + 1 if on else max(_flush_holders - 1, 0)
    if on and _flush_holders == 1:
        torch.set_flush_denormal(True)
    elif not on and _flush_holders == 0:
        torch.set_flush_denormal(False)


def process_group() -> tuple[int, int] | None:
    """(rank, world size) of an initialised torch.distributed process group, None without one (torch is not
    imported here: a group exists only where torch.distributed already is)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size())
    return None


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one."""
    return process_group() or (0, 1)
