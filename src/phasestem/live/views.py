"""What the page shows of the frames before AD has seen them: virtual detector images and the iCoM phase.

Per frame (the parameter file's transforms applied, :func:`phasestem.recon.params.data_transforms`): the
bright-field sum (angles below the semi-angle), the annular dark-field sum (from 1.2 × the semi-angle to the
detector's edge) and the centre of mass (px about (H//2, W//2)), with the kernels of
:class:`phasestem.dataset.FourDSTEM`. The iCoM phase of the rows received so far is the Fourier integral of
their CoM field (:func:`phasestem.direct.dpc.gradient_from_com`, :func:`phasestem.direct.integrate.integrate_gradient`),
the mean CoM of the received frames removed (the descan of an uncalibrated stream).
"""
from __future__ import annotations

import numpy as np

from ..direct.dpc import gradient_from_com
from ..direct.integrate import integrate_gradient

#: inner edge of the annular dark field, in semi-angles
ADF_INNER = 1.2


class ScanViews:
    """Virtual images (Sy, Sx) of a scan filled frame by frame; NaN where no frame arrived yet."""

    def __init__(self, dataset):
        self.dataset = dataset  # the configured dataset of the whole scan (calibration, scan geometry)
        sy, sx = dataset.scan_shape
        self.bf = np.full((sy, sx), np.nan, np.float32)
        self.adf = np.full((sy, sx), np.nan, np.float32)
        self.com = np.zeros((sy, sx, 2), np.float64)
        self.filled = 0  # frames in the images (raster order)

    def add(self, start: int, frames) -> None:
        """Frames ``start`` … (a :class:`~phasestem.dataset.FourDSTEM` of scan shape (1, k), transforms applied)."""
        k = frames.scan_shape[1]
        semi = self.dataset.semiangle
        flat = slice(start, start + k)
        self.bf.reshape(-1)[flat] = frames.virtual_image(0.0, semi)[0]
        self.adf.reshape(-1)[flat] = frames.virtual_image(ADF_INNER * semi, None)[0]
        self.com.reshape(-1, 2)[flat] = frames.center_of_mass()[0]
        self.filled = max(self.filled, start + k)

    def icom(self) -> np.ndarray:
        """The iCoM phase (Sy, Sx) rad of the whole rows received so far (NaN below them)."""
        sy, sx = self.dataset.scan_shape
        rows = self.filled // sx
        out = np.full((sy, sx), np.nan, np.float32)
        if rows < 2:
            return out
        com = self.com[:rows]
        com = com - com.reshape(-1, 2).mean(0)
        g = gradient_from_com(com, self.dataset)
        out[:rows] = integrate_gradient(g[..., 0], g[..., 1])
        return out
