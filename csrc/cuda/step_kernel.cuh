// step_kernel.cuh — the step kernel: the whole prr_ext::step in ONE launch.
//
// Shape (the CPU twin is csrc/cpu/step_cpu.cpp; the spec is prr_ext/reference.py; docs/cuda.md explains the design):
//   grid    = thread-block CLUSTERS of `cs` CTAs (1..8), one per (sequence b, block position j) = B * block_length
//           rows, or as many as are co-resident (persistent), each then taking row after row (one CTA per row: the
//           next row claimed from a counter; clusters: cid, cid + grid, ...) and bulk-prefetching its next tile / row
//           into L2.
//   phase 0 every CTA reads the active block (min of row_state[:, 0]) and whether canvas column lo + j is masked;
//           clusters of unmasked / idle positions fill their share of the default outputs and leave at once, so
//           only the rows of masked positions inside the active block are read from HBM.
//   phase 1 each CTA of a masked position's cluster loads its slice of the logits row into registers (16-byte
//           loads, all in flight before any math), computes the row statistics of its slice in two register sweeps
//           per vector (prr::tile_stats2; for bf16/fp16 tile_stats_packed: top-2 on packed pairs, then one
//           exponential sweep per tile; Philox Gumbel-max when sampling) and reduces them over the CTA in fixed
//           trees (block max, one rebase per thread, then sums / top-2 / sample: RowStats::merge reassociated).
//   phase 2 the partials meet in the leader CTA's shared memory (DSMEM) behind a cluster barrier and are merged in
//           rank order (prr::RowStats::merge); the leader derives the candidate, its confidence, p1/p2/entropy, the
//           trajectory features, the PRR controller (warp-parallel prr::dense_unit) and the policy's key. PRR's
//           "temperature" shaping needs sum exp((l - m) / T) over the row: every CTA of the cluster runs the same
//           merge + controller (bit-identical), sums its slice from the registers it still holds, and the leader adds
//           the cs partials — the row is read from HBM once.
//   phase 3 last-block-done per sequence: every CTA arrives once on its sequence's counter (a finished row's
//           leader arrives for its whole cluster); the last arrival ranks the block's candidates (key desc, block
//           position asc): for block_length <= 32 a bitonic sort in one warp's registers; above, a radix select of
//           the first prr::commit_count_from (for Factor and EntropyBound their floor, once a count or a sum shows
//           that nothing past it commits), else a bitonic sort in SMEM and prr::commit_count. It writes the tokens
//           into x, does the bookkeeping, then resets the counter. With B > 1 the block index of row_state is staged
//           and copied by the last CTA of the grid (a second counter), because every CTA of the grid reads
//           row_state[:, 0].
//   Nothing is written that another CTA may still need to read: the counters order every read before the writes.
//
// Numerics: fp32 (fp64 in confidence_dtype=float64 mode) with fixed reduction trees and no float atomics, so the
// result is deterministic; the bulk exponentials use the hardware ex2 (prr::exp2_bulk), the reported/ranked
// probabilities exp_c. Discrete decisions (argmax, sampled token, bad-row test) follow the shared headers exactly.
#pragma once

#include <cooperative_groups.h>

#include <cstdint>
#include <limits>

#include "config.h"
#include "kernel_args.cuh"
#include "primitives.cuh"
#include "prr/controller.h"
#include "prr/params.h"
#include "prr/philox.h"
#include "prr/row_stats.h"
#include "select.cuh"
#include "tile.cuh"
#include "timeline.cuh"

namespace prr::gpu {

namespace cg = cooperative_groups;

// Per-row inputs of the controller features, gathered by the leader CTA and read by the others through DSMEM.
struct RowInfo {
  int64_t masks_in_block, masks_in_row;
  int64_t traj0, traj1;  // stored trajectory of this block position (as of the start of the step)
  int64_t plen;          // the sequence's true prompt length (PRR features)
  float prev_p1;
};

// What the merge + finalisation of a row produces.
struct RowOut {
  int usable;
  int64_t cand;
  double key;
  float st[prr::kNumStats];
  int64_t traj0, traj1;
  float new_prev;
  float mf, inv_t;  // temperature shaping: the row max (fp32) and 1 / T
  float lc;         // the candidate's logit (fp32), so that the shaping does not read it again
};

// Scalars every thread of the CTA needs (broadcast through shared memory).
struct CtaInfo {
  int64_t active, lo, row_offset, col, r, step, nfe;
  int seq_active, masked, flags;
};
// Round a probability to the confidence dtype (bf16/fp16: round-to-nearest-even of the fp32 value, as c10 does).
__device__ __forceinline__ double round_conf(double p, int conf_dtype) {
  switch (conf_dtype) {
    case prr::kConfBF16: return static_cast<double>(__bfloat162float(__float2bfloat16_rn(static_cast<float>(p))));
    case prr::kConfF16: return static_cast<double>(__half2float(__float2half_rn(static_cast<float>(p))));
    case prr::kConfF64: return p;
    default: return static_cast<double>(static_cast<float>(p));
  }
}

// The block index of sequence b's row_state, or INT64_MAX ("never active") when the row is corrupt. The CPU op
// raises on a corrupt row; this kernel cannot without a host synchronisation, so such a sequence takes no part in
// the step (commits nothing, keeps its canvas and row_state, gets the default outputs) instead of turning into
// out-of-bounds reads or writes. The predicate is the CPU op's (step_cpu.cpp).
__device__ __forceinline__ int64_t seq_block(const int64_t* rs, int64_t b, const StepParams& p) {
  const int64_t* r = rs + b * prr::kRsCols;
  const int64_t blk = __ldcg(r + prr::kRsBlock), step = __ldcg(r + prr::kRsStep), n = __ldcg(r + prr::kRsSchedN),
                nfe = __ldcg(r + prr::kRsNfe);
  const bool ok = blk >= 0 && blk <= p.num_blocks && step >= 0 && step < p.block_cap && n >= 0 &&
                  n <= p.block_length && nfe >= 0;
  return ok ? blk : std::numeric_limits<int64_t>::max();
}
// Arrive on the sequence's counter (the last arrival selects) and, with B > 1, on the grid counter (the last
// arrival publishes the staged block indices). `units`: how many CTAs this arrival stands for.
__device__ __noinline__ void arrive_and_finish(const KParams& kp, CtaInfo& ci, int64_t b, unsigned long long units,
                                  SortSmem& srt, int64_t* iscratch) {
  const StepParams& p = kp.p;
  const Ws ws(kp.ws, p.B, p.block_length);
  __syncthreads();  // the CTA's writes happen before thread 0's release fence + arrival (cumulative)
  if (threadIdx.x == 0) {
    int flags = 0;
    if (ci.seq_active) {  // the last arrival acquires the other arrivals' records before the selection reads them
      const unsigned long long target = static_cast<unsigned long long>(p.block_length) * kp.cs;
      if (arrive_acq_rel(ws.seq_ctr + b, units) + units == target) flags |= 1;
    }
    ci.flags = flags;
  }
  __syncthreads();
  TL(8);
  if (ci.flags & 1) {
    select_and_commit(kp, ws, b, ci.active, srt, iscratch);
    TL(9);
  }
  if (p.B > 1) {
    __syncthreads();
    if (threadIdx.x == 0) {
      const unsigned long long total = static_cast<unsigned long long>(p.B * p.block_length) * kp.cs;
      ci.flags = ((arrive_acq_rel(ws.grid_ctr, units) + units) & 0xffffffffull) == total ? 2 : 0;
    }
    __syncthreads();
    if (ci.flags & 2) {
      if (ci.active < p.num_blocks) {
        for (int64_t bb = threadIdx.x; bb < p.B; bb += blockDim.x) {
          int64_t* r = kp.rs + bb * prr::kRsCols;
          if (seq_block(kp.rs, bb, p) == ci.active) r[prr::kRsBlock] = __ldcg(ws.staged_block + bb);
        }
      }
      if (threadIdx.x == 0) *ws.grid_ctr = 0;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The kernel
// ---------------------------------------------------------------------------------------------------------------
// Merge the cluster's partials (in rank order) and derive everything the row contributes: candidate, confidence,
// p1/p2/entropy, trajectory, controller score and the policy's key. Run by warp 0: the scalar work in lane 0, the
// controller's features and hidden units over the lanes. Every CTA that runs it on the same partials gets the same
// bits.
//
// Lane 0 builds its result in registers and stores it once, and every value it reads from memory is read at the
// top: the row info may sit in the leader's shared memory (DSMEM) and the parameters behind the generic address of
// `kp`, so a load placed after one of the function's stores is ordered behind it and waits for a round trip of its
// own (v11's SASS: 25 such loads, one after another, 5k cycles for the PRR features).
template <typename T, typename C>
__device__ __noinline__ void finalize_row(const KParams& kp, const CtaInfo& ci, const Stats<C>* lslots,
                                          const RowInfo* linfo, RowOut& out, const float* ctrl, float* mlp_f,
                                          float* mlp_h1, float* mlp_h2, const T* row, int64_t b, int64_t j,
                                          uint64_t seed, bool sample) {
  const StepParams& p = kp.p;
  const int lane = threadIdx.x & 31;
  const int64_t BL = p.block_length, V = p.V, step = ci.step, nfe = ci.nfe, ri = b * p.Lr + ci.r;
  const int policy = p.policy, n_extra = p.n_extra, cs = kp.cs;
  const RowInfo li = *linfo;  // every lane: the features need it (one broadcast read)
  int64_t cand_in = 0;
  float given = 0.0f;  // the policy's external input: a random key or a controller score
  if (lane == 0) {
    if (kp.candidates != nullptr) cand_in = kp.candidates[ri];
    if (policy == prr::kRandomRemask && kp.random_conf != nullptr) given = kp.random_conf[ri];
    if (policy == prr::kPRR && kp.scores != nullptr) given = kp.scores[ri];
  }
  Stats<C> m;
  if (lane < cs) {
    m = lslots[lane];
  } else {
    m.init();
  }
  m = warp_merge(m, cs);
  if constexpr (kHasPacked<T, C>) {  // the packed tile path carries an argmax key (tile_stats_packed)
    if (kp.packed && lane == 0) m.i1 = argmax_from_key(m.i1, row, V, m.c1);
  }
  TL(11);
  int usable = 0, run_mlp = 0;
  float p1 = 0.f, p2 = 0.f, ent = 0.f, p_cand = 0.f, last_change = 0.f;
  RowOut o;
  if (lane == 0) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
#pragma unroll
    for (int c = 0; c < prr::kNumStats; ++c) o.st[c] = nan;
    o.key = 0.0;
    o.mf = o.inv_t = o.lc = 0.0f;
    int64_t cand = sample ? m.gidx : m.i1;
    if (kp.candidates != nullptr) cand = (cand_in < 0 || cand_in >= V || cand_in == p.mask_id) ? -1 : cand_in;
    usable = m.usable() && cand >= 0 && cand < V;
    o.usable = usable;
    o.cand = usable ? cand : -1;
    o.traj0 = li.traj0;
    o.traj1 = li.traj1;
    o.new_prev = li.prev_p1;
    if (usable) {
      const C lc = cand == m.i1 ? m.c1 : static_cast<C>(row[cand]);  // greedy: the argmax's logit is c1
      o.lc = static_cast<float>(lc);
      const double conf = round_conf(static_cast<double>(m.prob(lc)), p.conf_dtype);
      p1 = static_cast<float>(m.prob(m.c1));
      p2 = static_cast<float>(m.prob(m.c2));
      ent = static_cast<float>(m.entropy());
      p_cand = static_cast<float>(m.prob(lc));
      o.st[prr::kStatConf] = static_cast<float>(conf);
      o.st[prr::kStatP1] = p1;
      o.st[prr::kStatP2] = p2;
      o.st[prr::kStatEntropy] = ent;
      // trajectory of the argmax at this block position
      if (o.traj0 != m.i1) o.traj1 = step;
      o.traj0 = m.i1;
      o.new_prev = p1;
      last_change = static_cast<float>(o.traj1);
      switch (policy) {
        case prr::kRandomRemask:
          o.key = kp.random_conf ? static_cast<double>(given)
                                 : static_cast<double>(prr::random_conf(seed, ci.col, nfe));
          break;
        case prr::kEntropyBound: o.key = -static_cast<double>(ent); break;
        case prr::kPRR: run_mlp = kp.scores == nullptr; break;
        default: o.key = conf;
      }
      if (policy != prr::kPRR) o.st[prr::kStatKey] = static_cast<float>(o.key);
    }
    out = o;
  }
  usable = __shfl_sync(kFull, usable, 0);
  TL(12);
  if (usable && policy == prr::kPRR) {
    run_mlp = __shfl_sync(kFull, run_mlp, 0);
    const prr::MlpLayout L = prr::MlpLayout::make(p.mlp_in, p.mlp_h1, p.mlp_h2);
    float score = given;
    if (run_mlp) {  // the controller: one normalised feature, then one hidden unit, per lane (as the CPU's loops)
      p1 = __shfl_sync(kFull, p1, 0);
      p2 = __shfl_sync(kFull, p2, 0);
      ent = __shfl_sync(kFull, ent, 0);
      last_change = __shfl_sync(kFull, last_change, 0);
      const prr::FeatureInputs fin{static_cast<float>(li.plen + p.gen_length),
                                   static_cast<float>(li.masks_in_row),
                                   static_cast<float>(nfe),
                                   static_cast<float>(p.steps),
                                   static_cast<float>(li.plen + ci.active * BL),
                                   static_cast<float>(BL),
                                   static_cast<float>(li.masks_in_block),
                                   static_cast<float>(step),
                                   static_cast<float>(p.steps_per_block),
                                   kp.log_vocab};
      for (int k = lane; k < L.in; k += 32) {
        float f = k < prr::kNumBaseFeatures
                      ? prr::token_feature(fin, k, static_cast<float>(j), p1, p2, ent, last_change, li.prev_p1)
                      : kp.extra[ri * n_extra + (k - prr::kNumBaseFeatures)];
        prr::normalize_feature(ctrl, L, k, f);
        mlp_f[k] = f;
      }
      __syncwarp();
      for (int u = lane; u < L.h1; u += 32)  // (the weights are input-major: the lanes read consecutive words)
        mlp_h1[u] = prr::dense_unit(ctrl + L.w0, L.h1, u, ctrl[L.b0 + u], mlp_f, L.in);
      __syncwarp();
      TL(13);
      const float* hl = mlp_h1;
      if (L.h2 > 0) {
        for (int u = lane; u < L.h2; u += 32)
          mlp_h2[u] = prr::dense_unit(ctrl + L.w1, L.h2, u, ctrl[L.b1 + u], mlp_h1, L.h1);
        __syncwarp();
        hl = mlp_h2;
      }
      score = lane == 0 ? prr::output_unit(ctrl, L, hl) : 0.0f;
      TL(14);
    }
    if (lane == 0) {
      out.st[prr::kStatScore] = score;
      if (p.shaping == prr::kShapeTemperature) {
        const float temp = prr::temperature_of(ctrl, L, score);
        out.st[prr::kStatTemperature] = temp;
        out.inv_t = 1.0f / temp;
        out.mf = static_cast<float>(m.m);
      } else {
        const float shaped = p.shaping == prr::kShapePower ? prr::shape_power(p_cand, score, p.alpha)
                                                            : prr::shape_weighted(p_cand, score, p.alpha);
        out.key = prr::rank_key(shaped);
        out.st[prr::kStatKey] = static_cast<float>(out.key);
      }
    }
  }
  TL(15);
}

// static: the kernel has internal linkage, as the one translation unit that launches it needs. ptxas compiles an
// externally visible kernel (.visible .entry) differently, with more spills in finalize_row.
template <typename T, typename C>
static __global__ void __launch_bounds__(kThreads, kMinCtas) step_kernel(const __grid_constant__ KParams kp) {
  using TileT = Tile<T>;
  constexpr int VEC = TileT::VEC;
  const StepParams& p = kp.p;
  const int tid = threadIdx.x, nt = blockDim.x, warp = tid >> 5;
  cg::cluster_group cluster = cg::this_cluster();
  const int q = static_cast<int>(cluster.block_rank());
  const bool leader = q == 0;
  const int64_t BL = p.block_length, total = p.B * BL, nclusters = gridDim.x / kp.cs;
  const bool temp_mode = prr::temperature_shaped(p);

  __shared__ union {
    Part<C> part[kMaxWarps];
    C sum[kMaxWarps];
    SortSmem sort;
  } sm;
  __shared__ C mscratch[kMaxWarps];
  __shared__ int64_t iscratch[kMaxWarps];
  __shared__ Stats<C> slots[2][kMaxCluster];  // row partials (leader; double-buffered by row parity)
  __shared__ float slot_t[2][kMaxCluster];    // tempered partial sums (leader)
  __shared__ RowInfo info;                    // controller inputs (leader)
  __shared__ RowOut out;
  __shared__ CtaInfo ci;
  __shared__ float mlp_f[prr::kMaxFeatures], mlp_h1[prr::kMaxHidden], mlp_h2[prr::kMaxHidden];
  // the controller's weights (its matvecs would otherwise wait on L2 per weight); 16-byte aligned for cp.async
  extern __shared__ __align__(16) float sctrl[];

  // DSMEM rule: no CTA writes into another's shared memory before the whole cluster has started. Arrive now, wait
  // right before the first remote write, so the barrier overlaps the prologue (racecheck flagged the write).
  TL(0);
  bool cluster_started = kp.cs == 1;
  if (!cluster_started) cluster_arrive_relaxed();

  // ---- phase 0: the active block (a snapshot: row_state is only written after every CTA has read it)
  int64_t active;
  if (p.B == 1) {
    active = seq_block(kp.rs, 0, p);
  } else {
    int64_t v = std::numeric_limits<int64_t>::max();
    for (int64_t bb = tid; bb < p.B; bb += nt) v = min(v, seq_block(kp.rs, bb, p));
    active = block_min_all(v, iscratch);
  }
  const bool valid = active < p.num_blocks;
  const int64_t lo = valid ? p.gen_start + active * BL : 0;
  const int64_t row_offset = (valid && p.Lr != p.L) ? lo : 0;
  // the controller's weights: an asynchronous copy (cp.async), waited for before the first merge, so that it
  // overlaps the row_state -> canvas -> logits chain instead of adding a round trip to it
  if (kp.ctrl_words > 0) {
    const int n16 = reinterpret_cast<uintptr_t>(kp.ctrl) % 16 == 0 ? kp.ctrl_words / 4 : 0;
    for (int i = tid; i < n16; i += nt) {
      const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(sctrl + 4 * i));
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(kp.ctrl + 4 * i) : "memory");
    }
    asm volatile("cp.async.commit_group;\n" ::: "memory");
    for (int i = 4 * n16 + tid; i < kp.ctrl_words; i += nt) sctrl[i] = __ldg(kp.ctrl + i);
  }
  TL(1);

  const Ws ws(kp.ws, p.B, BL);
  const int32_t nvec = static_cast<int32_t>((p.V + VEC - 1) / VEC);
  const int32_t vbeg = q * static_cast<int32_t>(kp.vpc), vend = min(nvec, vbeg + static_cast<int32_t>(kp.vpc));
  const int32_t V32 = static_cast<int32_t>(p.V);
  const int32_t tstride = kTileVecs * nt;  // vectors per tile of the CTA
  const bool sample = p.temperature > 0.0f && kp.candidates == nullptr;
  const float inv_temp = static_cast<float>(1.0 / static_cast<double>(p.temperature));
  const bool need_features = p.policy == prr::kPRR && kp.scores == nullptr;

  // Rows (sequence b, block position j) of this cluster: cid, then (persistent grids, smaller than B * block_length)
  // cid + nclusters, ... Every CTA of the cluster walks the same rows and takes the same decisions. With dyn_rows
  // (one CTA per row) each row after the first wave goes to the CTA that asks first instead: thread 0 claims it from
  // the high half of ws.grid_ctr while the row's last tiles are still in flight, so that CTAs slowed by their place
  // in the memory system take fewer rows and the grid's last rows finish together. The launch's last arrival zeroes
  // the counter, so every claim must come before the claiming row's arrival: a row that reads logits claims in
  // prefetch_next, one that does not before it arrives. Off for B == 1 once the sequence is done (no row arrives).
  const bool dyn = kp.dyn_rows && (p.B > 1 || valid);
  __shared__ int64_t s_next_row;
  int64_t claimed = -1;  // thread 0: the row claimed for after this one (-1: not yet)
  const auto claim_next = [&] {
    if (tid == 0 && claimed < 0)
      claimed = nclusters + static_cast<int64_t>(atomicAdd(ws.grid_ctr, 1ull << 32) >> 32);
  };
  const auto next_row = [&](int64_t cid) -> int64_t {
    if (!dyn) return cid + nclusters;
    if (tid == 0) s_next_row = claimed;
    claimed = -1;
    __syncthreads();
    return s_next_row;
  };
  int parity = 0;
  for (int64_t cid = blockIdx.x / kp.cs; cid < total; cid = next_row(cid)) {
    const int64_t b = cid / BL, j = cid % BL;
    __syncthreads();  // the previous row's shared state is consumed
    if (tid == 0) {
      ci.active = active;
      ci.lo = lo;
      ci.row_offset = row_offset;
      ci.seq_active = valid && seq_block(kp.rs, b, p) == active;
      ci.col = lo + j;
      ci.r = ci.col - row_offset;
      ci.masked = ci.seq_active && __ldcg(kp.x + b * p.L + ci.col) == p.mask_id;
      ci.step = ci.seq_active ? __ldcg(kp.rs + b * prr::kRsCols + prr::kRsStep) : 0;
      ci.nfe = ci.seq_active ? __ldcg(kp.rs + b * prr::kRsCols + prr::kRsNfe) : 0;
      ci.flags = 0;
    }
    __syncthreads();
    TL(2);
    const bool masked = ci.masked;
    const int64_t col = ci.col, r = ci.r, step = ci.step, nfe = ci.nfe;

    // ---- defaults of the outputs this cluster owns: columns / logits rows congruent to j modulo block_length
    if (leader) {
      const int64_t first_c = (lo + j) % BL;
      for (int64_t c = first_c + static_cast<int64_t>(tid) * BL; c < p.L; c += static_cast<int64_t>(nt) * BL)
        kp.commit[b * p.L + c] = false;
      const int64_t first_r = (((lo + j - row_offset) % BL) + BL) % BL;
      const float nan = std::numeric_limits<float>::quiet_NaN();
      for (int64_t rr = first_r + static_cast<int64_t>(tid) * BL; rr < p.Lr; rr += static_cast<int64_t>(nt) * BL) {
        if (masked && rr == r) continue;  // written with the row's values below
        kp.tokens[b * p.Lr + rr] = -1;
        float* sp = kp.stats + (b * p.Lr + rr) * prr::kNumStats;
#pragma unroll
        for (int c = 0; c < prr::kNumStats; ++c) sp[c] = nan;
      }
    }

    if (!masked) {  // an idle or unmasked position: no logits to read
      if (dyn) claim_next();
      if (leader && tid == 0 && ci.seq_active) {
        if (step == 0) {  // entering the block resets the trajectory of every position
          kp.traj[(b * BL + j) * 2] = -1;
          kp.traj[(b * BL + j) * 2 + 1] = 0;
          kp.prev_p1[b * BL + j] = 0.0f;
        }
        ws.flags[b * BL + j] = 0;
      }
      if (ci.seq_active || p.B > 1) arrive_and_finish(kp, ci, b, 1, sm.sort, iscratch);
      continue;
    }

    // ---- phase 1: this CTA's slice of the row, all 16-byte loads in flight first
    const T* row = static_cast<const T*>(kp.logits) + b * p.stride_b + r * p.stride_r;  // int64 offsets
    const bool vec_ok = (reinterpret_cast<uintptr_t>(row) % 16 == 0) && (p.V % VEC == 0);
    TileT tile;
    tile.load(row, V32, vbeg + tid, nt, vend, vec_ok);
    // L2 prefetch (cp.async.bulk, one instruction for a whole tile of this CTA's slice) of a later tile: of this row,
    // or of the cluster's next row (persistent grids).
    const auto prefetch_tile = [&](const T* rp, int u) {
      const int32_t v = vbeg + u * tstride;
      if (v >= vend || reinterpret_cast<uintptr_t>(rp) % 16 != 0 || p.V % VEC != 0) return;
      const uint4* from = reinterpret_cast<const uint4*>(rp) + v;
      const uint32_t bytes = static_cast<uint32_t>(min(tstride, vend - v)) * 16u;
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(from), "r"(bytes) : "memory");
    };
    // The L2 prefetch of the tile after tile u: of this row, or the first of the cluster's next row (thread 0; only
    // if that row is masked). Measured: 2 or 3 tiles ahead is slower at every shape (v11 notes in RESULTS.md). With
    // dyn_rows the next row is claimed one tile ahead of its prefetch, so the atomic's round trip overlaps a tile.
    const auto prefetch_next = [&](int u) {
      if (tid != 0) return;
      if (dyn && u + 2 >= kp.tiles) claim_next();
      if (u + 1 < kp.tiles) {
        prefetch_tile(row, u + 1);
      } else if (kp.prefetch && (dyn ? claimed : cid + nclusters) < total) {
        const int64_t cn = dyn ? claimed : cid + nclusters, bn = cn / BL, jn = cn % BL;
        if (valid && seq_block(kp.rs, bn, p) == active && __ldcg(kp.x + bn * p.L + lo + jn) == p.mask_id)
          prefetch_tile(static_cast<const T*>(kp.logits) + bn * p.stride_b + (lo + jn - row_offset) * p.stride_r, 0);
      }
    };
    prefetch_next(0);

    const uint64_t seed = static_cast<uint64_t>(__ldg(kp.seed + b));
    // leader: per-row controller inputs (overlaps the loads)
    if (leader) {
      int64_t mib = 0, mir = 0;
      if (need_features) {
        for (int64_t c = p.gen_start + tid; c < p.L; c += nt) {
          const bool m = __ldcg(kp.x + b * p.L + c) == p.mask_id;
          mir += m;
          mib += (m && c >= lo && c < lo + BL) ? 1 : 0;
        }
        mib = block_count_all(mib, iscratch);
        mir = block_count_all(mir, iscratch);
      }
      if (tid == 0) {
        info.masks_in_block = mib;
        info.masks_in_row = mir;
        info.traj0 = step == 0 ? -1 : kp.traj[(b * BL + j) * 2];
        info.traj1 = step == 0 ? 0 : kp.traj[(b * BL + j) * 2 + 1];
        info.prev_p1 = step == 0 ? 0.0f : kp.prev_p1[b * BL + j];
        info.plen = need_features ? kp.plen[b] : 0;
      }
    }

    Stats<C> st;
    const uint32_t col32 = static_cast<uint32_t>(col), nfe32 = static_cast<uint32_t>(nfe);
    // One call site for the (large, fully unrolled) per-tile code: the kernel is big enough that instruction
    // fetch shows up in its stalls (ncu, v7), so the hot loop is not duplicated for the first tile.
#pragma unroll 1
    for (int u = 0; u < kp.tiles; ++u) {  // rows longer than one register tile per thread loop
      if (u > 0) {
        tile.load(row, V32, vbeg + u * tstride + tid, nt, vend, vec_ok);
        prefetch_next(u);
      }
      tile_into<T, C>(tile, p, st, u == 0, sample, seed, col32, nfe32, inv_temp, vend, kp.packed != 0);
    }
    if constexpr (kHasPacked<T, C>) {
      // one register tile per thread (few rows, a cluster per row): a vector argmax key is resolved here, from the
      // registers, instead of by finalize_row's dependent 16-byte read
      if (kp.packed && kp.tiles == 1 && st.i1 != kKeyNone && (st.i1 & 1)) {
        const int g = static_cast<int>(static_cast<int32_t>((st.i1 >> 1) / VEC) - tile.v0) / tile.stride;
        const int k = tile.template first_eq<float>(g, st.c1);
        st.i1 = k >= 0 ? exact_key(tile.index(k)) : kKeyNone;
      }
    }
    TL(3);
    if (kp.ctrl_words > 0) asm volatile("cp.async.wait_all;\n" ::: "memory");  // visible after the merge's barrier
    st = block_merge(st, sm.part, mscratch);
    TL(4);

    // ---- phase 2: partials to the leader (DSMEM), merged in rank order
    if (!cluster_started) {
      cluster_wait();
      cluster_started = true;
    }
    if (tid == 0) *cluster.map_shared_rank(&slots[parity][q], 0) = st;
    cluster_arrive();
    cluster_wait();
    TL(5);
    if (leader || temp_mode) {
      const Stats<C>* lslots = cluster.map_shared_rank(slots[parity], 0);
      const RowInfo* linfo = cluster.map_shared_rank(&info, 0);
      if (warp == 0)
        finalize_row<T, C>(kp, ci, lslots, linfo, out, sctrl, mlp_f, mlp_h1, mlp_h2, row, b, j, seed, sample);
      __syncthreads();
    }
    TL(6);

    if (temp_mode) {
      // ---- PRR temperature shaping: exact p(candidate) under softmax(logits / T), second sweep from registers
      C zt = C(0);
      if (out.usable) {
        const float mf = out.mf, it = out.inv_t;
        const auto getf = [&](int k) { return static_cast<float>(tile.pk[k / VEC].v[k % VEC]); };
        zt = C(prr::tempered_tile_sum<C, TileT::N>(getf, mf, it));  // the last tile is still in registers
        for (int u = 0; u + 1 < kp.tiles; ++u) {                      // the others again (from L2 if still there)
          tile.load(row, V32, vbeg + u * tstride + tid, nt, vend, vec_ok);
          zt += C(prr::tempered_tile_sum<C, TileT::N>(getf, mf, it));
        }
      }
      zt = block_sum(zt, sm.sum);
      if (tid == 0) *cluster.map_shared_rank(&slot_t[parity][q], 0) = static_cast<float>(zt);
      cluster_arrive();
      cluster_wait();
      if (leader && tid == 0 && out.usable) {
        float z = 0.0f;
        for (int k = 0; k < kp.cs; ++k) z += slot_t[parity][k];
        const float shaped = expf((out.lc - out.mf) * out.inv_t) / z;
        out.key = prr::rank_key(shaped);
        out.st[prr::kStatKey] = static_cast<float>(out.key);
      }
    }
    TL(7);
    parity ^= 1;
    if (!leader) continue;  // the leader arrives on the counters for the whole cluster

    // ---- phase 3: the row's outputs, its record for the selection, the trajectory; then arrive
    if (tid == 0) {
      kp.tokens[b * p.Lr + r] = out.cand;
      float* sp = kp.stats + (b * p.Lr + r) * prr::kNumStats;
#pragma unroll
      for (int c = 0; c < prr::kNumStats; ++c) sp[c] = out.st[c];
      const int64_t wi = b * BL + j;
      ws.flags[wi] = kFlagMasked | (out.usable ? kFlagUsable : 0);
      ws.key[wi] = __double_as_longlong(out.key);
      ws.cand[wi] = out.cand;
      if (out.usable || step == 0) {  // unusable rows keep their trajectory (reset on entering the block)
        kp.traj[wi * 2] = out.traj0;
        kp.traj[wi * 2 + 1] = out.traj1;
        kp.prev_p1[wi] = out.new_prev;
      }
    }
    arrive_and_finish(kp, ci, b, static_cast<unsigned long long>(kp.cs), sm.sort, iscratch);
  }
  if (!cluster_started) cluster_wait();  // no row of this cluster was read: complete the start barrier
  if (kp.ctrl_words > 0) asm volatile("cp.async.wait_all;\n" ::: "memory");
  TL(10);
}

}  // namespace prr::gpu
