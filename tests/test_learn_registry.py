"""The learned route as one pipeline (issue 14, item 1): the seed-000 format in one module, one registry for the
five networks, ``--dump-config`` for every kind, small files, and models saved before the restructuring."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from phasestem.io import seed as seedfile
from phasestem.optics import interaction_constant

ROOT = Path(__file__).resolve().parents[1]
LEGACY = ROOT / "tests" / "data" / "legacy_models"
KINDS = ("patch", "stitch", "end2end", "autoencoder", "phaseformer")


def _original_file(path: Path, n: int = 2) -> tuple[Path, list[np.ndarray]]:
    """A file of the user's original generator: dp_set_{i} and phase_{i} = projected potential (V·Å), no attrs."""
    rng = np.random.default_rng(0)
    pots = [rng.uniform(0, 50, (16, 16)).astype(np.float32) for _ in range(n)]
    with h5py.File(path, "w") as f:
        for i, v in enumerate(pots):
            f[seedfile.patterns_key(i)] = rng.uniform(0, 1, (6, 6, 8, 8)).astype(np.float32)
            f[seedfile.phase_key(i)] = v
    return path, pots


def test_seed_format_keys_and_sigma(tmp_path):
    assert seedfile.file_name(3) == "simulation_data3.h5"
    assert seedfile.parse_key("dp_set_12") == ("dp_set", 12) and seedfile.parse_key("phase_x2") is None
    assert seedfile.sample_ids(["dp_set_10", "dp_set_2", "phase_2", "dp_set_x"]) == [2, 10]
    assert seedfile.phase_scale(True) == 1.0
    assert seedfile.phase_scale(False) == pytest.approx(interaction_constant(300e3))


def test_every_reader_gives_the_original_phase_in_rad(tmp_path):
    """The σ question, answered once: an original file's phase_{i} is V_proj; io, learn data and pairs all
    give σ(300 keV)·V_proj in rad."""
    from phasestem import io
    from phasestem.learn.data import Preprocess, SampleDataset, SampleIndex
    from phasestem.learn.pairs import SimulationPairs
    from phasestem.learn.restore_apply import make_pairs

    path, pots = _original_file(tmp_path / "orig.h5")
    sigma = interaction_constant(300e3)
    truth = [v * np.float32(sigma) for v in pots]
    ds = io.load(path, sample=1)
    np.testing.assert_allclose(ds.truth["phase"], truth[1], rtol=1e-6)
    index = SampleIndex.from_paths([path], block=6, stride=3, patch=8)
    item = SampleDataset(index, Preprocess())[0]
    np.testing.assert_allclose(item["phase"].numpy()[0] if item["phase"].ndim == 3 else item["phase"].numpy(),
                               truth[0], rtol=1e-6)
    pairs = SimulationPairs(path, augment=False, fixed=True)
    np.testing.assert_allclose(pairs[1]["target"][0].numpy(), truth[1], rtol=1e-6)
    out = make_pairs([str(path)], tmp_path / "pairs.h5", progress=False)
    with h5py.File(out) as f:
        np.testing.assert_allclose(f["gt"][0], truth[0], rtol=1e-6)
