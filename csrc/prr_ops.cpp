// prr_ops.cpp — the op schema, defined once for every backend, and the Python module stub.
//
// The step mutates the canvas and the state tensors in place (declared with (a!)...(e!)) and returns fresh
// outputs only, so torch.compile / functionalization and CUDA graphs can reason about it. CPU and CUDA
// implementations register in csrc/cpu/step_cpu.cpp and csrc/cuda/step_cuda.cu; the fake (meta) implementation
// is registered from Python (prr_ext/ops.py).
#include <Python.h>
#include <torch/library.h>

#ifdef PRR_EXT_WITH_CUDA
#include "cuda/launch_shape.h"
#endif

TORCH_LIBRARY(prr_ext, m) {
  m.def(
      "step(Tensor logits, Tensor(a!) x, Tensor(b!) row_state, Tensor(c!) traj, Tensor(d!) prev_p1, "
      "Tensor(e!) workspace, Tensor seed, Tensor prompt_lens, Tensor? controller, Tensor? scores, "
      "Tensor? extra_features, Tensor? candidates, Tensor? random_conf, int mask_id, int gen_start, "
      "int block_length, int steps, int policy, int confidence_dtype, int shaping, bool union_schedule, "
      "float temperature, float param, float alpha, int[] mlp_dims) -> (Tensor commit_mask, Tensor tokens, "
      "Tensor stats)");
}

// prr_ext._C.reload_launch_overrides(): re-read the CUDA launcher's PRR_CUDA_* overrides from the environment
// (docs/cuda.md), which the launcher otherwise reads once; a no-op in a build without the CUDA kernels.
static PyObject* reload_launch_overrides(PyObject*, PyObject*) {
#ifdef PRR_EXT_WITH_CUDA
  prr::gpu::reload_launch_overrides();
#endif
  Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"reload_launch_overrides", reload_launch_overrides, METH_NOARGS,
     "Re-read the PRR_CUDA_* launch overrides from the environment (a no-op without the CUDA kernels)."},
    {nullptr, nullptr, 0, nullptr},
};

// `import prr_ext._C` loads this library so that the static registrations above run; the ops are reached through
// torch.ops.prr_ext (no pybind11, which keeps the build light).
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
