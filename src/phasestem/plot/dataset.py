"""The first-look figure of a 4D-STEM scan (``phasestem inspect``, ``phasestem.inspect(dataset)``), with the
click-a-position pattern browser in a notebook or desktop window."""
from __future__ import annotations

import math

import numpy as np

from .core import CMAPS, add_colorbar, draw_disk, log_norm, pyplot, save_if_asked, show_image, show_pattern, styled


def _known(values) -> bool:
    return values is not None and all(v is not None and math.isfinite(v) and v > 0 for v in values)


@styled
def inspect_dataset(dataset, look, index: tuple[int, int] | None = None, path=None):
    """Mean pattern (log) with the fitted bright-field disk, virtual bright and annular dark field, the centre of
    mass (x, y; descan plane removed) and the pattern at ``index`` (row, col), from ``look``
    (:class:`phasestem.calibrate.overview.FirstLook`).

    Physical units where the dataset knows them (scan in Å with scale bars when the scan step is known,
    detector in mrad when the angular sampling or the semi-angle is), pixels and scan indices otherwise.
    Interactive where the figure is (a notebook with ``%matplotlib widget``, a desktop window): a click on
    any of the four scan images shows the pattern of that scan position (marked by a red cross); the
    same happens from code with ``fig.select_position((row, col))``. The figure keeps ``look`` as
    ``fig.first_look``.
    """
    plt = pyplot()
    sy, sx = dataset.scan_shape
    H, W = dataset.pattern_shape
    step = dataset.scan_step if _known(dataset.scan_step) else None
    dk = look.pixel_mrad
    unit_k = "mrad" if dk is not None else "px"
    kscale = dk if dk is not None else 1.0

    def k_centre(yx):  # detector px → the pattern panels' coordinates (mrad from (H//2, W//2), or array px)
        return ((yx[0] - H // 2) * dk, (yx[1] - W // 2) * dk) if dk is not None else tuple(yx)

    fig, axes = plt.subplots(2, 3, figsize=(10.5, 6.6))
    ax = axes.ravel()
    norm = log_norm(look.mean)
    show_pattern(ax[0], look.mean, dk, title="mean pattern (log)", label="mean counts", norm=norm)
    if look.radius is not None:
        draw_disk(ax[0], k_centre(look.centre), look.radius * kscale, label="bright-field disk")
        r_text = f"r = {look.radius:.2f} px" + (f" = {look.radius * dk:.3g} mrad" if dk is not None else "")
        ax[0].set_title(f"mean pattern (log), fitted disk\n{r_text}, centre (y, x) = ({look.centre[0]:.1f}, "
                        f"{look.centre[1]:.1f}) px")
    else:
        ax[0].set_title(f"mean pattern (log)\nno disk found: {look.note}", color="tab:red")

    scan_kw = dict(pixel=step, unit="Å", axis_labels=("scan x (index)", "scan y (index)"))
    bf_r, adf_r = look.bf_radius * kscale, look.adf_inner * kscale
    show_image(ax[1], look.bf, cmap=CMAPS["phase"], label="counts", robust=False,
               title=f"virtual bright field (< {bf_r:.3g} {unit_k})", **scan_kw)
    show_image(ax[2], look.adf, cmap=CMAPS["phase"], label="counts",
               title=f"virtual annular dark field (> {adf_r:.3g} {unit_k})", **scan_kw)
    com_unit = "mrad" if dk is not None else "px"
    for a, c, axis in ((ax[3], 1, "x"), (ax[4], 0, "y")):
        show_image(a, look.com[..., c] * kscale, cmap=CMAPS["signed"], symmetric=True,
                   label=f"centre of mass {axis} ({com_unit})", title=f"centre of mass {axis} (descan plane removed)",
                   **scan_kw)
    index = index or (sy // 2, sx // 2)
    one = np.asarray(dataset.patterns[index[0], index[1]], dtype=np.float64)
    pattern_im = show_pattern(ax[5], one, dk, title=f"pattern at scan {tuple(index)} (log)", label="counts",
                              colorbar=False)
    pattern_cb = add_colorbar(pattern_im, ax[5], "counts (log scale)")
    if look.radius is not None:
        draw_disk(ax[5], k_centre(look.centre), look.radius * kscale)
    missing = []
    if step is None:
        missing.append("scan step unknown: scan in pixels (--scan-step Å)")
    if dk is None:
        missing.append("detector pixel unknown: angles in pixels (--angular-sampling or --semiangle mrad)")
    elif look.pixel_source != "given":
        missing.append(f"detector pixel {dk:.4g} mrad from the {look.pixel_source}")
    fig.suptitle("\n".join([dataset.summary()] + (["; ".join(missing)] if missing else [])))
    fig.tight_layout()

    scan_axes = [ax[i] for i in (1, 2, 3, 4)]
    ys, xs = (step if step is not None else (1.0, 1.0))

    def to_data(iy, ix):
        return ((ix + 0.5) * xs, (iy + 0.5) * ys) if step is not None else (ix, iy)

    marks = [a.plot(*[[v] for v in to_data(*index)], "r+", markersize=10)[0] for a in scan_axes]

    def select_position(where: tuple[int, int]) -> None:
        """Show the pattern at scan position ``where`` (row, col) in the last panel."""
        iy = int(np.clip(where[0], 0, sy - 1))
        ix = int(np.clip(where[1], 0, sx - 1))
        p = np.maximum(np.asarray(dataset.patterns[iy, ix], dtype=np.float64), 0)
        pattern_im.set_data(p)
        new = log_norm(p)
        pattern_im.set_norm(new)
        pattern_cb.update_normal(pattern_im)
        ax[5].set_title(f"pattern at scan {(iy, ix)} (log)")
        for m in marks:
            m.set_data(*[[v] for v in to_data(iy, ix)])
        fig.canvas.draw_idle()

    def on_click(event) -> None:
        if event.inaxes in scan_axes and event.xdata is not None:
            if step is not None:
                select_position((math.floor(event.ydata / ys), math.floor(event.xdata / xs)))
            else:
                select_position((round(event.ydata), round(event.xdata)))

    fig.select_position = select_position
    fig.first_look = look
    fig.canvas.mpl_connect("button_press_event", on_click)
    return save_if_asked(fig, path)
