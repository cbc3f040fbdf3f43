#!/usr/bin/env bash
# issue 48 item 5 (End2End's collapse, measured) and issue 52's determinism probe on a lent GPU, in one command of
# under 10 minutes:
#
#   RESULTS=DIR bash benchmarks/learned/gpu_end2end.sh        # on the GPU machine
#
# 1. (PROBE=1) benchmarks/gpu/determinism.py in the background (eager vs eager, deterministic, cuda_graph, auto);
# 2. end2end_study.py --steps simulate: N_TRAIN phasestem crystals at both geometries (SIM_S seconds at most);
# 3. end2end_study.py --steps train: RUNS at once (TRAIN_S seconds each at most; the second run was
#    RUNS="seed_augment seed_offset_free dense_recipe" PROBE=0);
# 4. RESULTS gets e2e.tgz (each run's last End2End epoch, its stages' epoch logs, configs, logs), the training
#    crystals' mean phase and the probe's JSON.
# The CPU side then runs --steps heldout evaluate report on the unpacked runs.
set -u
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
WORK=${WORK:-/tmp/e2e_study}
RESULTS=${RESULTS:-$WORK/results}
N_TRAIN=${N_TRAIN:-384}
SIM_S=${SIM_S:-110}
TRAIN_S=${TRAIN_S:-330}
RUNS=${RUNS:-seed_recipe seed_fixed dense}
PROBE=${PROBE:-1}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg OMP_NUM_THREADS=2
mkdir -p "$WORK" "$RESULTS"
t0=$SECONDS
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$RESULTS/env.txt" 2>&1
[ "$PROBE" = 1 ] && timeout 420 "$PYTHON" benchmarks/gpu/determinism.py --repeats 4 --json "$RESULTS/determinism.json" \
    >"$WORK/determinism.log" 2>&1 &
S=(benchmarks/learned/end2end_study.py --out "$WORK" --device cuda)
"$PYTHON" "${S[@]}" --steps simulate --n-train "$N_TRAIN" --sim-seconds "$SIM_S" >"$WORK/simulate.log" 2>&1
echo "simulate: rc $?, $((SECONDS - t0)) s; $(ls "$WORK"/data/*/*.h5 | wc -l) files"
ls "$WORK"/data/*/
# the training crystals' mean phase (the same crystals at both geometries): the training-mean image's E_φ on the
# CPU side, where the training files are not
"$PYTHON" -c "
import glob, sys, h5py, numpy as np
acc, n = 0.0, 0
for f in sorted(glob.glob(sys.argv[1] + '/data/seed/*.h5')):
    with h5py.File(f) as h:
        for k in h:
            if k.startswith('phase_'):
                acc, n = acc + h[k][()].astype(np.float64), n + 1
np.save(sys.argv[2], (acc / n).astype(np.float32)); print('training-mean phase of', n, 'samples')
" "$WORK" "$RESULTS/train_mean_phase.npy"
t1=$SECONDS
# shellcheck disable=SC2086
"$PYTHON" "${S[@]}" --steps train --runs $RUNS --train-seconds "$TRAIN_S" >"$WORK/train.log" 2>&1
echo "train: rc $?, $((SECONDS - t1)) s"
cat "$WORK/train.json"
for r in "$WORK"/runs/*/; do for s in patch stitch end2end; do tail -n 1 "$r$s/epochs.csv" 2>/dev/null; done; done
wait
cat "$WORK/determinism.log" 2>/dev/null
cd "$WORK" && tar czf "$RESULTS/e2e.tgz" --exclude='trainer_state.pt' runs/*/end2end/last runs/*/*/epochs.csv \
    runs/*/*/summary.json configs train.json ./*.log simulate_*.log determinism.log 2>/dev/null
ls -la "$RESULTS"
echo "total $((SECONDS - t0)) s"
