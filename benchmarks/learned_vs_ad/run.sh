#!/usr/bin/env bash
# Learned prediction vs AD ptychography at the seed geometry (2500 patterns of 64² → one 256² phase), on CPU.
#
#   bash benchmarks/learned_vs_ad/run.sh [OUT_DIR] [extra bench_learned_vs_ad.py options, e.g. --device cuda]
#
# Simulates 60 training samples and one held-out sample (different seed), trains the tiny PatchRecoveryNet
# (6 epochs), PhaseStitchingNet (25 epochs) and End2End from both (2 epochs), then times the End2End
# prediction against AD from a flat object: the lsq solver (the engine's default) at three step fractions, then
# Adam at four learning rates (benchmarks/bench_learned_vs_ad.py).
# About 40 minutes on 2 CPU cores, most of it network training. Steps whose output exists are skipped,
# so a rerun only re-times.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${1:-learned_vs_ad_output}"
shift || true
PY="${PYTHON:-python}"
mkdir -p "$OUT"
cd "$OUT"
[ -f data/simulation_data1.h5 ] || phasestem simulate "$HERE/simulate_train.yaml" --out data
[ -f heldout/simulation_data1.h5 ] || phasestem simulate "$HERE/simulate_heldout.yaml" --out heldout
# the training YAMLs name data/ and runs/ of OUT: paths in a config are relative to its folder, so copy them here
cp "$HERE"/train_patch.yaml "$HERE"/train_stitch.yaml "$HERE"/train_end2end.yaml .
[ -d runs/patch/best ] || phasestem train patch train_patch.yaml
[ -d runs/stitch/best ] || phasestem train stitch train_stitch.yaml
[ -d runs/end2end/best ] || phasestem train end2end train_end2end.yaml
# AD with the engine's default solver (lsq; --lr = fractions of the Gauss-Newton step), then Adam as before
"$PY" "$HERE/../bench_learned_vs_ad.py" --model runs/end2end --sample heldout/simulation_data1.h5 \
    --solver lsq --epochs 40 --lr 0.35 0.7 1.0 --repeats 5 --json result_lsq.json "$@"
"$PY" "$HERE/../bench_learned_vs_ad.py" --model runs/end2end --sample heldout/simulation_data1.h5 \
    --solver adam --epochs 80 --lr 0.001 0.002 0.004 0.01 --repeats 5 --json result.json "$@"
