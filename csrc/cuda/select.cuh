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
// LocalLeap, SlowFast, KLASS and R2's passes (prr/rules.h) decide per block position, not by a prefix: when
// StepParams::needs_rules the selection always sorts, commits the base rule's prefix (the rules before LocalLeap;
// the newer base rules commit none there), and then the CTA runs the rules over the block (run_block_rules): a thread
// per position on the confidences and flags it has staged in shared memory (BlockStaged, rules_cta.cuh).
#pragma once

#include <cstdint>
#include <limits>

#include "config.h"
#include "kernel_args.cuh"
#include "primitives.cuh"
#include "rules_cta.cuh"
#include "prr/params.h"
#include "prr/rules.h"
#include "prr/select.h"
#include "timeline.cuh"

namespace prr::gpu {

// The selecting CTA's shared memory: the block's keys and positions in rank order, and the radix select's scratch.
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
static_assert(sizeof(SortSmem::hist) >= kSortCap, "run_block_rules stages a flag byte per position in hist");

// The ranking of the candidates: key descending, then block position ascending (a total order).
__device__ __forceinline__ bool ranks_before(double ka, int64_t pa, double kb, int64_t pb) {
  return ka > kb || (ka == kb && pa < pb);
}

// The compare-exchange rule of the bitonic network's register stages: elements a (the lower index) and b swap so as
// to run up (ranks_before order) or down. Equal elements (the padding's (-inf, INT32_MAX)) may swap: a no-op.
// bitonic_stage tests the strict form instead, which leaves equal elements without a shared-memory store.
__device__ __forceinline__ bool out_of_order(double ka, int32_t pa, double kb, int32_t pb, bool up) {
  return up != ranks_before(ka, pa, kb, pb);
}

// Bitonic sort of the first n entries of `sort` (n a power of two, 64 <= n <= kSortCap) into ranks_before order, by
// the CTA. The stages (k, j) with j <= 32 only compare elements inside one 64-element chunk, so they run in registers:
// a warp takes a chunk (elements e and e + 32 in lane e % 32), does the j = 32 stage in-thread and j < 32 by
// shuffles, and stores it back: the levels k <= 64 in one such pass, then one pass per level after its j >= 64
// stages, which go through shared memory pair by pair (pair q compares i = 2q - (q mod j) and i + j, so every thread
// has work). At n = 1024: 10 shared-memory stages, 5 register passes and 15 CTA barriers, where a network with a CTA
// barrier after every stage takes 55.
__device__ __forceinline__ void bitonic_stage(SortSmem& sort, int n, int k, int j) {
  for (int q = threadIdx.x; q < n / 2; q += blockDim.x) {
    const int i = 2 * q - (q & (j - 1)), ixj = i + j;
    const double ki = sort.key[i], kj = sort.key[ixj];
    const int32_t pi = sort.pos[i], pj = sort.pos[ixj];
    const bool up = (i & k) == 0;
    if (up ? ranks_before(kj, pj, ki, pi) : ranks_before(ki, pi, kj, pj)) {
      sort.key[i] = kj;
      sort.key[ixj] = ki;
      sort.pos[i] = pj;
      sort.pos[ixj] = pi;
    }
  }
}

// Stage (k, j < 32) for element e held by this lane, its partner e ^ j in lane ^ j: the lower index keeps the element
// that ranks first in an ascending run (up), the other in a descending one.
__device__ __forceinline__ void exchange_lanes(double& key, int32_t& pos, int e, int k, int j) {
  const double ok = __shfl_xor_sync(kAllLanes, key, j);
  const int32_t op = __shfl_xor_sync(kAllLanes, pos, j);
  const bool up = (e & k) == 0, lower = (e & j) == 0;
  if (out_of_order(key, pos, ok, op, lower == up)) {
    key = ok;
    pos = op;
  }
}

// Levels k_lo .. k_hi (powers of two, stages j = min(k / 2, 32) .. 1) on every 64-element chunk, a warp per chunk.
__device__ inline void bitonic_chunk_levels(SortSmem& sort, int n, int k_lo, int k_hi) {
  const int lane = threadIdx.x & 31;
  for (int c = (threadIdx.x >> 5) * 64; c < n; c += (blockDim.x >> 5) * 64) {
    const int e0 = c + lane, e1 = e0 + 32;
    double k0 = sort.key[e0], k1 = sort.key[e1];
    int32_t p0 = sort.pos[e0], p1 = sort.pos[e1];
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
    sort.key[e0] = k0;
    sort.key[e1] = k1;
    sort.pos[e0] = p0;
    sort.pos[e1] = p1;
  }
}

// The bitonic sort described above bitonic_stage: the register passes, and the shared-memory stages between them.
__device__ inline void bitonic_sort_smem(SortSmem& sort, int n) {
  bitonic_chunk_levels(sort, n, 2, 64);
  for (int k = 128; k <= n; k <<= 1) {
    __syncthreads();
    for (int j = k >> 1; j > 32; j >>= 1) {
      bitonic_stage(sort, n, k, j);
      __syncthreads();
    }
    bitonic_chunk_levels(sort, n, k, k);
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

// Find the cut of the c (1 <= c < usable candidates) candidates that rank first among the first n entries of `sort`,
// without sorting them: an MSD radix select over the key bits, 8 bits per pass, narrows down the c-th key until its
// digit's bucket holds exactly what is still needed (then the whole bucket is taken) or, for a run of equal keys
// across the boundary, to the exact key. sort.pos[i] is i for a usable candidate, INT32_MAX otherwise. `lo_bits` /
// `hi_bits`: the lowest and highest order_bits of the usable keys. Every key shares their common leading bits, so the
// first digit is the 8 bits from their highest differing bit down: a first digit at bit 63 would put every key in one
// bucket (probabilities share the sign and the top exponent bits), whose shared-memory atomics all collide. From the
// highest differing bit the select takes 1.85 passes on average instead of 2.9 on the benchmark's keys, 3.0 instead
// of 4.1 on a confident model's (benchmarks/dev/radix_passes.py). At 1024 positions on 4 warps that is a few passes
// of 2 barriers, against the bitonic network's 15 barriers and ~45 dependent shuffle stages per 64-element chunk.
// kVeto: veto(key) is a test that holds on a prefix of the candidates in rank order (monotone in the key); if it holds
// for c or more of them, i.e. for the c-th, false is returned at once (Factor: then ranks past the floor may pass too,
// and the caller sorts). It is counted in the first pass, at no extra barrier.
template <bool kVeto, typename Veto>
__device__ bool radix_cut(SortSmem& sort, int n, int c, uint64_t lo_bits, uint64_t hi_bits, Veto veto, RadixCut& cut) {
  const int tid = threadIdx.x, threads = blockDim.x, lane = tid & 31, warp = tid >> 5;
  for (int d = tid; d < 512; d += threads) sort.hist[d >> 8][d & 255] = 0;
  if (kVeto && tid == 0) sort.n_veto = 0;
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
    for (int i = tid; i < n; i += threads) {
      if (sort.pos[i] == INT32_MAX) continue;
      const double key = sort.key[i];
      const uint64_t u = order_bits(key);
      if ((u & mask) == prefix) atomicAdd(&sort.hist[buf][(u >> low) & digit_mask], 1u);
      if (kVeto && first) vetoes += veto(key) ? 1 : 0;
    }
    if (kVeto && first) {
      vetoes = static_cast<int>(__reduce_add_sync(kAllLanes, static_cast<unsigned>(vetoes)));
      if (lane == 0 && vetoes) atomicAdd(&sort.n_veto, vetoes);
    }
    for (int d = tid; d < 256; d += threads) sort.hist[buf ^ 1][d] = 0;
    __syncthreads();
    if (kVeto && first && sort.n_veto >= c) return false;
    if (warp == 0) {
      // the digit d with #(digits above d) < need <= #(digits >= d): lane l sums bins 8l .. 8l + 7, a suffix scan
      // over the lanes finds the lane, then the lane walks its bins from the top
      uint32_t h[8], own = 0;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        h[e] = sort.hist[buf][8 * lane + e];
        own += h[e];
      }
      uint32_t upto = own;  // bins of lanes >= this one
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
        const uint32_t o = __shfl_down_sync(kAllLanes, upto, off);
        if (lane + off < 32) upto += o;
      }
      uint32_t acc = upto - own;  // bins of the lanes above
      if (acc < static_cast<uint32_t>(need) && static_cast<uint32_t>(need) <= upto) {
#pragma unroll
        for (int e = 7; e >= 0; --e) {
          if (acc + h[e] >= static_cast<uint32_t>(need)) {
            sort.sel[0] = 8 * lane + e;
            sort.sel[1] = need - static_cast<int>(acc);
            sort.sel[2] = static_cast<int>(h[e]);
            break;
          }
          acc += h[e];
        }
      }
    }
    __syncthreads();
    prefix |= static_cast<uint64_t>(sort.sel[0]) << low;
    mask |= digit_mask << low;
    need = sort.sel[1];
    equal = sort.sel[2];
    if (need == equal) break;  // the whole bucket is taken: no need to resolve the key further
  }
  cut = RadixCut{prefix, mask, need, equal};
  return true;
}

// Commit the candidates of a cut: commit(i) for each of the c positions that rank first.
template <typename Commit>
__device__ void commit_cut(SortSmem& sort, int n, const RadixCut& cut, Commit commit) {
  const int tid = threadIdx.x, threads = blockDim.x, lane = tid & 31, warp = tid >> 5;
  if (cut.need == cut.equal) {  // everything at or above the prefix (the usual case)
    for (int i = tid; i < n; i += threads) {
      if (sort.pos[i] == INT32_MAX) continue;
      const uint64_t u = order_bits(sort.key[i]);
      if (cut.above(u) || cut.on(u)) commit(i);
    }
    return;
  }
  // equal keys across the boundary: of those, the lowest positions first, by a scan over chunks of threads positions
  // (ballot within a warp, counts across warps)
  int before_chunk = 0;
  for (int i0 = 0; i0 < n; i0 += threads) {
    const int i = i0 + tid;
    uint64_t u = 0;
    const bool usable = i < n && sort.pos[i] != INT32_MAX;
    if (usable) u = order_bits(sort.key[i]);
    const bool tie = usable && cut.on(u);
    const unsigned ties = __ballot_sync(kAllLanes, tie);
    if (lane == 0) sort.wcount[warp] = __popc(ties);
    __syncthreads();
    int rank = before_chunk + __popc(ties & ((1u << lane) - 1u)), chunk = 0;
    for (int w = 0; w < (threads >> 5); ++w) {
      rank += w < warp ? sort.wcount[w] : 0;
      chunk += sort.wcount[w];
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
__device__ inline bool cut_entropy_exceeds(SortSmem& sort, int n, const RadixCut& cut, int c, double gamma) {
  const int tid = threadIdx.x, threads = blockDim.x;
  double sum = 0.0, abs_sum = 0.0;
  for (int i = tid; i < n; i += threads) {
    if (sort.pos[i] == INT32_MAX) continue;
    const double key = sort.key[i];
    const uint64_t u = order_bits(key);
    if (cut.above(u) || (cut.on(u) && cut.need == cut.equal)) {
      sum -= key;
      abs_sum += fabs(key);
    }
  }
  double sums[2] = {sum, abs_sum};
  block_reduce_all(sums, sort.wsum, [](int, double x, double y) { return x + y; });  // one order: one decision
  sum = sums[0];
  abs_sum = sums[1];
  if (cut.need != cut.equal) {  // `need` of the boundary's equal keys
    const double k = key_of_order_bits(cut.prefix);
    sum -= cut.need * k;
    abs_sum += cut.need * fabs(k);
  }
  return sum - 4.0 * (c + 2) * 0x1p-53 * abs_sum > gamma;
}

// One sequence's active block as prr/rules.h reads it (the Blk interface documented there), for the one thread that
// runs the rules: the records come from the workspace and the commit mask from this launch's output, which other
// CTAs wrote (the record, the commit mask's defaults) or other threads of this CTA (the base rule's commits, before a
// barrier), so they are read with __ldcg (L1 is not coherent across CTAs). order(i) reads the rank sort's positions:
// shared memory for blocks of up to kSortCap positions, else the workspace.
struct BlockOnGpu {
  const int64_t* flag_words;  // the workspace records of the sequence's block (from its first position)
  const int64_t* cand_tokens;
  const int64_t* conf_bits;
  const int64_t* argmax_tokens;
  const int64_t* p1_bits;
  const int32_t* order_smem;  // the usable positions in rank order (nullptr: order_glob)
  const int64_t* order_glob;
  int64_t* x_block;      // the canvas row from the block's first column
  bool* commit_block;    // the commit mask row from the block's first column
  double* rule_row;      // rule_state[b]
  int64_t added;         // commits made here on positions not committed before

  __device__ __forceinline__ bool masked(int64_t j) const { return (__ldcg(flag_words + j) & kFlagMasked) != 0; }
  __device__ __forceinline__ bool usable(int64_t j) const { return (__ldcg(flag_words + j) & kFlagUsable) != 0; }
  __device__ __forceinline__ double conf(int64_t j) const { return __longlong_as_double(__ldcg(conf_bits + j)); }
  __device__ __forceinline__ int64_t cand(int64_t j) const { return __ldcg(cand_tokens + j); }
  __device__ __forceinline__ int64_t argmax(int64_t j) const { return __ldcg(argmax_tokens + j); }
  __device__ __forceinline__ float p1(int64_t j) const {
    return __uint_as_float(static_cast<unsigned>(__ldcg(p1_bits + j)));
  }
  __device__ __forceinline__ int64_t order(int64_t i) const {
    return order_smem != nullptr ? static_cast<int64_t>(order_smem[i]) : __ldcg(order_glob + i);
  }
  __device__ __forceinline__ bool committed(int64_t j) const {
    return __ldcg(reinterpret_cast<const unsigned char*>(commit_block + j)) != 0;
  }
  __device__ __forceinline__ void commit(int64_t j, int64_t token) {
    added += committed(j) ? 0 : 1;
    x_block[j] = token;
    commit_block[j] = true;
  }
  __device__ __forceinline__ double rule(int64_t j, int c) const {
    return __ldcg(rule_row + j * prr::kRuleStateCols + c);
  }
  __device__ __forceinline__ void set_rule(int64_t j, int c, double v) { rule_row[j * prr::kRuleStateCols + c] = v; }
};

// The same block with its hottest records staged in the selecting CTA's shared memory (blocks of up to kSortCap
// positions): each position's confidence (fp64) and a byte of flags (kStagedMasked / Usable / Committed), which the
// rules read across positions (neighbourhoods, windows, runs). Candidates, argmaxes, p1 and the rule state stay in
// global memory: a position's own thread reads them.
enum StagedFlag : uint8_t { kStagedMasked = 1, kStagedUsable = 2, kStagedCommitted = 4 };
struct BlockStaged : BlockOnGpu {
  const double* conf_s;
  uint8_t* flag_s;

  __device__ __forceinline__ bool masked(int64_t j) const { return (flag_s[j] & kStagedMasked) != 0; }
  __device__ __forceinline__ bool usable(int64_t j) const { return (flag_s[j] & kStagedUsable) != 0; }
  __device__ __forceinline__ bool committed(int64_t j) const { return (flag_s[j] & kStagedCommitted) != 0; }
  __device__ __forceinline__ double conf(int64_t j) const { return conf_s[j]; }
  __device__ __forceinline__ void commit(int64_t j, int64_t token) {
    added += committed(j) ? 0 : 1;
    flag_s[j] |= kStagedCommitted;
    x_block[j] = token;
    commit_block[j] = true;
  }
};

// Entering a block (step 0) resets the sequence's rule state as the CPU op does, for every policy: no streak at any
// position, no kept distribution (KLASS count -1) except at the masked positions under KLASS, whose rows have just
// counted (step_kernel.cuh, phase 3), and a fresh SlowFast sub-cycle in row_state. By the selecting CTA, before the
// rules run; nothing else reads these words in the launch (the rows' phase reads no streak state).
__device__ inline void reset_rules_on_block_entry(const KernelArgs& args, const Workspace& ws, int64_t b) {
  const StepParams& p = args.p;
  const int64_t BL = p.block_length;
  double* rule_row = args.rule_state + b * BL * prr::kRuleStateCols;
  const bool klass = p.policy == prr::kKLASS;
  for (int64_t i = threadIdx.x; i < BL * prr::kRuleStateCols; i += blockDim.x) {
    const int64_t j = i / prr::kRuleStateCols;
    const int c = static_cast<int>(i % prr::kRuleStateCols);
    if (c == prr::kRsKlCount) {
      if (!(klass && (__ldcg(ws.flags + b * BL + j) & kFlagMasked))) rule_row[i] = -1.0;
    } else {
      rule_row[i] = c == prr::kRsStreakToken ? -1.0 : 0.0;
    }
  }
  int64_t* seq_state = args.row_state + b * prr::kRsCols;
  for (int c = prr::kRsSpanStart + static_cast<int>(threadIdx.x); c < prr::kRsCols; c += blockDim.x) seq_state[c] = 0;
}

// The rules of prr/rules.h on sequence b's block, after the base rule's commits, in the CPU op's order; run by the
// whole CTA. Returns how many positions the step commits in all: n_base (the base rule's) plus the rules' new ones.
// conf_stage / flag_stage: BL entries of the selecting CTA's shared memory that are free once the block is ranked
// (the sort's keys, the radix histograms): the CTA stages the records there and runs the rules a thread per position
// (rules_cta.cuh). nullptr (blocks of more than kSortCap positions, ranked through the workspace): thread 0 runs
// rules.h's serial drivers on the workspace. Out of line: once per sequence and step, off the old rules' path.
static __device__ __noinline__ int64_t run_block_rules(const KernelArgs& args, const Workspace& ws, int64_t b,
                                                      int64_t lo, int64_t nfe, int64_t n_usable, int64_t k_sched,
                                                      int64_t n_base, const int32_t* order_smem,
                                                      const int64_t* order_glob, double* conf_stage,
                                                      uint8_t* flag_stage) {
  const StepParams& p = args.p;
  const prr::RuleParams& rp = p.rule;
  const int64_t BL = p.block_length, base = b * BL;
  const uint64_t seed = static_cast<uint64_t>(__ldg(args.seed + b));
  int64_t* seq_state = args.row_state + b * prr::kRsCols;  // SlowFast's sub-cycle
  __shared__ unsigned long long s_added;
  __shared__ RulesSmem rules_smem;
  bool* commit_row = args.commit + b * p.L + lo;
  BlockOnGpu blk{ws.flags + base, ws.cand + base, ws.conf + base, ws.argmax + base, ws.p1 + base, order_smem,
                 order_glob, args.x + b * p.L + lo, commit_row, args.rule_state + base * prr::kRuleStateCols, 0};
  if (threadIdx.x == 0) s_added = 0;
  __threadfence_block();
  __syncthreads();  // the base rule's commits and the block-entry resets are visible to the CTA
  if (conf_stage == nullptr) {
    if (threadIdx.x == 0) {
      prr::run_rules(blk, p, n_usable, k_sched, seed, lo, nfe, seq_state);
      s_added = blk.added;
    }
    __syncthreads();
    return n_base + static_cast<int64_t>(s_added);
  }
  for (int64_t j = threadIdx.x; j < BL; j += blockDim.x) {
    const int64_t f = __ldcg(ws.flags + base + j);
    conf_stage[j] = __longlong_as_double(__ldcg(ws.conf + base + j));
    flag_stage[j] = static_cast<uint8_t>(((f & kFlagMasked) ? kStagedMasked : 0) |
                                         ((f & kFlagUsable) ? kStagedUsable : 0) |
                                         (__ldcg(reinterpret_cast<const unsigned char*>(commit_row + j)) != 0
                                              ? kStagedCommitted
                                              : 0));
  }
  __syncthreads();
  BlockStaged staged{blk, conf_stage, flag_stage};  // a copy per thread: `added` counts this thread's commits
  if (p.policy == prr::kLocalLeap)
    cta_local_leap(staged, rules_smem, BL, n_usable, k_sched, p.param, rp.relaxed_tau, rp.radius);
  if (p.policy == prr::kKLASS) cta_klass(staged, BL, n_usable, k_sched, p.param, rp.kl_history);
  if (p.policy == prr::kSlowFast) cta_slow_fast(staged, rules_smem, BL, n_usable, rp, p.param, seq_state);
  if (p.r2) cta_r2(staged, rules_smem, BL, rp, seed, lo, nfe);
  if (p.policy == prr::kSlowFast) cta_slow_fast_next_cycle(staged, rules_smem, rp, seq_state);
  if (staged.added) atomicAdd(&s_added, static_cast<unsigned long long>(staged.added));
  __syncthreads();
  return n_base + static_cast<int64_t>(s_added);
}

// Select and commit the tokens of sequence b, whose active block is `active`, then do its bookkeeping: advance its
// step, NFE count and (when the block is done) block index, and zero its arrival counter for the next launch. Run by
// the whole CTA that arrived last on the sequence's counter; int_scratch: kMaxWarps words. Out of line: it runs once
// per sequence and step, in one CTA, and its code stays out of the row loop.
static __device__ __noinline__ void select_and_commit(const KernelArgs& args, const Workspace& ws, int64_t b,
                                                      int64_t active, SortSmem& sort, int64_t* int_scratch) {
  const StepParams& p = args.p;
  const int tid = threadIdx.x, threads = blockDim.x;
  // lo: the active block's first canvas column; base: the sequence's first record in the workspace
  const int64_t BL = p.block_length, lo = p.gen_start + active * BL, base = b * BL;
  int64_t* seq_state = args.row_state + b * prr::kRsCols;
  const int64_t step = __ldcg(seq_state + prr::kRsStep), sched = __ldcg(seq_state + prr::kRsSchedN),
                nfe = __ldcg(seq_state + prr::kRsNfe);
  const double ninf = -std::numeric_limits<double>::infinity();

  // masks in the block and usable candidates; keys into the sort buffer (padding sorts last)
  int64_t n_masked = 0, n_usable = 0, n_pass = 0;  // n_pass: usable keys >= param (Threshold, PRR; radix path)
  uint64_t lo_bits = ~0ull, hi_bits = 0;            // the usable keys' lowest / highest order_bits (radix path)
  const bool in_smem = BL <= kSortCap;
  // blocks of 33 .. kSortCap positions select by radix, not a sort (Factor, EntropyBound: unless more than their
  // floor may commit)
  // (Fast-dLLM's Factor variant has no radix veto test: it sorts)
  // (nor do the rules of prr/rules.h: they read the rank order)
  const bool by_radix = BL > 32 && in_smem && args.select_sort == 0 && !p.needs_rules &&
                        !(p.policy == prr::kFactor && p.rule.factor_variant == prr::kFactorFastDllm);
  int64_t n_pow2 = 1;
  while (n_pow2 < BL) n_pow2 <<= 1;
  __shared__ int64_t s_cand[32];  // block_length <= 32: the candidates in rank order
  if (BL <= 32) {
    // one warp: a candidate per lane, the same bitonic network in registers (shuffles instead of 15 CTA barriers),
    // counts by ballot; one barrier publishes the sorted keys and the counts
    __shared__ int64_t s_counts[2];
    if (tid < 32) {
      const int lane = tid;
      double k = ninf;
      int32_t pos = INT32_MAX;
      int64_t flags = 0, cand = 0;
      if (lane < BL) {  // flags, key and candidate in one round trip
        flags = __ldcg(ws.flags + base + lane);
        const int64_t key_bits = __ldcg(ws.key + base + lane);
        cand = __ldcg(ws.cand + base + lane);
        if (flags & kFlagUsable) {
          k = __longlong_as_double(key_bits);
          pos = lane;
        }
      }
      const unsigned masked_bits = __ballot_sync(kAllLanes, (flags & kFlagMasked) != 0),
                     usable_bits = __ballot_sync(kAllLanes, (flags & kFlagUsable) != 0);
      for (int kk = 2; kk <= 32; kk <<= 1) {
        for (int jj = kk >> 1; jj > 0; jj >>= 1) exchange_lanes(k, pos, lane, kk, jj);
      }
      const int64_t cand_sorted = __shfl_sync(kAllLanes, cand, pos & 31);
      if (lane < n_pow2) {
        sort.key[lane] = k;
        sort.pos[lane] = pos;
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
    for (int64_t i = tid; i < n_pow2; i += threads) {
      double k = ninf;
      int32_t pos = INT32_MAX;
      if (i < BL) {
        const int64_t flags = __ldcg(ws.flags + base + i), key_bits = __ldcg(ws.key + base + i);
        n_masked += (flags & kFlagMasked) ? 1 : 0;
        if (flags & kFlagUsable) {
          ++n_usable;
          k = __longlong_as_double(key_bits);
          pos = static_cast<int32_t>(i);
          n_pass += k >= p.param ? 1 : 0;
          const uint64_t u = order_bits(k);
          lo_bits = min(lo_bits, u);
          hi_bits = max(hi_bits, u);
        }
      }
      sort.key[i] = k;
      sort.pos[i] = pos;
    }
  } else {
    for (int64_t i = tid; i < BL; i += threads) {
      const int64_t flags = __ldcg(ws.flags + base + i);
      n_masked += (flags & kFlagMasked) ? 1 : 0;
      n_usable += (flags & kFlagUsable) ? 1 : 0;
    }
  }
  TL(kTlSelLoaded);
  if (BL > 32 && in_smem) {  // the three counts (packed in one word) and the key range in one reduction
    constexpr int kBits = 21;  // bits per count: each is at most kSortCap < 2^21
    constexpr int64_t kCountMask = (int64_t(1) << kBits) - 1;
    uint64_t r[3] = {static_cast<uint64_t>((n_masked << (2 * kBits)) | (n_usable << kBits) | n_pass), lo_bits, hi_bits};
    block_reduce_all(r, sort.wred, [](int e, uint64_t x, uint64_t y) {
      return e == 0 ? x + y : e == 1 ? min(x, y) : max(x, y);
    });
    n_masked = static_cast<int64_t>(r[0] >> (2 * kBits));
    n_usable = static_cast<int64_t>((r[0] >> kBits) & kCountMask);
    n_pass = static_cast<int64_t>(r[0] & kCountMask);
    lo_bits = r[1];
    hi_bits = r[2];
  } else if (BL > 32) {  // both counts (< 2^31, packed in one word) in one reduction
    const int64_t both = block_count_all((n_masked << 32) | n_usable, int_scratch);
    n_masked = both >> 32;
    n_usable = both & 0xffffffffLL;
  }
  const int64_t sched_n = step == 0 ? n_masked : sched;
  const int64_t k_sched = prr::step_k(p, sched_n, step);

  const double* keys_sorted = nullptr;
  const int32_t* pos_smem = nullptr;
  const int64_t* pos_glob = nullptr;
  int64_t n_commit = -1;  // -1: not yet decided (the radix select decides it, else the count after the sort)
  const auto commit_token = [&](int64_t pos, int64_t token) {  // block position pos takes token
    args.x[b * p.L + lo + pos] = token;
    args.commit[b * p.L + lo + pos] = true;
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
                                 // published sort
      for (int64_t i = tid; i < BL; i += threads)
        if (sort.pos[i] != INT32_MAX) commit_pos(i);
      n_commit = c;
    } else {
      RadixCut cut;  // sort as loaded: published by the reduction's barrier
      bool decided;
      if (p.policy == prr::kFactor) {
        // the c-th key passes Factor's test at its rank iff c keys do (the test is monotone in the key)
        decided = radix_cut<true>(sort, static_cast<int>(BL), static_cast<int>(c), lo_bits, hi_bits, [&](double key) {
          return prr::factor_passes(c - 1, key, p.param);
        }, cut);
      } else {
        decided = radix_cut<false>(sort, static_cast<int>(BL), static_cast<int>(c), lo_bits, hi_bits,
                                   [](double) { return false; }, cut);
        if (p.policy == prr::kEntropyBound)
          decided = cut_entropy_exceeds(sort, static_cast<int>(BL), cut, static_cast<int>(c), p.param);
      }
      if (decided) {
        commit_cut(sort, static_cast<int>(BL), cut, commit_pos);
        n_commit = c;
      }
    }
  }
  // Rank the candidates, unless the radix select has committed them already.
  const auto sort_candidates = [&] {
    if (n_commit >= 0) return;
    if (BL <= 32) {
      keys_sorted = sort.key;
      pos_smem = sort.pos;
    } else if (in_smem) {
      __syncthreads();
      // bitonic sort into "ranks_before" order (key desc, position asc): a total order, so this is the stable sort
      bitonic_sort_smem(sort, static_cast<int>(n_pow2));
      keys_sorted = sort.key;
      pos_smem = sort.pos;
    } else {
      // large blocks: rank sort through the workspace (O(n^2 / threads); correct for any block_length)
      for (int64_t i = tid; i < BL; i += threads) {
        if (!(__ldcg(ws.flags + base + i) & kFlagUsable)) continue;
        const double ki = __longlong_as_double(__ldcg(ws.key + base + i));
        int64_t rank = 0;
        for (int64_t jj = 0; jj < BL; ++jj) {
          if (!(__ldcg(ws.flags + base + jj) & kFlagUsable)) continue;
          rank += ranks_before(__longlong_as_double(__ldcg(ws.key + base + jj)), jj, ki, i) ? 1 : 0;
        }
        ws.sorted_key[base + rank] = __double_as_longlong(ki);
        ws.sorted_pos[base + rank] = i;
      }
      __threadfence_block();
      __syncthreads();
      keys_sorted = reinterpret_cast<const double*>(ws.sorted_key + base);
      pos_glob = ws.sorted_pos + base;
    }
  };
  sort_candidates();

  TL(kTlSelSorted);
  if (n_commit < 0) {
    // how many to commit (serial fp64 rule, prr/select.h), then the first n_commit of the sorted candidates; the
    // base rules of prr/rules.h (LocalLeap and later) commit no prefix
    __shared__ int64_t s_commit;
    if (tid == 0)
      s_commit = p.policy >= prr::kLocalLeap ? 0
                                             : prr::commit_count(p.policy, keys_sorted, n_usable, k_sched, p.param,
                                                                 p.union_schedule, p.rule.factor_variant);
    __syncthreads();
    n_commit = s_commit;
    TL(kTlSelCounted);
    for (int64_t i = tid; i < n_commit; i += threads) {
      const int64_t pos = in_smem ? static_cast<int64_t>(pos_smem[i]) : __ldcg(pos_glob + i);
      if (BL <= 32) {
        commit_token(pos, s_cand[i]);
      } else {
        commit_pos(pos);
      }
    }
  }

  if (step == 0) reset_rules_on_block_entry(args, ws, b);
  if (p.needs_rules)
    n_commit = run_block_rules(args, ws, b, lo, nfe, n_usable, k_sched, n_commit, in_smem ? pos_smem : nullptr,
                               pos_glob, in_smem ? sort.key : nullptr,
                               in_smem ? reinterpret_cast<uint8_t*>(sort.hist) : nullptr);

  TL(kTlSelCommitted);
  // bookkeeping: the step is consumed; leave the block after block_cap steps, or once it is empty (adaptive)
  const bool empty = n_masked - n_commit == 0;
  int64_t next = active;
  if (step + 1 >= p.block_cap || (p.adaptive && empty)) {
    next = active + 1;
    if (p.adaptive) {  // skip blocks that hold no masks (later blocks: untouched by this step's commits)
      for (; next < p.num_blocks; ++next) {
        const int64_t next_lo = p.gen_start + next * BL;
        int any = 0;
        for (int64_t c = tid; c < BL; c += threads) any |= prr::is_open(args.x[b * p.L + next_lo + c], p.mask_id);
        if (__syncthreads_or(any)) break;
      }
    }
  }
  if (tid == 0) {
    const bool adv = next != active;
    seq_state[prr::kRsStep] = adv ? 0 : step + 1;
    seq_state[prr::kRsNfe] = nfe + 1;
    if (step == 0) seq_state[prr::kRsSchedN] = n_masked;
    if (p.B == 1) {
      seq_state[prr::kRsBlock] = next;  // every CTA of the grid has read row_state already
      *ws.grid_counter = 0;             // the row claims (claim_rows): every CTA's last claim precedes its arrival
    } else {
      ws.staged_block[b] = next;  // copied by the last CTA of the grid
    }
    ws.seq_counter[b] = 0;  // ready for the next launch (and graph replay)
  }
  __syncthreads();
}

}  // namespace prr::gpu
