// prr/row_stats.h — one streaming pass over a logits row: everything a commit rule needs, without a second read.
//
// Per row we keep an online-softmax state (m, Z', S') plus the top-2 non-mask logits and, when sampling, the best
// Gumbel-perturbed score. From it, with Z = 1 + Z' (the "1" is one instance of the maximum):
//   p(token)  = exp(l_token - m) / Z            p(argmax) = 1 / Z when the argmax is also the overall maximum
//   entropy H = log1p(Z') - S' / Z              (S' = sum exp(l - m) (l - m); the max terms contribute 0)
// Keeping Z' apart from the max's own term makes log Z, 1 - p1 and small entropies accurate (no 1 + eps rounding).
// States merge associatively, so a row can be split across threads, warps, CTAs or CPU chunks in any fixed tree.
//
// Conventions (the spec is prr_ext/reference.py::token_statistics):
//  * the mask token never becomes the argmax, second-best or sampled candidate, but stays in Z and H;
//  * ties go to the lowest vocabulary index (as torch.argmax);
//  * a NaN or +Inf anywhere marks the row unusable ("bad"); -Inf entries are simply probability 0.
//
// Template parameters: C is the compute type of logits and exponentials (float, or double for fp64 confidence),
// A the accumulation type of Z' and S' (the CPU accumulates in double, the CUDA kernel in float over a fixed tree).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "params.h"

namespace prr {

PRR_HD float exp_c(float v) { return expf(v); }
PRR_HD double exp_c(double v) { return exp(v); }
PRR_HD float log1p_c(float v) { return log1pf(v); }
PRR_HD double log1p_c(double v) { return log1p(v); }

template <typename C>
PRR_HD C neg_inf() {
  return -std::numeric_limits<C>::infinity();
}

constexpr int64_t kNoIndex = INT64_MAX;

template <typename C, typename A>
struct RowStats {
  C m;         // max over all logits (the softmax shift)
  A zrest;     // sum of exp(l - m) over all logits but one instance of the max
  A srest;     // sum of exp(l - m) * (l - m) over the same
  C c1;        // best non-mask logit
  int64_t i1;  // its first index
  C c2;        // best non-mask logit other than index i1
  float gbest;  // best Gumbel-perturbed score (sampling only)
  int64_t gidx;  // its index
  bool bad;     // a NaN or +Inf was seen

  PRR_HD void init() {
    m = c1 = c2 = neg_inf<C>();
    zrest = srest = A(0);
    i1 = gidx = kNoIndex;
    gbest = -std::numeric_limits<float>::infinity();
    bad = false;
  }

  // Add logit l of vocabulary index idx (any order of idx; ties resolved by index).
  PRR_HD void push(C l, int64_t idx, bool is_mask) {
    if (!(l < std::numeric_limits<C>::infinity())) {  // NaN or +Inf
      bad = true;
      return;
    }
    if (l == neg_inf<C>()) return;  // probability 0; skipping avoids 0 * -inf
    if (l > m) {
      if (m != neg_inf<C>()) {  // the old maximum becomes an ordinary term
        const C d = m - l;
        const A a = A(exp_c(d));
        srest = a * (srest + A(d) * (A(1) + zrest));
        zrest = a * (A(1) + zrest);
      }
      m = l;
    } else {
      const C d = l - m;
      const A e = A(exp_c(d));
      zrest += e;
      srest += e * A(d);
    }
    if (!is_mask) push_candidate(l, idx);
  }

  PRR_HD void push_candidate(C l, int64_t idx) {
    if (l > c1 || (l == c1 && idx < i1)) {
      c2 = c1 > c2 ? c1 : c2;
      c1 = l;
      i1 = idx;
    } else if (l > c2) {
      c2 = l;
    }
  }

  PRR_HD void push_sample(float score, int64_t idx) {
    if (score > gbest || (score == gbest && idx < gidx)) {
      gbest = score;
      gidx = idx;
    }
  }

  // Merge another partial state into this one (associative; commutative up to rounding).
  PRR_HD void merge(const RowStats& o) {
    bad = bad || o.bad;
    if (o.m != neg_inf<C>()) {
      if (m == neg_inf<C>()) {
        m = o.m;
        zrest = o.zrest;
        srest = o.srest;
      } else {
        const bool self_high = m >= o.m;
        const C hi = self_high ? m : o.m;
        const C d = (self_high ? o.m : m) - hi;  // <= 0
        const A zl = self_high ? o.zrest : zrest, sl = self_high ? o.srest : srest;
        const A zh = self_high ? zrest : o.zrest, sh = self_high ? srest : o.srest;
        const A a = A(exp_c(d));
        zrest = zh + a * (A(1) + zl);
        srest = sh + a * (sl + A(d) * (A(1) + zl));
        m = hi;
      }
    }
    // top-2 of the non-mask logits
    if (o.c1 > c1 || (o.c1 == c1 && o.i1 < i1)) {
      c2 = c1 > o.c2 ? c1 : o.c2;
      c1 = o.c1;
      i1 = o.i1;
    } else {
      c2 = o.c1 > c2 ? o.c1 : c2;
    }
    push_sample(o.gbest, o.gidx);
  }

  PRR_HD bool usable() const { return !bad && c1 != neg_inf<C>(); }
  PRR_HD A z() const { return A(1) + zrest; }
  // p(token) for a token whose logit is l, in the compute type.
  PRR_HD C prob(C l) const { return C(A(exp_c(l - m)) / z()); }
  PRR_HD C entropy() const { return C(log1p_c(zrest) - srest / z()); }
};

// ---------------------------------------------------------------------------------------------------------------
// Register-tile variant (the CUDA kernel's per-thread pass; csrc/cuda/step_cuda.cu).
//
// A GPU thread holds a small tile of logits in registers and visits it a 16-byte vector at a time: the top-2 of the
// vector first (first index on ties, exactly as push()), whose running max is the shift m, then the exponential
// sums against m, rescaled only when m rises (once per vector, not per element). Every instance of the final maximum
// contributes exp(0) = 1 exactly, so the "rest" sum of RowStats (all terms but one instance of the max) is sum - 1.
// The result is a RowStats that merge() combines with other tiles, threads and CTAs like any other partial state.
// ---------------------------------------------------------------------------------------------------------------

// exp for the bulk of the vocabulary: on the GPU the hardware ex2 (MUFU.EX2, ~2 ulp, subnormal results kept, no
// FTZ) of v * log2(e); on the host expf. Only the sums Z', S' and the tempered normaliser use it; every
// probability that is ranked or reported (p = exp(l - m) / Z) uses exp_c.
PRR_HD float exp_bulk(float v) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.f32 %0, %1;" : "=f"(y) : "f"(v * 1.4426950408889634f));
  return y;
#else
  return expf(v);
#endif
}
PRR_HD double exp_bulk(double v) { return exp(v); }

PRR_HD float max_c(float a, float b) { return fmaxf(a, b); }  // NaN-ignoring (IEEE maxNum), one instruction
PRR_HD double max_c(double a, double b) { return fmax(a, b); }
PRR_HD float min_c(float a, float b) { return fminf(a, b); }
PRR_HD double min_c(double a, double b) { return fmin(a, b); }

// Statistics of a tile of N logits, visited in groups of G (a 16-byte vector): get(k) returns logit k (k = 0..N-1,
// a compile-time index after unrolling) in the compute type C, index(k) its vocabulary index (increasing in k);
// mask_k is the k that holds the mask token, or -1. Per group: the top-2 (whose running max is the softmax shift m
// so far), one rescale of the sums if m rose, then exp(l - m) and exp(l - m)(l - m) against the fixed m. Only one
// group's values are live at a time, which keeps a GPU thread's register footprint small.
template <typename C, typename A, int N, int G, typename Get, typename Index>
PRR_HD RowStats<C, A> tile_stats(const Get& get, const Index& index, int mask_k) {
  static_assert(N % G == 0, "the tile must be a whole number of groups");
  const C lowest = -std::numeric_limits<C>::max();
  C c1 = neg_inf<C>(), c2 = neg_inf<C>(), m = neg_inf<C>();
  int k1 = -1;
  A z = A(0), s = A(0);
  bool nan_seen = false;
#pragma unroll
  for (int g = 0; g < N; g += G) {
#pragma unroll
    for (int k = g; k < g + G; ++k) {  // top-2 over every logit (mask included; NaN ignored)
      const C l = get(k);
      c2 = max_c(c2, min_c(c1, l));
      k1 = l > c1 ? k : k1;  // strict: the first index wins ties
      c1 = max_c(c1, l);
    }
    if (c1 == neg_inf<C>()) {  // everything so far is -inf (probability 0) or NaN
#pragma unroll
      for (int k = g; k < g + G; ++k) {
        const C l = get(k);
        nan_seen = nan_seen || l != l;
      }
      continue;
    }
    if (c1 > m) {  // the shift rises: rescale what was summed (m = -inf: nothing yet, a = 0)
      const C dm = m - c1;
      const A a = A(exp_bulk(dm));
      s = a * (s + A(max_c(dm, lowest)) * z);
      z = a * z;
      m = c1;
    }
    // NaN or +Inf make z NaN (NaN - m, inf - inf); -inf gives e = 0 and, through the clamp, 0 * finite in S'.
#pragma unroll
    for (int k = g; k < g + G; ++k) {
      const C d = get(k) - m;
      const A e = A(exp_bulk(d));
      z += e;
      s += e * A(max_c(d, lowest));
    }
  }
  if (mask_k >= 0) {  // the mask token is never a candidate: redo the top-2 without it when it can matter
    C mv = C(0);
#pragma unroll
    for (int k = 0; k < N; ++k)
      if (k == mask_k) mv = get(k);
    if (!(mv < c2)) {
      c1 = c2 = neg_inf<C>();
      k1 = -1;
#pragma unroll
      for (int k = 0; k < N; ++k) {
        if (k == mask_k) continue;
        const C l = get(k);
        c2 = max_c(c2, min_c(c1, l));
        k1 = l > c1 ? k : k1;
        c1 = max_c(c1, l);
      }
    }
  }
  RowStats<C, A> st;
  st.init();
  st.c1 = c1;
  st.c2 = c2;
  st.i1 = k1 >= 0 ? index(k1) : kNoIndex;
  if (m != neg_inf<C>()) {
    st.m = m;
    st.zrest = z - A(1);  // every instance of the max added exp(0) = 1 exactly; RowStats keeps one apart
    st.srest = s;
  }
  st.bad = nan_seen || !(z == z);
  return st;
}

// The tempered normaliser of a tile (the register-tile twin of TemperedSum::push over N logits).
template <typename A, int N, typename Get>
PRR_HD A tempered_tile_sum(const Get& get, float m, float inv_t) {
  A z = A(0);
#pragma unroll
  for (int k = 0; k < N; ++k) z += A(exp_bulk((get(k) - m) * inv_t));  // -inf -> exp(-inf) = 0
  return z;
}

// exp((l - m) * inv_t) summed over the row: the normaliser of softmax(logits / T) shifted by m / T.
template <typename C, typename A>
struct TemperedSum {
  A z;
  PRR_HD void init() { z = A(0); }
  PRR_HD void push(C l, C m, C inv_t) {
    if (l != neg_inf<C>()) z += A(exp_c((l - m) * inv_t));
  }
  PRR_HD void merge(const TemperedSum& o) { z += o.z; }
};

}  // namespace prr
