#!/usr/bin/env bash
# restore-seed's training pairs and two restorers on a lent GPU, in one command of under 10 minutes (issue 48).
#
#   RESULTS=DIR bash benchmarks/learned/gpu_restorer.sh          # on the GPU machine
#   QUICK=1 bash benchmarks/learned/gpu_restorer.sh              # a dry run on the CPU: a tiny scan, seconds
#
# 1. pairs (PAIRS_MIN minutes): benchmarks/learned/train_restorer.py simulates phasestem's random crystals and
#    amorphous specimens at the user's seed-000 geometry (SIM, default configs/simulate_seed.yaml;
#    configs/simulate_seed_defects.yaml adds vacancies, substitutions, adatoms, films, holes, grain boundaries and
#    thickness steps; 4 frozen phonons) in parts of
#    PART samples and makes each part's pairs of AD epochs (noise-free, 1e3 and 1e4 e⁻/pattern), JOBS parts at once
#    on the GPU; parts not finished at the deadline are dropped (every finished file is complete).
# 2. train (TRAIN_MIN minutes): the runs of RUNS at once on the same GPU ("NAME:ARCH:SIZE:INVENTED" each: a U-Net of
#    width SIZE or a Phaseformer of dim SIZE, the invented mass weighted INVENTED in the loss; default a U-Net of
#    width WIDTH and a Phaseformer of dim DIM, invented mass off), on the pairs made, every 8th pairs file held
#    out as the test set; each stops at the deadline with its best weights.
# 3. RESULTS gets each run's best weights (best/), config, epoch log and summary, the logs and the seconds of every
#    step, packed into the file TARBALL when it is set (the lease returns few files). The pairs stay on the machine
#    (gigabytes); the CPU side scores the weights on abTEM held-out pairs made there.
set -u
cd "$(dirname "$0")/../.."
QUICK=${QUICK:-}
DEVICE=${DEVICE:-$([ -n "$QUICK" ] && echo cpu || echo cuda)}
WORK=${WORK:-runs/restore_seed${QUICK:+_quick}_gpu}
RESULTS=${RESULTS:-$WORK/results}
PAIRS_MIN=${PAIRS_MIN:-4.5}
TRAIN_MIN=${TRAIN_MIN:-3}
JOBS=${JOBS:-10}
N_TRAIN=${N_TRAIN:-120}
PART=${PART:-4}
WIDTH=${WIDTH:-32}
DIM=${DIM:-16}
EPOCHS=${EPOCHS:-30}
SIM=${SIM:-configs/simulate_seed.yaml}
RUNS=${RUNS:-restorer_unet:unet:$WIDTH:0 restorer_phaseformer:phaseformer:$DIM:0}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg OMP_NUM_THREADS=1
mkdir -p "$WORK" "$RESULTS"
TRAIN_ARGS=(--crop 128 --batch 16 --lr 1e-3)
if [ -n "$QUICK" ]; then  # the seed's probe on a 16 Å cell: an 8 × 8 scan of 32² patterns
    "$PYTHON" - "$WORK/quick_sim.yaml" "$SIM" <<'EOF'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[2]))
cfg["grid"] = {"extent": [16.0, 16.0], "sim_gpts": [128, 128], "phase_gpts": [64, 64]}
cfg["scan"] = {"shape": [8, 8], "step": [2.0, 2.0]}
cfg["detector"]["shape"] = [32, 32]
open(sys.argv[1], "w").write(yaml.safe_dump(cfg))
EOF
    SIM=$WORK/quick_sim.yaml
    PAIRS_MIN=2; TRAIN_MIN=1; JOBS=2; N_TRAIN=4; PART=2; EPOCHS=2; TRAIN_ARGS=(--crop 32 --batch 2)
    RUNS=$(echo "$RUNS" | sed -E 's/:(unet|phaseformer):[0-9]+:/:\1:8:/g')
fi
T=(benchmarks/learned/train_restorer.py --out "$WORK" --sim-config "$SIM" --device "$DEVICE" --phonons 4)
t0=$SECONDS
echo "== pairs: $N_TRAIN samples per kind in parts of $PART, $JOBS at once, $PAIRS_MIN min"
"$PYTHON" "${T[@]}" --steps simulate pairs --jobs "$JOBS" --n-train "$N_TRAIN" --part "$PART" \
    --max-minutes "$PAIRS_MIN" >"$RESULTS/pairs.log" 2>&1
echo "pairs: rc $?, $((SECONDS - t0)) s, $(ls "$WORK"/pairs/*.h5 2>/dev/null | wc -l) pairs files"
rm -f "$WORK"/pairs/*.tmp* 2>/dev/null
t1=$SECONDS
echo "== train: $RUNS at once, $TRAIN_MIN min"
for spec in $RUNS; do
    IFS=: read -r name arch size invented <<<"$spec"
    "$PYTHON" "${T[@]}" --steps train --arch "$arch" --width "$size" --dim "$size" --invented-mass "$invented" \
        --run-name "$name" --epochs "$EPOCHS" --chunk "$EPOCHS" "${TRAIN_ARGS[@]}" --max-minutes "$TRAIN_MIN" \
        >"$RESULTS/train_$name.log" 2>&1 &
done
wait
echo "train: $((SECONDS - t1)) s"
for spec in $RUNS; do
    name=${spec%%:*}
    run=$WORK/runs/$name
    mkdir -p "$RESULTS/$name"
    cp -r "$run"/best "$run"/config.yaml "$run"/epochs.csv "$run"/summary.json "$RESULTS/$name/" 2>/dev/null
    tail -n 3 "$run/epochs.csv" 2>/dev/null
done
cp "$WORK/seconds.json" "$RESULTS/" 2>/dev/null
"$PYTHON" -c "import torch, json; print(json.dumps({'device': torch.cuda.get_device_name() if torch.cuda.is_available()
    else 'cpu', 'torch': torch.__version__}))" >"$RESULTS/env.json"
ls -la "$RESULTS" "$RESULTS"/*/
echo "total $((SECONDS - t0)) s"
if [ -n "${TARBALL:-}" ]; then tar czf "$TARBALL" -C "$RESULTS" . && ls -la "$TARBALL"; fi
