#!/usr/bin/env bash
# scripts/demo.sh — set up a small CPU venv (.venv-demo, reused when healthy), build prr_ext into it and run the demo.
#
#   scripts/demo.sh [demo args...]          ==  python -m prr_testbed.demo [demo args...]
#
# Uses the CPU torch wheel (torch==2.13.0: smaller and faster to install; CPU-only build). The demo runs in the
# caller's working directory, so relative paths in its arguments work as usual.
# Environment: PYTHON (default python3), PRR_DEMO_VENV (default <repo>/.venv-demo), PRR_DEMO_TORCH (torch==2.13.0),
# MAX_JOBS (default 2).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PRR_DEMO_VENV:-$ROOT/.venv-demo}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${PRR_DEMO_TORCH:-torch==2.13.0}"
PKGS=("$TORCH_SPEC" "setuptools>=64" wheel ninja numpy safetensors tqdm matplotlib)
export MAX_JOBS="${MAX_JOBS:-2}"
say() { printf '[demo.sh] %s\n' "$*" >&2; }

STAMP="$VENV/.prr-demo-stamp"
WANT_STAMP="$("$PYTHON" -c 'import sys; print(sys.version.split()[0])') ${PKGS[*]}"
if [[ -x "$VENV/bin/python" ]] && ! "$VENV/bin/python" -c 'import pip' >/dev/null 2>&1; then
  say "existing $VENV is broken; recreating it"; rm -rf "$VENV"
fi
if [[ ! -x "$VENV/bin/python" ]]; then say "creating $VENV"; "$PYTHON" -m venv "$VENV"; fi
PY="$VENV/bin/python"
if ! [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT_STAMP" ]]; then
  say "installing ${PKGS[*]}"
  rm -f "$STAMP"
  mkdir -p "$ROOT/build/logs"
  if ! "$PY" -m pip install --progress-bar off "${PKGS[@]}" >"$ROOT/build/logs/demo-deps.log" 2>&1; then
    grep -v 'is ignored: it is neither a file nor a directory' "$ROOT/build/logs/demo-deps.log" | tail -n 30 >&2
    say "ERROR: pip install failed (log: $ROOT/build/logs/demo-deps.log)"; exit 1
  fi
  echo "$WANT_STAMP" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"

# (Re)build + install; ninja keeps this to a few seconds when nothing changed. Runs from the repo root.
mkdir -p "$ROOT/build/logs"
LOG="$ROOT/build/logs/demo-install.log"
say "building prr_ext (log: $LOG)"
if ! (cd "$ROOT" && "$PY" -m pip install --no-build-isolation -v . >"$LOG" 2>&1); then
  grep -n -E '(error|Error|FAILED)' "$LOG" | head -n 25 >&2 || true
  tail -n 30 "$LOG" >&2
  say "ERROR: build failed (full log: $LOG)"; exit 1
fi
awk '/^ *prr_ext setup:/ { sub(/^ +/, ""); if (!seen[$0]++) print "[demo.sh]   " $0 }' "$LOG" >&2

# -P (3.11+) / -I: keep the cwd off sys.path so that the installed prr_ext (not a source checkout without the built
# _C module) is imported even when run from the repo root.
PYSAFE=(-P); "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || PYSAFE=(-I)
exec "$PY" "${PYSAFE[@]}" -m prr_testbed.demo "$@"
