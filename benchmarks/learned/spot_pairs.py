"""Does a restorer make an amorphous film look crystalline? Lattice-like spot pairs in the restored phase that the
truth lacks, against AD's own count (issue 68's acceptance).

    python benchmarks/learned/spot_pairs.py --pairs OUT/heldout/pairs_val.h5 --kinds OUT/heldout/kinds.json \
        --model restore-seed-fine --out OUT/spot_pairs.json

The criterion: the power spectrum of the phase over the scanned field's largest centred square, Hann-windowed, its
mean removed; a **spot** is a local maximum (3 × 3) above :data:`LEVEL` × the median of its ring (the pixels of the
same |k| ± ½ px), beyond :data:`K_MIN` of Nyquist from the origin (the window's own leak) and inside both the probe's
band (2α / λ, the highest frequency the patterns carry) and the pixel's anti-aliased band (:data:`BAND`); a
**pair** is a spot and its mirror at −k (a real image's spectrum is symmetric, so every spot has one: pairs =
spots / 2). A pair is **new** when the truth's spectrum has no spot within :data:`MATCH` px of it. Counted for every
amorphous sample of the half (``kinds.json``), noise-free and counted rows, at AD's last stored epoch and its
restoration.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from layouts import write_json  # noqa: E402

#: a spot stands this many times above the median of its ring
LEVEL = 20.0
#: spots nearer the origin than this fraction of Nyquist are the window's leak
K_MIN = 0.05
#: the highest frequency counted, a fraction of Nyquist: the pixel's anti-aliased band (AD's object is held to it:
#: ``constraints.obj_band``; beyond it the truth resampled onto AD's grid shows the resampler's own spots)
BAND = 2 / 3
#: px: a spot of the image within this distance of one of the truth's is the truth's
MATCH = 2.0


def field_square(image: np.ndarray, field: np.ndarray) -> np.ndarray:
    """The largest square of ``image`` centred on the scanned field's centre that lies inside it."""
    rows, cols = np.nonzero(field)
    cy, cx = int(rows.mean()), int(cols.mean())
    half = min(cy - rows.min(), rows.max() - cy, cx - cols.min(), cols.max() - cx)
    while half > 8 and not field[cy - half:cy + half, cx - half:cx + half].all():
        half -= 1
    return image[cy - half:cy + half, cx - half:cx + half]


def spots(image: np.ndarray, k_max: float) -> np.ndarray:
    """Spots (M, 2) (fy, fx from the spectrum's centre) of the power spectrum of ``image`` (module docstring:
    :func:`phasestem.learn.guards.power_peaks` against its ring's median, inside the band); ``k_max``: the band's
    edge as a fraction of Nyquist."""
    from phasestem.learn.guards import power_peaks

    n = min(image.shape)
    found = power_peaks(image[:n, :n], threshold=LEVEL, min_radius=0.0, ring=True)
    radius = np.hypot(found[:, 0], found[:, 1])
    return found[(radius > K_MIN * n / 2) & (radius < k_max * n / 2)]


def new_pairs(image_spots: np.ndarray, truth_spots: np.ndarray) -> int:
    """Pairs of ``image_spots`` with no truth spot within :data:`MATCH` px."""
    if len(image_spots) == 0:
        return 0
    if len(truth_spots) == 0:
        return len(image_spots) // 2
    d = np.min(np.hypot(*(image_spots[:, None, :] - truth_spots[None, :, :]).transpose(2, 0, 1)), axis=1)
    return int((d > MATCH).sum()) // 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=Path, required=True, help="a held-out half's pairs file of AD epochs")
    p.add_argument("--kinds", type=Path, required=True, help="the halves' kinds.json")
    p.add_argument("--half", default="val")
    p.add_argument("--model", required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    import h5py

    from phasestem.learn.ad_pairs import stored_epochs
    from phasestem.learn.apply.restorer import load_restorer, restore_channels
    from phasestem.physics.optics import wavelength

    net, meta = load_restorer(args.model)
    optics = (meta.get("data") or {}).get("optics") or {}
    kinds = json.loads(args.kinds.read_text())[args.half]
    epoch = stored_epochs(args.pairs)[-1]
    rows = []
    with h5py.File(args.pairs, "r") as f:
        n_doses = f["gt"].shape[0] // len(kinds)
        for r in range(f["gt"].shape[0]):
            if kinds[r // n_doses] != "amorphous":
                continue
            px = float(f["sampling"][r][0])
            lam = wavelength(float(optics["energy"]))
            k_max = min(BAND, 2 * optics["semiangle"] * 1e-3 / lam * 2 * px)  # 2α/λ ÷ Nyquist 1/(2 px)
            field = np.asarray(f["field"][r]) > 0
            ch = {c: f[f"epoch_{epoch}/{c}"][r] for c in ("phase", *net.config.extra_channels)}
            images = {"truth": np.asarray(f["gt"][r], np.float64), "ad": np.asarray(ch["phase"], np.float64),
                      "restored": restore_channels(net, ch).astype(np.float64)}
            found = {k: spots(field_square(v, field), k_max) for k, v in images.items()}
            dose = float(f["electrons"][r])
            rows.append({"row": r, "electrons": None if np.isnan(dose) else dose, "epoch": epoch,
                         "spots": {k: int(len(v)) for k, v in found.items()},
                         "new_pairs_ad": new_pairs(found["ad"], found["truth"]),
                         "new_pairs_restored": new_pairs(found["restored"], found["truth"])})
            print(rows[-1], flush=True)
    write_json(args.out, {"model": str(args.model), "criterion": {"level": LEVEL, "k_min": K_MIN, "match_px": MATCH},
                          "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
