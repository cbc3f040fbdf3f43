"""Score a reconstruction of make_scan.py's data against its truth.

    python benchmarks/live/check_scan.py OUT_DIR [--results OUT_DIR/recon/results.h5]

The true phase (``truth.npz``, simulation grid) is put onto the reconstruction's object grid through the probe
positions (:func:`phasestem.metrics.truth_on_grid`: the affine fit of the true positions to the reconstruction's
nominal ones in its object frame, the truth band-limited to the grid's Nyquist frequency), both are cut to the
scanned field, and :func:`phasestem.metrics.figures_of_merit` compares them (E_φ after the best sub-pixel shift and
constant, PSNR, SSIM, FRC resolution); the Pearson r over the same field is printed too. The seconds of each
epoch come from ``reconstruct.log`` beside the results.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "real_data"))
from make_mib import load_truth  # noqa: E402


class Scorer:
    """A results file's frame against the truth: the truth put on its object grid by the affine fit of the
    positions (:func:`phasestem.metrics.truth_on_grid`) and both cut to the scanned field; calling it gives the
    figures of merit of an object phase on that grid (:func:`phasestem.metrics.figures_of_merit`; the live
    benchmark scores the phases a run went through this way)."""

    def __init__(self, results: Path, truth: dict):
        from phasestem.metrics import truth_on_grid
        from phasestem.recon.results import load_results

        r = load_results(results)
        self.reference = np.asarray(r["phase_sum"], dtype=np.float64)
        s = np.broadcast_to(np.asarray(r["attrs"]["sampling"], dtype=np.float64), (2,))
        pos = np.asarray(r["positions_initial"], dtype=np.float64) + np.asarray(r["attrs"]["origin"])  # object frame
        t = truth_on_grid(truth["phase"], truth["sampling"], truth["positions"], pos, s, self.reference.shape)
        lo = np.ceil(pos.min(0) / s).astype(int)
        hi = np.floor(pos.max(0) / s).astype(int) + 1
        self.field = (slice(lo[0], hi[0]), slice(lo[1], hi[1]))
        self.truth, self.sampling = t[self.field], tuple(s)

    def figures(self, phase_sum: np.ndarray) -> dict:
        from phasestem.metrics import figures_of_merit

        return figures_of_merit(phase_sum[self.field], self.truth, sampling=self.sampling)

    def __call__(self, phase_sum: np.ndarray) -> float:
        """E_φ of ``phase_sum`` (the object grid of the results file)."""
        return float(self.figures(phase_sum)["phase_error"])


def score(out: Path, results: Path) -> dict:
    from phasestem.metrics import pearson

    scorer = Scorer(results, load_truth(out / "truth.npz"))
    rec = scorer.reference[scorer.field]
    fom = scorer.figures(scorer.reference)
    fom["pearson_r"] = float(pearson(rec, scorer.truth))
    fom["field_px"] = list(rec.shape)
    log = results.with_name("reconstruct.log")
    if log.exists():
        times = [float(v) for v in re.findall(r"epoch \d+ loss [^\n]*?\(([\d.]+) s\)", log.read_text())]
        fom["epoch_s"] = times
    return fom


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--results", type=Path, default=None, help="default: OUT/recon/results.h5")
    args = ap.parse_args()
    fom = score(args.out, args.results or args.out / "recon" / "results.h5")
    print(json.dumps(fom, indent=1))


if __name__ == "__main__":
    main()
