#!/usr/bin/env bash
# GPU benchmark suite: one command, each part under 10 minutes, on whatever GPU it finds.
#
#   bash benchmarks/gpu/run.sh [PART ...]        # default: env cuda speed learned sim recon
#
# Parts (figures as JSON under $RESULTS, default runs/gpu; logs beside them):
#   env      device name, driver, torch/CUDA versions
#   cuda     the reconstruct CLI on cuda and under torchrun (NCCL) against the CPU run (cuda_paths.py), and the
#            test suite's cuda part (pytest -m cuda: compiled and CUDA-graph steps equal the eager one, no host sync)
#   speed    AD seconds per iteration ÷ the FFT bound, peak GPU memory (recon_speed.py): batch 32 (1024 patterns)
#            and 256 (4096), cases a (1 slice), b (8 slices), c (8 slices, 4 probe modes), d (1 slice, 4 modes),
#            each with the eager, compiled and CUDA-graph step (run.compile none / compile / cuda_graph;
#            SPEED_BATCHES="32" and SPEED_MODES="none cuda_graph" pick fewer, for a short lease); then
#            profile_step.py: kernels per step and their device time, eager and graph, at batch 32
#   learned  network training throughput and prediction time, AMP bf16 and fp32, peak memory (bench_learned.py)
#   sim      one seed-spec sample vs abTEM on the GPU (sim_abtem/bench_abtem.py) and 64 samples of the
#            seed generator through `phasestem simulate`, in one process and with SIM_WORKERS (8) Dask
#            worker processes sharing the GPU (extrapolated to the 3,500-sample set)
#   recon    time to accuracy vs PtyRAD and pty-chi on the CPU benchmark's independent cases
#            (independent/bench.py --device cuda; cases simulated here by the same NumPy code;
#            RECON_CASES="thin thick" picks cases)
# Then benchmarks/gpu/report.py writes $RESULTS/table.md and the GPU section of docs/benchmarks.md.
#
# PYTHON (default: .venv/bin/python if present, else python3) must hold phasestem's dependencies and,
# for `recon`, PtyRAD and pty-chi; `sim` needs abTEM with CuPy for abTEM's GPU run. On a machine without a
# package index, benchmarks/gpu/requirements-offline.txt says which wheels to bring and how to install them.
#
# QUICK=1 DEVICE=cpu bash benchmarks/gpu/run.sh speed   # a dry run of the speed part on the CPU: tiny scans, one
#   timed iteration, no cuda_graph, results under runs/gpu_quick, docs/benchmarks.md left alone (checks the script)
set -u
cd "$(dirname "$0")/../.."
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-}
RESULTS=${RESULTS:-runs/gpu${QUICK:+_quick}}
PART_TIMEOUT=${PART_TIMEOUT:-570}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
mkdir -p "$RESULTS"
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(env cuda speed learned sim recon)

part() {  # part NAME COMMAND...: run with a time limit, log, record rc and wall time
    local name=$1; shift
    local t0=$SECONDS
    echo "== $name: $*"
    timeout "$PART_TIMEOUT" "$@" >"$RESULTS/$name.log" 2>&1
    local rc=$?
    echo "{\"part\": \"$name\", \"rc\": $rc, \"wall_s\": $((SECONDS - t0)), \"when\": \"$(date -u +%FT%TZ)\"}" \
        >>"$RESULTS/parts.jsonl"
    tail -n 25 "$RESULTS/$name.log"
    echo "== $name: rc $rc, $((SECONDS - t0)) s"
}

for p in "${parts[@]}"; do
    case $p in
    env)
        part env "$PYTHON" -c "
import json, os, platform, torch
d = dict(device=torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU', torch=torch.__version__,
         cuda=torch.version.cuda, cpus=os.cpu_count(), python=platform.python_version(),
         memory_gib=torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else None)
print(json.dumps(d)); open('$RESULTS/env.json', 'w').write(json.dumps(d))"
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >>"$RESULTS/env.log" 2>&1 ;;
    cuda)
        part cuda "$PYTHON" benchmarks/gpu/cuda_paths.py "$RESULTS/cuda_paths" --json "$RESULTS/cuda_paths.json"
        # test modules whose optional packages the GPU's environment lacks are reported, the cuda tests still run
        part cuda_tests "$PYTHON" -m pytest -q -p no:cacheprovider --continue-on-collection-errors -m cuda tests ;;
    speed)
        # one part per batch size and step (each under PART_TIMEOUT); the first epoch compiles / captures, untimed
        read -r -a modes <<<"${SPEED_MODES:-none compile cuda_graph}"
        [ "$DEVICE" = cuda ] || modes=(${modes[@]/cuda_graph/})
        read -r -a batches <<<"${SPEED_BATCHES:-32 256}"
        for b in "${batches[@]}"; do
            if [ -n "$QUICK" ]; then scan=6; iters=1; repeats=1; else
                scan=$([ $b = 32 ] && echo 32 || echo 64); iters=3; repeats=10; fi
            for m in "${modes[@]}"; do
                part "speed_b${b}_$m" "$PYTHON" benchmarks/recon_speed.py --device "$DEVICE" --iterations $iters \
                    --batch $b --scan $scan --repeats $repeats --cases a,b,c,d --compile "$m" \
                    --json "$RESULTS/speed_b${b}_$m.json"
            done
        done
        # kernels per step and their device time, eager and graph (on CUDA only)
        [ "$DEVICE" = cuda ] && part profile_step "$PYTHON" benchmarks/gpu/profile_step.py --cases a,b,c,d --batch 32 \
            --json "$RESULTS/profile_step.json" ;;
    learned)
        part learned_bf16 "$PYTHON" benchmarks/bench_learned.py --devices cuda --sizes tiny small base --amp bf16 \
            --repeats 3 --json "$RESULTS/learned_bf16.json"
        part learned_fp32 "$PYTHON" benchmarks/bench_learned.py --devices cuda --sizes base --repeats 3 \
            --json "$RESULTS/learned_fp32.json" ;;
    sim)
        part sim_abtem "$PYTHON" benchmarks/sim_abtem/bench_abtem.py --device cuda --threads 8 \
            --json "$RESULTS/sim_abtem.json"
        rm -rf "$RESULTS/seed_subset"
        part sim_seed "$PYTHON" -m phasestem.cli simulate benchmarks/gpu/simulate_seed_subset.yaml \
            --out "$RESULTS/seed_subset"
        rm -rf "$RESULTS"/seed_subset  # 64 × 40 MB of patterns: the time is the figure
        part sim_seed_workers "$PYTHON" -m phasestem.cli simulate benchmarks/gpu/simulate_seed_subset.yaml \
            --out "$RESULTS/seed_subset" --workers "${SIM_WORKERS:-8}"
        rm -rf "$RESULTS"/seed_subset ;;
    recon)
        part recon "$PYTHON" benchmarks/independent/bench.py --device cuda --python "$PYTHON" --threads 4 \
            --tools phasestem ptyrad ptychi --timeout 300 --workdir "$RESULTS/independent" ${RECON_CASES:+--cases $RECON_CASES} ;;
    *) echo "unknown part $p (env cuda speed learned sim recon)"; exit 2 ;;
    esac
done
if [ -n "$QUICK" ]; then  # a dry run's figures are not the GPU's: only $RESULTS/table.md
    "$PYTHON" benchmarks/gpu/report.py "$RESULTS"
else
    "$PYTHON" benchmarks/gpu/report.py "$RESULTS" --docs docs/benchmarks.md
fi
