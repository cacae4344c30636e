#!/usr/bin/env bash
# scripts/test.sh — build prr_ext and run the test suite (the README's test command; also what CI runs).
#
#   scripts/test.sh [pytest args...]        e.g. scripts/test.sh -k opcheck -x
#
# 1. venv .venv-test (reused when healthy) with the CUDA torch wheel (torch==2.14.1), so that the CUDA sources are
#    compiled even on a GPU-less machine: a CUDA compile error fails the run;
# 2. MAX_JOBS=2 pip install --no-build-isolation -v .   (log: build/logs/test-install.log);
# 3. checks that the installed extension registered its CUDA kernel (when an nvcc exists);
# 4. python -m pytest python_tests -q [args]   (all but the SGLang plugin's tests);
# 5. the SGLang stage: sglang 0.5.23 without its ~11 GB of dependencies (`pip install --no-deps --target
#    build/sglang-site -r scripts/sglang-test-requirements.txt`: sglang plus the few pure-Python modules its dLLM
#    code imports; reused while that file and the Python version are unchanged), then
#    python_tests/test_sglang_plugin.py [args] with build/sglang-site on PYTHONPATH over the venv (whose torch is the
#    one sglang pins). Either stage failing fails the run.
#
# Environment: PYTHON (interpreter for the venv, default python3), PRR_TEST_VENV (default <repo>/.venv-test),
# PRR_TEST_TORCH (default torch==2.14.1), MAX_JOBS (default 2), PRR_EXT_FORCE_CPU=1 (skip the CUDA build),
# PRR_TEST_SGLANG=0 (skip the SGLang stage, with a warning).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="${PRR_TEST_VENV:-$ROOT/.venv-test}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${PRR_TEST_TORCH:-torch==2.14.1}"
PKGS=("$TORCH_SPEC" "setuptools>=64" wheel ninja numpy pytest pytest-benchmark hypothesis safetensors tqdm matplotlib transformers tokenizers diffusers)
export MAX_JOBS="${MAX_JOBS:-2}"
LOG_DIR="$ROOT/build/logs"
START=$SECONDS

step() { printf '\n=== [%4ss] %s\n' "$((SECONDS - START))" "$*"; }
die() { printf '\nscripts/test.sh: ERROR: %s\n' "$*" >&2; exit 1; }
warn() {
  printf '\n%s\n' "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
  printf '!!! WARNING: %s\n' "$@" >&2
  printf '%s\n\n' "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
}

# ---- 1. virtual environment ---------------------------------------------------------------------------------
step "venv $VENV"
STAMP="$VENV/.prr-test-stamp"
WANT_STAMP="$("$PYTHON" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || true) ${PKGS[*]}"
[[ "$WANT_STAMP" == " "* ]] && die "cannot run $PYTHON"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "$PYTHON is older than Python 3.10"
if [[ -x "$VENV/bin/python" ]] && ! "$VENV/bin/python" -c 'import pip' >/dev/null 2>&1; then
  echo "existing venv is broken; recreating it"
  rm -rf "$VENV"
fi
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT_STAMP" ]] && "$PY" -c 'import torch, ninja, pytest, numpy' 2>/dev/null; then
  echo "reusing venv (packages already installed)"
else
  echo "installing: ${PKGS[*]}  (log: ${LOG_DIR#"$ROOT"/}/test-deps.log)"
  rm -f "$STAMP"
  mkdir -p "$LOG_DIR"
  if ! "$PY" -m pip install --progress-bar off "${PKGS[@]}" >"$LOG_DIR/test-deps.log" 2>&1; then
    grep -v 'is ignored: it is neither a file nor a directory' "$LOG_DIR/test-deps.log" | tail -n 30
    die "pip install of the test dependencies failed (log: $LOG_DIR/test-deps.log)"
  fi
  echo "$WANT_STAMP" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"   # the venv's ninja
# -P / PYTHONSAFEPATH=1 (3.11+; also inherited by subprocesses the tests start): do not put the cwd (the repo root,
# whose prr_ext/ has no built _C, or a stale one from an in-place build) first on sys.path, so that the INSTALLED
# package is what gets imported and tested. On 3.10, -I has the same effect (for this process only).
if "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then PYSAFE=(-P); export PYTHONSAFEPATH=1; else PYSAFE=(-I); fi
"$PY" "${PYSAFE[@]}" -c 'import torch; print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), python", __import__("sys").version.split()[0])'

# Will setup.py build the CUDA sources? (mirrors its toolkit search: $CUDA_HOME, nvcc on PATH, /usr/local/cuda)
EXPECT_CUDA=0
if [[ "${PRR_EXT_FORCE_CPU:-0}" != 1 ]] && "$PY" -c 'import sys, torch; sys.exit(torch.version.cuda is None)'; then
  NVCC_ON_PATH="$(command -v nvcc || true)"
  for d in "${CUDA_HOME:-}" "${CUDA_PATH:-}" "${NVCC_ON_PATH:+$(dirname "$(dirname "$NVCC_ON_PATH")")}" /usr/local/cuda; do
    if [[ -n "$d" && -x "$d/bin/nvcc" ]]; then EXPECT_CUDA=1; break; fi
  done
fi

# ---- 2. build + install ---------------------------------------------------------------------------------------
step "pip install --no-build-isolation -v .  (MAX_JOBS=$MAX_JOBS; log: ${LOG_DIR#"$ROOT"/}/test-install.log)"
mkdir -p "$LOG_DIR"
LOG="$LOG_DIR/test-install.log"
if ! "$PY" -m pip install --no-build-isolation -v . >"$LOG" 2>&1; then
  echo "--- first error lines:"
  grep -n -E '(error|Error|FAILED)' "$LOG" | grep -v -E '^[0-9]+:\s*$' | head -n 25 || true
  echo "--- last lines of $LOG:"
  tail -n 15 "$LOG"
  die "build failed after $((SECONDS - START)) s (full log: $LOG)"
fi
# summary: setup.py's decisions, what ninja compiled, the install line
awk '/^ *prr_ext setup:|Successfully installed/ { sub(/^ +/, ""); if (!seen[$0]++) print "  " $0 }
     /^ *\[[0-9]+\/[0-9]+\] / { for (i = 2; i <= NF; i++) if ($i ~ /\.(cpp|cu|cc)$/) src = $i; print "  " $1 " " src }' "$LOG"

# ---- 3. CUDA kernel registration -------------------------------------------------------------------------------
step "check the installed extension"
"$PY" "${PYSAFE[@]}" -c 'import prr_ext, torch; print("prr_ext from", prr_ext.__file__, "| CUDA kernels:", prr_ext.has_cuda_kernels())'
if [[ $EXPECT_CUDA == 1 ]]; then
  "$PY" "${PYSAFE[@]}" -c 'import prr_ext, torch; assert prr_ext.has_cuda_kernels(), "built with nvcc, but no CUDA kernel is registered for prr_ext::step"' \
    || die "the CUDA build did not register its kernel"
elif [[ "${PRR_EXT_FORCE_CPU:-0}" == 1 ]]; then
  warn "PRR_EXT_FORCE_CPU=1: CPU-only build; the CUDA sources were NOT compiled."
else
  warn "no nvcc found (or torch without CUDA): CPU-only build; the CUDA sources were NOT compiled." \
       "Install a CUDA toolkit (or set CUDA_HOME) to compile-check csrc/cuda."
fi

# ---- 4. tests ---------------------------------------------------------------------------------------------------
# --import-mode=append: pytest appends (not prepends) the rootdir it inserts for test modules, so the installed
# prr_ext keeps precedence over the source tree here too.
SGLANG_TESTS=python_tests/test_sglang_plugin.py
step "python -m pytest python_tests -q --ignore=$SGLANG_TESTS $*"
set +e
"$PY" "${PYSAFE[@]}" -m pytest --import-mode=append python_tests -q --ignore="$SGLANG_TESTS" "$@"
rc=$?
set -e

# ---- 5. the SGLang plugin against the real sglang ------------------------------------------------------------------
# sglang pins a CUDA torch and pulls ~11 GB of kernels; its dLLM modules import on CPU with a handful of pure-Python
# packages, so the stage installs exactly those (no dependency resolution) into a folder of their own and runs the
# plugin's tests over the test venv. The venv itself never sees sglang.
sglang_rc=0
if [[ "${PRR_TEST_SGLANG:-1}" == 0 ]]; then
  warn "PRR_TEST_SGLANG=0: the SGLang plugin's tests ($SGLANG_TESTS) did NOT run."
else
  SGL_SITE="$ROOT/build/sglang-site"
  SGL_REQ="$ROOT/scripts/sglang-test-requirements.txt"
  SGL_STAMP="$SGL_SITE/.prr-test-stamp"
  SGL_WANT="$("$PY" -c 'import sys; print(sys.version.split()[0])') $(sha256sum "$SGL_REQ" | cut -d' ' -f1)"
  step "SGLang stage: sglang --no-deps + its dLLM imports in ${SGL_SITE#"$ROOT"/} (log: ${LOG_DIR#"$ROOT"/}/test-sglang-deps.log)"
  if [[ -f "$SGL_STAMP" && "$(cat "$SGL_STAMP")" == "$SGL_WANT" ]]; then
    echo "reusing ${SGL_SITE#"$ROOT"/} (packages already installed)"
  else
    rm -rf "$SGL_SITE"
    if ! "$PY" -m pip install --no-deps --only-binary=:all: --progress-bar off --target "$SGL_SITE" -r "$SGL_REQ" \
        >"$LOG_DIR/test-sglang-deps.log" 2>&1; then
      tail -n 20 "$LOG_DIR/test-sglang-deps.log"
      die "pip install of the SGLang stage's packages failed (log: $LOG_DIR/test-sglang-deps.log; sglang 0.5.23 ships wheels for CPython 3.11 only)"
    fi
    echo "$SGL_WANT" > "$SGL_STAMP"
  fi
  step "python -m pytest $SGLANG_TESTS -q $*   (PYTHONPATH=${SGL_SITE#"$ROOT"/})"
  set +e
  # PRR_TEST_SGLANG=1 makes the test module fail (not skip) if sglang does not import.
  PYTHONPATH="$SGL_SITE${PYTHONPATH:+:$PYTHONPATH}" PRR_TEST_SGLANG=1 \
    "$PY" "${PYSAFE[@]}" -m pytest --import-mode=append "$SGLANG_TESTS" -q -W "ignore:Only CUDA:UserWarning" "$@"
  sglang_rc=$?
  set -e
  # Arguments go to both stages; pytest's 5 (no test selected) is then fine in one of them, as long as the other
  # ran tests (e.g. `scripts/test.sh -k sglang`).
  if [[ $# -gt 0 ]]; then
    if [[ $rc == 5 && $sglang_rc != 5 ]]; then rc=0; elif [[ $sglang_rc == 5 && $rc != 5 ]]; then sglang_rc=0; fi
  fi
fi
step "done: pytest exit codes $rc (main) and $sglang_rc (SGLang stage), total $((SECONDS - START)) s"
if [[ $rc != 0 ]]; then exit $rc; fi
exit $sglang_rc
