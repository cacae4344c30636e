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
    merge_top2(o.c1, o.i1, o.c2);  // top-2 of the non-mask logits
    push_sample(o.gbest, o.gidx);
  }

  // Merge another partial's top-2 (first index on ties).
  PRR_HD void merge_top2(C oc1, int64_t oi1, C oc2) {
    if (oc1 > c1 || (oc1 == c1 && oi1 < i1)) {
      c2 = c1 > oc2 ? c1 : oc2;
      c1 = oc1;
      i1 = oi1;
    } else {
      c2 = oc1 > c2 ? oc1 : c2;
    }
  }

  // This partial's sums against a shift M >= m, the max's own term included: Z = e^(m-M) (1 + Z'),
  // S = e^(m-M) (S' + (m - M)(1 + Z')). Summing them over partials and taking Z' = Z - 1, S' = S against M is the
  // same merge as merge(), reassociated: a GPU reduction then needs one exp per partial, not one per tree level.
  PRR_HD void rebased_sums(C M, A& Z, A& S) const {
    if (m == neg_inf<C>()) {
      Z = S = A(0);
      return;
    }
    const C d = m - M;
    const A a = A(exp_c(d)), z1 = A(1) + zrest;
    Z = a * z1;
    S = a * (srest + A(d) * z1);
  }

  PRR_HD bool usable() const { return !bad && c1 != neg_inf<C>(); }
  PRR_HD A z() const { return A(1) + zrest; }
  // p(token) for a token whose logit is l, in the compute type.
  PRR_HD C prob(C l) const { return C(A(exp_c(l - m)) / z()); }
  PRR_HD C entropy() const { return C(log1p_c(zrest) - srest / z()); }
};

// ---------------------------------------------------------------------------------------------------------------
// Register-tile variant (the CUDA kernel's per-thread pass; csrc/cuda/tile.cuh).
//
// A GPU thread holds a small tile of logits in registers and visits it a 16-byte vector at a time: the top-2 of the
// vector first (its running max is the shift m), then the exponential sums against m, rescaled only when m rises
// (once per vector, not per element). The final maximum's own term is 2^0 = 1, so the "rest" sum of RowStats (all
// terms but one instance of the max) is sum - 1. The argmax (first index on ties, exactly as push()) is found in
// the one vector where the max last rose. The result is a RowStats that merge() combines with other tiles, threads
// and CTAs like any other partial state. The CPU keeps the element-wise push(); both are the same statistics.
// ---------------------------------------------------------------------------------------------------------------

// 2^v for the bulk of the vocabulary: on the GPU one MUFU.EX2 (ex2.approx.ftz: ~2 ulp; results below 2^-126
// flush to 0, which cannot change a sum that already holds exp(0) = 1); on the host exp2f. Only the sums Z', S' and
// the tempered normaliser use it; every probability that is ranked or reported (p = exp(l - m) / Z) uses exp_c.
PRR_HD float exp2_bulk(float v) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(v));
  return y;
#else
  return exp2f(v);
#endif
}
PRR_HD double exp2_bulk(double v) { return exp2(v); }

PRR_HD float max_c(float a, float b) { return fmaxf(a, b); }  // NaN-ignoring (IEEE maxNum), one instruction
PRR_HD double max_c(double a, double b) { return fmax(a, b); }
PRR_HD float min_c(float a, float b) { return fminf(a, b); }
PRR_HD double min_c(double a, double b) { return fmin(a, b); }
// NaN-propagating max: a NaN anywhere in the tile survives into the running max (the "bad row" test).
PRR_HD float max_nan_c(float a, float b) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(y) : "f"(a), "f"(b));
  return y;
#else
  return (a != a || b != b) ? std::numeric_limits<float>::quiet_NaN() : fmaxf(a, b);
#endif
}
PRR_HD double max_nan_c(double a, double b) {
  return (a != a || b != b) ? std::numeric_limits<double>::quiet_NaN() : fmax(a, b);
}

// The mask token is never a candidate. A tile's top-2 (c1, c2; k1 = the k of c1) was taken over all N logits; when
// the mask's logit (at k = mask_k) is not below c2 it can matter, so redo the top-2 over the other N - 1 (first k on
// ties). Shared by every tile-statistics variant (tile_stats, tile_stats2, the CUDA kernel's tile_stats_packed).
template <typename C, int N, typename Get>
PRR_HD void top2_without_mask(const Get& get, int mask_k, C& c1, C& c2, int& k1) {
  C mv = C(0);
#pragma unroll
  for (int k = 0; k < N; ++k)
    if (k == mask_k) mv = get(k);
  if (mv < c2) return;
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

// Statistics of a tile of N logits, visited in groups of G (a 16-byte vector): get(k) returns logit k (k = 0..N-1,
// a compile-time index after unrolling) in the compute type C, index(k) its vocabulary index (increasing in k),
// first_eq(g, v) the first k of group g (a run-time group) whose logit equals v, or -1; mask_k is the k that holds
// the mask token, or -1. Per group: the top-2 values with a NaN-propagating max (3 min/max per logit; the argmax is
// located afterwards in the one group where the max last rose), one rescale of the sums if the max rose, then
// t = (l - m) log2(e), e = 2^t, Z += e, S' += e t (t clamped, so -inf logits add 0, not 0 * -inf).
template <typename C, typename A, int N, int G, typename Get, typename Index, typename FirstEq>
PRR_HD RowStats<C, A> tile_stats(const Get& get, const Index& index, const FirstEq& first_eq, int mask_k) {
  static_assert(N % G == 0, "the tile must be a whole number of groups");
  const C kLog2e = C(1.4426950408889634), kLn2 = C(0.6931471805599453), tmin = C(-1e30);
  C c1 = neg_inf<C>(), c2 = neg_inf<C>(), m = neg_inf<C>();
  int g1 = -1;  // the group in which c1 last rose (holds the first instance of the max)
  A z = A(0), s = A(0);  // s: sum of e * t, t in log2 units
#pragma unroll
  for (int g = 0; g < N; g += G) {
    const C before = c1;
#pragma unroll
    for (int k = g; k < g + G; ++k) {
      const C l = get(k);
      c2 = max_c(c2, min_c(c1, l));
      c1 = max_nan_c(c1, l);
    }
    g1 = c1 > before ? g / G : g1;
    // the shift rises to c1: rescale what was summed (m = -inf: nothing yet; equal: factor 1)
    const C dm = (c1 == m) ? C(0) : (m - c1) * kLog2e;
    const A a = A(exp2_bulk(dm));
    s = a * (s + A(max_c(dm, tmin)) * z);
    z = a * z;
    m = c1;
#pragma unroll
    for (int k = g; k < g + G; ++k) {
      const C t = max_c((get(k) - m) * kLog2e, tmin);  // l - m is exact near the max; clamp: -inf -> tmin
      const A e = A(exp2_bulk(t));
      z += e;
      s += e * A(t);
    }
  }
  RowStats<C, A> st;
  st.init();
  st.bad = (c1 != c1) || c1 == std::numeric_limits<C>::infinity();
  if (st.bad) return st;
  int k1 = g1 >= 0 ? first_eq(g1, c1) : -1;
  if (mask_k >= 0) top2_without_mask<C, N>(get, mask_k, c1, c2, k1);
  st.c1 = c1;
  st.c2 = c2;
  st.i1 = (k1 >= 0 && c1 != neg_inf<C>()) ? index(k1) : kNoIndex;
  if (m != neg_inf<C>()) {
    st.m = m;
    st.zrest = z - A(1);  // the max's own term is exp2(~0) = 1; RowStats keeps one instance apart
    st.srest = s * A(kLn2);
  }
  return st;
}

// The same statistics with two independent chains (even / odd groups) merged at the end: twice the instruction-level
// parallelism for a GPU thread whose warps are few (the loop is latency-bound, not issue-bound). N % (2 G) == 0.
template <typename C, typename A, int N, int G, typename Get, typename Index, typename FirstEq>
PRR_HD RowStats<C, A> tile_stats2(const Get& get, const Index& index, const FirstEq& first_eq, int mask_k) {
  static_assert(N % (2 * G) == 0, "the tile must be a whole number of group pairs");
  const C kLog2e = C(1.4426950408889634), kLn2 = C(0.6931471805599453), tmin = C(-1e30);
  C c1[2] = {neg_inf<C>(), neg_inf<C>()}, c2[2] = {neg_inf<C>(), neg_inf<C>()}, m[2] = {neg_inf<C>(), neg_inf<C>()};
  int g1[2] = {-1, -1};
  A z[2] = {A(0), A(0)}, s[2] = {A(0), A(0)};
#pragma unroll
  for (int g0 = 0; g0 < N; g0 += 2 * G) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int g = g0 + h * G;
      const C before = c1[h];
#pragma unroll
      for (int k = g; k < g + G; ++k) {
        const C l = get(k);
        c2[h] = max_c(c2[h], min_c(c1[h], l));
        c1[h] = max_nan_c(c1[h], l);
      }
      g1[h] = c1[h] > before ? g / G : g1[h];
      const C dm = (c1[h] == m[h]) ? C(0) : (m[h] - c1[h]) * kLog2e;
      const A a = A(exp2_bulk(dm));
      s[h] = a * (s[h] + A(max_c(dm, tmin)) * z[h]);
      z[h] = a * z[h];
      m[h] = c1[h];
#pragma unroll
      for (int k = g; k < g + G; ++k) {
        const C t = max_c((get(k) - m[h]) * kLog2e, tmin);
        const A e = A(exp2_bulk(t));
        z[h] += e;
        s[h] += e * A(t);
      }
    }
  }
  RowStats<C, A> st;
  st.init();
  C cm = max_nan_c(c1[0], c1[1]);
  st.bad = (cm != cm) || cm == std::numeric_limits<C>::infinity();
  if (st.bad) return st;
  // the chains' top-2 and argmax group (ties: the lower group, i.e. the first index)
  C cc2 = max_c(min_c(c1[0], c1[1]), max_c(c2[0], c2[1]));
  const int gg = c1[0] > c1[1] ? g1[0] : c1[1] > c1[0] ? g1[1] : (g1[0] < 0 ? g1[1] : g1[1] < 0 ? g1[0]
                                                                    : (g1[0] < g1[1] ? g1[0] : g1[1]));
  int k1 = gg >= 0 ? first_eq(gg, cm) : -1;
  // the chains' sums against the common shift cm
  A zt = A(0), stt = A(0);
  if (cm != neg_inf<C>()) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (m[h] == neg_inf<C>()) continue;
      const C dm = (m[h] - cm) * kLog2e;
      const A a = A(exp2_bulk(dm));
      zt += a * z[h];
      stt += a * (s[h] + A(dm) * z[h]);
    }
  }
  C cc1 = cm;
  if (mask_k >= 0) top2_without_mask<C, N>(get, mask_k, cc1, cc2, k1);
  st.c1 = cc1;
  st.c2 = cc2;
  st.i1 = (k1 >= 0 && cc1 != neg_inf<C>()) ? index(k1) : kNoIndex;
  if (cm != neg_inf<C>()) {
    st.m = cm;
    st.zrest = zt - A(1);
    st.srest = stt * A(kLn2);
  }
  return st;
}

// The tempered normaliser of a tile: sum of exp((l - m) / T) = 2^((l - m) * (inv_t * log2(e))).
template <typename A, int N, typename Get>
PRR_HD A tempered_tile_sum(const Get& get, float m, float inv_t) {
  const float k = inv_t * 1.4426950408889634f;
  A z = A(0);
#pragma unroll
  for (int j = 0; j < N; ++j) z += A(exp2_bulk((get(j) - m) * k));  // -inf -> 2^-inf = 0
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
