"""``phasestem plan``'s sweep figure: the expected E_φ and FRC resolution against the swept setting(s)."""
from __future__ import annotations

import math
from pathlib import Path

from .core import pyplot, save_figure, styled

#: axis labels of the settings a plan sweeps
SETTING_LABELS = {"scan.step": "scan step (Å)", "dose.electrons_per_area": "dose (e⁻/Å²)",
                  "optics.aberrations.C10": "C10 (Å)", "optics.semiangle": "semi-angle (mrad)",
                  "detector.angular_sampling": "detector pixel (mrad)", "specimen.thickness": "thickness (Å)"}


@styled
def sweep_figure(rows: list[dict], names: list[str], path: str | Path) -> Path:
    """E_φ and FRC resolution (Å) of each sweep row against ``names[0]``; one line per value of ``names[1]`` when
    two settings were swept. A dose axis is logarithmic, and so is the FRC axis where its values span more than a
    factor of 5 (a failed setting's 20 Å beside a good one's 0.5 Å)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.1))
    x_name = names[0]
    groups = sorted({r[names[1]] for r in rows}) if len(names) > 1 else [None]
    for g in groups:
        sel = sorted((r for r in rows if g is None or r[names[1]] == g), key=lambda r: r[x_name])
        label = None if g is None else f"{SETTING_LABELS.get(names[1], names[1])} = {g:g}"
        for ax, key in zip(axes, ("phase_error", "frc_resolution"), strict=True):
            ax.plot([r[x_name] for r in sel], [r[key] for r in sel], marker="o", label=label)
    for ax, ylabel in zip(axes, ("expected phase error E_φ", "expected FRC resolution (Å)"), strict=True):
        ax.set_xlabel(SETTING_LABELS.get(x_name, x_name))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if x_name.startswith("dose"):
            ax.set_xscale("log")
        if len(groups) > 1:
            ax.legend(fontsize="small")
    frc = [r["frc_resolution"] for r in rows if math.isfinite(r["frc_resolution"]) and r["frc_resolution"] > 0]
    if frc and max(frc) > 5 * min(frc):
        axes[1].set_yscale("log")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110, close=True)
