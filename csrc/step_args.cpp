// step_args.cpp — the argument checks of prr_ext::step shared by the CPU and CUDA backends (declared in step_args.h).
#include "step_args.h"

#include <algorithm>
#include <cmath>

#include "prr/controller.h"
#include "prr/rules.h"

namespace prr_ext {
namespace {

void check_rows_input(const c10::optional<at::Tensor>& t, const char* name, const at::Tensor& logits,
                      at::ScalarType dtype, int64_t last_dim) {
  if (!t.has_value()) return;
  const auto& v = *t;
  TORCH_CHECK(v.scalar_type() == dtype, msg(name, " must be ", dtype, ", got ", v.scalar_type()));
  TORCH_CHECK(v.device() == logits.device(), msg(name, " must be on ", logits.device()));
  TORCH_CHECK(v.is_contiguous(), msg(name, " must be contiguous"));
  const bool shape_ok = last_dim < 0
                            ? (v.dim() == 2 && v.size(0) == logits.size(0) && v.size(1) == logits.size(1))
                            : (v.dim() == 3 && v.size(0) == logits.size(0) && v.size(1) == logits.size(1) &&
                               v.size(2) == last_dim);
  TORCH_CHECK(shape_ok, msg(name, " has shape ", v.sizes(), ", which does not match logits ", logits.sizes()));
}

// rule_params into named fields, each checked as the Python policies check it (a direct caller gets a clear error).
prr::RuleParams read_rule_params(const StepArgs& a) {
  TORCH_CHECK(a.rule_params.size() == prr::kNumRuleParams,
              msg("rule_params must hold ", prr::kNumRuleParams, " values (prr_ext.Policy.rule_params()), got ",
                  a.rule_params.size()));
  const auto& rp = a.rule_params;
  const auto unit = [](double v) { return v >= 0.0 && v <= 1.0; };
  // (the upper bound keeps the casts below defined)
  const auto whole = [](double v, double lo) { return v >= lo && v <= prr::kMaxRuleInt && v == std::floor(v); };
  prr::RuleParams r{};
  r.factor_variant = prr::kFactorPaper;
  r.r2_window_unmasked = -1;
  r.r2_cluster_size = 2;
  switch (a.policy) {
    case prr::kFactor:
      TORCH_CHECK(rp[prr::kRpFactorVariant] == double(prr::kFactorPaper) ||
                      rp[prr::kRpFactorVariant] == double(prr::kFactorFastDllm),
                  msg("rule_params: unknown Factor variant ", rp[prr::kRpFactorVariant]));
      r.factor_variant = static_cast<int>(rp[prr::kRpFactorVariant]);
      break;
    case prr::kLocalLeap:
      TORCH_CHECK(unit(rp[prr::kRpRelaxedTau]) && rp[prr::kRpRelaxedTau] <= a.param,
                  msg("rule_params: LocalLeap relaxed_tau must lie in [0, tau], got ", rp[prr::kRpRelaxedTau]));
      TORCH_CHECK(whole(rp[prr::kRpRadius], 0),
                  msg("rule_params: LocalLeap radius must be an int in [0, ", prr::kMaxRuleInt, "]"));
      r.relaxed_tau = rp[prr::kRpRelaxedTau];
      r.radius = static_cast<int64_t>(rp[prr::kRpRadius]);
      break;
    case prr::kSlowFast:
      TORCH_CHECK(whole(rp[prr::kRpExploreSteps], 1),
                  msg("rule_params: SlowFast explore_steps must be an int in [1, ", prr::kMaxRuleInt, "]"));
      TORCH_CHECK(unit(rp[prr::kRpSpanThreshold]), "rule_params: SlowFast span_threshold must lie in [0, 1]");
      TORCH_CHECK(whole(rp[prr::kRpStabilityWindow], 1) && rp[prr::kRpStabilityWindow] <= prr::kMaxStabilityWindow,
                  msg("rule_params: SlowFast stability_window must be an int in [1, ", prr::kMaxStabilityWindow, "]"));
      TORCH_CHECK(std::isfinite(rp[prr::kRpStabilityStd]) && rp[prr::kRpStabilityStd] >= 0.0,
                  "rule_params: SlowFast stability_std must be finite and >= 0");
      r.explore_steps = static_cast<int64_t>(rp[prr::kRpExploreSteps]);
      r.span_threshold = rp[prr::kRpSpanThreshold];
      r.stability_window = static_cast<int64_t>(rp[prr::kRpStabilityWindow]);
      r.stability_std = rp[prr::kRpStabilityStd];
      break;
    case prr::kKLASS:
      TORCH_CHECK(std::isfinite(rp[prr::kRpKlThreshold]) && rp[prr::kRpKlThreshold] >= 0.0,
                  "rule_params: KLASS kl_threshold must be finite and >= 0");
      TORCH_CHECK(whole(rp[prr::kRpKlHistory], 1),
                  msg("rule_params: KLASS history must be an int in [1, ", prr::kMaxRuleInt, "]"));
      r.kl_threshold = rp[prr::kRpKlThreshold];
      r.kl_history = static_cast<int64_t>(rp[prr::kRpKlHistory]);
      break;
    default: break;
  }
  TORCH_CHECK(whole(rp[prr::kRpR2Window], 0) && rp[prr::kRpR2Window] <= prr::kMaxR2Window,
              msg("rule_params: R2 window must be an int in [0, ", prr::kMaxR2Window, "] (0: off)"));
  TORCH_CHECK(whole(rp[prr::kRpR2WindowUnmasked], -1),
              msg("rule_params: R2 window_unmasked must be an int in [-1, ", prr::kMaxRuleInt, "]"));
  TORCH_CHECK(unit(rp[prr::kRpR2SpatialThreshold]), "rule_params: R2 spatial_threshold must lie in [0, 1]");
  TORCH_CHECK(whole(rp[prr::kRpR2Cluster], 0) && rp[prr::kRpR2Cluster] <= double(prr::kClusterRandom),
              msg("rule_params: unknown R2 token_cluster code ", rp[prr::kRpR2Cluster]));
  TORCH_CHECK(whole(rp[prr::kRpR2ClusterSize], 2),
              msg("rule_params: R2 token_cluster_size must be an int in [2, ", prr::kMaxRuleInt, "]"));
  TORCH_CHECK(whole(rp[prr::kRpR2TemporalSteps], 0),
              msg("rule_params: R2 temporal_steps must be an int in [0, ", prr::kMaxRuleInt, "] (0: off)"));
  TORCH_CHECK(unit(rp[prr::kRpR2TemporalThreshold]), "rule_params: R2 temporal_threshold must lie in [0, 1]");
  TORCH_CHECK(whole(rp[prr::kRpR2TemporalEval], 0) && rp[prr::kRpR2TemporalEval] <= double(prr::kTemporalMax),
              msg("rule_params: unknown R2 temporal_eval code ", rp[prr::kRpR2TemporalEval]));
  r.r2_window = static_cast<int64_t>(rp[prr::kRpR2Window]);
  r.r2_window_unmasked = static_cast<int64_t>(rp[prr::kRpR2WindowUnmasked]);
  r.r2_spatial_threshold = rp[prr::kRpR2SpatialThreshold];
  r.r2_cluster = static_cast<int>(rp[prr::kRpR2Cluster]);
  r.r2_cluster_size = static_cast<int64_t>(rp[prr::kRpR2ClusterSize]);
  r.r2_temporal_steps = static_cast<int64_t>(rp[prr::kRpR2TemporalSteps]);
  r.r2_temporal_threshold = rp[prr::kRpR2TemporalThreshold];
  r.r2_temporal_eval = static_cast<int>(rp[prr::kRpR2TemporalEval]);
  return r;
}

}  // namespace

prr::StepParams make_step_params(const StepArgs& a) {
  TORCH_CHECK(a.logits.dim() == 3, msg("logits must be [B, L, V], got ", a.logits.sizes()));
  TORCH_CHECK(a.x.dim() == 2 && a.x.scalar_type() == at::kLong && a.x.is_contiguous(),
              "x must be a contiguous [B, L] int64");
  const auto dev = a.x.device();
  const std::initializer_list<const at::Tensor*> state_tensors = {
      &a.logits, &a.row_state, &a.traj, &a.prev_p1, &a.workspace, &a.rule_state, &a.prev_logp, &a.seed, &a.prompt_lens};
  for (const at::Tensor* t : state_tensors)
    TORCH_CHECK(t->device() == dev, msg("all step tensors must be on ", dev, ", found one on ", t->device()));
  const int64_t B = a.x.size(0), L = a.x.size(1), Lr = a.logits.size(1), V = a.logits.size(2);
  TORCH_CHECK(a.logits.size(0) == B, msg("logits batch ", a.logits.size(0), " != x batch ", B));
  TORCH_CHECK(a.logits.stride(2) == 1 || V == 1, "logits must have unit stride in the vocabulary dimension");
  TORCH_CHECK(a.block_length > 0 && a.gen_start >= 0 && a.gen_start < L, "invalid gen_start/block_length");
  const int64_t G = L - a.gen_start;
  TORCH_CHECK(G % a.block_length == 0, "block_length must divide the generation length");
  const int64_t nb = G / a.block_length;
  TORCH_CHECK(a.steps > 0 && a.steps % nb == 0, "steps must be a positive multiple of the number of blocks");
  TORCH_CHECK(Lr == L || Lr == a.block_length,
              msg("logits must cover the canvas (", L, ") or one block (", a.block_length, "), got ", Lr));
  TORCH_CHECK(a.mask_id >= -1 && a.mask_id < V,
              msg("mask_id ", a.mask_id, " must be < vocabulary size ", V, " (or -1: a uniform canvas)"));
  TORCH_CHECK(a.row_state.scalar_type() == at::kLong && a.row_state.is_contiguous() && a.row_state.dim() == 2 &&
                  a.row_state.size(0) == B && a.row_state.size(1) == prr::kRsCols,
              msg("row_state must be a contiguous [B, ", prr::kRsCols, "] int64 (prr_ext.State allocates it)"));
  TORCH_CHECK(a.traj.scalar_type() == at::kLong && a.traj.is_contiguous() && a.traj.dim() == 3 && a.traj.size(0) == B &&
                  a.traj.size(1) == a.block_length && a.traj.size(2) == 2,
              "traj must be a contiguous [B, block_length, 2] int64");
  TORCH_CHECK(a.prev_p1.scalar_type() == at::kFloat && a.prev_p1.is_contiguous() && a.prev_p1.dim() == 2 &&
                  a.prev_p1.size(0) == B && a.prev_p1.size(1) == a.block_length,
              "prev_p1 must be a contiguous [B, block_length] float32");
  TORCH_CHECK(a.workspace.scalar_type() == at::kLong && a.workspace.is_contiguous() &&
                  a.workspace.numel() >= prr::workspace_words(B, a.block_length),
              msg("workspace must be a contiguous int64 tensor with >= workspace_words(B, block_length) = ",
                  prr::workspace_words(B, a.block_length), " elements (prr_ext.State allocates it)"));
  TORCH_CHECK(a.seed.scalar_type() == at::kLong && a.seed.is_contiguous() && a.seed.numel() == B, "seed must be [B] int64");
  TORCH_CHECK(a.prompt_lens.scalar_type() == at::kLong && a.prompt_lens.is_contiguous() && a.prompt_lens.numel() == B,
              "prompt_lens must be [B] int64");
  TORCH_CHECK(a.rule_state.scalar_type() == at::kDouble && a.rule_state.is_contiguous() && a.rule_state.dim() == 3 &&
                  a.rule_state.size(0) == B && a.rule_state.size(1) == a.block_length &&
                  a.rule_state.size(2) == prr::kRuleStateCols,
              msg("rule_state must be a contiguous [B, block_length, ", prr::kRuleStateCols,
                  "] float64 (prr_ext.State allocates it)"));
  TORCH_CHECK(a.policy >= prr::kLowConfidence && a.policy <= prr::kKLASS, msg("unknown policy code ", a.policy));
  if (a.policy == prr::kKLASS)
    TORCH_CHECK(a.prev_logp.scalar_type() == at::kFloat && a.prev_logp.is_contiguous() && a.prev_logp.dim() == 3 &&
                    a.prev_logp.size(0) == B && a.prev_logp.size(1) == a.block_length && a.prev_logp.size(2) == V,
                "KLASS needs prev_logp, a contiguous [B, block_length, V] float32 (prr_ext.step allocates it)");
  TORCH_CHECK(a.confidence_dtype >= prr::kConfF32 && a.confidence_dtype <= prr::kConfF16, "unknown confidence dtype");
  TORCH_CHECK(a.temperature >= 0.0 && std::isfinite(a.temperature), "temperature must be finite and >= 0");
  TORCH_CHECK(a.mlp_dims.size() == 3, "mlp_dims must be [in, h1, h2]");

  prr::StepParams p{};
  p.B = B;
  p.L = L;
  p.Lr = Lr;
  p.V = V;
  p.stride_b = a.logits.stride(0);
  p.stride_r = a.logits.stride(1);
  p.mask_id = a.mask_id;
  p.gen_start = a.gen_start;
  p.gen_length = G;
  p.block_length = a.block_length;
  p.num_blocks = nb;
  p.steps = a.steps;
  p.steps_per_block = a.steps / nb;
  p.policy = static_cast<int>(a.policy);
  p.conf_dtype = static_cast<int>(a.confidence_dtype);
  p.shaping = static_cast<int>(a.shaping);
  p.union_schedule = a.union_schedule;
  p.rule = read_rule_params(a);
  p.r2 = p.rule.r2_window > 0 || p.rule.r2_cluster != prr::kClusterOff || p.rule.r2_temporal_steps > 0;
  p.needs_rules = p.r2 || a.policy >= prr::kLocalLeap;
  p.uniform = a.mask_id < 0;
  if (p.uniform)
    TORCH_CHECK(!p.r2 && (a.policy == prr::kThreshold || a.policy == prr::kFactor || a.policy == prr::kEntropyBound ||
                          a.policy == prr::kPRR || a.policy == prr::kLocalLeap),
                msg("a uniform canvas (mask_id -1) takes Threshold, Factor, EntropyBound, PRR or LocalLeap, got "
                    "policy ", a.policy));
  // a uniform canvas never empties: its blocks last exactly their steps
  p.adaptive = !p.uniform && (a.policy >= prr::kThreshold || p.r2);
  // the rules that may commit fewer than the schedule's k_i take up to one step per position
  const bool below_schedule = (a.policy == prr::kPRR && !a.union_schedule) || a.policy == prr::kSlowFast ||
                              a.policy == prr::kKLASS;
  p.block_cap = below_schedule && !p.uniform ? std::max(p.steps_per_block, a.block_length) : p.steps_per_block;
  p.temperature = static_cast<float>(a.temperature);
  p.param = a.param;
  p.alpha = static_cast<float>(a.alpha);
  p.mlp_in = static_cast<int>(a.mlp_dims[0]);
  p.mlp_h1 = static_cast<int>(a.mlp_dims[1]);
  p.mlp_h2 = static_cast<int>(a.mlp_dims[2]);
  p.n_extra = 0;
  if (a.policy == prr::kPRR) {
    TORCH_CHECK(a.shaping >= prr::kShapeTemperature && a.shaping <= prr::kShapeWeighted, "unknown shaping code");
    const bool runs_mlp = !a.scores.has_value();
    TORCH_CHECK(!runs_mlp || a.controller.has_value(), "PRR needs a controller buffer or scores");
    // Temperature shaping reads the controller's temperature map also when external scores replace its MLP.
    TORCH_CHECK(a.controller.has_value() || a.shaping != prr::kShapeTemperature,
                "PRR temperature shaping needs the controller buffer (its temperature map) also with scores: pass "
                "controller, or use shaping power / weighted");
    if (runs_mlp || a.shaping == prr::kShapeTemperature) {  // the kernels read the buffer through its layout
      TORCH_CHECK(p.mlp_in >= prr::kNumBaseFeatures && p.mlp_in <= prr::kMaxFeatures && p.mlp_h1 >= 1 &&
                      p.mlp_h1 <= prr::kMaxHidden && p.mlp_h2 >= 0 && p.mlp_h2 <= prr::kMaxHidden,
                  msg("controller dims out of range: ", a.mlp_dims));
      const auto& c = *a.controller;
      TORCH_CHECK(c.scalar_type() == at::kFloat && c.is_contiguous() && c.device() == dev,
                  msg("controller buffer must be contiguous float32 on ", dev));
      const int64_t need = prr::MlpLayout::make(p.mlp_in, p.mlp_h1, p.mlp_h2).size();
      TORCH_CHECK(c.numel() == need, msg("controller buffer has ", c.numel(), " values, expected ", need));
    }
    if (runs_mlp) {
      p.n_extra = p.mlp_in - prr::kNumBaseFeatures;
      if (p.n_extra > 0) TORCH_CHECK(a.extra_features.has_value(), "controller expects extra_features");
    }
  }
  check_rows_input(a.scores, "scores", a.logits, at::kFloat, -1);
  if (p.n_extra > 0) check_rows_input(a.extra_features, "extra_features", a.logits, at::kFloat, p.n_extra);
  check_rows_input(a.candidates, "candidates", a.logits, at::kLong, -1);
  check_rows_input(a.random_conf, "random_conf", a.logits, at::kFloat, -1);
  return p;
}

}  // namespace prr_ext
