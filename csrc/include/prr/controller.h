// prr/controller.h — PRR's token-wise controller, in-kernel: features -> small MLP -> score s -> shaped confidence.
//
// The controller is tiny (<= 2 hidden layers of <= 64 units over 13 + F features, ~5k FMAs per token), so it runs
// inside the step kernel instead of as separate launches. The weights arrive as one flat fp32 buffer whose layout
// is fixed by prr_ext/controller.py::Controller.packed():
//   in_mean[in] | in_std[in] | w0[h1][in] | b0[h1] | (w1[h2][h1] | b1[h2]) | w_out[h_last] | b_out | log t_max | log t_min
// The math is written per output unit (dense_unit) so the CPU loops over units and the CUDA kernel spreads them
// over lanes; both call the same function. The Python twin is prr_ext/controller.py::Controller.scores.
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

// One hidden unit: silu(b + sum_k w[k] * x[k]), summed in index order.
PRR_HD float dense_unit(const float* w, float b, const float* x, int n) {
  float acc = 0.0f;
  for (int k = 0; k < n; ++k) acc += w[k] * x[k];
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
  for (int u = 0; u < L.h1; ++u) h1[u] = dense_unit(buf + L.w0 + int64_t(u) * L.in, buf[L.b0 + u], feats, L.in);
  if (L.h2 == 0) return output_unit(buf, L, h1);
  for (int u = 0; u < L.h2; ++u) h2[u] = dense_unit(buf + L.w1 + int64_t(u) * L.h1, buf[L.b1 + u], h1, L.h1);
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

// The 13 base features of one candidate (order: prr_ext/controller.py BASE_FEATURES).
struct FeatureInputs {
  float row_len;           // true prompt length + G
  float masks_in_row;      // masks in the generation region before this step's commits
  float nfe, steps;        // forwards consumed by this row so far; total steps
  float block_start_true;  // true prompt length + block index * block_length
  float block_length, masks_in_block;
  float step_in_block, steps_per_block;
  float log_vocab;
};

PRR_HD void token_features(const FeatureInputs& in, float position, float p1, float p2, float entropy,
                           float last_change, float prev_p1, float* f) {
  const float step_ratio = in.step_in_block / in.steps_per_block;
  f[0] = (in.row_len - in.masks_in_row) / in.row_len;
  f[1] = in.nfe / in.steps;
  f[2] = in.block_start_true / in.row_len;
  f[3] = in.block_length / in.row_len;
  f[4] = (in.block_length - in.masks_in_block) / in.block_length;
  f[5] = position / in.block_length;
  f[6] = step_ratio;
  f[7] = step_ratio;
  f[8] = p1;
  f[9] = p1 - p2;
  f[10] = entropy / in.log_vocab;
  f[11] = (in.step_in_block - last_change) / in.steps_per_block;
  f[12] = prev_p1;
}

}  // namespace prr
