"""Step 1 of the learned route: train PatchRecoveryNet.

The seed's `patchRecovery.py`, as a thin command over the one training pipeline (`phasestem train`):

    python scripts/patchRecovery.py --data 'data/seed/simulation_data*.h5' --out runs/NAME [--epochs N] [--lr LR]
                         [--device auto] [--config YAML] [--set KEY=VALUE ...] [--resume] [--dump-config]

The flags are those of `phasestem train` (`--out`, `--set`, `--dump-config`, `--device auto`, …;
`--out-dir` still works, deprecated). `python scripts/patchRecovery.py --help` lists them; every other setting is in
the training YAML (default: the repository's configs/, see docs/config_reference.md).
"""
import sys
from pathlib import Path

from phasestem.cli.learn import stage_script

if __name__ == "__main__":
    sys.exit(stage_script("patchRecovery", configs=Path(__file__).resolve().parents[1] / "configs"))
