// rules_cta.cuh — the per-position rules of prr/rules.h (LocalLeap, KLASS, SlowFast, R²'s three passes), run by the
// whole selecting CTA over a block staged in its shared memory, a thread per block position.
//
// rules.h's serial drivers walk the block one position after another; in one thread that is O(block_length ×
// window) dependent reads per sequence and step (LocalLeap, R2: 850-880 µs at (1,256) on an H100, 37-38× the read
// floor). The decisions themselves are independent across positions once what a position reads of its neighbours
// is known, so each pass here runs in two phases split by a barrier: first the cross-position facts (LocalLeap's
// anchors, R²'s window hits and cluster eligibility, SlowFast's counts) into bit masks or shared scalars, then each
// thread commits its own positions. No phase writes what another thread reads in it, so the passes need no atomics
// on the flags and racecheck has nothing to report; the tests themselves are rules.h's, so both backends decide
// alike (python_tests/test_cuda_step.py compares them on random and tie-heavy blocks).
//
// Blk is BlockStaged (select.cuh): every thread holds its own copy; commit() marks the position in the staged flags
// and counts in the copy's `added`, which run_block_rules sums.
#pragma once

#include <cstdint>

#include "config.h"
#include "primitives.cuh"
#include "prr/params.h"
#include "prr/rules.h"

namespace prr::gpu {

// The selecting CTA's scratch for the rules: per-position bit masks (bit j of word j / 32) and shared scalars.
struct RulesSmem {
  uint32_t bits[kSortCap / 32];   // one pass's cross-position fact: LocalLeap anchors, window hits, eligibility
  uint32_t picks[kSortCap / 32];  // the cluster pass's commits
  int32_t far, lo, hi, count, first, flag;
};

// bits[j] = pred(j) for j < n (whole words, by warp ballots), then a barrier. blockDim.x is a multiple of 32, so each
// warp's positions form one word.
template <class Pred>
__device__ void ballot_bits(uint32_t* bits, int64_t n, Pred pred) {
  for (int64_t base = 0; base < n; base += blockDim.x) {  // the same trip count in every thread
    const int64_t j = base + threadIdx.x;
    const unsigned m = __ballot_sync(kAllLanes, j < n && pred(j));
    if ((threadIdx.x & 31) == 0 && j < n) bits[j >> 5] = m;
  }
  __syncthreads();
}

__device__ __forceinline__ bool bit_at(const uint32_t* bits, int64_t j) { return (bits[j >> 5] >> (j & 31)) & 1u; }

// Is any bit of [lo, hi] set? (lo <= hi)
__device__ inline bool any_bit(const uint32_t* bits, int64_t lo, int64_t hi) {
  for (int64_t w = lo >> 5; w <= (hi >> 5); ++w) {
    uint32_t m = bits[w];
    if (w == (lo >> 5)) m &= ~0u << (lo & 31);
    if (w == (hi >> 5)) m &= ~0u >> (31 - (hi & 31));
    if (m) return true;
  }
  return false;
}

template <class Blk>
__device__ void cta_commit_rank_floor(Blk& blk, int64_t n_usable, int64_t k) {
  for (int64_t i = threadIdx.x; i < prr::rank_floor_count(n_usable, k); i += blockDim.x)
    blk.commit(blk.order(i), blk.cand(blk.order(i)));
}

// LocalLeap: anchors first (they read only usable and conf), then the rank floor, then each position by its
// neighbourhood.
template <class Blk>
__device__ void cta_local_leap(Blk& blk, RulesSmem& rs, int64_t n, int64_t n_usable, int64_t k, double tau,
                               double relaxed_tau, int64_t radius) {
  ballot_bits(rs.bits, n, [&](int64_t a) { return prr::local_leap_anchor(blk, a, tau); });
  cta_commit_rank_floor(blk, n_usable, k);
  __syncthreads();
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    if (!blk.usable(j) || blk.committed(j)) continue;
    const bool near = any_bit(rs.bits, j > radius ? j - radius : 0, radius < n - 1 - j ? j + radius : n - 1);
    if (prr::local_leap_passes(blk.conf(j), near, tau, relaxed_tau)) blk.commit(j, blk.cand(j));
  }
  __syncthreads();
}

// KLASS: the ready positions, else the rank floor.
template <class Blk>
__device__ void cta_klass(Blk& blk, int64_t n, int64_t n_usable, int64_t k, double conf_threshold, int64_t history) {
  int any = 0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    if (prr::klass_ready(blk, j, conf_threshold, history)) {
      blk.commit(j, blk.cand(j));
      any = 1;
    }
  }
  if (!__syncthreads_or(any)) cta_commit_rank_floor(blk, n_usable, k);
  __syncthreads();
}

// SlowFast: the span estimate's `far` (a max over positions), the plan (thread 0, on the sequence's row_state sf),
// then the fill: every qualifying position of the span if more than one qualifies, else the first in rank order.
template <class Blk>
__device__ void cta_slow_fast(Blk& blk, RulesSmem& rs, int64_t n, int64_t n_usable, const prr::RuleParams& r,
                              double fill, int64_t* sf) {
  if (threadIdx.x == 0) {
    rs.flag = prr::slow_fast_needs_far(sf, r, n);
    rs.lo = static_cast<int32_t>(sf[prr::kRsSpanStart]);
    rs.far = -1;
  }
  __syncthreads();
  if (rs.flag) {
    int32_t far = -1;
    for (int64_t j = rs.lo + threadIdx.x; j < n; j += blockDim.x)
      if (prr::slow_fast_far_candidate(blk, j, r)) far = static_cast<int32_t>(j);
    if (far >= 0) atomicMax(&rs.far, far);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t lo, hi;
    prr::slow_fast_plan(sf, r, n, rs.far, &lo, &hi);
    rs.lo = static_cast<int32_t>(lo), rs.hi = static_cast<int32_t>(hi);
    rs.count = 0, rs.first = static_cast<int32_t>(n_usable);
  }
  __syncthreads();
  const int64_t lo = rs.lo, hi = rs.hi;
  int32_t count = 0, first = static_cast<int32_t>(n_usable);
  for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) count += prr::slow_fast_qualifies(blk, j, fill);
  for (int64_t i = threadIdx.x; i < n_usable; i += blockDim.x) {
    const int64_t j = blk.order(i);
    if (j >= lo && j < hi) {
      first = static_cast<int32_t>(i);
      break;  // i grows: the thread's first hit is its lowest rank
    }
  }
  if (count) atomicAdd(&rs.count, count);
  if (first < n_usable) atomicMin(&rs.first, first);
  __syncthreads();
  if (rs.count > 1) {
    for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x)
      if (prr::slow_fast_qualifies(blk, j, fill)) blk.commit(j, blk.cand(j));
  } else if (threadIdx.x == 0 && rs.first < n_usable) {
    const int64_t j = blk.order(rs.first);
    blk.commit(j, blk.cand(j));
  }
  __syncthreads();
}

// SlowFast after the step's commits: the next sub-cycle once the slow phase is over and the span holds no mask.
template <class Blk>
__device__ void cta_slow_fast_next_cycle(Blk& blk, RulesSmem& rs, const prr::RuleParams& r, int64_t* sf) {
  if (threadIdx.x == 0) rs.flag = prr::slow_fast_cycle_may_end(sf, r);
  __syncthreads();
  if (!rs.flag) return;
  const int64_t start = sf[prr::kRsSpanStart], end = sf[prr::kRsSpanEnd];
  int open = 0;
  for (int64_t j = start + threadIdx.x; j < end; j += blockDim.x) open |= blk.masked(j) && !blk.committed(j);
  if (!__syncthreads_or(open) && threadIdx.x == 0) prr::slow_fast_start_next_cycle(sf);
  __syncthreads();
}

// R²'s passes in upstream's order: window hits (judged on the canvas after the base commit), then the clusters (runs
// of the canvas after the window pass), then the temporal streaks.
template <class Blk>
__device__ void cta_r2(Blk& blk, RulesSmem& rs, int64_t n, const prr::RuleParams& r, uint64_t seed, int64_t col0,
                       int64_t nfe) {
  if (r.r2_window > 0 && r.r2_window <= n) {
    const int64_t W = r.r2_window;
    ballot_bits(rs.bits, n - W + 1, [&](int64_t s) { return prr::r2_window_hit(blk, s, W, r); });
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x)  // the hits by window start s cover s .. s + W - 1
      if (prr::r2_still_masked(blk, j) && any_bit(rs.bits, j >= W - 1 ? j - W + 1 : 0, j < n - W ? j : n - W))
        blk.commit(j, blk.cand(j));
    __syncthreads();
  }
  if (r.r2_cluster != prr::kClusterOff) {
    ballot_bits(rs.bits, n, [&](int64_t j) { return prr::r2_cluster_eligible(blk, j); });
    for (int64_t w = threadIdx.x; w < kSortCap / 32; w += blockDim.x) rs.picks[w] = 0;
    __syncthreads();
    const auto eligible = [&](int64_t q) { return bit_at(rs.bits, q); };
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      if (!prr::r2_cluster_starts(blk, j, eligible)) continue;
      int64_t end;
      const int64_t pick = prr::r2_cluster_pick(blk, j, n, r, seed, col0, nfe, eligible, &end);
      if (pick >= 0) atomicOr(&rs.picks[pick >> 5], 1u << (pick & 31));
    }
    __syncthreads();
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x)  // a run shares one top-1: the pick's is the run's
      if (bit_at(rs.picks, j)) blk.commit(j, blk.argmax(j));
    __syncthreads();
  }
  if (r.r2_temporal_steps > 0) {
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) prr::r2_temporal_at(blk, j, r);
    __syncthreads();
  }
}

}  // namespace prr::gpu
