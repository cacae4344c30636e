# scripts/device_setup.sh — sourced by the scripts/device_*.sh runs: repo root, $OUT, the machine's description,
# and an editable build of the extension with the CUDA kernels (sm_90), checked to have them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-$PWD/device_logs}"
mkdir -p "$OUT" runs
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c 'import torch,sys; print("torch", torch.__version__, "python", sys.version.split()[0])'
MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 python3 -m pip install --no-build-isolation --no-deps -q -e . >/tmp/build.log 2>&1 \
  || { tail -30 /tmp/build.log; exit 1; }
python3 -c 'import prr_ext; assert prr_ext.has_cuda_kernels()'
