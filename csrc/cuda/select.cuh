// select.cuh — the per-sequence selection: rank a block's candidates and commit the first ones.
//
// The CTA that arrives last on a sequence's counter (step_kernel.cuh) runs select_and_commit: it reads the block's
// candidate records from the workspace, decides how many positions commit (prr::commit_count, the CPU op's serial
// fp64 rule) and writes their tokens into the canvas. The ranking is (key desc, block position asc), a total order,
// so every path below gives the CPU's stable sort:
//   * block_length <= 32: a bitonic sort in one warp's registers;
//   * 33 .. kSortCap positions: a radix select of the committed prefix when the rule's count does not need the
//     order (radix_cut + commit_cut; Factor and EntropyBound check that nothing past their floor commits), else a
//     bitonic sort in shared memory whose stages inside a 64-element chunk run in registers;
//   * longer blocks: a rank sort through the workspace.
#pragma once

#include <cstdint>
#include <limits>

#include "config.h"
#include "kernel_args.cuh"
#include "primitives.cuh"
#include "prr/params.h"
#include "prr/select.h"
#include "timeline.cuh"

namespace prr::gpu {

// ---------------------------------------------------------------------------------------------------------------
// Selection of one sequence (run by the CTA that arrived last on the sequence's counter)
// ---------------------------------------------------------------------------------------------------------------
struct SortSmem {
  double key[kSortCap];
  int32_t pos[kSortCap];
  uint32_t hist[2][256];      // radix select: one digit's histogram (double-buffered: the next pass's is cleared)
  int32_t sel[3];             // radix select: the chosen digit, how many are still needed, and its bucket's size
  int32_t wcount[kMaxWarps];  // radix select: per-warp counts of one chunk of positions
  int32_t n_veto;             // radix select: how many candidates satisfy the caller's veto test (Factor)
  double wsum[kMaxWarps][2];  // radix select: per-warp sums of the cut's entropies and their magnitudes (EntropyBound)
  uint64_t wred[kMaxWarps][3];  // per-warp partials of the block's counts and of its keys' lowest / highest order bits
};

__device__ __forceinline__ bool ranks_before(double ka, int64_t pa, double kb, int64_t pb) {
  return ka > kb || (ka == kb && pa < pb);
}

// The compare-exchange rule of the bitonic network's register stages: elements a (the lower index) and b swap so as
// to run up (ranks_before order) or down. Equal elements (the padding's (-inf, INT32_MAX)) may swap: a no-op.
// bitonic_stage tests the strict form instead, which leaves equal elements without a shared-memory store.
__device__ __forceinline__ bool out_of_order(double ka, int32_t pa, double kb, int32_t pb, bool up) {
  return up != ranks_before(ka, pa, kb, pb);
}

// Bitonic sort of srt's first n (a power of two, 64 <= n <= kSortCap) elements into ranks_before order, by the CTA.
// The stages (k, j) with j <= 32 only compare elements inside one 64-element chunk, so they run in registers: a warp
// takes a chunk (elements e and e + 32 in lane e % 32), does the j = 32 stage in-thread and j < 32 by shuffles, and
// stores it back: the levels k <= 64 in one such pass, then one pass per level after its j >= 64 stages, which go
// through shared memory pair by pair (pair q compares i = 2q - (q mod j) and i + j, so every thread has work).
// At n = 1024: 10 shared-memory stages, 5 register passes and 15 CTA barriers, where the v10 network
// (benchmarks/dev/step_cuda_v10.cu) ran 55 stages with a CTA barrier after each.
__device__ __forceinline__ void bitonic_stage(SortSmem& srt, int n, int k, int j) {
  for (int q = threadIdx.x; q < n / 2; q += blockDim.x) {
    const int i = 2 * q - (q & (j - 1)), ixj = i + j;
    const double ki = srt.key[i], kj = srt.key[ixj];
    const int32_t pi = srt.pos[i], pj = srt.pos[ixj];
    const bool up = (i & k) == 0;
    if (up ? ranks_before(kj, pj, ki, pi) : ranks_before(ki, pi, kj, pj)) {
      srt.key[i] = kj;
      srt.key[ixj] = ki;
      srt.pos[i] = pj;
      srt.pos[ixj] = pi;
    }
  }
}

// stage (k, j < 32) for element e held by this lane, its partner e ^ j in lane ^ j: the lower index keeps the element
// that ranks first in an ascending run (up), the other in a descending one
__device__ __forceinline__ void exchange_lanes(double& key, int32_t& pos, int e, int k, int j) {
  const double ok = __shfl_xor_sync(kFull, key, j);
  const int32_t op = __shfl_xor_sync(kFull, pos, j);
  const bool up = (e & k) == 0, lower = (e & j) == 0;
  if (out_of_order(key, pos, ok, op, lower == up)) {
    key = ok;
    pos = op;
  }
}

// levels k_lo .. k_hi (powers of two, stages j = min(k / 2, 32) .. 1) on every 64-element chunk, a warp per chunk
__device__ void bitonic_chunk_levels(SortSmem& srt, int n, int k_lo, int k_hi) {
  const int lane = threadIdx.x & 31;
  for (int c = (threadIdx.x >> 5) * 64; c < n; c += (blockDim.x >> 5) * 64) {
    const int e0 = c + lane, e1 = e0 + 32;
    double k0 = srt.key[e0], k1 = srt.key[e1];
    int32_t p0 = srt.pos[e0], p1 = srt.pos[e1];
    for (int k = k_lo; k <= k_hi; k <<= 1) {
      int j = min(k >> 1, 32);
      if (j == 32) {  // e0 and e1 are the pair
        if (out_of_order(k0, p0, k1, p1, (e0 & k) == 0)) {
          const double tk = k0;
          const int32_t tp = p0;
          k0 = k1;
          p0 = p1;
          k1 = tk;
          p1 = tp;
        }
        j = 16;
      }
      for (; j > 0; j >>= 1) {
        exchange_lanes(k0, p0, e0, k, j);
        exchange_lanes(k1, p1, e1, k, j);
      }
    }
    srt.key[e0] = k0;
    srt.key[e1] = k1;
    srt.pos[e0] = p0;
    srt.pos[e1] = p1;
  }
}

__device__ void bitonic_sort_smem(SortSmem& srt, int n) {
  bitonic_chunk_levels(srt, n, 2, 64);
  for (int k = 128; k <= n; k <<= 1) {
    __syncthreads();
    for (int j = k >> 1; j > 32; j >>= 1) {
      bitonic_stage(srt, n, k, j);
      __syncthreads();
    }
    bitonic_chunk_levels(srt, n, k, k);
  }
  __syncthreads();
}

// Unsigned bits that order as the fp64 key does (ranks_before's key part): larger key, larger value; -0.0 == +0.0.
__device__ __forceinline__ uint64_t order_bits(double k) {
  const uint64_t u = static_cast<uint64_t>(__double_as_longlong(k == 0.0 ? 0.0 : k));
  return (u >> 63) ? ~u : (u | (1ull << 63));
}

// Where the c-th candidate (key desc, position asc) falls, as radix_cut leaves it: the candidates whose key bits
// under `mask` exceed `prefix` rank before it; of those equal to `prefix` under `mask`, all are taken when
// need == equal, else (then mask covers every bit: equal keys straddle the boundary) the `need` lowest positions.
struct RadixCut {
  uint64_t prefix = 0, mask = 0;
  int need = 0, equal = 0;
  // for a usable candidate's order_bits u: ranks before the boundary's bucket / falls in it
  __device__ bool above(uint64_t u) const { return (u & mask) > prefix; }
  __device__ bool on(uint64_t u) const { return (u & mask) == prefix; }
};

__device__ __forceinline__ double key_of_order_bits(uint64_t u) {  // order_bits' inverse (+0.0 for a zero)
  return __longlong_as_double(static_cast<long long>((u >> 63) ? (u & ~(1ull << 63)) : ~u));
}

// Find the cut of the c (1 <= c < usable candidates) candidates that rank first among srt's first n, without sorting
// them: an MSD radix select over the key bits, 8 bits per pass, narrows down the c-th key until its digit's bucket
// holds exactly what is still needed (then the whole bucket is taken) or, for a run of equal keys across the
// boundary, to the exact key. srt.pos[i] is i for a usable candidate, INT32_MAX otherwise. `lo_bits` / `hi_bits`: the
// lowest and highest order_bits of the usable keys. Every key shares their common leading bits, so the first digit is
// the 8 bits from their highest differing bit down (v16; v14 started at bit 63, where probabilities share the sign and
// top exponent bits, and spent its first pass on one bucket that all 1024 keys' shared-memory atomics hit): 1.85
// passes on average instead of 2.9 on the benchmark's keys, 3.0 instead of 4.1 on a confident model's
// (benchmarks/dev/radix_passes.py). At 1024 positions on 4 warps a few passes of 2 barriers, against the bitonic
// network's 15 barriers and ~45 dependent shuffle stages per 64-element chunk (v14 notes).
// kVeto: veto(key) is a test that holds on a prefix of the candidates in rank order (monotone in the key); if it holds
// for c or more of them, i.e. for the c-th, false is returned at once (Factor: then ranks past the floor may pass too,
// and the caller sorts). It is counted in the first pass, at no extra barrier.
template <bool kVeto, typename Veto>
__device__ bool radix_cut(SortSmem& srt, int n, int c, uint64_t lo_bits, uint64_t hi_bits, Veto veto, RadixCut& cut) {
  const int tid = threadIdx.x, nt = blockDim.x, lane = tid & 31, warp = tid >> 5;
  for (int d = tid; d < 512; d += nt) srt.hist[d >> 8][d & 255] = 0;
  if (kVeto && tid == 0) srt.n_veto = 0;
  __syncthreads();
  // the first digit's top bit: the highest bit where the keys differ (at least bit 7, so that one pass always runs:
  // with all keys equal it finds them all in one bucket, and Factor's count is made)
  const int top = max(63 - __clzll(static_cast<long long>(lo_bits ^ hi_bits)), 7);
  uint64_t mask = top == 63 ? 0 : ~0ull << (top + 1);  // which bits of the c-th key are known: the shared ones first
  uint64_t prefix = lo_bits & mask;                     // and their values
  int need = c, equal = 0, buf = 0;
  for (int shift = top - 7; shift > -8; shift -= 8, buf ^= 1) {
    const bool first = shift == top - 7;
    const int low = max(shift, 0);                            // the digit: bits low .. shift + 7 (the last one may be
    const uint64_t digit_mask = (1ull << (shift + 8 - low)) - 1;  // narrower)
    // count this pass's digits among the candidates that share the prefix; clear the other buffer for the next pass
    int vetoes = 0;
    for (int i = tid; i < n; i += nt) {
      if (srt.pos[i] == INT32_MAX) continue;
      const double key = srt.key[i];
      const uint64_t u = order_bits(key);
      if ((u & mask) == prefix) atomicAdd(&srt.hist[buf][(u >> low) & digit_mask], 1u);
      if (kVeto && first) vetoes += veto(key) ? 1 : 0;
    }
    if (kVeto && first) {
      vetoes = static_cast<int>(__reduce_add_sync(kFull, static_cast<unsigned>(vetoes)));
      if (lane == 0 && vetoes) atomicAdd(&srt.n_veto, vetoes);
    }
    for (int d = tid; d < 256; d += nt) srt.hist[buf ^ 1][d] = 0;
    __syncthreads();
    if (kVeto && first && srt.n_veto >= c) return false;
    if (warp == 0) {
      // the digit d with #(digits above d) < need <= #(digits >= d): lane l sums bins 8l .. 8l + 7, a suffix scan
      // over the lanes finds the lane, then the lane walks its bins from the top
      uint32_t h[8], own = 0;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        h[e] = srt.hist[buf][8 * lane + e];
        own += h[e];
      }
      uint32_t upto = own;  // bins of lanes >= this one
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
        const uint32_t o = __shfl_down_sync(kFull, upto, off);
        if (lane + off < 32) upto += o;
      }
      uint32_t acc = upto - own;  // bins of the lanes above
      if (acc < static_cast<uint32_t>(need) && static_cast<uint32_t>(need) <= upto) {
#pragma unroll
        for (int e = 7; e >= 0; --e) {
          if (acc + h[e] >= static_cast<uint32_t>(need)) {
            srt.sel[0] = 8 * lane + e;
            srt.sel[1] = need - static_cast<int>(acc);
            srt.sel[2] = static_cast<int>(h[e]);
            break;
          }
          acc += h[e];
        }
      }
    }
    __syncthreads();
    prefix |= static_cast<uint64_t>(srt.sel[0]) << low;
    mask |= digit_mask << low;
    need = srt.sel[1];
    equal = srt.sel[2];
    if (need == equal) break;  // the whole bucket is taken: no need to resolve the key further
  }
  cut = RadixCut{prefix, mask, need, equal};
  return true;
}

// Commit the candidates of a cut.
template <typename Commit>
__device__ void commit_cut(SortSmem& srt, int n, const RadixCut& cut, Commit commit) {
  const int tid = threadIdx.x, nt = blockDim.x, lane = tid & 31, warp = tid >> 5;
  if (cut.need == cut.equal) {  // everything at or above the prefix (the usual case)
    for (int i = tid; i < n; i += nt) {
      if (srt.pos[i] == INT32_MAX) continue;
      const uint64_t u = order_bits(srt.key[i]);
      if (cut.above(u) || cut.on(u)) commit(i);
    }
    return;
  }
  // equal keys across the boundary: of those, the lowest positions first, by a scan over chunks of nt positions
  // (ballot within a warp, counts across warps)
  int before_chunk = 0;
  for (int i0 = 0; i0 < n; i0 += nt) {
    const int i = i0 + tid;
    uint64_t u = 0;
    const bool usable = i < n && srt.pos[i] != INT32_MAX;
    if (usable) u = order_bits(srt.key[i]);
    const bool tie = usable && cut.on(u);
    const unsigned ties = __ballot_sync(kFull, tie);
    if (lane == 0) srt.wcount[warp] = __popc(ties);
    __syncthreads();
    int rank = before_chunk + __popc(ties & ((1u << lane) - 1u)), chunk = 0;
    for (int w = 0; w < (nt >> 5); ++w) {
      rank += w < warp ? srt.wcount[w] : 0;
      chunk += srt.wcount[w];
    }
    if (usable && (cut.above(u) || (tie && rank < cut.need))) commit(i);
    before_chunk += chunk;
    __syncthreads();
  }
}

// EntropyBound (key = -H): whether the entropies of the cut's c candidates certainly sum to more than gamma, so that
// prr::commit_count's serial sum in sorted order exceeds gamma at or before the c-th and commits just the floor c.
// Summed here in another order: each order's rounding error is at most about c 2^-53 sum |H|, so the sum must clear
// gamma by twice that (4 (c + 2) 2^-53 sum |H|); false when it does not (then the caller sorts). One pass, one barrier.
__device__ bool cut_entropy_exceeds(SortSmem& srt, int n, const RadixCut& cut, int c, double gamma) {
  const int tid = threadIdx.x, nt = blockDim.x;
  double sum = 0.0, abs_sum = 0.0;
  for (int i = tid; i < n; i += nt) {
    if (srt.pos[i] == INT32_MAX) continue;
    const double key = srt.key[i];
    const uint64_t u = order_bits(key);
    if (cut.above(u) || (cut.on(u) && cut.need == cut.equal)) {
      sum -= key;
      abs_sum += fabs(key);
    }
  }
  double sums[2] = {sum, abs_sum};
  block_reduce_all(sums, srt.wsum, [](int, double x, double y) { return x + y; });  // one order: one decision
  sum = sums[0];
  abs_sum = sums[1];
  if (cut.need != cut.equal) {  // `need` of the boundary's equal keys
    const double k = key_of_order_bits(cut.prefix);
    sum -= cut.need * k;
    abs_sum += cut.need * fabs(k);
  }
  return sum - 4.0 * (c + 2) * 0x1p-53 * abs_sum > gamma;
}

__device__ __noinline__ void select_and_commit(const KParams& kp, const Ws& ws, int64_t b, int64_t active, SortSmem& srt,
                                  int64_t* iscratch) {
  const StepParams& p = kp.p;
  const int tid = threadIdx.x, nt = blockDim.x;
  const int64_t BL = p.block_length, lo = p.gen_start + active * BL, base = b * BL;
  int64_t* rsb = kp.rs + b * prr::kRsCols;
  const int64_t step = __ldcg(rsb + prr::kRsStep), sched = __ldcg(rsb + prr::kRsSchedN),
                nfe = __ldcg(rsb + prr::kRsNfe);
  const double ninf = -std::numeric_limits<double>::infinity();

  // masks in the block and usable candidates; keys into the sort buffer (padding sorts last)
  int64_t n_masked = 0, n_usable = 0, n_pass = 0;  // n_pass: usable keys >= param (Threshold, PRR; radix path)
  uint64_t lo_bits = ~0ull, hi_bits = 0;            // the usable keys' lowest / highest order_bits (radix path)
  const bool in_smem = BL <= kSortCap;
  // blocks of 33 .. kSortCap positions select by radix, not a sort (Factor, EntropyBound: unless more than their
  // floor may commit)
  const bool by_radix = BL > 32 && in_smem && kp.select_sort == 0;
  int64_t n2 = 1;
  while (n2 < BL) n2 <<= 1;
  __shared__ int64_t s_cand[32];  // block_length <= 32: the candidates in rank order
  if (BL <= 32) {
    // one warp: a candidate per lane, the same bitonic network in registers (shuffles instead of 15 CTA barriers),
    // counts by ballot; one barrier publishes the sorted keys and the counts
    __shared__ int64_t s_counts[2];
    if (tid < 32) {
      const int lane = tid;
      double k = ninf;
      int32_t pos = INT32_MAX;
      int64_t f = 0, cand = 0;
      if (lane < BL) {  // flags, key and candidate in one round trip
        f = __ldcg(ws.flags + base + lane);
        const int64_t kb = __ldcg(ws.key + base + lane);
        cand = __ldcg(ws.cand + base + lane);
        if (f & kFlagUsable) {
          k = __longlong_as_double(kb);
          pos = lane;
        }
      }
      const unsigned masked_bits = __ballot_sync(kFull, (f & kFlagMasked) != 0),
                     usable_bits = __ballot_sync(kFull, (f & kFlagUsable) != 0);
      for (int kk = 2; kk <= 32; kk <<= 1) {
        for (int jj = kk >> 1; jj > 0; jj >>= 1) exchange_lanes(k, pos, lane, kk, jj);
      }
      const int64_t cand_sorted = __shfl_sync(kFull, cand, pos & 31);
      if (lane < n2) {
        srt.key[lane] = k;
        srt.pos[lane] = pos;
        s_cand[lane] = cand_sorted;  // the candidate of the lane-th ranked position (usable ones only are read)
      }
      if (lane == 0) {
        s_counts[0] = __popc(masked_bits);
        s_counts[1] = __popc(usable_bits);
      }
    }
    __syncthreads();
    n_masked = s_counts[0];
    n_usable = s_counts[1];
  } else if (in_smem) {
    // flags and keys loaded together, several iterations in flight (a 1024-position block is 16 iterations per
    // thread of a 64-thread CTA); the usable keys' order_bits range for radix_cut
#pragma unroll 4
    for (int64_t i = tid; i < n2; i += nt) {
      double k = ninf;
      int32_t pos = INT32_MAX;
      if (i < BL) {
        const int64_t f = __ldcg(ws.flags + base + i), kb = __ldcg(ws.key + base + i);
        n_masked += (f & kFlagMasked) ? 1 : 0;
        if (f & kFlagUsable) {
          ++n_usable;
          k = __longlong_as_double(kb);
          pos = static_cast<int32_t>(i);
          n_pass += k >= p.param ? 1 : 0;
          const uint64_t u = order_bits(k);
          lo_bits = min(lo_bits, u);
          hi_bits = max(hi_bits, u);
        }
      }
      srt.key[i] = k;
      srt.pos[i] = pos;
    }
  } else {
    for (int64_t i = tid; i < BL; i += nt) {
      const int64_t f = __ldcg(ws.flags + base + i);
      n_masked += (f & kFlagMasked) ? 1 : 0;
      n_usable += (f & kFlagUsable) ? 1 : 0;
    }
  }
  TL(16);
  if (BL > 32 && in_smem) {  // the three counts (<= kSortCap < 2^21) and the key range in one reduction
    uint64_t r[3] = {static_cast<uint64_t>((n_masked << 42) | (n_usable << 21) | n_pass), lo_bits, hi_bits};
    block_reduce_all(r, srt.wred, [](int e, uint64_t x, uint64_t y) {
      return e == 0 ? x + y : e == 1 ? min(x, y) : max(x, y);
    });
    n_masked = static_cast<int64_t>(r[0] >> 42);
    n_usable = static_cast<int64_t>((r[0] >> 21) & 0x1fffff);
    n_pass = static_cast<int64_t>(r[0] & 0x1fffff);
    lo_bits = r[1];
    hi_bits = r[2];
  } else if (BL > 32) {  // both counts (< 2^31) in one reduction
    const int64_t both = block_count_all((n_masked << 32) | n_usable, iscratch);
    n_masked = both >> 32;
    n_usable = both & 0xffffffffLL;
  }
  const int64_t sched_n = step == 0 ? n_masked : sched;
  const int64_t k_sched = prr::schedule_k(sched_n, p.steps_per_block, step);

  const double* keys_sorted = nullptr;
  const int32_t* pos_smem = nullptr;
  const int64_t* pos_glob = nullptr;
  int64_t n_commit = -1;  // -1: decided after a sort
  const auto commit_token = [&](int64_t pos, int64_t token) {  // block position pos takes token
    kp.x[b * p.L + lo + pos] = token;
    kp.commit[b * p.L + lo + pos] = true;
  };
  const auto commit_pos = [&](int64_t pos) { commit_token(pos, __ldcg(ws.cand + base + pos)); };
  if (by_radix) {
    // how many: from counts for the rules that need no order; Factor and EntropyBound start from their floor and
    // check below that nothing past it passes their rule
    const bool counted = !prr::commit_count_needs_order(p.policy);
    const int64_t c = prr::commit_count_from(p.policy, n_usable, k_sched, counted ? n_pass : 0, p.union_schedule);
    if (c == 0) {
      n_commit = 0;
    } else if (c == n_usable) {  // every usable candidate (e.g. the block's last step); the reduction's barrier has
                                 // published srt
      for (int64_t i = tid; i < BL; i += nt)
        if (srt.pos[i] != INT32_MAX) commit_pos(i);
      n_commit = c;
    } else {
      RadixCut cut;  // srt as loaded: published by the reduction's barrier
      bool decided;
      if (p.policy == prr::kFactor) {
        // the c-th key passes Factor's test at its rank iff c keys do (the test is monotone in the key)
        decided = radix_cut<true>(srt, static_cast<int>(BL), static_cast<int>(c), lo_bits, hi_bits, [&](double key) {
          return prr::factor_passes(c - 1, key, p.param);
        }, cut);
      } else {
        decided = radix_cut<false>(srt, static_cast<int>(BL), static_cast<int>(c), lo_bits, hi_bits,
                                   [](double) { return false; }, cut);
        if (p.policy == prr::kEntropyBound)
          decided = cut_entropy_exceeds(srt, static_cast<int>(BL), cut, static_cast<int>(c), p.param);
      }
      if (decided) {
        commit_cut(srt, static_cast<int>(BL), cut, commit_pos);
        n_commit = c;
      }
    }
  }
  // Rank the candidates, unless the radix select has committed them already.
  const auto sort_candidates = [&] {
    if (n_commit >= 0) return;
    if (BL <= 32) {
      keys_sorted = srt.key;
      pos_smem = srt.pos;
    } else if (in_smem) {
      __syncthreads();
      // bitonic sort into "ranks_before" order (key desc, position asc): a total order, so this is the stable sort
      bitonic_sort_smem(srt, static_cast<int>(n2));
      keys_sorted = srt.key;
      pos_smem = srt.pos;
    } else {
      // large blocks: rank sort through the workspace (O(n^2 / threads); correct for any block_length)
      for (int64_t i = tid; i < BL; i += nt) {
        if (!(__ldcg(ws.flags + base + i) & kFlagUsable)) continue;
        const double ki = __longlong_as_double(__ldcg(ws.key + base + i));
        int64_t rank = 0;
        for (int64_t jj = 0; jj < BL; ++jj) {
          if (!(__ldcg(ws.flags + base + jj) & kFlagUsable)) continue;
          rank += ranks_before(__longlong_as_double(__ldcg(ws.key + base + jj)), jj, ki, i) ? 1 : 0;
        }
        ws.skey[base + rank] = __double_as_longlong(ki);
        ws.spos[base + rank] = i;
      }
      __threadfence_block();
      __syncthreads();
      keys_sorted = reinterpret_cast<const double*>(ws.skey + base);
      pos_glob = ws.spos + base;
    }
  };
  sort_candidates();

  TL(17);
  if (n_commit < 0) {
    // how many to commit (serial fp64 rule, prr/select.h), then the first n_commit of the sorted candidates
    __shared__ int64_t s_commit;
    if (tid == 0) s_commit = prr::commit_count(p.policy, keys_sorted, n_usable, k_sched, p.param, p.union_schedule);
    __syncthreads();
    n_commit = s_commit;
    TL(18);
    for (int64_t i = tid; i < n_commit; i += nt) {
      const int64_t pos = in_smem ? static_cast<int64_t>(pos_smem[i]) : __ldcg(pos_glob + i);
      if (BL <= 32) {
        commit_token(pos, s_cand[i]);
      } else {
        commit_pos(pos);
      }
    }
  }

  TL(19);
  // bookkeeping: the step is consumed; leave the block after block_cap steps, or once it is empty (adaptive)
  const bool empty = n_masked - n_commit == 0;
  int64_t next = active;
  if (step + 1 >= p.block_cap || (p.adaptive && empty)) {
    next = active + 1;
    if (p.adaptive) {  // skip blocks that hold no masks (later blocks: untouched by this step's commits)
      for (; next < p.num_blocks; ++next) {
        const int64_t blo = p.gen_start + next * BL;
        int any = 0;
        for (int64_t c = tid; c < BL; c += nt) any |= kp.x[b * p.L + blo + c] == p.mask_id;
        if (__syncthreads_or(any)) break;
      }
    }
  }
  if (tid == 0) {
    const bool adv = next != active;
    rsb[prr::kRsStep] = adv ? 0 : step + 1;
    rsb[prr::kRsNfe] = nfe + 1;
    if (step == 0) rsb[prr::kRsSchedN] = n_masked;
    if (p.B == 1) {
      rsb[prr::kRsBlock] = next;  // every CTA of the grid has read row_state already
      *ws.grid_ctr = 0;           // the row claims (dyn_rows): every CTA's last claim came before its arrival
    } else {
      ws.staged_block[b] = next;  // copied by the last CTA of the grid
    }
    ws.seq_ctr[b] = 0;  // ready for the next launch (and graph replay)
  }
  __syncthreads();
}

}  // namespace prr::gpu
