"""Measured patterns streamed from their source mini-batch by mini-batch (``run.data_in_memory``).

:class:`phasestem.recon.engine.PreparedData` holds every pattern on the device twice (``meas`` and
``meas_p``, float32). :class:`StreamedData` holds none: one chunked pass over the source computes
``counts`` (mean total count per pattern) and ``pacbed_p``; then every mini-batch reads its rows from
the source (an open ``h5py.Dataset``, a ``numpy.memmap``, a dask array, or an array already in memory),
in sorted order (scattered HDF5 reads are slow: nearby rows are read as one range and the unwanted
ones dropped), into a host buffer (pinned when the device is CUDA), copies it to the device
(``non_blocking``) and normalises it there exactly as the in-memory path does. The next mini-batch
of the epoch is read on a background thread while the current one is computed; object and probe stay
on the device.

The engine asks for a batch with :meth:`StreamedData.batch` (after announcing the epoch's batch order
with :meth:`StreamedData.schedule`); ``data.meas[idx]`` / ``data.meas_p[idx]`` also work (read on
demand), so code written for the in-memory form runs unchanged.

:func:`choose_in_memory` decides between the two forms (``auto``: in memory when two float32 copies
of the patterns fit the memory budget and half the free device memory).
"""
from __future__ import annotations

import logging
import math
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from ..base.errors import ConfigError, PhasestemError
from ..base.safety import available_memory

log = logging.getLogger("phasestem.recon")

GIB = 1024**3
#: ``memory_budget_gb`` unset: this share of the host memory available when the data are prepared
HOST_FRACTION = 0.5
#: ``auto`` streams when the in-memory form would take more than this share of the free device memory
DEVICE_FRACTION = 0.5
#: the statistics pass never reads more than this many bytes of patterns at once, whatever the budget
MAX_CHUNK_BYTES = 256 * 1024**2
#: a batch read may fetch up to this many times the rows asked for to merge nearby rows into one range
READ_SLACK = 2.0
MODES = ("auto", "true", "false")


def normalise_mode(value) -> str:
    """``True``/``False``/``'auto'`` (or their strings) → 'true' / 'false' / 'auto'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip().lower()
    if text not in MODES:
        raise ConfigError(f"run.data_in_memory: expected auto, true or false, got {value!r}")
    return text


def in_memory_bytes(n: int, pattern_shape: tuple[int, int]) -> int:
    """Bytes of the in-memory form: ``meas`` and ``meas_p``, float32."""
    return 2 * 4 * int(n) * int(pattern_shape[0]) * int(pattern_shape[1])


def budget_bytes(memory_budget_gb: float | None) -> int:
    """The memory budget in bytes (``None``: :data:`HOST_FRACTION` of the available host memory)."""
    if memory_budget_gb is None:
        return int(HOST_FRACTION * available_memory())
    if not memory_budget_gb > 0:
        raise ConfigError(f"run.memory_budget_gb: must be positive (GiB), got {memory_budget_gb}")
    return int(memory_budget_gb * GIB)


def choose_in_memory(mode, memory_budget_gb: float | None, n: int, pattern_shape, device) -> bool:
    """Whether to hold the patterns in memory (True) or stream them (False).

    ``mode`` 'true' / 'false' decides; 'auto' keeps them in memory when two float32 copies fit the budget
    (``memory_budget_gb`` GiB, default :data:`HOST_FRACTION` of the available host memory) and, on CUDA,
    :data:`DEVICE_FRACTION` of the free device memory."""
    mode = normalise_mode(mode)
    if mode != "auto":
        return mode == "true"
    need = in_memory_bytes(n, pattern_shape)
    if need > budget_bytes(memory_budget_gb):
        return False
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if need > DEVICE_FRACTION * free:
            return False
    return True


def pacbed_power(total: np.ndarray, n: int, counts: float, power: float, device) -> torch.Tensor:
    """PACBED^p in the engine's units (unshifted, on ``device``) from the float64 sum ``total`` (H, W) of the ``n``
    raw (fftshift-ed) patterns whose mean total count is ``counts``."""
    mean = torch.as_tensor(np.asarray(total, np.float64) / n / counts, dtype=torch.float32)
    return torch.fft.ifftshift(mean, dim=(-2, -1)).to(device).clamp_min(0).pow(power)


# ---- reading rows of the source -----------------------------------------------------------
class PatternSource:
    """Flat-indexed read access to (Sy, Sx, H, W) patterns of any array-like, returning float32 NumPy arrays.

    ``rows_read`` / ``reads`` count the patterns fetched from the source and the read calls made."""

    def __init__(self, patterns):
        self.patterns = patterns
        sy, sx, h, w = (int(s) for s in patterns.shape)
        self.scan_shape, self.pattern_shape, self.n = (sy, sx), (h, w), sy * sx
        self.kind = ("tensor" if isinstance(patterns, torch.Tensor) else "array" if isinstance(patterns, np.ndarray)
                     else "dask" if hasattr(patterns, "vindex") else "lazy")
        self.rows_read = 0
        self.reads = 0
        self._lock = threading.Lock()  # one reader at a time (h5py serialises anyway)

    def _as_float32(self, block) -> np.ndarray:
        if isinstance(block, torch.Tensor):
            return block.detach().to("cpu", torch.float32).numpy()
        if hasattr(block, "compute"):
            block = block.compute()
        return np.asarray(block, dtype=np.float32)

    def _slice(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows y0:y1, columns x0:x1 of the scan → (k, H, W)."""
        self.reads += 1
        block = self._as_float32(self.patterns[y0:y1, x0:x1])
        return block.reshape(-1, *self.pattern_shape)

    def read_range(self, a: int, b: int) -> np.ndarray:
        """Flat indices a ≤ i < b → (b − a, H, W): at most three slices (partial row, full rows, partial row)."""
        sx = self.scan_shape[1]
        with self._lock:
            pieces = []
            i = a
            while i < b:
                y, x = divmod(i, sx)
                if x == 0 and b - i >= sx:  # whole scan rows
                    k = (b - i) // sx
                    pieces.append(self._slice(y, y + k, 0, sx))
                    i += k * sx
                else:
                    end = min(b - i, sx - x)
                    pieces.append(self._slice(y, y + 1, x, x + end))
                    i += end
            self.rows_read += b - a
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def read_sorted(self, flat: np.ndarray) -> np.ndarray:
        """Patterns of increasing, distinct flat indices ``flat`` → (len(flat), H, W)."""
        m = len(flat)
        if m == 0:
            return np.empty((0, *self.pattern_shape), np.float32)
        sx = self.scan_shape[1]
        if self.kind in ("array", "tensor", "dask"):  # fancy indexing reads only the rows asked for
            ys, xs = flat // sx, flat % sx
            with self._lock:
                self.reads += 1
                self.rows_read += m
                if self.kind == "dask":
                    return self._as_float32(self.patterns.vindex[ys, xs])
                if self.kind == "tensor":
                    ys, xs = torch.as_tensor(ys), torch.as_tensor(xs)
                return self._as_float32(self.patterns[ys, xs])
        # lazy (HDF5, zarr, …): merge nearby rows into ranges while at most READ_SLACK × m rows are read
        gaps = np.diff(flat) - 1
        merge = gaps == 0
        extra = int(READ_SLACK * m) - m
        for g in np.argsort(gaps, kind="stable"):
            if gaps[g] == 0:
                continue
            if gaps[g] > extra:
                break
            merge[g] = True
            extra -= int(gaps[g])
        starts = np.concatenate([[0], np.nonzero(~merge)[0] + 1])
        ends = np.concatenate([starts[1:], [m]])
        out = np.empty((m, *self.pattern_shape), np.float32)
        for s, e in zip(starts, ends, strict=True):
            a, b = int(flat[s]), int(flat[e - 1]) + 1
            block = self.read_range(a, b)
            out[s:e] = block if b - a == e - s else block[flat[s:e] - a]
        return out


# ---- the streamed form --------------------------------------------------------------------
class _Rows:
    """``data.meas[idx]`` / ``data.meas_p[idx]`` of streamed data: read on demand."""

    def __init__(self, data: StreamedData, which: str):
        self._data, self._which = data, which

    def __getitem__(self, idx) -> torch.Tensor:
        meas, meas_p = self._data.batch(idx, need_meas=True)
        return meas if self._which == "meas" else meas_p

    def __len__(self) -> int:
        return self._data.n

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self._data.n, *self._data.pattern_shape)


class StreamedData:
    """The engine's measured data (see :class:`phasestem.recon.engine.PreparedData`) read from the source per batch.

    ``counts``, ``pacbed_p``, ``mean_pattern``, ``power`` and ``n`` as in the in-memory form; ``batch(index)`` →
    (meas, meas_p) on the device. ``budget`` (bytes) bounds the pattern buffers held at once (the statistics
    pass's chunks; for mini-batches, about 8 × batch patterns are held, which a warning reports when it exceeds the
    budget).
    ``peak_bytes`` is the most pattern-buffer bytes held at once, ``source.rows_read`` the patterns read."""

    def __init__(self, dataset, device, power: float = 0.5, eps: float = 1e-8, budget: int | None = None,
                 prefetch: bool = True):
        self.source = PatternSource(dataset.patterns)
        self.pattern_shape = self.source.pattern_shape
        if tuple(self.pattern_shape) != tuple(dataset.pattern_shape):
            raise PhasestemError("dataset patterns do not match its pattern_shape")
        self.device = torch.device(device)
        self.power, self.eps = power, eps
        self.n = self.source.n
        self.budget = int(budget) if budget is not None else budget_bytes(None)
        self.pin = self.device.type == "cuda"
        self._held = 0
        self.peak_bytes = 0
        self._track_lock = threading.Lock()
        self._warned = False
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="phasestem-prefetch") if prefetch else None
        self._plan: list[torch.Tensor] = []
        self._next = 0  # position in the plan of the batch asked for next
        self._pending: tuple[int, Future] | None = None
        self._statistics()
        self.meas = _Rows(self, "meas")
        self.meas_p = _Rows(self, "meas_p")

    # ---- bookkeeping of the pattern buffers held ----
    def _track(self, obj):
        nbytes = int(obj.nbytes)
        with self._track_lock:
            self._held += nbytes
            self.peak_bytes = max(self.peak_bytes, self._held)
        weakref.finalize(obj, self._release, nbytes)
        return obj

    def _release(self, nbytes: int) -> None:
        with self._track_lock:
            self._held -= nbytes

    # ---- one pass: counts and the PACBED ----
    def _statistics(self) -> None:
        h, w = self.pattern_shape
        row = 4 * h * w
        chunk = max(1, min(self.budget, MAX_CHUNK_BYTES) // (2 * row))  # the chunk and one temporary
        sums = torch.empty(self.n, dtype=torch.float32)
        acc = np.zeros((h, w), np.float64)
        for a in range(0, self.n, chunk):
            b = min(self.n, a + chunk)
            block = self._track(self.source.read_range(a, b))
            if not block.flags.writeable:  # a read-only memory map's rows: torch takes writable arrays only
                block = np.array(block)
            sums[a:b] = torch.from_numpy(block).sum((-2, -1))  # as the in-memory form sums each pattern
            acc += block.sum(0, dtype=np.float64)
            del block
        self.counts = float(sums.mean())  # the in-memory form's float32 mean over the same per-pattern sums
        if not math.isfinite(self.counts) or self.counts <= 0:
            raise PhasestemError(f"measured patterns have a mean total intensity of {self.counts}: nothing to fit")
        self.mean_pattern = acc / self.n
        self.pacbed_p = pacbed_power(acc, self.n, self.counts, self.power, self.device)

    # ---- mini-batches ----
    def _load(self, index: torch.Tensor) -> torch.Tensor:
        """Host float32 tensor (B, H, W) of the patterns ``index`` (unshifted, raw units), pinned on CUDA."""
        idx = index.detach().to("cpu", torch.long).numpy().ravel()
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"pattern index out of range 0..{self.n - 1}")
        flat, inverse = np.unique(idx, return_inverse=True)
        rows = self._track(self.source.read_sorted(flat))
        buf = self._track(torch.empty((len(idx), *self.pattern_shape), dtype=torch.float32, pin_memory=self.pin))
        out = buf.numpy()
        if len(flat) == len(idx) and np.array_equal(flat, idx):
            out[...] = rows
        else:
            np.take(rows, inverse.ravel(), axis=0, out=out)
        return buf

    def _finish(self, host: torch.Tensor, need_meas: bool):
        dev = host.to(self.device, non_blocking=self.pin)
        meas = self._track(torch.fft.ifftshift(dev / self.counts, dim=(-2, -1)).contiguous())
        meas_p = self._track((meas.clamp_min(0) + self.eps).pow(self.power))
        return (meas if need_meas else None), meas_p

    def _warn_size(self, b: int) -> None:
        need = 8 * b * 4 * self.pattern_shape[0] * self.pattern_shape[1]
        if need > self.budget and not self._warned:
            self._warned = True
            log.warning("streamed patterns: a mini-batch of %d patterns holds about %.3g GiB of buffers, more than "
                        "the memory budget of %.3g GiB (run.memory_budget_gb); lower run.batch_size to stay inside",
                        b, need / GIB, self.budget / GIB)

    def schedule(self, batches) -> None:
        """The index tensors of the coming batches, in the order :meth:`batch` will be asked for them: the next
        one is read on the background thread while the current one is computed."""
        self._drop_pending()
        self._plan = list(batches)
        self._next = 0
        self._prefetch(0)

    def _prefetch(self, k: int) -> None:
        if self._pool is None or k >= len(self._plan):
            return
        self._pending = (k, self._pool.submit(self._load, self._plan[k]))

    def _drop_pending(self) -> None:
        if self._pending is not None:
            _, fut = self._pending
            self._pending = None
            fut.cancel()
            try:
                fut.result()
            except Exception:  # noqa: BLE001 - an abandoned read's failure does not matter
                pass

    def batch(self, index, need_meas: bool = True):
        """(meas or None, meas_p) (B, H, W) on the device for the flat scan indices ``index`` (B,)."""
        index = torch.as_tensor(index)
        self._warn_size(int(index.numel()))
        k = self._next
        planned = k < len(self._plan) and (self._plan[k] is index or torch.equal(self._plan[k].cpu(), index.cpu()))
        host = None
        if planned:
            self._next = k + 1
            if self._pending is not None and self._pending[0] == k:
                fut = self._pending[1]
                self._pending = None
                host = fut.result()
            self._prefetch(k + 1)
        if host is None:
            host = self._load(index)
        return self._finish(host, need_meas)

    def close(self) -> None:
        self._drop_pending()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
