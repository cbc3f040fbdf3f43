#!/usr/bin/env bash
# σ on every geometry (geometries.py) on one GPU: every case in its own process at once (the GPU is launch-bound on
# a 24 × 24 scan), each writing its own results file, merged at the end into OUT/results.json and OUT/result.md.
#
#   OUT=runs/uncertainty_geometries_gpu bash benchmarks/uncertainty/gpu_geometries.sh [CASE ...]
#
# DEVICE (default cuda), THREADS per process (default 1), REALISATIONS (default 6), CASE_TIMEOUT (s, each case's
# process; what it finished is kept), PYTHON as benchmarks/gpu/run.sh.
# Cases whose noise-free data are not in OUT are simulated there (the NumPy ones in seconds; the abTEM one needs
# abTEM: simulate it where abTEM is and copy clean_NAME.npz into OUT).
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/uncertainty_geometries_gpu}
DEVICE=${DEVICE:-cuda}
THREADS=${THREADS:-1}
REALISATIONS=${REALISATIONS:-6}
CASE_TIMEOUT=${CASE_TIMEOUT:-86400}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg OMP_NUM_THREADS=$THREADS
cases=("$@")
[ ${#cases[@]} -eq 0 ] && mapfile -t cases < <("$PYTHON" -c "
import sys; sys.path.insert(0, 'benchmarks/uncertainty'); import geometries
print('\n'.join(n for n, c in geometries.CASES.items() if 'abtem' not in c))")
mkdir -p "$OUT"
for name in "${cases[@]}"; do
    mkdir -p "$OUT/$name"
    [ -e "$OUT/clean_$name.npz" ] && ln -sf "../clean_$name.npz" "$OUT/$name/clean_$name.npz"
    timeout "$CASE_TIMEOUT" "$PYTHON" benchmarks/uncertainty/geometries.py --out "$OUT/$name" --cases "$name" \
        --device "$DEVICE" \
        --threads "$THREADS" --realisations "$REALISATIONS" >"$OUT/$name.log" 2>&1 &
done
wait
"$PYTHON" benchmarks/uncertainty/geometries.py --out "$OUT" --merge "$OUT"/*/results.json
