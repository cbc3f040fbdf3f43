#!/usr/bin/env bash
# Create the peer-tool environments for benchmarks/independent (not committed; git-ignored).
#
#   bash benchmarks/independent/setup_envs.sh [ENV_ROOT]      (default ENV_ROOT=.bench_envs)
#
# Four virtual environments from PyPI, each with its own pins (Python 3.11):
#   ENV_ROOT/ptyrad    PtyRAD 1.0.0 + torch/torchvision   (made by ../recon_peers/setup_envs.sh,
#   ENV_ROOT/py4dstem  py4DSTEM 0.14.18 (numpy 1.26)        which also patches PtyRAD for 3.11)
#   ENV_ROOT/quantem   quantem 0.1.10 + torch               (quantem needs Python >= 3.11)
#   ENV_ROOT/ptychi    pty-chi (PyPI ptychi) 2.2 + torch
# TORCH_SPEC picks the torch build; default "torch==2.14.1 torchvision==0.29.1" (phasestem's torch).
# torch is installed first, then the tool with the torch pin repeated, so pip cannot swap torch for
# another release; the versions actually installed are written to ENV_ROOT/versions.txt.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ENV_ROOT="${1:-.bench_envs}"
PY="${PYTHON:-python3.11}"
export TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
mkdir -p "$ENV_ROOT"

make_env() {  # name, pip requirement(s) of the tool
  local name="$1"; shift
  if [ ! -x "$ENV_ROOT/$name/bin/python" ]; then
    "$PY" -m venv "$ENV_ROOT/$name"
  fi
  # shellcheck disable=SC2086
  "$ENV_ROOT/$name/bin/pip" install -q $TORCH_SPEC
  # shellcheck disable=SC2086
  "$ENV_ROOT/$name/bin/pip" install -q "$@" $TORCH_SPEC h5py scipy
}

# PtyRAD and py4DSTEM (the issue-3 environments), in the background while the others install
PYTHON="$PY" bash "$HERE/../recon_peers/setup_envs.sh" "$ENV_ROOT" > "$ENV_ROOT/setup_recon_peers.log" 2>&1 &
pid_peers=$!
make_env quantem "quantem==0.1.10" &
pid_q=$!
make_env ptychi "ptychi==2.2.*" &
pid_c=$!
fail=0
for p in $pid_peers $pid_q $pid_c; do wait "$p" || fail=1; done
[ "$fail" = 0 ] || { echo "an environment failed (see $ENV_ROOT/setup_recon_peers.log and above)"; exit 1; }

{
  for name in ptyrad py4dstem quantem ptychi; do
    printf '%s: ' "$name"
    "$ENV_ROOT/$name/bin/python" - "$name" <<'PYEOF'
import sys
from importlib.metadata import version, PackageNotFoundError
dist = {"ptyrad": "ptyrad", "py4dstem": "py4dstem", "quantem": "quantem", "ptychi": "ptychi"}[sys.argv[1]]
out = [f"python {sys.version.split()[0]}"]
for d in (dist, "torch", "numpy"):
    try:
        out.append(f"{d} {version(d)}")
    except PackageNotFoundError:
        pass
print(", ".join(out))
PYEOF
  done
} | tee "$ENV_ROOT/versions.txt"
