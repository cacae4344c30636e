// prr/rules.h — the newer commit rules: LocalLeap, SlowFast and KLASS as base rules, and R²-dLLM's three passes
// (spatial window, token cluster, temporal streak) on top of any base rule.
//
// Unlike the prefix rules of select.h, these decide per block position (neighbourhoods, spans, runs, streaks), so
// they run serially over one sequence's active block, O(block_length * window) work: one thread of the selecting CTA
// on CUDA, one task per sequence on the CPU. Both backends run this same code, so they take identical decisions on
// identical records. The Python twin (the specification) is prr_ext/reference.py: local_leap_commit, klass_commit,
// slow_fast_commit / slow_fast_after_commit, r2_passes, r2_temporal.
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
PRR_HD void local_leap_select(Blk& blk, int64_t n, int64_t n_usable, int64_t k, double tau, double relaxed_tau,
                              int64_t radius) {
  const int64_t floor_ = k > 1 ? k : 1;
  for (int64_t i = 0; i < n_usable && i < floor_; ++i) blk.commit(blk.order(i), blk.cand(blk.order(i)));
  for (int64_t j = 0; j < n; ++j) {
    if (!blk.usable(j) || blk.committed(j)) continue;
    bool near = false;
    for (int64_t a = (j - radius > 0 ? j - radius : 0); a < n && a <= j + radius && !near; ++a)
      near = blk.usable(a) && blk.conf(a) >= tau;
    if (blk.conf(j) >= (near ? relaxed_tau : tau)) blk.commit(j, blk.cand(j));
  }
}

// KLASS: every ready position (conf > c and its KL stayed below kappa for >= H steps), else the first max(k, 1).
template <class Blk>
PRR_HD void klass_select(Blk& blk, int64_t n, int64_t n_usable, int64_t k, double conf_threshold, int64_t history) {
  bool any = false;
  for (int64_t j = 0; j < n; ++j) {
    if (blk.usable(j) && blk.conf(j) > conf_threshold && blk.rule(j, kRsKlCount) >= static_cast<double>(history)) {
      blk.commit(j, blk.cand(j));
      any = true;
    }
  }
  if (any) return;
  const int64_t floor_ = k > 1 ? k : 1;
  for (int64_t i = 0; i < n_usable && i < floor_; ++i) blk.commit(blk.order(i), blk.cand(blk.order(i)));
}

// SlowFast's commit within block positions [lo, hi): all usable positions there with conf >= fill if more than one
// qualifies, else the first in rank order.
template <class Blk>
PRR_HD void slow_fast_fill(Blk& blk, int64_t n_usable, int64_t lo, int64_t hi, double fill) {
  int64_t high = 0;
  for (int64_t j = lo; j < hi; ++j) high += (blk.usable(j) && blk.conf(j) >= fill) ? 1 : 0;
  if (high > 1) {
    for (int64_t j = lo; j < hi; ++j)
      if (blk.usable(j) && blk.conf(j) >= fill) blk.commit(j, blk.cand(j));
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

// SlowFast's step: sf is the sequence's row_state (columns kRsSpanStart...), updated in place. Slow phase: update the
// span estimate, then fill [start, n); fast phase: fill [start, end). slow_fast_next_cycle runs after every pass.
template <class Blk>
PRR_HD void slow_fast_select(Blk& blk, int64_t n, int64_t n_usable, const RuleParams& r, double fill, int64_t* sf) {
  const int64_t start = sf[kRsSpanStart], explored = sf[kRsExplored];
  if (explored < r.explore_steps) {
    if (!sf[kRsDetermined]) {
      int64_t inc = 0;
      if (start < n) {
        int64_t far = -1;
        for (int64_t j = start; j < n; ++j)
          if (blk.usable(j) && blk.conf(j) >= r.span_threshold) far = j;
        inc = far >= 0 ? far - start + 1 : 1;
      }
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
    slow_fast_fill(blk, n_usable, start, n, fill);
    sf[kRsExplored] = explored + 1;
    if (sf[kRsExplored] == r.explore_steps && !sf[kRsDetermined]) {  // the window never filled: the mean so far
      const int64_t m = sf[kRsNumEstimates];
      double sum = 0.0;
      for (int64_t q = 0; q < m; ++q) sum += static_cast<double>(sf[kRsEstimates + q]);
      const int64_t e = m > 0 ? static_cast<int64_t>(sum / static_cast<double>(m)) : n / 2;
      sf[kRsSpanEnd] = m > 0 ? (e < 1 ? 1 : (e > n ? n : e)) : e;
      sf[kRsDetermined] = 1;
    }
  } else {
    slow_fast_fill(blk, n_usable, start, sf[kRsSpanEnd], fill);
  }
}

// After the step's commits (R²'s passes included): once the slow phase is over and the span holds no mask, the next
// sub-cycle starts at the span's end.
template <class Blk>
PRR_HD void slow_fast_next_cycle(Blk& blk, const RuleParams& r, int64_t* sf) {
  if (sf[kRsExplored] < r.explore_steps) return;
  for (int64_t j = sf[kRsSpanStart]; j < sf[kRsSpanEnd]; ++j)
    if (blk.masked(j) && !blk.committed(j)) return;
  sf[kRsSpanStart] = sf[kRsSpanEnd];
  sf[kRsExplored] = sf[kRsDetermined] = sf[kRsNumEstimates] = 0;
}

// R²-dLLM's passes after the base commit, in upstream's order. seed / col0 / nfe: the random cluster choice's Philox
// key and counter (the run's first canvas column is col0 + its block position).
template <class Blk>
PRR_HD void r2_select(Blk& blk, int64_t n, const RuleParams& r, uint64_t seed, int64_t col0, int64_t nfe) {
  const auto still_masked = [&](int64_t j) { return blk.masked(j) && !blk.committed(j); };
  // 1. spatial window: every window is judged on the canvas after the base commit, so a hit's positions are kept
  // pending (bit t: position s + t) and committed only once no later window covers them (positions < s).
  if (r.r2_window > 0 && r.r2_window <= n) {
    const int64_t W = r.r2_window;
    uint64_t pending = 0;
    for (int64_t s = 0; s <= n; ++s) {
      if (s > 0) {  // position s - 1 leaves every remaining window
        if (pending & 1ull) blk.commit(s - 1, blk.cand(s - 1));
        pending >>= 1;
      }
      if (s + W > n) continue;
      int64_t masked = 0;
      bool usable = true;
      double sum = 0.0;
      uint64_t bits = 0;
      for (int64_t t = 0; t < W; ++t) {
        const int64_t j = s + t;
        if (!still_masked(j)) continue;
        ++masked;
        bits |= 1ull << t;
        usable = usable && blk.usable(j);
        if (usable) sum += blk.conf(j);
      }
      if (masked == 0 || !usable || (r.r2_window_unmasked >= 0 && W - masked > r.r2_window_unmasked)) continue;
      if (sum / static_cast<double>(masked) >= r.r2_spatial_threshold) pending |= bits;
    }
  }
  // 2. token clusters: maximal runs of still-masked usable positions with one top-1; one commit per run
  if (r.r2_cluster != kClusterOff) {
    int64_t j = 0;
    while (j < n) {
      if (!(still_masked(j) && blk.usable(j))) {
        ++j;
        continue;
      }
      const int64_t start = j, token = blk.argmax(j);
      while (j + 1 < n && still_masked(j + 1) && blk.usable(j + 1) && blk.argmax(j + 1) == token) ++j;
      const int64_t len = j + 1 - start;
      j = j + 1;
      if (len < r.r2_cluster_size) continue;
      int64_t best = start;
      for (int64_t q = start + 1; q < start + len; ++q)
        if (blk.p1(q) > blk.p1(best)) best = q;
      if (!(static_cast<double>(blk.p1(best)) > r.r2_spatial_threshold)) continue;
      const int64_t pick = r.r2_cluster == kClusterConfidence ? best
                           : r.r2_cluster == kClusterMid      ? start + len / 2
                                                              : start + cluster_pick(seed, col0 + start, nfe, len);
      blk.commit(pick, token);
    }
  }
  // 3. temporal streaks of the positions masked at the start of the step
  if (r.r2_temporal_steps > 0) {
    const float threshold = static_cast<float>(r.r2_temporal_threshold);
    for (int64_t j = 0; j < n; ++j) {
      if (!blk.masked(j)) continue;
      if (blk.committed(j) || !blk.usable(j)) {  // decoded this step (or no usable row): the streak ends
        blk.set_rule(j, kRsStreakToken, -1.0);
        blk.set_rule(j, kRsStreakCount, 0.0);
        blk.set_rule(j, kRsStreakSum, 0.0);
        blk.set_rule(j, kRsStreakMax, 0.0);
        continue;
      }
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
  }
}

}  // namespace prr
