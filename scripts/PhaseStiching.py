"""Step 2 of the learned route: train PhaseStitchingNet on ground-truth phase patches.

The seed's `PhaseStiching.py`, as a thin command over the one training pipeline (`phasestem train`):

    python scripts/PhaseStiching.py --data 'data/seed/simulation_data*.h5' --out runs/NAME [--epochs N] [--lr LR]
                         [--device auto] [--config YAML] [--set KEY=VALUE ...] [--resume] [--dump-config]

The flags are those of `phasestem train` (`--out`, `--set`, `--dump-config`, `--device auto`, …;
`--out-dir` still works, deprecated). `python scripts/PhaseStiching.py --help` lists them; every other setting is in
the training YAML (default: the repository's configs/, see docs/config_reference.md).
"""
import sys
from pathlib import Path

from phasestem.cli.learn import stage_script

if __name__ == "__main__":
    sys.exit(stage_script("PhaseStiching", configs=Path(__file__).resolve().parents[1] / "configs"))
