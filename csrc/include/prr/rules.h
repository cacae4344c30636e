// prr/rules.h — the newer commit rules: LocalLeap, SlowFast and KLASS as base rules, and R²-dLLM's three passes
// (spatial window, token cluster, temporal streak) on top of any base rule.
//
// Unlike the prefix rules of select.h, these decide per block position (neighbourhoods, spans, runs, streaks). Each
// rule is written here once, as per-position tests (local_leap_passes, klass_ready, r2_window_hit, r2_cluster_pick,
// r2_temporal_at, ...) and a serial driver over one sequence's active block (local_leap_select, ...): the CPU op runs
// the drivers, one task per sequence; the CUDA selecting CTA runs the same tests with a thread per position
// (csrc/cuda/rules_cta.cuh), so both backends take identical decisions on identical records. The Python twin (the
// specification) is prr_ext/reference.py: local_leap_commit, klass_commit, slow_fast_commit /
// slow_fast_after_commit, r2_passes, r2_temporal.
//
// The code reads the block through `Blk`, which each backend implements over its own storage:
//   bool masked(j)     position j was masked at the start of the step      bool usable(j)   its row was usable
//   double conf(j)     its candidate's confidence (confidence dtype, fp64)  int64 cand(j), argmax(j)
//   float p1(j)        fp32 p(argmax)                                      int64 order(i)   position of rank i
//   bool committed(j)  committed earlier in this step                      void commit(j, token)
//   double rule(j, c) / void set_rule(j, c, v): State.rule_state[b, j, c]
// order ranks the usable positions by descending key (= conf for these rules), lowest position first on ties.
#pragma once

#include <cmath>
#include <cstdint>

#include "params.h"
#include "philox.h"

namespace prr {

constexpr int kMaxR2Window = 64;  // the window pass keeps its pending commits in one 64-bit mask

// LocalLeap: the first max(k, 1) in rank order, and every usable position with conf >= relaxed_tau when an anchor
// (a usable position with conf >= tau) lies within `radius` of it, else conf >= tau.
template <class Blk>
PRR_HD bool local_leap_anchor(const Blk& blk, int64_t a, double tau) {
  return blk.usable(a) && blk.conf(a) >= tau;
}

PRR_HD bool local_leap_passes(double conf, bool near_anchor, double tau, double relaxed_tau) {
  return conf >= (near_anchor ? relaxed_tau : tau);
}

// The first max(k, 1) usable positions in rank order: the floor of LocalLeap and KLASS.
PRR_HD int64_t rank_floor_count(int64_t n_usable, int64_t k) {
  const int64_t floor_ = k > 1 ? k : 1;
  return n_usable < floor_ ? n_usable : floor_;
}

template <class Blk>
PRR_HD void commit_rank_floor(Blk& blk, int64_t n_usable, int64_t k) {
  for (int64_t i = 0; i < rank_floor_count(n_usable, k); ++i) blk.commit(blk.order(i), blk.cand(blk.order(i)));
}

template <class Blk>
PRR_HD void local_leap_select(Blk& blk, int64_t n, int64_t n_usable, int64_t k, double tau, double relaxed_tau,
                              int64_t radius) {
  commit_rank_floor(blk, n_usable, k);
  for (int64_t j = 0; j < n; ++j) {
    if (!blk.usable(j) || blk.committed(j)) continue;
    bool near = false;
    for (int64_t a = (j - radius > 0 ? j - radius : 0); a < n && a <= j + radius && !near; ++a)
      near = local_leap_anchor(blk, a, tau);
    if (local_leap_passes(blk.conf(j), near, tau, relaxed_tau)) blk.commit(j, blk.cand(j));
  }
}

// KLASS: every ready position (conf > c and its KL stayed below kappa for >= H steps), else the first max(k, 1).
template <class Blk>
PRR_HD bool klass_ready(const Blk& blk, int64_t j, double conf_threshold, int64_t history) {
  return blk.usable(j) && blk.conf(j) > conf_threshold && blk.rule(j, kRsKlCount) >= static_cast<double>(history);
}

template <class Blk>
PRR_HD void klass_select(Blk& blk, int64_t n, int64_t n_usable, int64_t k, double conf_threshold, int64_t history) {
  bool any = false;
  for (int64_t j = 0; j < n; ++j) {
    if (klass_ready(blk, j, conf_threshold, history)) {
      blk.commit(j, blk.cand(j));
      any = true;
    }
  }
  if (!any) commit_rank_floor(blk, n_usable, k);
}

// SlowFast's commit within block positions [lo, hi): all usable positions there with conf >= fill if more than one
// qualifies, else the first in rank order.
template <class Blk>
PRR_HD bool slow_fast_qualifies(const Blk& blk, int64_t j, double fill) {
  return blk.usable(j) && blk.conf(j) >= fill;
}

template <class Blk>
PRR_HD void slow_fast_fill(Blk& blk, int64_t n_usable, int64_t lo, int64_t hi, double fill) {
  int64_t high = 0;
  for (int64_t j = lo; j < hi; ++j) high += slow_fast_qualifies(blk, j, fill) ? 1 : 0;
  if (high > 1) {
    for (int64_t j = lo; j < hi; ++j)
      if (slow_fast_qualifies(blk, j, fill)) blk.commit(j, blk.cand(j));
    return;
  }
  for (int64_t i = 0; i < n_usable; ++i) {
    const int64_t j = blk.order(i);
    if (j >= lo && j < hi) {
      blk.commit(j, blk.cand(j));
      return;
    }
  }
}

// SlowFast's step reads the block only through `far` (the last usable position at or after the span's start with
// conf >= span_threshold, -1: none) and the fill. sf is the sequence's row_state (columns kRsSpanStart...).
PRR_HD bool slow_fast_needs_far(const int64_t* sf, const RuleParams& r, int64_t n) {
  return sf[kRsExplored] < r.explore_steps && !sf[kRsDetermined] && sf[kRsSpanStart] < n;
}

template <class Blk>
PRR_HD bool slow_fast_far_candidate(const Blk& blk, int64_t j, const RuleParams& r) {
  return blk.usable(j) && blk.conf(j) >= r.span_threshold;
}

// The step's bookkeeping, updated in place, and the block positions [*lo, *hi) it fills. Slow phase: update the span
// estimate (from far), then fill [start, n); fast phase: fill [start, end). slow_fast_next_cycle runs after every
// pass.
PRR_HD void slow_fast_plan(int64_t* sf, const RuleParams& r, int64_t n, int64_t far, int64_t* lo, int64_t* hi) {
  const int64_t start = sf[kRsSpanStart], explored = sf[kRsExplored];
  *lo = start;
  if (explored >= r.explore_steps) {
    *hi = sf[kRsSpanEnd];
    return;
  }
  *hi = n;
  if (!sf[kRsDetermined]) {
    const int64_t inc = start < n ? (far >= 0 ? far - start + 1 : 1) : 0;
    int64_t est = start + inc;
    est = est < 1 ? 1 : (est > n ? n : est);
    int64_t m = sf[kRsNumEstimates];  // the window of the last estimates, oldest first
    if (m == r.stability_window) {
      for (int64_t q = 1; q < m; ++q) sf[kRsEstimates + q - 1] = sf[kRsEstimates + q];
      --m;
    }
    sf[kRsEstimates + m] = est;
    sf[kRsNumEstimates] = ++m;
    if (m >= r.stability_window) {
      double sum = 0.0;
      for (int64_t q = 0; q < m; ++q) sum += static_cast<double>(sf[kRsEstimates + q]);
      const double mean = sum / static_cast<double>(m);
      double var = 0.0;
      for (int64_t q = 0; q < m; ++q) {
        const double d = static_cast<double>(sf[kRsEstimates + q]) - mean;
        var += d * d;
      }
      if (std::sqrt(var / static_cast<double>(m)) < r.stability_std) {
        sf[kRsSpanEnd] = est;
        sf[kRsDetermined] = 1;
      } else {
        const int64_t e = static_cast<int64_t>(mean);
        sf[kRsSpanEnd] = e < 1 ? 1 : (e > n ? n : e);
        sf[kRsDetermined] = explored == r.explore_steps - 1 ? 1 : 0;
      }
    }
  }
  sf[kRsExplored] = explored + 1;
  if (sf[kRsExplored] == r.explore_steps && !sf[kRsDetermined]) {  // the window never filled: the mean so far
    const int64_t m = sf[kRsNumEstimates];
    double sum = 0.0;
    for (int64_t q = 0; q < m; ++q) sum += static_cast<double>(sf[kRsEstimates + q]);
    const int64_t e = m > 0 ? static_cast<int64_t>(sum / static_cast<double>(m)) : n / 2;
    sf[kRsSpanEnd] = m > 0 ? (e < 1 ? 1 : (e > n ? n : e)) : e;
    sf[kRsDetermined] = 1;
  }
}

template <class Blk>
PRR_HD void slow_fast_select(Blk& blk, int64_t n, int64_t n_usable, const RuleParams& r, double fill, int64_t* sf) {
  int64_t far = -1;
  if (slow_fast_needs_far(sf, r, n))
    for (int64_t j = sf[kRsSpanStart]; j < n; ++j)
      if (slow_fast_far_candidate(blk, j, r)) far = j;
  int64_t lo, hi;
  slow_fast_plan(sf, r, n, far, &lo, &hi);
  slow_fast_fill(blk, n_usable, lo, hi, fill);
}

// After the step's commits (R²'s passes included): once the slow phase is over and the span holds no mask, the next
// sub-cycle starts at the span's end.
PRR_HD bool slow_fast_cycle_may_end(const int64_t* sf, const RuleParams& r) { return sf[kRsExplored] >= r.explore_steps; }

PRR_HD void slow_fast_start_next_cycle(int64_t* sf) {
  sf[kRsSpanStart] = sf[kRsSpanEnd];
  sf[kRsExplored] = sf[kRsDetermined] = sf[kRsNumEstimates] = 0;
}

template <class Blk>
PRR_HD void slow_fast_next_cycle(Blk& blk, const RuleParams& r, int64_t* sf) {
  if (!slow_fast_cycle_may_end(sf, r)) return;
  for (int64_t j = sf[kRsSpanStart]; j < sf[kRsSpanEnd]; ++j)
    if (blk.masked(j) && !blk.committed(j)) return;
  slow_fast_start_next_cycle(sf);
}

// R²-dLLM's passes after the base commit, in upstream's order. seed / col0 / nfe: the random cluster choice's Philox
// key and counter (the run's first canvas column is col0 + its block position).
template <class Blk>
PRR_HD bool r2_still_masked(const Blk& blk, int64_t j) {
  return blk.masked(j) && !blk.committed(j);
}

// 1. spatial window: does the window of W positions from s qualify? Every window is judged on the canvas after the
// base commit; a qualifying window commits its still-masked positions.
template <class Blk>
PRR_HD bool r2_window_hit(const Blk& blk, int64_t s, int64_t W, const RuleParams& r) {
  int64_t masked = 0;
  bool usable = true;
  double sum = 0.0;
  for (int64_t t = 0; t < W; ++t) {
    const int64_t j = s + t;
    if (!r2_still_masked(blk, j)) continue;
    ++masked;
    usable = usable && blk.usable(j);
    if (usable) sum += blk.conf(j);
  }
  if (masked == 0 || !usable || (r.r2_window_unmasked >= 0 && W - masked > r.r2_window_unmasked)) return false;
  return sum / static_cast<double>(masked) >= r.r2_spatial_threshold;
}

// 2. token clusters: maximal runs of still-masked usable positions with one top-1; one commit per run. eligible(q)
// answers r2_cluster_eligible on the canvas before the pass: a run's commit lies inside it, and no other run reads
// it. A run starts at j when j is eligible and does not continue the run of j - 1.
template <class Blk>
PRR_HD bool r2_cluster_eligible(const Blk& blk, int64_t j) {
  return r2_still_masked(blk, j) && blk.usable(j);
}

template <class Blk, class Eligible>
PRR_HD bool r2_cluster_starts(const Blk& blk, int64_t j, Eligible eligible) {
  return eligible(j) && !(j > 0 && eligible(j - 1) && blk.argmax(j - 1) == blk.argmax(j));
}

// The run starting at `start`: its end (*end, one past it) and the position it commits (-1: none).
template <class Blk, class Eligible>
PRR_HD int64_t r2_cluster_pick(const Blk& blk, int64_t start, int64_t n, const RuleParams& r, uint64_t seed,
                               int64_t col0, int64_t nfe, Eligible eligible, int64_t* end) {
  const int64_t token = blk.argmax(start);
  int64_t j = start;
  while (j + 1 < n && eligible(j + 1) && blk.argmax(j + 1) == token) ++j;
  const int64_t len = j + 1 - start;
  *end = j + 1;
  if (len < r.r2_cluster_size) return -1;
  int64_t best = start;
  for (int64_t q = start + 1; q < start + len; ++q)
    if (blk.p1(q) > blk.p1(best)) best = q;
  if (!(static_cast<double>(blk.p1(best)) > r.r2_spatial_threshold)) return -1;
  return r.r2_cluster == kClusterConfidence ? best
         : r.r2_cluster == kClusterMid      ? start + len / 2
                                            : start + cluster_pick(seed, col0 + start, nfe, len);
}

// 3. temporal streaks of the positions masked at the start of the step: position j's streak, updated in its rule
// state, and its commit when the streak confirms.
template <class Blk>
PRR_HD void r2_temporal_at(Blk& blk, int64_t j, const RuleParams& r) {
  if (!blk.masked(j)) return;
  if (blk.committed(j) || !blk.usable(j)) {  // decoded this step (or no usable row): the streak ends
    blk.set_rule(j, kRsStreakToken, -1.0);
    blk.set_rule(j, kRsStreakCount, 0.0);
    blk.set_rule(j, kRsStreakSum, 0.0);
    blk.set_rule(j, kRsStreakMax, 0.0);
    return;
  }
  const float threshold = static_cast<float>(r.r2_temporal_threshold);
  const float p = blk.p1(j);
  const int64_t token = blk.argmax(j);
  float sum = static_cast<float>(blk.rule(j, kRsStreakSum)), mx = static_cast<float>(blk.rule(j, kRsStreakMax));
  int64_t count = static_cast<int64_t>(blk.rule(j, kRsStreakCount));
  if (static_cast<int64_t>(blk.rule(j, kRsStreakToken)) == token) {
    ++count;
    sum = sum + p;
    mx = mx > p ? mx : p;
  } else {
    count = 1;
    sum = mx = p;
  }
  float value = p;
  if (r.r2_temporal_eval == kTemporalAve) value = sum / static_cast<float>(count);
  if (r.r2_temporal_eval == kTemporalMax) value = mx;
  const bool confirm = count >= r.r2_temporal_steps && value >= threshold;
  if (confirm) blk.commit(j, token);
  blk.set_rule(j, kRsStreakToken, confirm ? -1.0 : static_cast<double>(token));
  blk.set_rule(j, kRsStreakCount, confirm ? 0.0 : static_cast<double>(count));
  blk.set_rule(j, kRsStreakSum, confirm ? 0.0 : static_cast<double>(sum));
  blk.set_rule(j, kRsStreakMax, confirm ? 0.0 : static_cast<double>(mx));
}

template <class Blk>
PRR_HD void r2_select(Blk& blk, int64_t n, const RuleParams& r, uint64_t seed, int64_t col0, int64_t nfe) {
  if (r.r2_window > 0 && r.r2_window <= n) {
    // a hit's positions are kept pending (bit t: position s + t) and committed once no later window covers them
    const int64_t W = r.r2_window;
    uint64_t pending = 0;
    for (int64_t s = 0; s <= n; ++s) {
      if (s > 0) {  // position s - 1 leaves every remaining window
        if (pending & 1ull) blk.commit(s - 1, blk.cand(s - 1));
        pending >>= 1;
      }
      if (s + W > n || !r2_window_hit(blk, s, W, r)) continue;
      for (int64_t t = 0; t < W; ++t)
        if (r2_still_masked(blk, s + t)) pending |= 1ull << t;
    }
  }
  if (r.r2_cluster != kClusterOff) {
    const auto eligible = [&](int64_t q) { return r2_cluster_eligible(blk, q); };
    for (int64_t j = 0; j < n;) {
      if (!eligible(j)) {
        ++j;
        continue;
      }
      const int64_t start = j;
      const int64_t pick = r2_cluster_pick(blk, start, n, r, seed, col0, nfe, eligible, &j);
      if (pick >= 0) blk.commit(pick, blk.argmax(start));
    }
  }
  if (r.r2_temporal_steps > 0)
    for (int64_t j = 0; j < n; ++j) r2_temporal_at(blk, j, r);
}

// The rules on one sequence's block in the CPU op's order: the base rule (LocalLeap, KLASS or SlowFast), R²'s passes,
// then SlowFast's sub-cycle update; k: the step's commit floor, sf: the sequence's row_state, seed / col0 / nfe: as
// r2_select. The serial drivers of both backends (the CPU op; CUDA blocks ranked through the workspace).
template <class Blk>
PRR_HD void run_rules(Blk& blk, const StepParams& p, int64_t n_usable, int64_t k, uint64_t seed, int64_t col0,
                      int64_t nfe, int64_t* sf) {
  const int64_t n = p.block_length;
  const RuleParams& r = p.rule;
  if (p.policy == kLocalLeap) local_leap_select(blk, n, n_usable, k, p.param, r.relaxed_tau, r.radius);
  if (p.policy == kKLASS) klass_select(blk, n, n_usable, k, p.param, r.kl_history);
  if (p.policy == kSlowFast) slow_fast_select(blk, n, n_usable, r, p.param, sf);
  if (p.r2) r2_select(blk, n, r, seed, col0, nfe);
  if (p.policy == kSlowFast) slow_fast_next_cycle(blk, r, sf);
}

}  // namespace prr
