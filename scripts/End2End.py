"""Step 3 of the learned route: load the two trained networks as one End2End model and train it further.

The seed's `End2End.py`, as a thin command over the one training pipeline (`phasestem train`):

    python scripts/End2End.py --data 'data/seed/simulation_data*.h5' --out runs/NAME [--epochs N] [--lr LR]
                         [--device auto] [--config YAML] [--set KEY=VALUE ...] [--resume] [--dump-config]
                         [--model runs/patch] [--stitch-model runs/stitch]

The flags are those of `phasestem train` (`--out`, `--set`, `--dump-config`, `--device auto`, …), and the
two trained networks are `--model` (patch) and `--stitch-model`, as in `phasestem predict`; the seed's spelling
`--patch-model` still works. `python scripts/End2End.py --help` lists them; every other setting is in
the training YAML (default: the repository's configs/, see docs/config_reference.md).
"""
import sys
from pathlib import Path

from phasestem.cli.learn import stage_script

if __name__ == "__main__":
    sys.exit(stage_script("End2End", configs=Path(__file__).resolve().parents[1] / "configs"))
