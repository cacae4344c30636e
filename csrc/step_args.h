// step_args.h — argument checks and StepParams construction shared by the CPU and CUDA launchers.
//
// The Python wrapper (prr_ext/ops.py) already raises friendly errors; these checks guard direct callers of
// torch.ops.prr_ext.step so that bad input is a clean exception, never a crash or an out-of-bounds read.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include "prr/params.h"

namespace prr_ext {

inline void check_rows_input(const c10::optional<at::Tensor>& t, const char* name, const at::Tensor& logits,
                             at::ScalarType dtype, int64_t last_dim) {
  if (!t.has_value()) return;
  const auto& v = *t;
  TORCH_CHECK(v.scalar_type() == dtype, name, " must be ", dtype, ", got ", v.scalar_type());
  TORCH_CHECK(v.device() == logits.device(), name, " must be on ", logits.device());
  TORCH_CHECK(v.is_contiguous(), name, " must be contiguous");
  const bool shape_ok = last_dim < 0
                            ? (v.dim() == 2 && v.size(0) == logits.size(0) && v.size(1) == logits.size(1))
                            : (v.dim() == 3 && v.size(0) == logits.size(0) && v.size(1) == logits.size(1) &&
                               v.size(2) == last_dim);
  TORCH_CHECK(shape_ok, name, " has shape ", v.sizes(), ", which does not match logits ", logits.sizes());
}

inline prr::StepParams make_step_params(const at::Tensor& logits, const at::Tensor& x, const at::Tensor& row_state,
                                        const at::Tensor& traj, const at::Tensor& prev_p1,
                                        const at::Tensor& workspace, const at::Tensor& seed,
                                        const at::Tensor& prompt_lens, const c10::optional<at::Tensor>& controller,
                                        const c10::optional<at::Tensor>& scores,
                                        const c10::optional<at::Tensor>& extra_features,
                                        const c10::optional<at::Tensor>& candidates,
                                        const c10::optional<at::Tensor>& random_conf, int64_t mask_id,
                                        int64_t gen_start, int64_t block_length, int64_t steps, int64_t policy,
                                        int64_t confidence_dtype, int64_t shaping, bool union_schedule,
                                        double temperature, double param, double alpha, at::IntArrayRef mlp_dims) {
  TORCH_CHECK(logits.dim() == 3, "logits must be [B, L, V], got ", logits.sizes());
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kLong && x.is_contiguous(), "x must be a contiguous [B, L] int64");
  const auto dev = x.device();
  for (const at::Tensor* t : {&logits, &row_state, &traj, &prev_p1, &workspace, &seed, &prompt_lens})
    TORCH_CHECK(t->device() == dev, "all step tensors must be on ", dev, ", found one on ", t->device());
  const int64_t B = x.size(0), L = x.size(1), Lr = logits.size(1), V = logits.size(2);
  TORCH_CHECK(logits.size(0) == B, "logits batch ", logits.size(0), " != x batch ", B);
  TORCH_CHECK(logits.stride(2) == 1 || V == 1, "logits must have unit stride in the vocabulary dimension");
  TORCH_CHECK(block_length > 0 && gen_start >= 0 && gen_start < L, "invalid gen_start/block_length");
  const int64_t G = L - gen_start;
  TORCH_CHECK(G % block_length == 0, "block_length must divide the generation length");
  const int64_t nb = G / block_length;
  TORCH_CHECK(steps > 0 && steps % nb == 0, "steps must be a positive multiple of the number of blocks");
  TORCH_CHECK(Lr == L || Lr == block_length, "logits must cover the canvas (", L, ") or one block (", block_length,
              "), got ", Lr);
  TORCH_CHECK(mask_id >= 0 && mask_id < V, "mask_id ", mask_id, " must be < vocabulary size ", V);
  TORCH_CHECK(row_state.scalar_type() == at::kLong && row_state.is_contiguous() && row_state.dim() == 2 &&
                  row_state.size(0) == B && row_state.size(1) == prr::kRsCols,
              "row_state must be a contiguous [B, 4] int64");
  TORCH_CHECK(traj.scalar_type() == at::kLong && traj.is_contiguous() && traj.dim() == 3 && traj.size(0) == B &&
                  traj.size(1) == block_length && traj.size(2) == 2,
              "traj must be a contiguous [B, block_length, 2] int64");
  TORCH_CHECK(prev_p1.scalar_type() == at::kFloat && prev_p1.is_contiguous() && prev_p1.dim() == 2 &&
                  prev_p1.size(0) == B && prev_p1.size(1) == block_length,
              "prev_p1 must be a contiguous [B, block_length] float32");
  TORCH_CHECK(workspace.scalar_type() == at::kLong && workspace.is_contiguous() &&
                  workspace.numel() >= prr::workspace_words(B, block_length),
              "workspace must be a contiguous int64 tensor with >= 1 + B * (2 + 5 * block_length) = ",
              prr::workspace_words(B, block_length), " elements");
  TORCH_CHECK(seed.scalar_type() == at::kLong && seed.is_contiguous() && seed.numel() == B, "seed must be [B] int64");
  TORCH_CHECK(prompt_lens.scalar_type() == at::kLong && prompt_lens.is_contiguous() && prompt_lens.numel() == B,
              "prompt_lens must be [B] int64");
  TORCH_CHECK(policy >= prr::kLowConfidence && policy <= prr::kPRR, "unknown policy code ", policy);
  TORCH_CHECK(confidence_dtype >= prr::kConfF32 && confidence_dtype <= prr::kConfF16, "unknown confidence dtype");
  TORCH_CHECK(temperature >= 0.0 && std::isfinite(temperature), "temperature must be finite and >= 0");
  TORCH_CHECK(mlp_dims.size() == 3, "mlp_dims must be [in, h1, h2]");

  prr::StepParams p{};
  p.B = B;
  p.L = L;
  p.Lr = Lr;
  p.V = V;
  p.stride_b = logits.stride(0);
  p.stride_r = logits.stride(1);
  p.mask_id = mask_id;
  p.gen_start = gen_start;
  p.gen_length = G;
  p.block_length = block_length;
  p.num_blocks = nb;
  p.steps = steps;
  p.steps_per_block = steps / nb;
  p.policy = static_cast<int>(policy);
  p.conf_dtype = static_cast<int>(confidence_dtype);
  p.shaping = static_cast<int>(shaping);
  p.union_schedule = union_schedule;
  p.adaptive = policy >= prr::kThreshold;
  p.block_cap = (policy == prr::kPRR && !union_schedule) ? std::max(p.steps_per_block, block_length)
                                                          : p.steps_per_block;
  p.temperature = static_cast<float>(temperature);
  p.param = param;
  p.alpha = static_cast<float>(alpha);
  p.mlp_in = static_cast<int>(mlp_dims[0]);
  p.mlp_h1 = static_cast<int>(mlp_dims[1]);
  p.mlp_h2 = static_cast<int>(mlp_dims[2]);
  p.n_extra = 0;
  if (policy == prr::kPRR) {
    TORCH_CHECK(shaping >= prr::kShapeTemperature && shaping <= prr::kShapeWeighted, "unknown shaping code");
    if (!scores.has_value()) {
      TORCH_CHECK(controller.has_value(), "PRR needs a controller buffer or scores");
      TORCH_CHECK(p.mlp_in >= prr::kNumBaseFeatures && p.mlp_in <= prr::kMaxFeatures && p.mlp_h1 >= 1 &&
                      p.mlp_h1 <= prr::kMaxHidden && p.mlp_h2 >= 0 && p.mlp_h2 <= prr::kMaxHidden,
                  "controller dims out of range: ", mlp_dims);
      const auto& c = *controller;
      TORCH_CHECK(c.scalar_type() == at::kFloat && c.is_contiguous() && c.device() == dev,
                  "controller buffer must be contiguous float32 on ", dev);
      // layout size: see prr/controller.h MlpLayout
      const int64_t in = p.mlp_in, h1 = p.mlp_h1, h2 = p.mlp_h2;
      const int64_t need = 2 * in + h1 * in + h1 + h2 * h1 + h2 + (h2 > 0 ? h2 : h1) + 1 + 2;
      TORCH_CHECK(c.numel() == need, "controller buffer has ", c.numel(), " values, expected ", need);
      p.n_extra = p.mlp_in - prr::kNumBaseFeatures;
      if (p.n_extra > 0) TORCH_CHECK(extra_features.has_value(), "controller expects extra_features");
    }
  }
  check_rows_input(scores, "scores", logits, at::kFloat, -1);
  if (p.n_extra > 0) check_rows_input(extra_features, "extra_features", logits, at::kFloat, p.n_extra);
  check_rows_input(candidates, "candidates", logits, at::kLong, -1);
  check_rows_input(random_conf, "random_conf", logits, at::kFloat, -1);
  return p;
}

}  // namespace prr_ext
