#!/usr/bin/env bash
# benchmarks/dev/build_copy.sh — build prr_ext in place in a copy of the tree (or of a git revision), optionally with
# extra nvcc defines, and print the copy's folder. Put that folder first on PYTHONPATH to run anything against that
# build; the working tree and the installed package stay as they are.
#
#   P=$(benchmarks/dev/build_copy.sh -D PRR_TIMELINE=1) && PYTHONPATH=$P python benchmarks/dev/timeline.py "(1,32)"
#   P=$(benchmarks/dev/build_copy.sh -r kernel-v16) && PYTHONPATH=$P python benchmarks/run_bench.py --out /tmp/v16.json
#
#   -r REV    build git revision REV (git archive; needs the repository's git metadata) instead of the working tree
#   -D N=V    pass -DN=V to nvcc (repeatable): a compile-time knob of the CUDA sources, e.g. PRR_TIMELINE=1
#   -o DIR    build in DIR (default: a new folder under ${TMPDIR:-/tmp})
# MAX_JOBS (default 16) and TORCH_CUDA_ARCH_LIST (default 9.0) are passed to the build; its log is DIR/build.log.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-python3}"
REV="" DIR="" DEFS=()
usage() { sed -n '2,13p' "${BASH_SOURCE[0]}" >&2; exit 2; }
while getopts "r:D:o:h" opt; do
  case "$opt" in
    r) REV="$OPTARG" ;;
    D) [[ "$OPTARG" == [A-Za-z_]* ]] || { echo "build_copy.sh: -D takes NAME or NAME=VALUE, got '$OPTARG'" >&2; exit 2; }
       DEFS+=("-D$OPTARG") ;;
    o) DIR="$OPTARG" ;;
    *) usage ;;
  esac
done
(( OPTIND > $# )) || { echo "build_copy.sh: unexpected argument '${!OPTIND}'" >&2; usage; }
if [[ -n "$REV" ]] && ! git -C "$ROOT" rev-parse --verify --quiet "$REV^{commit}" >/dev/null; then
  echo "build_copy.sh: -r $REV is not a commit of $ROOT's git repository" >&2; exit 2
fi
if [[ -z "$DIR" ]]; then
  DIR="$(mktemp -d "${TMPDIR:-/tmp}/prr_build_copy.XXXXXX")"
else
  mkdir -p "$DIR"
  [[ -z "$(ls -A "$DIR")" ]] || { echo "build_copy.sh: -o $DIR is not empty" >&2; exit 2; }
fi

if [[ -n "$REV" ]]; then
  git -C "$ROOT" archive "$REV" | tar -x -C "$DIR"
else  # the working tree as it is, without build outputs, environments and run outputs
  tar -C "$ROOT" --exclude=./.git --exclude=./build --exclude='./.venv*' --exclude='*.so' --exclude=__pycache__ \
    --exclude=./runs --exclude=./device_logs -cf - . | tar -x -C "$DIR"
fi

echo "build_copy.sh: building ${REV:-the working tree} in $DIR${DEFS[*]:+ with ${DEFS[*]}} (log: $DIR/build.log)" >&2
( cd "$DIR" && NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:+$NVCC_APPEND_FLAGS }${DEFS[*]}" MAX_JOBS="${MAX_JOBS:-16}" \
    TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" "$PY" setup.py build_ext --inplace >build.log 2>&1 ) \
  || { tail -30 "$DIR/build.log" >&2; echo "build_copy.sh: the build failed (log: $DIR/build.log)" >&2; exit 1; }
# the copy's package must be the one PYTHONPATH=DIR imports (from a neutral folder: `python -c` and `python -m` put the
# current folder first, so run scripts by path from the repository root, e.g. python benchmarks/run_bench.py), with
# its CUDA kernels
cd "$DIR"
PYTHONPATH="$DIR" "$PY" -c '
import os, sys, prr_ext
where = os.path.dirname(os.path.dirname(os.path.abspath(prr_ext.__file__)))
if where != os.path.abspath(sys.argv[1]):
    sys.exit(f"build_copy.sh: PYTHONPATH={sys.argv[1]} imports prr_ext from {where}, not from the copy")
if not prr_ext.has_cuda_kernels():
    sys.exit("build_copy.sh: the copy built without its CUDA kernels (no nvcc, or torch without CUDA): see build.log")
' "$DIR" >&2
echo "$DIR"
