#!/usr/bin/env bash
# Create the peer-tool environments for benchmarks/recon_peers (not committed; outside the repo).
#
#   bash benchmarks/recon_peers/setup_envs.sh [ENV_ROOT]      (default ENV_ROOT=.bench_envs)
#
# Makes two virtual environments from PyPI, each with its own pins:
#   ENV_ROOT/ptyrad    PtyRAD 1.0.0 (+ torch, torchvision)
#   ENV_ROOT/py4dstem  py4DSTEM 0.14.18 (pins numpy 1.26, hence its own venv)
# TORCH_SPEC picks the torch build (default: PyPI's torch + torchvision, a matching pair). Keep the
# pair matched: a "+cpu" torch with PyPI's torchvision fails with "operator torchvision::nms does not
# exist" (torchvision's extension is linked against the CUDA build). CPU-only pair:
#   TORCH_SPEC="torch torchvision --index-url https://download.pytorch.org/whl/cpu".
# Measured here with TORCH_SPEC="torch==2.14.1 torchvision==0.29.1" (the phasestem venv's torch).
#
# PtyRAD 1.0.0 does not import on Python 3.11: ptyrad/plotting/basic.py has one f-string that nests
# the same quote character inside a replacement field (PEP 701 syntax, Python >= 3.12 only). We PATCH
# the installed copy (swap the inner quotes) rather than pinning an earlier release; the patch is a
# no-op on Python >= 3.12 or when the file is already fixed.
set -euo pipefail
ENV_ROOT="${1:-.bench_envs}"
PY="${PYTHON:-python3.11}"
TORCH_SPEC="${TORCH_SPEC:-torch torchvision}"
mkdir -p "$ENV_ROOT"

if [ ! -x "$ENV_ROOT/ptyrad/bin/python" ]; then
  "$PY" -m venv "$ENV_ROOT/ptyrad"
fi
# shellcheck disable=SC2086
"$ENV_ROOT/ptyrad/bin/pip" install -q $TORCH_SPEC
"$ENV_ROOT/ptyrad/bin/pip" install -q "ptyrad==1.0.0" h5py scipy
"$ENV_ROOT/ptyrad/bin/python" - <<'PYEOF'
"""Patch PtyRAD 1.0.0's Python-3.12-only f-string so it imports on Python 3.11."""
import ast, importlib.util, pathlib, re, sys
spec = importlib.util.find_spec("ptyrad")
path = pathlib.Path(spec.submodule_search_locations[0]) / "plotting" / "basic.py"
src = path.read_text()
try:
    ast.parse(src)
    print(f"{path}: parses on Python {sys.version.split()[0]}; no patch needed")
    sys.exit(0)
except SyntaxError as err:
    lineno = err.lineno
lines = src.splitlines(keepends=True)
line = lines[lineno - 1]
# the f-string's own quote character, then the same character used inside {...} → the other quote
q = re.search(r"""\bf(['"])""", line).group(1)
other = '"' if q == "'" else "'"
new = re.sub(r"\{([^{}]*)\}", lambda b: "{" + b.group(1).replace(q, other) + "}", line)
lines[lineno - 1] = new
patched = "".join(lines)
ast.parse(patched)  # raises if the patch did not work
path.with_suffix(".py.orig").write_text(src)
path.write_text(patched)
print(f"patched {path}:{lineno}\n  - {line.strip()}\n  + {new.strip()}")
PYEOF
"$ENV_ROOT/ptyrad/bin/python" -c "import ptyrad, ptyrad.plotting.basic; print('ptyrad', ptyrad.__version__ if hasattr(ptyrad,'__version__') else '')"

if [ ! -x "$ENV_ROOT/py4dstem/bin/python" ]; then
  "$PY" -m venv "$ENV_ROOT/py4dstem"
fi
"$ENV_ROOT/py4dstem/bin/pip" install -q "py4dstem==0.14.18" h5py
"$ENV_ROOT/py4dstem/bin/python" -c "import py4DSTEM; print('py4DSTEM', py4DSTEM.__version__)"
