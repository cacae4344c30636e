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
