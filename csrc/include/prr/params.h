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

// Columns of row_state[b, :] (int64).
enum RowStateColumn : int { kRsBlock = 0, kRsStep = 1, kRsSchedN = 2, kRsNfe = 3, kRsCols = 4 };

constexpr int kNumBaseFeatures = 13;
constexpr int kMaxHidden = 64;
constexpr int kMaxFeatures = 64;  // base + extra features accepted in-kernel

struct StepParams {
  // shapes: logits [B, Lr, V] with strides (stride_b, stride_r, 1); canvas x [B, L]
  int64_t B, L, Lr, V;
  int64_t stride_b, stride_r;
  int64_t row_offset;  // logits row r <-> canvas column r + row_offset (0: full canvas; block start: block-only)
  // canvas layout and schedule
  int64_t mask_id, gen_start, gen_length, block_length, num_blocks, steps, steps_per_block, block_cap;
  // policy
  int policy, conf_dtype, shaping;
  bool union_schedule, adaptive;
  float temperature;  // sampling temperature; 0 = greedy
  double param;       // tau (Threshold, PRR), f (Factor) or gamma (EntropyBound)
  float alpha;        // PRR power / weighted strength
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
//   then five [B * block_length] arrays: candidate key (fp64 bits), candidate token, flags (1 masked | 2 usable),
//   sorted keys (fp64 bits), sorted block positions (the latter two only for block_length > the in-SMEM sort).
PRR_HD int64_t workspace_words(int64_t B, int64_t block_length) { return 1 + B * (2 + 5 * block_length); }

// LLaDA's per-block schedule: n masks over S steps, remainder front-loaded; 0 past the block's last step.
PRR_HD int64_t schedule_k(int64_t n, int64_t steps_per_block, int64_t i) {
  if (i >= steps_per_block) return 0;
  return n / steps_per_block + (i < n % steps_per_block ? 1 : 0);
}

}  // namespace prr
