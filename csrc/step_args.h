// step_args.h — the op's arguments, and every check on them that the CPU and CUDA backends share.
//
// The argument list is written here once in C++ (StepArgs and step_entry, in the order of the schema in
// csrc/prr_ops.cpp); a backend is a function of `const StepArgs&` registered as step_entry<its function>.
// make_step_params checks the arguments and fills the torch-free prr::StepParams the kernels read. The Python wrapper
// (prr_ext/ops.py) raises friendlier errors first; these checks guard direct callers of torch.ops.prr_ext.step, so
// that bad input is a clean exception, never a crash or an out-of-bounds read, on either backend.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cstdio>
#include <initializer_list>
#include <string>
#include <tuple>
#include <type_traits>

#include "prr/params.h"

namespace prr_ext {

// Error messages: one std::string, concatenated here (std::to_string, snprintf), passed to TORCH_CHECK as its only
// argument. c10's multi-argument messages format through std::ostringstream, and on one toolchain (g++ from
// /opt/gcc on the device machines) the stream code inside this library crashed while printing a shape, turning a
// bad argument into a segmentation fault; a single std::string message never touches a stream.
namespace detail {
inline void append(std::string& s, const char* v) { s += v; }
inline void append(std::string& s, const std::string& v) { s += v; }
inline void append(std::string& s, at::ScalarType v) { s += c10::toString(v); }
inline void append(std::string& s, const c10::Device& v) { s += v.str(); }
inline void append(std::string& s, at::IntArrayRef v) {
  s += '[';
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  s += ']';
}
inline void append(std::string& s, double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  s += buf;
}
template <class T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int> = 0>
inline void append(std::string& s, T v) { s += std::to_string(v); }
}  // namespace detail

template <class... Args>
std::string msg(const Args&... args) {
  std::string s;
  (detail::append(s, args), ...);
  return s;
}

// The op's arguments, in schema order (csrc/prr_ops.cpp). References into the dispatcher's stack: valid for the
// duration of one call.
struct StepArgs {
  const at::Tensor& logits;
  at::Tensor& x;
  at::Tensor& row_state;
  at::Tensor& traj;
  at::Tensor& prev_p1;
  at::Tensor& workspace;
  at::Tensor& rule_state;
  at::Tensor& prev_logp;
  const at::Tensor& seed;
  const at::Tensor& prompt_lens;
  const c10::optional<at::Tensor>& controller;
  const c10::optional<at::Tensor>& scores;
  const c10::optional<at::Tensor>& extra_features;
  const c10::optional<at::Tensor>& candidates;
  const c10::optional<at::Tensor>& random_conf;
  int64_t mask_id, gen_start, block_length, steps, policy, confidence_dtype, shaping;
  bool union_schedule;
  double temperature, param, alpha;
  at::IntArrayRef mlp_dims;
  at::ArrayRef<double> rule_params;
};

// (commit_mask [B, L] bool, tokens [B, Lr] int64, stats [B, Lr, kNumStats] float32)
using StepOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// The kernel function a backend registers: TORCH_LIBRARY_IMPL(prr_ext, CPU, m) { m.impl("step", &step_entry<step_cpu>); }
template <StepOutputs (*Run)(const StepArgs&)>
StepOutputs step_entry(const at::Tensor& logits, at::Tensor& x, at::Tensor& row_state, at::Tensor& traj,
                       at::Tensor& prev_p1, at::Tensor& workspace, at::Tensor& rule_state, at::Tensor& prev_logp,
                       const at::Tensor& seed,
                       const at::Tensor& prompt_lens, const c10::optional<at::Tensor>& controller,
                       const c10::optional<at::Tensor>& scores, const c10::optional<at::Tensor>& extra_features,
                       const c10::optional<at::Tensor>& candidates, const c10::optional<at::Tensor>& random_conf,
                       int64_t mask_id, int64_t gen_start, int64_t block_length, int64_t steps, int64_t policy,
                       int64_t confidence_dtype, int64_t shaping, bool union_schedule, double temperature,
                       double param, double alpha, at::IntArrayRef mlp_dims, at::ArrayRef<double> rule_params) {
  return Run(StepArgs{logits, x, row_state, traj, prev_p1, workspace, rule_state, prev_logp, seed, prompt_lens,
                      controller, scores, extra_features, candidates, random_conf, mask_id, gen_start, block_length,
                      steps, policy, confidence_dtype, shaping, union_schedule, temperature, param, alpha, mlp_dims,
                      rule_params});
}

// Checks the arguments (shapes, dtypes, devices, codes, the controller buffer's size) and fills StepParams; defined
// in step_args.cpp, compiled once for both backends.
prr::StepParams make_step_params(const StepArgs& a);

}  // namespace prr_ext
