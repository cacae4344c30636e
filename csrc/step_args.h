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

#include <initializer_list>
#include <tuple>

#include "prr/params.h"

namespace prr_ext {

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
