"""The stream written to the run folder as it arrives, so that the acquisition is also an offline dataset.

The file is phasestem's own 4D-STEM HDF5 (:func:`phasestem.io.hdf5.write`'s layout: attribute
``format="phasestem-4dstem"``, the calibrations as attributes, ``patterns`` (Sy, Sx, H, W)), in the detector's
integer type as it sent the counts, frames oriented as a ``.mib`` reader presents them (:mod:`.merlin`): every
reader of phasestem takes it (``reconstruct``, ``calibrate``, ``inspect``, ``serve``). Whole scan rows are written
as they complete, each flushed; while the scan runs the file is ``stream.partial.h5``, renamed to ``stream.h5``
when the stream ends. A scan that ended early keeps its whole rows in ``patterns`` and the frames of its last,
unfinished row in ``incomplete_row`` (k, H, W), marked by the attribute ``incomplete_row_frames``; the attributes
``frames_expected``, ``frames_sent`` (by the detector's own count), ``frames_received``, ``frames_recorded``,
``complete`` and ``stop_reason`` say what happened.
"""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from ..io.hdf5 import write_calibrations

#: the recording while the scan runs, and once it ended
PARTIAL_NAME, RECORDING_NAME = "stream.partial.h5", "stream.h5"


def find_recording(folder: str | Path) -> Path | None:
    """A run folder's recording: ``stream.h5`` once the stream ended, else ``stream.partial.h5`` (while it runs,
    or a run stopped at once), else None."""
    return next((Path(folder) / n for n in (RECORDING_NAME, PARTIAL_NAME) if (Path(folder) / n).is_file()), None)


class Recording:
    """``folder/stream.partial.h5`` for a scan of ``scan_shape`` frames of ``frame_shape`` and ``dtype``, with
    the calibrations of ``raw`` (a :class:`~phasestem.dataset.FourDSTEM` of the parameter file's values) and the
    stream's ``source`` (e.g. ``merlin://127.0.0.1:6342``)."""

    def __init__(self, folder: str | Path, raw, scan_shape: tuple[int, int], frame_shape: tuple[int, int],
                 dtype, source: str):
        self.folder = Path(folder)
        self.partial = self.folder / PARTIAL_NAME
        self.path = self.folder / RECORDING_NAME
        self.scan_shape, self.frame_shape = tuple(scan_shape), tuple(frame_shape)
        self.rows_written = 0
        self.frames_recorded = 0  # whole rows' frames, and the unfinished row's once finished
        self._file = f = h5py.File(self.partial, "w")
        write_calibrations(f, raw)
        f.attrs["source"] = source
        sy, sx = self.scan_shape
        f.attrs["frames_expected"] = sy * sx
        f.attrs["complete"] = False
        self._patterns = f.create_dataset("patterns", shape=(0, sx, *self.frame_shape), maxshape=(sy, sx,
                                          *self.frame_shape), dtype=np.dtype(dtype), chunks=(1, sx, *self.frame_shape))

    def write_rows(self, rows: np.ndarray) -> None:
        """Append whole scan rows (r, Sx, H, W) and flush them to disk."""
        r = len(rows)
        self._patterns.resize(self.rows_written + r, axis=0)
        self._patterns[self.rows_written:] = rows
        self.rows_written += r
        self.frames_recorded += r * self.scan_shape[1]
        self._file.flush()

    def finish(self, incomplete_row: np.ndarray, reason: str, sent: int, received: int) -> Path:
        """Close the file with the frames of an unfinished last row (k, H, W; k may be 0), why the stream ended, the
        frames the detector reports ``sent`` and the frames ``received``; rename it to ``stream.h5``. Returns its
        path."""
        f = self._file
        if len(incomplete_row):
            f.create_dataset("incomplete_row", data=incomplete_row)
        sy, sx = self.scan_shape
        f.attrs["incomplete_row_frames"] = len(incomplete_row)
        f.attrs["frames_sent"] = sent
        f.attrs["frames_received"] = received
        self.frames_recorded += len(incomplete_row)
        f.attrs["frames_recorded"] = self.frames_recorded
        f.attrs["complete"] = self.rows_written == sy
        f.attrs["stop_reason"] = reason
        f.close()
        os.replace(self.partial, self.path)
        return self.path

    def close(self) -> None:
        """Close without renaming (an interrupted run: ``stream.partial.h5`` keeps every written row)."""
        if self._file.id.valid:
            self._file.close()
