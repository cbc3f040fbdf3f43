#!/usr/bin/env bash
# AD's best on a held-out half before and after the finer grid (issue 69 item 1), on a lent GPU in one command:
# ad_best.py at model.upsampling 1 (the detector's pixel) and auto (0.156 Å at the seed geometry), split into
# processes of one thread each (these runs are small: 900 positions of 64² or 128² pixels): SHARDS_U1 for u 1 and
# SHARDS_AUTO for auto on the machine's CPU cores, of which the first GPU_SHARDS of auto's run on the GPU; stopped at
# LIMIT seconds (every finished run is kept), then merged. Seconds in the records are those of the device that ran it
# ("device" in each record).
#
#   RESULTS=DIR bash benchmarks/learned/gpu_ad_best.sh HELDOUT.h5      # on the GPU machine
#   QUICK=1 bash benchmarks/learned/gpu_ad_best.sh HELDOUT.h5          # a dry run on the CPU: 2 epochs, seconds
#
# SEED=DIR/ad_best_val_uUU.json resumes (UU stands for 1 and auto).
# HELDOUT.h5: a held-out half of train_restorer.py --steps heldout (or its copy by trim_patterns.py, smaller for
# the lease's 64 MiB). RESULTS gets ad_best_<half>_u1.json and ad_best_<half>_uauto.json (ad_best.py's records:
# curve, best, best_coarse on the detector's grid) and the logs packed as ad_best_<half>_logs.tgz.
set -u
cd "$(dirname "$0")/../.."
FILE=$1
HALF=$(basename "$FILE" .h5)
QUICK=${QUICK:-}
SHARDS_U1=${SHARDS_U1:-$([ -n "$QUICK" ] && echo 1 || echo 8)}
SHARDS_AUTO=${SHARDS_AUTO:-$([ -n "$QUICK" ] && echo 1 || echo 8)}
# on an H100 a 100-epoch run on 0.156 Å pixels took 10–12 s of optimisation with 8–10 processes sharing the GPU,
# 136 s on one CPU core under 16 processes: every auto shard on the GPU by default
GPU_SHARDS=${GPU_SHARDS:-$([ -n "$QUICK" ] && echo 0 || echo "$SHARDS_AUTO")}
EPOCHS=${EPOCHS:-$([ -n "$QUICK" ] && echo 2 || echo 100)}
EVERY=${EVERY:-$([ -n "$QUICK" ] && echo 1 || echo 5)}
LIMIT=${LIMIT:-300}
RESULTS=${RESULTS:-runs/ad_best${QUICK:+_quick}}
WORK=$(mktemp -d)
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg OMP_NUM_THREADS=1
mkdir -p "$RESULTS"
EXTRA=()
# SEED=JSON: runs already done (a merged ad_best.py file): every shard starts from it and runs only the rest
for u in 1 auto; do
    for i in $(seq 0 15); do [ -n "${SEED:-}" ] && [ -f "${SEED/UU/$u}" ] && cp "${SEED/UU/$u}" "$WORK/u${u}_$i.json"; done
done
[ -n "$QUICK" ] && EXTRA=(--settings default --electrons none)
t0=$SECONDS
for u in 1 auto; do
    n=$([ $u = 1 ] && echo "$SHARDS_U1" || echo "$SHARDS_AUTO")
    for i in $(seq 0 $((n - 1))); do
        device=$([ $u = auto ] && [ "$i" -lt "$GPU_SHARDS" ] && echo cuda || echo cpu)
        timeout "$LIMIT" "$PYTHON" benchmarks/learned/ad_best.py --files "$FILE" --device $device --upsampling $u \
            --epochs "$EPOCHS" --every "$EVERY" --shard "$i/$n" --out "$WORK/u${u}_$i.json" "${EXTRA[@]}" \
            >"$WORK/u${u}_$i.log" 2>&1 &
    done
done
wait
echo "runs: $((SECONDS - t0)) s"
for u in 1 auto; do
    "$PYTHON" benchmarks/learned/ad_best.py --merge "$WORK"/u${u}_*.json --out "$RESULTS/ad_best_${HALF}_u$u.json"
done
tar czf "$RESULTS/ad_best_${HALF}_logs.tgz" -C "$WORK" .
grep -h "Traceback\|Error" "$WORK"/*.log | sort | uniq -c | head
