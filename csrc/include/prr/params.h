// prr/params.h — the plain-old-data description of one prr_ext.step call, shared by the CPU and CUDA kernels.
//
// Torch-free: the launchers (csrc/cpu, csrc/cuda) fill StepParams from the op's arguments; the kernels read it.
// The integer codes mirror prr_ext/policies.py, prr_ext/state.py and prr_ext/reference.py.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PRR_HD __host__ __device__ __forceinline__
#else
#define PRR_HD inline
#endif

namespace prr {

enum PolicyCode : int {
  kLowConfidence = 0,  // LLaDA low_confidence: exact top-k_i
  kRandomRemask = 1,   // LLaDA random: top-k_i by a uniform key
  kThreshold = 2,      // Fast-dLLM: conf >= tau, at least max(k_i, 1)
  kFactor = 3,         // Fast-dLLM factor rule
  kEntropyBound = 4,   // EB-Sampler
  kPRR = 5,            // learned controller + shaped confidence >= tau
  kLocalLeap = 6,      // LocalLeap: anchors at conf >= tau, a relaxed threshold within a radius of an anchor
  kSlowFast = 7,       // SlowFast: exploration steps estimate a stable span, then the span fills fast
  kKLASS = 8,          // KLASS: conf > c and the KL between consecutive steps < kappa for H steps
};

// Variants of the Factor rule (rule_params[kRpFactorVariant]).
enum FactorVariant : int {
  kFactorPaper = 0,     // the largest prefix with (m + 1)(1 - c_m) < f for every m
  kFactorFastDllm = 1,  // Fast-dLLM's get_transfer_index_dynamic: one more at the edges (prr/select.h)
};

// R²-dLLM's token-cluster choice and temporal aggregate (rule_params[kRpR2Cluster], [kRpR2TemporalEval]).
enum ClusterChoice : int { kClusterOff = 0, kClusterConfidence = 1, kClusterMid = 2, kClusterRandom = 3 };
enum TemporalEval : int { kTemporalLast = 0, kTemporalAve = 1, kTemporalMax = 2 };

// The op's rule_params list: the hyper-parameters of the newer rules beyond `param`, by index. The first four belong
// to the base rule (Factor, LocalLeap, SlowFast, KLASS); the rest are R²-dLLM's passes, which run on top of any
// base rule. Python twin: prr_ext/constants.py RP_*; prr_ext/policies.py fills the list.
enum RuleParam : int {
  kRpFactorVariant = 0,       // Factor: FactorVariant
  kRpRelaxedTau = 0,          // LocalLeap: relaxed threshold near an anchor (param: tau)
  kRpRadius = 1,              // LocalLeap: neighbourhood radius (block positions)
  kRpExploreSteps = 0,        // SlowFast: exploration steps per sub-cycle (param: fill threshold)
  kRpSpanThreshold = 1,       // SlowFast: confidence that extends the span estimate
  kRpStabilityWindow = 2,     // SlowFast: span estimates compared (1 .. kMaxStabilityWindow)
  kRpStabilityStd = 3,        // SlowFast: population std below which the span is determined
  kRpKlThreshold = 0,         // KLASS: kappa (param: conf threshold)
  kRpKlHistory = 1,           // KLASS: H, steps the KL must stay below kappa
  kRpR2Window = 4,            // R²: spatial window size W (0: the pass is off)
  kRpR2WindowUnmasked = 5,    // R²: most unmasked tokens in a window (-1: no limit)
  kRpR2SpatialThreshold = 6,  // R²: window mean confidence >= it; cluster max confidence > it
  kRpR2Cluster = 7,           // R²: ClusterChoice
  kRpR2ClusterSize = 8,       // R²: minimum run length of a token cluster
  kRpR2TemporalSteps = 9,     // R²: streak length S (0: the pass is off)
  kRpR2TemporalThreshold = 10,  // R²: aggregate >= it (compared in fp32)
  kRpR2TemporalEval = 11,     // R²: TemporalEval
  kNumRuleParams = 12,
};
constexpr int kMaxStabilityWindow = 8;
// The largest integer rule parameter: they travel as doubles, and a cast of a double past int64's range is undefined.
constexpr int kMaxRuleInt = 2147483647;

// Columns of State.rule_state[b, j, :] (float64), per block position; reset when a sequence enters a block.
enum RuleStateColumn : int {
  kRsStreakToken = 0,  // R² temporal: the top-1 of the running streak (-1: none)
  kRsStreakCount = 1,  // R² temporal: its length in steps
  kRsStreakSum = 2,    // R² temporal: fp32 sum of its top-1 probabilities
  kRsStreakMax = 3,    // R² temporal: fp32 max of them
  kRsKlCount = 4,      // KLASS: consecutive steps with KL < kappa (-1: no distribution kept for the position)
  kRuleStateCols = 5,
};

enum ShapingCode : int { kShapeTemperature = 0, kShapePower = 1, kShapeWeighted = 2 };

// Dtype of the softmax behind the confidence; bf16/fp16 round an fp32 softmax, fp64 computes in double.
enum ConfDtype : int { kConfF32 = 0, kConfF64 = 1, kConfBF16 = 2, kConfF16 = 3 };

// Columns of the per-token statistics output stats[b, r, :].
enum StatColumn : int {
  kStatConf = 0,         // p(candidate) at T = 1 in the confidence dtype (stored as fp32)
  kStatP1 = 1,           // p(argmax) (fp32)
  kStatP2 = 2,           // p(second-best non-mask token)
  kStatEntropy = 3,      // -sum p log p (nats)
  kStatScore = 4,        // PRR stability score s (NaN for other policies)
  kStatTemperature = 5,  // PRR temperature T(s) (NaN for other policies)
  kStatKey = 6,          // the selection key the policy ranked by
  kNumStats = 7,
};

// Columns of row_state[b, :] (int64): the counters of every rule, then SlowFast's sub-cycle (reset on entering a
// block): the span [start, end) in block positions, the exploration steps taken, whether the span is determined, and
// the last span estimates (a window of up to kMaxStabilityWindow).
enum RowStateColumn : int {
  kRsBlock = 0,
  kRsStep = 1,
  kRsSchedN = 2,
  kRsNfe = 3,
  kRsSpanStart = 4,
  kRsSpanEnd = 5,
  kRsExplored = 6,
  kRsDetermined = 7,
  kRsNumEstimates = 8,
  kRsEstimates = 9,  // kMaxStabilityWindow columns
  kRsCols = kRsEstimates + kMaxStabilityWindow,
};

constexpr int kNumBaseFeatures = 13;
constexpr int kMaxHidden = 64;
constexpr int kMaxFeatures = 64;  // base + extra features accepted in-kernel

// rule_params, read once (make_step_params) into named fields.
struct RuleParams {
  int factor_variant;
  double relaxed_tau;
  int64_t radius;
  int64_t explore_steps, stability_window;
  double span_threshold, stability_std;
  double kl_threshold;
  int64_t kl_history;
  int64_t r2_window, r2_window_unmasked;  // window 0: off; unmasked -1: no limit
  double r2_spatial_threshold;
  int r2_cluster;
  int64_t r2_cluster_size;
  int64_t r2_temporal_steps;  // 0: off
  double r2_temporal_threshold;
  int r2_temporal_eval;
};

struct StepParams {
  // shapes: logits [B, Lr, V] with strides (stride_b, stride_r, 1); canvas x [B, L]
  int64_t B, L, Lr, V;
  int64_t stride_b, stride_r;
  int64_t row_offset;  // logits row r <-> canvas column r + row_offset (0: full canvas; block start: block-only)
  // canvas layout and schedule
  int64_t mask_id, gen_start, gen_length, block_length, num_blocks, steps, steps_per_block, block_cap;
  bool uniform;  // a uniform canvas (mask_id < 0): no mask token, every block position is open at every step
  // policy
  int policy, conf_dtype, shaping;
  bool union_schedule, adaptive;
  float temperature;  // sampling temperature; 0 = greedy
  double param;       // tau (Threshold, PRR), f (Factor) or gamma (EntropyBound)
  float alpha;        // PRR power / weighted strength
  RuleParams rule;    // the newer rules' hyper-parameters (rule_params)
  bool r2;            // any R² pass is on
  bool needs_rules;   // the selection runs prr/rules.h (LocalLeap, SlowFast, KLASS, R²)
  // controller MLP: in = 13 + n_extra features, h1 (and h2 if > 0) hidden units
  int mlp_in, mlp_h1, mlp_h2, n_extra;
};

// PRR with temperature shaping: the one policy whose key needs a second sweep over the row (sum exp((l - m) / T)).
PRR_HD bool temperature_shaped(const StepParams& p) { return p.policy == kPRR && p.shaping == kShapeTemperature; }

// Layout of State.workspace (int64 words): scratch of the CUDA kernel, left zeroed (counters) or overwritten before
// being read (the rest) by every launch. The CPU op only checks its size. prr_ext/state.py allocates
// workspace_words(B, block_length) words.
//   [0]                      grid counter: low 32 bits the row arrivals (B > 1), high 32 bits the rows claimed by a
//                            persistent one-CTA grid (csrc/cuda/step_kernel.cuh, claim_rows)
//   [1, 1 + B)               per-sequence arrival counters
//   [1 + B, 1 + 2B)          staged block index per sequence (B > 1)
//   then eight [B * block_length] arrays: candidate key (fp64 bits), candidate token, flags (1 masked | 2 usable),
//   sorted keys (fp64 bits), sorted block positions (the latter two only for block_length > the in-SMEM sort), and
//   for prr/rules.h: the candidate's confidence (fp64 bits), the argmax token, p(argmax) (fp32 bits).
PRR_HD int64_t workspace_words(int64_t B, int64_t block_length) { return 1 + B * (2 + 8 * block_length); }

// LLaDA's per-block schedule: n masks over S steps, remainder front-loaded; 0 past the block's last step.
PRR_HD int64_t schedule_k(int64_t n, int64_t steps_per_block, int64_t i) {
  if (i >= steps_per_block) return 0;
  return n / steps_per_block + (i < n % steps_per_block ? 1 : 0);
}

// Whether a canvas token is open, i.e. a candidate of the step: it holds the mask token. A uniform canvas
// (DiffusionGemma: mask_id < 0) has no mask token; every position of the active block is open at every step, and
// the caller renoises what the step does not accept.
PRR_HD bool is_open(int64_t token, int64_t mask_id) { return mask_id < 0 || token == mask_id; }

// The k_i that the rules commit at least (LowConfidence: exactly) at step i of a block with n open positions. On a
// uniform canvas nothing stays committed, so no schedule spreads the block over the steps: k = 1, the best-ranked
// token, is every rule's floor.
PRR_HD int64_t step_k(const StepParams& p, int64_t n, int64_t i) {
  return p.uniform ? 1 : schedule_k(n, p.steps_per_block, i);
}

}  // namespace prr
