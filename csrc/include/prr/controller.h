// prr/controller.h — PRR's token-wise controller, in-kernel: features -> small MLP -> score s -> shaped confidence.
//
// The controller is tiny (<= 2 hidden layers of <= 64 units over 13 + F features, ~5k FMAs per token), so it runs
// inside the step kernel instead of as separate launches. The weights arrive as one flat fp32 buffer whose layout
// is fixed by prr_ext/controller.py::Controller.packed():
//   in_mean[in] | in_std[in] | w0^T[in][h1] | b0[h1] | (w1^T[h1][h2] | b1[h2]) | w_out[h_last] | b_out | log t_max |
//   log t_min
// The weight matrices are stored transposed (input-major), so that a warp computing one hidden unit per lane reads
// consecutive words at each step (unit-major rows of 32 or 64 floats would put every lane on the same
// shared-memory bank: a 32-way conflict per load, ~4k cycles for a 32 x 32 layer).
// The math is written per output unit (dense_unit) and per feature (token_feature) so the CPU loops over them and
// the CUDA kernel spreads them over lanes; both call the same functions. The Python twin is
// prr_ext/controller.py::Controller.scores.
#pragma once

#include <cmath>
#include <cstdint>

#include "params.h"

namespace prr {

struct MlpLayout {
  int in, h1, h2;
  int64_t mean, std_, w0, b0, w1, b1, wout, bout, logt;

  PRR_HD static MlpLayout make(int in, int h1, int h2) {
    MlpLayout L;
    L.in = in;
    L.h1 = h1;
    L.h2 = h2;
    int64_t o = 0;
    L.mean = o;
    o += in;
    L.std_ = o;
    o += in;
    L.w0 = o;
    o += int64_t(h1) * in;
    L.b0 = o;
    o += h1;
    L.w1 = o;
    o += int64_t(h2) * h1;
    L.b1 = o;
    o += h2;
    L.wout = o;
    o += (h2 > 0 ? h2 : h1);
    L.bout = o;
    o += 1;
    L.logt = o;
    return L;
  }
  PRR_HD int64_t size() const { return logt + 2; }
};

PRR_HD float silu(float v) { return v / (1.0f + expf(-v)); }
PRR_HD float sigmoidf_(float v) { return 1.0f / (1.0f + expf(-v)); }

// Hidden unit u of a layer of `width` units over n inputs: silu(b + sum_k w^T[k][u] * x[k]), summed in index order.
PRR_HD float dense_unit(const float* wt, int width, int u, float b, const float* x, int n) {
  float acc = 0.0f;
  for (int k = 0; k < n; ++k) acc += wt[int64_t(k) * width + u] * x[k];
  return silu(acc + b);
}

// Normalise raw features in place: (f - mean) / std.
PRR_HD void normalize_feature(const float* buf, const MlpLayout& L, int k, float& f) {
  f = (f - buf[L.mean + k]) / buf[L.std_ + k];
}

// Final layer: s = sigmoid(b_out + sum_k w_out[k] * h[k]).
PRR_HD float output_unit(const float* buf, const MlpLayout& L, const float* h) {
  const int n = L.h2 > 0 ? L.h2 : L.h1;
  float acc = 0.0f;
  for (int k = 0; k < n; ++k) acc += buf[L.wout + k] * h[k];
  return sigmoidf_(acc + buf[L.bout]);
}

// Serial forward of one token (CPU, and a fallback on GPU): feats[in] (raw) -> s.
PRR_HD float mlp_forward(const float* buf, const MlpLayout& L, float* feats) {
  float h1[kMaxHidden], h2[kMaxHidden];
  for (int k = 0; k < L.in; ++k) normalize_feature(buf, L, k, feats[k]);
  for (int u = 0; u < L.h1; ++u) h1[u] = dense_unit(buf + L.w0, L.h1, u, buf[L.b0 + u], feats, L.in);
  if (L.h2 == 0) return output_unit(buf, L, h1);
  for (int u = 0; u < L.h2; ++u) h2[u] = dense_unit(buf + L.w1, L.h2, u, buf[L.b1 + u], h1, L.h1);
  return output_unit(buf, L, h2);
}

// Temperature map T(s) = t_max^(1 - s) * t_min^s.
PRR_HD float temperature_of(const float* buf, const MlpLayout& L, float s) {
  return expf((1.0f - s) * buf[L.logt] + s * buf[L.logt + 1]);
}

// "power" and "weighted" shaping of p = p(candidate) at T = 1 (the "temperature" shaping needs a pass over the row).
PRR_HD float shape_power(float p, float s, float alpha) { return powf(p, 1.0f - alpha * s); }
// Clamps written with comparisons so that a NaN score stays NaN (as torch.clamp; fmaxf/fminf would drop it).
PRR_HD float shape_weighted(float p, float s, float alpha) {
  const float excess = s - 0.5f < 0.0f ? 0.0f : s - 0.5f;
  const float v = p + alpha * excess * p * (1.0f - p);
  return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
}

// The per-row inputs of the 13 base features (order: prr_ext/controller.py BASE_FEATURES).
struct FeatureInputs {
  float row_len;           // true prompt length + G
  float masks_in_row;      // masks in the generation region before this step's commits
  float nfe, steps;        // forwards consumed by this row so far; total steps
  float block_start_true;  // true prompt length + block index * block_length
  float block_length, masks_in_block;
  float step_in_block, steps_per_block;
  float log_vocab;
};

// Feature k of one candidate (k < kNumBaseFeatures) as (a - b) / c: every feature has that form, with b = 0 and
// c = 1 where it has no subtraction or division (both exact), so a warp computes one feature per lane without
// divergence and the CPU gets the same bits by looping over k.
PRR_HD float token_feature(const FeatureInputs& in, int k, float position, float p1, float p2, float entropy,
                           float last_change, float prev_p1) {
  float a = prev_p1, b = 0.0f, c = 1.0f;                                        // 12: previous p1
  if (k == 0) a = in.row_len, b = in.masks_in_row, c = in.row_len;              // generated fraction
  if (k == 1) a = in.nfe, c = in.steps;                                         // NFE fraction
  if (k == 2) a = in.block_start_true, c = in.row_len;                          // block start
  if (k == 3) a = in.block_length, c = in.row_len;                              // block size
  if (k == 4) a = in.block_length, b = in.masks_in_block, c = in.block_length;  // block filled
  if (k == 5) a = position, c = in.block_length;                                // position in the block
  if (k == 6 || k == 7) a = in.step_in_block, c = in.steps_per_block;           // step ratio (twice)
  if (k == 8) a = p1;                                                           // top-1 probability
  if (k == 9) a = p1, b = p2;                                                   // margin
  if (k == 10) a = entropy, c = in.log_vocab;                                   // normalised entropy
  if (k == 11) a = in.step_in_block, b = last_change, c = in.steps_per_block;   // steps since the argmax changed
  return (a - b) / c;
}

// The 13 base features of one candidate.
PRR_HD void token_features(const FeatureInputs& in, float position, float p1, float p2, float entropy,
                           float last_change, float prev_p1, float* f) {
  for (int k = 0; k < kNumBaseFeatures; ++k)
    f[k] = token_feature(in, k, position, p1, p2, entropy, last_change, prev_p1);
}

}  // namespace prr
