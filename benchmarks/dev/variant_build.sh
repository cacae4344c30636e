# benchmarks/dev/variant_build.sh — sourced by kernel_variants.sh and timeline.sh: build the extension from a variant
# of the CUDA kernel source, then put the source back.
#   variant_apply SPEC   SPEC "NAME=VALUE,NAME=VALUE": the current source with those #defines prepended;
#                        SPEC "@path/to/step_cuda.cu": another source in its place (an earlier version)
#   variant_build LABEL  pip install -e . (log in /tmp/build_LABEL.log; its tail on failure)
#   variant_restore      the source as it was when this file was sourced
VARIANT_SRC=csrc/cuda/step_cuda.cu
cp "$VARIANT_SRC" /tmp/step_cuda_orig.cu
variant_apply() {
  if [[ "$1" == @* ]]; then
    cp "${1#@}" "$VARIANT_SRC"
  else
    { for d in ${1//,/ }; do echo "#define ${d%%=*} ${d#*=}"; done; cat /tmp/step_cuda_orig.cu; } >"$VARIANT_SRC"
  fi
}
variant_build() { MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 python3 -m pip install --no-build-isolation --no-deps -e . \
  >"/tmp/build_$1.log" 2>&1 || { tail -30 "/tmp/build_$1.log"; return 1; }; }
variant_restore() { cp /tmp/step_cuda_orig.cu "$VARIANT_SRC"; }
