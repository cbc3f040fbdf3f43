"""Tilt-corrected bright field (parallax) as a phase image.

The group images of the bright-field disk are shifted back by their parallax (from the calibrated
aberrations, :mod:`phasestem.direct.tcbf`), placed on an up-sampled grid and averaged. For a weak
phase object their contrast is that of a TEM image, I/⟨I⟩ − 1 ≈ 2·sin χ(q)·φ̂(q) (probe
A·exp(−iχ)), so the phase follows by a Wiener filter of the transfer 2·sin χ(q).
"""
from __future__ import annotations

import numpy as np

from .frame import PhaseImage, scan_map, to_dataset_frame
from .tcbf import bf_groups, group_images, normalised, tcbf_image


def _radius_px(dataset) -> float:
    return float(dataset.semiangle / np.mean(dataset.angular_sampling))


def parallax_image(dataset, upsample: int = 2, fraction: float = 0.9) -> tuple[np.ndarray, int]:
    """tcBF contrast on the scan grid up-sampled ``upsample`` times: (Sy·u, Sx·u), and u."""
    labels, k, _ = bf_groups(dataset.pattern_shape, _radius_px(dataset), fraction=fraction)
    chunks = ((slice(r, r + 1), np.asarray(dataset.patterns[r : r + 1], dtype=np.float64))
              for r in range(dataset.scan_shape[0]))
    con, w = normalised(group_images(chunks, labels, dataset.scan_shape))
    from ..physics.optics import Aberrations

    ab = Aberrations.from_dict(dataset.aberrations)
    c10, c12, phi12 = ab.get("C10"), ab.get("C12"), ab.get("phi12")
    C = c10 * np.eye(2) + c12 * np.array([[-np.cos(2 * phi12), np.sin(2 * phi12)],
                                          [np.sin(2 * phi12), np.cos(2 * phi12)]])
    s_obj = -(k * np.asarray(dataset.angular_sampling) * 1e-3) @ C.T
    L, _ = scan_map(dataset)
    shifts = np.linalg.solve(L, s_obj.T).T
    return tcbf_image(con, shifts, w, upsample=upsample), upsample


def parallax_phase(dataset, sampling: tuple[float, float] | None = None, upsample: int = 2,
                   wiener: float = 0.1) -> PhaseImage:
    """Phase (rad) from the tcBF image by a Wiener filter of 2·sin χ, in the dataset frame."""
    from ..physics.optics import wavelength

    img, u = parallax_image(dataset, upsample)
    L, _ = scan_map(dataset)
    step = np.sqrt((L**2).sum(0)) / u  # Å per fine pixel along the scan axes
    qy = np.fft.fftfreq(img.shape[0], step[0])[:, None]
    qx = np.fft.fftfreq(img.shape[1], step[1])[None, :]
    lam = wavelength(dataset.energy)
    c10 = float(dataset.aberrations.get("C10", 0.0))
    transfer = 2 * np.sin(np.pi * lam * c10 * (qy**2 + qx**2))
    transfer[(qy**2 + qx**2) > (2 * dataset.semiangle * 1e-3 / lam) ** 2] = 0.0
    spec = np.fft.fft2(img - img.mean()) * transfer / (transfer**2 + wiener)
    phi = np.fft.ifft2(spec).real
    sampling = tuple(dataset.sampling) if sampling is None else sampling
    return PhaseImage(to_dataset_frame(phi, dataset, sampling, upsample=u), sampling, "parallax", phi)
