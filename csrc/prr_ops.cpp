// prr_ops.cpp — the op schema, defined once for every backend, and the Python module `prr_ext._C`.
//
// The step mutates the canvas and the state tensors in place (declared with (a!)...(e!)) and returns fresh
// outputs only, so torch.compile / functionalization and CUDA graphs can reason about it. The argument order is
// mirrored by csrc/step_args.h (StepArgs, step_entry) and by prr_ext/ops.py (op_arguments). CPU and CUDA
// implementations register in csrc/cpu/step_cpu.cpp and csrc/cuda/step_cuda.cu; the fake (meta) implementation
// is registered from Python (prr_ext/ops.py).
#include <Python.h>
#include <torch/library.h>

#include "prr/params.h"
#include "prr/rules.h"

#include "cuda/launch_shape.h"  // plain C++: the launch shape is a pure function, testable without CUDA

TORCH_LIBRARY(prr_ext, m) {
  m.def(
      "step(Tensor logits, Tensor(a!) x, Tensor(b!) row_state, Tensor(c!) traj, Tensor(d!) prev_p1, "
      "Tensor(e!) workspace, Tensor(f!) rule_state, Tensor(g!) prev_logp, Tensor seed, Tensor prompt_lens, "
      "Tensor? controller, Tensor? scores, Tensor? extra_features, Tensor? candidates, Tensor? random_conf, "
      "int mask_id, int gen_start, int block_length, int steps, int policy, int confidence_dtype, int shaping, "
      "bool union_schedule, float temperature, float param, float alpha, int[] mlp_dims, float[] rule_params) -> "
      "(Tensor commit_mask, Tensor tokens, Tensor stats)");
}

// The ops are reached through torch.ops.prr_ext (importing the module runs the static registrations above; no
// pybind11, which keeps the build light). The module itself exposes the compiled values of the constants that
// prr_ext/constants.py mirrors, so that a test can check the two against each other, and the reload of the CUDA
// launcher's overrides.
namespace {

bool put(PyObject* dict, const char* name, long long value) {
  PyObject* v = PyLong_FromLongLong(value);
  if (v == nullptr) return false;
  const int rc = PyDict_SetItemString(dict, name, v);
  Py_DECREF(v);
  return rc == 0;
}

// constants() -> dict: name -> value, names as in prr_ext/constants.py.
PyObject* constants(PyObject*, PyObject*) {
  struct Entry {
    const char* name;
    long long value;
  };
  static const Entry kEntries[] = {
      {"POLICY_LOW_CONFIDENCE", prr::kLowConfidence}, {"POLICY_RANDOM", prr::kRandomRemask},
      {"POLICY_THRESHOLD", prr::kThreshold},          {"POLICY_FACTOR", prr::kFactor},
      {"POLICY_ENTROPY_BOUND", prr::kEntropyBound},   {"POLICY_PRR", prr::kPRR},
      {"SHAPING_TEMPERATURE", prr::kShapeTemperature}, {"SHAPING_POWER", prr::kShapePower},
      {"SHAPING_WEIGHTED", prr::kShapeWeighted},      {"CONF_FLOAT32", prr::kConfF32},
      {"CONF_FLOAT64", prr::kConfF64},                {"CONF_BFLOAT16", prr::kConfBF16},
      {"CONF_FLOAT16", prr::kConfF16},                {"STAT_CONF", prr::kStatConf},
      {"STAT_P1", prr::kStatP1},                      {"STAT_P2", prr::kStatP2},
      {"STAT_ENTROPY", prr::kStatEntropy},            {"STAT_SCORE", prr::kStatScore},
      {"STAT_TEMPERATURE", prr::kStatTemperature},    {"STAT_KEY", prr::kStatKey},
      {"NUM_STATS", prr::kNumStats},                  {"RS_BLOCK", prr::kRsBlock},
      {"RS_STEP", prr::kRsStep},                      {"RS_SCHED_N", prr::kRsSchedN},
      {"RS_NFE", prr::kRsNfe},                        {"RS_COLS", prr::kRsCols},
      {"NUM_BASE_FEATURES", prr::kNumBaseFeatures},   {"MAX_HIDDEN", prr::kMaxHidden},
      {"MAX_FEATURES", prr::kMaxFeatures},           {"POLICY_LOCAL_LEAP", prr::kLocalLeap},
      {"POLICY_SLOW_FAST", prr::kSlowFast},           {"POLICY_KLASS", prr::kKLASS},
      {"FACTOR_PAPER", prr::kFactorPaper},            {"FACTOR_FAST_DLLM", prr::kFactorFastDllm},
      {"CLUSTER_OFF", prr::kClusterOff},              {"CLUSTER_CONFIDENCE", prr::kClusterConfidence},
      {"CLUSTER_MID", prr::kClusterMid},              {"CLUSTER_RANDOM", prr::kClusterRandom},
      {"TEMPORAL_LAST", prr::kTemporalLast},          {"TEMPORAL_AVE", prr::kTemporalAve},
      {"TEMPORAL_MAX", prr::kTemporalMax},            {"RP_FACTOR_VARIANT", prr::kRpFactorVariant},
      {"RP_RELAXED_TAU", prr::kRpRelaxedTau},         {"RP_RADIUS", prr::kRpRadius},
      {"RP_EXPLORE_STEPS", prr::kRpExploreSteps},     {"RP_SPAN_THRESHOLD", prr::kRpSpanThreshold},
      {"RP_STABILITY_WINDOW", prr::kRpStabilityWindow}, {"RP_STABILITY_STD", prr::kRpStabilityStd},
      {"RP_KL_THRESHOLD", prr::kRpKlThreshold},       {"RP_KL_HISTORY", prr::kRpKlHistory},
      {"RP_R2_WINDOW", prr::kRpR2Window},             {"RP_R2_WINDOW_UNMASKED", prr::kRpR2WindowUnmasked},
      {"RP_R2_SPATIAL_THRESHOLD", prr::kRpR2SpatialThreshold}, {"RP_R2_CLUSTER", prr::kRpR2Cluster},
      {"RP_R2_CLUSTER_SIZE", prr::kRpR2ClusterSize},  {"RP_R2_TEMPORAL_STEPS", prr::kRpR2TemporalSteps},
      {"RP_R2_TEMPORAL_THRESHOLD", prr::kRpR2TemporalThreshold}, {"RP_R2_TEMPORAL_EVAL", prr::kRpR2TemporalEval},
      {"NUM_RULE_PARAMS", prr::kNumRuleParams},       {"MAX_STABILITY_WINDOW", prr::kMaxStabilityWindow},
      {"MAX_R2_WINDOW", prr::kMaxR2Window},           {"MAX_RULE_INT", prr::kMaxRuleInt},
      {"RULE_STREAK_TOKEN", prr::kRsStreakToken},     {"RULE_STREAK_COUNT", prr::kRsStreakCount},
      {"RULE_STREAK_SUM", prr::kRsStreakSum},         {"RULE_STREAK_MAX", prr::kRsStreakMax},
      {"RULE_KL_COUNT", prr::kRsKlCount},             {"RULE_STATE_COLS", prr::kRuleStateCols},
      {"RS_SPAN_START", prr::kRsSpanStart},           {"RS_SPAN_END", prr::kRsSpanEnd},
      {"RS_EXPLORED", prr::kRsExplored},              {"RS_DETERMINED", prr::kRsDetermined},
      {"RS_NUM_ESTIMATES", prr::kRsNumEstimates},     {"RS_ESTIMATES", prr::kRsEstimates},
  };
  PyObject* d = PyDict_New();
  if (d == nullptr) return nullptr;
  for (const Entry& e : kEntries) {
    if (!put(d, e.name, e.value)) {
      Py_DECREF(d);
      return nullptr;
    }
  }
  return d;
}

// workspace_words(B, block_length) -> int: the State.workspace size the kernels need (prr/params.h).
PyObject* workspace_words(PyObject*, PyObject* args) {
  long long B = 0, block_length = 0;
  if (!PyArg_ParseTuple(args, "LL", &B, &block_length)) return nullptr;
  return PyLong_FromLongLong(prr::workspace_words(B, block_length));
}

// reload_launch_overrides(): re-read the CUDA launcher's PRR_CUDA_* overrides from the environment (docs/cuda.md),
// which the launcher otherwise reads once; a no-op in a build without the CUDA kernels.
PyObject* reload_launch_overrides(PyObject*, PyObject*) {
#ifdef PRR_EXT_WITH_CUDA
  prr::gpu::reload_launch_overrides();
#endif
  Py_RETURN_NONE;
}

// launch_shape(B, block_length, V, elem_bytes, policy, shaping, sms, max_threads) -> (cluster_size, threads,
// vectors_per_cta, tiles): the CUDA launcher's shape for one step, from the pure functions of launch_shape.h under
// the PRR_CUDA_* overrides now in the environment. Plain C++, so the launch shape is testable in every build; policy
// and shaping are prr/params.h's codes (prr_ext.constants).
PyObject* launch_shape(PyObject*, PyObject* args) {
  long long B = 0, block_length = 0, V = 0;
  int elem_bytes = 0, policy = 0, shaping = 0, sms = 0, max_threads = 0;
  if (!PyArg_ParseTuple(args, "LLLiiiii", &B, &block_length, &V, &elem_bytes, &policy, &shaping, &sms, &max_threads))
    return nullptr;
  if (B < 1 || block_length < 1 || V < 1 || sms < 1 || max_threads < 32 ||
      (elem_bytes != 2 && elem_bytes != 4 && elem_bytes != 8)) {
    PyErr_SetString(PyExc_ValueError,
                    "launch_shape: B, block_length, V and sms must be >= 1, max_threads >= 32 and elem_bytes 2, 4 "
                    "or 8");
    return nullptr;
  }
  prr::StepParams p{};
  p.B = B;
  p.block_length = block_length;
  p.V = V;
  p.policy = policy;
  p.shaping = shaping;
  const prr::gpu::DeviceInfo dev{sms, max_threads};
  const prr::gpu::LaunchShape s =
      prr::gpu::choose_launch_shape(p, 16 / elem_bytes, dev, prr::gpu::read_launch_overrides());
  return Py_BuildValue("(iiLi)", s.cluster_size, s.threads, static_cast<long long>(s.vectors_per_cta), s.tiles);
}

PyMethodDef kMethods[] = {
    {"constants", constants, METH_NOARGS, "The compiled values of the constants prr_ext/constants.py mirrors."},
    {"workspace_words", workspace_words, METH_VARARGS, "workspace_words(B, block_length): State.workspace size."},
    {"launch_shape", launch_shape, METH_VARARGS,
     "launch_shape(B, block_length, V, elem_bytes, policy, shaping, sms, max_threads): the CUDA launch shape "
     "(cluster_size, threads, vectors_per_cta, tiles) under the current PRR_CUDA_* overrides."},
    {"reload_launch_overrides", reload_launch_overrides, METH_NOARGS,
     "Re-read the PRR_CUDA_* launch overrides from the environment (a no-op without the CUDA kernels)."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, kMethods};
  return PyModule_Create(&module_def);
}
