// step_kernel.cuh — the step kernel: the whole prr_ext::step (statistics of every masked row of the active block, the
// PRR controller, the selection and commit, the bookkeeping) in ONE launch, with no host synchronisation.
//
// The CPU twin is csrc/cpu/step_cpu.cpp, the specification prr_ext/reference.py; docs/cuda.md explains the design.
//   grid    thread-block clusters of args.cluster_size CTAs (1..8), one per row (sequence b, block position j; B *
//           block_length rows), or as many as are co-resident (a persistent grid), each then taking row after row
//           (one CTA per row: the next row claimed from a counter; clusters: row_id, row_id + grid, ...) and
//           bulk-prefetching its next tile / row into L2.
//   phase 0 every CTA reads the active block (min of row_state[:, 0]) and whether its canvas column is masked;
//           clusters of unmasked / idle positions fill their share of the default outputs and arrive at once, so
//           only the rows of masked positions inside the active block are read from HBM.
//   phase 1 each CTA of a masked position's cluster loads its slice of the logits row into registers and reduces the
//           tiles' statistics (tile.cuh) over the CTA in fixed trees (primitives.cuh).
//   phase 2 the partials meet in the leader CTA's shared memory (DSMEM) behind a cluster barrier and are merged in
//           rank order; finalize_row derives the candidate, its confidence, p1/p2/entropy, the trajectory, the PRR
//           controller (warp-parallel prr::dense_unit) and the policy's key. PRR's temperature shaping needs
//           sum exp((l - m) / T) over the row: every CTA of the cluster runs the same merge + controller
//           (bit-identical), sums its slice from the registers it still holds, and the leader adds the partial sums,
//           so the row is read from HBM once. KLASS's KL to the previous step's distribution is a second sweep of
//           the same shape: every CTA finalises, sums p (log p - log p_prev) over its slice (tiles read again,
//           from L2) while it replaces the kept log-probabilities (prev_logp, read and written once per entry), and
//           the leader adds the sums.
//   phase 3 last-block-done per sequence: every CTA arrives once per row on its sequence's counter (a finished row's
//           leader arrives for its whole cluster); the last arrival selects and commits (select.cuh), does the
//           bookkeeping and resets the counter; LocalLeap, SlowFast, KLASS and R2's passes (prr/rules.h) run there
//           in one thread, from the records. With B > 1 the block index of row_state is staged and copied by the
//           last CTA of the grid (a second counter), because every CTA of the grid reads row_state[:, 0].
//   Nothing is written that another CTA may still need to read: the counters order every read before the writes.
//
// Numerics: fp32 (fp64 in confidence_dtype=float64 mode) with fixed reduction trees and no float atomics, so the
// result is deterministic; the bulk exponentials use the hardware ex2 (prr::exp2_bulk), the reported and ranked
// probabilities exp_c. Discrete decisions (argmax, sampled token, bad-row test) follow the shared headers exactly.
#pragma once

#include <cooperative_groups.h>

#include <cstdint>
#include <limits>
#include <type_traits>

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
  int64_t prompt_len;    // the sequence's true prompt length (PRR features)
  float prev_p1;
};

// What the merge + finalisation of a row produces.
struct RowResult {
  int usable;
  int64_t cand;
  double key;
  float stats[prr::kNumStats];
  int64_t traj0, traj1;
  float new_prev_p1;
  float row_max, inv_shaping_temp;  // PRR temperature shaping: the row max (fp32) and 1 / T(score)
  float cand_logit;                 // the candidate's logit (fp32), so that the shaping does not read it again
  // prr/rules.h's inputs (the Workspace's conf / argmax / p1): the candidate's confidence in the confidence dtype,
  // the argmax and p(argmax)
  double conf;
  int64_t argmax;
  float p1;
  double row_shift, log_z;  // KLASS: the row max and log of the softmax normaliser (log p = l - row_shift - log_z)
  double kl;                // KLASS: KL(p || p_prev) of the row, summed over the cluster (leader)
};

// What this CTA's arrival completed (RowContext::arrival bits).
enum ArrivalBit : int {
  kArrivalSelects = 1,   // the last arrival on its sequence's counter: it selects and commits
  kArrivalPublishes = 2  // the last arrival on the grid counter (B > 1): it publishes the staged block indices
};

// The current row's scalars that every thread of the CTA needs (broadcast through shared memory).
struct RowContext {
  int64_t active_block, block_start, row_offset;  // the active block, its first canvas column, logits row 0's column
  int64_t col, logits_row;                        // this row's canvas column and logits row
  int64_t step, nfe;                              // the sequence's step in its block and its NFE count
  int seq_active, masked, arrival;                // arrival: ArrivalBit
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
__device__ __forceinline__ int64_t seq_block(const int64_t* row_state, int64_t b, const StepParams& p) {
  const int64_t* r = row_state + b * prr::kRsCols;
  const int64_t blk = __ldcg(r + prr::kRsBlock), step = __ldcg(r + prr::kRsStep), n = __ldcg(r + prr::kRsSchedN),
                nfe = __ldcg(r + prr::kRsNfe);
  const bool ok = blk >= 0 && blk <= p.num_blocks && step >= 0 && step < p.block_cap && n >= 0 &&
                  n <= p.block_length && nfe >= 0;
  return ok ? blk : std::numeric_limits<int64_t>::max();
}

// Arrive on the sequence's counter (the last arrival selects) and, with B > 1, on the grid counter (the last
// arrival publishes the staged block indices). `units`: how many CTAs this arrival stands for. Out of line: the
// kernel calls it from two places (rows with and without logits).
static __device__ __noinline__ void arrive_and_finish(const KernelArgs& args, RowContext& ctx, int64_t b,
                                                      unsigned long long units, SortSmem& sort, int64_t* int_scratch) {
  const StepParams& p = args.p;
  const Workspace ws(args.workspace, p.B, p.block_length);
  __syncthreads();  // the CTA's writes happen before thread 0's release fence + arrival (cumulative)
  if (threadIdx.x == 0) {
    int arrival = 0;
    if (ctx.seq_active) {  // the last arrival acquires the other arrivals' records before the selection reads them
      const unsigned long long target = static_cast<unsigned long long>(p.block_length) * args.cluster_size;
      if (arrive_acq_rel(ws.seq_counter + b, units) + units == target) arrival |= kArrivalSelects;
    }
    ctx.arrival = arrival;
  }
  __syncthreads();
  TL(kTlArrived);
  if (ctx.arrival & kArrivalSelects) {
    select_and_commit(args, ws, b, ctx.active_block, sort, int_scratch);
    TL(kTlSelected);
  }
  if (p.B > 1) {
    __syncthreads();
    if (threadIdx.x == 0) {
      const unsigned long long total = static_cast<unsigned long long>(p.B * p.block_length) * args.cluster_size;
      // the low 32 bits count the arrivals (the high ones the row claims)
      ctx.arrival = ((arrive_acq_rel(ws.grid_counter, units) + units) & 0xffffffffull) == total ? kArrivalPublishes : 0;
    }
    __syncthreads();
    if (ctx.arrival & kArrivalPublishes) {
      if (ctx.active_block < p.num_blocks) {
        for (int64_t bb = threadIdx.x; bb < p.B; bb += blockDim.x) {
          int64_t* r = args.row_state + bb * prr::kRsCols;
          if (seq_block(args.row_state, bb, p) == ctx.active_block) r[prr::kRsBlock] = __ldcg(ws.staged_block + bb);
        }
      }
      if (threadIdx.x == 0) *ws.grid_counter = 0;
    }
  }
}

// The logit as fp64 (16-bit and fp32 logits through their fp32 value, as the CPU op's static_cast<double>).
template <typename T>
__device__ __forceinline__ double logit_f64(T v) {
  if constexpr (std::is_same_v<T, double>) {
    return v;
  } else {
    return static_cast<double>(static_cast<float>(v));
  }
}

// KLASS: one 16-byte vector's share of KL(p || p_prev), and the kept log-probabilities replaced by this step's: the
// CPU op's kl_and_keep (step_cpu.cpp) entry by entry, log p = (l - row_shift) - log_z and p = exp(log p) in fp64,
// terms with p == 0 adding nothing, keep[v] = fp32 log p. first: the vocabulary index of the vector's first entry
// (entries at or past V are not part of the row); aligned: keep is aligned for whole-vector access (16 bytes, or 8
// for vectors of two entries). keep is read and written once per step, with streaming hints.
template <typename T>
__device__ __forceinline__ double kl_and_keep_vec(Pack<T> cur, int32_t first, int32_t V, bool aligned, double row_shift,
                                                double log_z, float* keep) {
  constexpr int VEC = Pack<T>::VEC;
  static_assert(VEC == 2 || VEC % 4 == 0, "16-byte vectors of 2, 4 or 8 entries");
  float prev[VEC], kept[VEC];
  const bool whole = aligned && first + VEC <= V;
  if (whole) {
    if constexpr (VEC >= 4) {
#pragma unroll
      for (int q = 0; q < VEC / 4; ++q) {
        const float4 w = __ldcs(reinterpret_cast<const float4*>(keep + first) + q);
        prev[4 * q] = w.x;
        prev[4 * q + 1] = w.y;
        prev[4 * q + 2] = w.z;
        prev[4 * q + 3] = w.w;
      }
    } else {
      const float2 w = __ldcs(reinterpret_cast<const float2*>(keep + first));
      prev[0] = w.x;
      prev[1] = w.y;
    }
  } else {
#pragma unroll
    for (int e = 0; e < VEC; ++e) prev[e] = first + e < V ? __ldcs(keep + first + e) : 0.0f;
  }
  double kl = 0.0;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    const double lp = (logit_f64(cur.v[e]) - row_shift) - log_z, pe = exp(lp);
    if (pe > 0.0 && first + e < V) kl += pe * (lp - static_cast<double>(prev[e]));
    kept[e] = static_cast<float>(lp);
  }
  if (whole) {
    if constexpr (VEC >= 4) {
#pragma unroll
      for (int q = 0; q < VEC / 4; ++q)
        __stcs(reinterpret_cast<float4*>(keep + first) + q,
               make_float4(kept[4 * q], kept[4 * q + 1], kept[4 * q + 2], kept[4 * q + 3]));
    } else {
      __stcs(reinterpret_cast<float2*>(keep + first), make_float2(kept[0], kept[1]));
    }
  } else {
#pragma unroll
    for (int e = 0; e < VEC; ++e)
      if (first + e < V) __stcs(keep + first + e, kept[e]);
  }
  return kl;
}

// KLASS's sweep over this thread's share of a row (the tiles of its CTA's slice, as phase 1 loaded them): the sum of
// kl_and_keep_vec over its vectors. Out of line, and reading every tile again (the last one from L2) rather than
// from the registers that still hold it as the tempered sweep does: inlined, the fp64 sweep moved the other rules'
// spills into the tile statistics of the fp16 kernel (ptxas); out of line, their hot loop compiles as before.
template <typename T>
__device__ __noinline__ double kl_sweep(const T* row, int32_t V, int32_t first_vec, int32_t vec_stride,
                                        int32_t tile_stride, int32_t slice_end, int tiles, bool vec_ok, float* keep,
                                        bool keep_aligned, double row_shift, double log_z) {
  constexpr int VEC = Tile<T>::VEC;
  Tile<T> tile;
  double sum = 0.0;
  for (int u = 0; u < tiles; ++u) {
    tile.load(row, V, first_vec + u * tile_stride, vec_stride, slice_end, vec_ok);
#pragma unroll
    for (int i = 0; i < kTileVecs; ++i) {
      const int32_t v = tile.first_vec + i * tile.vec_stride;
      if (v < slice_end) sum += kl_and_keep_vec<T>(tile.packs[i], v * VEC, V, keep_aligned, row_shift, log_z, keep);
    }
  }
  return sum;
}

// Merge the cluster's partials (in rank order) and derive everything the row contributes: candidate, confidence,
// p1/p2/entropy, trajectory, controller score and the policy's key. Run by warp 0: the scalar work in lane 0, the
// controller's features and hidden units over the lanes. Every CTA that runs it on the same partials gets the same
// bits.
//
// Lane 0 builds its result in registers and stores it once, and every value it reads from memory is read at the
// top: the row info may sit in the leader's shared memory (DSMEM) and the parameters behind the generic address of
// `args`, so a load placed after one of the function's stores is ordered behind it and waits for a round trip of its
// own (read where they are used, the PRR features waited on 25 such loads one after another: 5k cycles).
//
// partials: the cluster's partials (in the leader's shared memory), leader_info: the row's feature inputs
// (likewise), controller: the controller's weights (this CTA's shared memory), mlp_*: scratch of its layers.
template <typename T, typename C>
__device__ __noinline__ void finalize_row(const KernelArgs& args, const RowContext& ctx, const Stats<C>* partials,
                                          const RowInfo* leader_info, RowResult& out, const float* controller,
                                          float* mlp_f, float* mlp_h1, float* mlp_h2, const T* row, int64_t b,
                                          int64_t j, uint64_t seed, bool sample) {
  const StepParams& p = args.p;
  const int lane = threadIdx.x & 31;
  const int64_t BL = p.block_length, V = p.V, step = ctx.step, nfe = ctx.nfe, ri = b * p.Lr + ctx.logits_row;
  const int policy = p.policy, n_extra = p.n_extra, cluster_size = args.cluster_size;
  const RowInfo info = *leader_info;  // every lane: the features need it (one broadcast read)
  int64_t cand_in = 0;
  float given = 0.0f;  // the policy's external input: a random key or a controller score
  if (lane == 0) {
    if (args.candidates != nullptr) cand_in = args.candidates[ri];
    if (policy == prr::kRandomRemask && args.random_conf != nullptr) given = args.random_conf[ri];
    if (policy == prr::kPRR && args.scores != nullptr) given = args.scores[ri];
  }
  Stats<C> merged;  // the row's statistics (in lane 0)
  if (lane < cluster_size) {
    merged = partials[lane];
  } else {
    merged.init();
  }
  merged = warp_merge(merged, cluster_size);
  if constexpr (kHasPacked<T, C>) {  // the packed tile path carries an argmax key (tile_stats_packed)
    if (args.packed && lane == 0) merged.i1 = argmax_from_key(merged.i1, row, V, merged.c1);
  }
  TL(kTlFinMerged);
  int usable = 0, run_mlp = 0;
  float p1 = 0.f, p2 = 0.f, ent = 0.f, p_cand = 0.f, last_change = 0.f;
  RowResult res;
  if (lane == 0) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
#pragma unroll
    for (int c = 0; c < prr::kNumStats; ++c) res.stats[c] = nan;
    res.key = 0.0;
    res.row_max = res.inv_shaping_temp = res.cand_logit = 0.0f;
    res.conf = res.row_shift = res.log_z = res.kl = 0.0;
    res.argmax = -1;
    res.p1 = 0.0f;
    int64_t cand = sample ? merged.gidx : merged.i1;
    if (args.candidates != nullptr) cand = (cand_in < 0 || cand_in >= V || cand_in == p.mask_id) ? -1 : cand_in;
    usable = merged.usable() && cand >= 0 && cand < V;
    res.usable = usable;
    res.cand = usable ? cand : -1;
    res.traj0 = info.traj0;
    res.traj1 = info.traj1;
    res.new_prev_p1 = info.prev_p1;
    if (usable) {
      const C cand_logit = cand == merged.i1 ? merged.c1 : static_cast<C>(row[cand]);  // greedy: c1
      res.cand_logit = static_cast<float>(cand_logit);
      const double conf = round_conf(static_cast<double>(merged.prob(cand_logit)), p.conf_dtype);
      p1 = static_cast<float>(merged.prob(merged.c1));
      p2 = static_cast<float>(merged.prob(merged.c2));
      ent = static_cast<float>(merged.entropy());
      p_cand = static_cast<float>(merged.prob(cand_logit));
      res.stats[prr::kStatConf] = static_cast<float>(conf);
      res.stats[prr::kStatP1] = p1;
      res.stats[prr::kStatP2] = p2;
      res.stats[prr::kStatEntropy] = ent;
      res.conf = conf;
      res.argmax = merged.i1;
      res.p1 = p1;
      if (policy == prr::kKLASS) {  // the shift of the row's log-probabilities, for the KL sweep of every CTA
        res.row_shift = static_cast<double>(merged.m);
        res.log_z = log(static_cast<double>(merged.z()));
      }
      // trajectory of the argmax at this block position
      if (res.traj0 != merged.i1) res.traj1 = step;
      res.traj0 = merged.i1;
      res.new_prev_p1 = p1;
      last_change = static_cast<float>(res.traj1);
      switch (policy) {
        case prr::kRandomRemask:
          res.key = args.random_conf ? static_cast<double>(given)
                                 : static_cast<double>(prr::random_conf(seed, ctx.col, nfe));
          break;
        case prr::kEntropyBound: res.key = -static_cast<double>(ent); break;
        case prr::kPRR: run_mlp = args.scores == nullptr; break;
        default: res.key = conf;
      }
      if (policy != prr::kPRR) res.stats[prr::kStatKey] = static_cast<float>(res.key);
    }
    out = res;
  }
  usable = __shfl_sync(kAllLanes, usable, 0);
  TL(kTlFinFeatures);
  if (usable && policy == prr::kPRR) {
    run_mlp = __shfl_sync(kAllLanes, run_mlp, 0);
    const prr::MlpLayout L = prr::MlpLayout::make(p.mlp_in, p.mlp_h1, p.mlp_h2);
    float score = given;
    if (run_mlp) {  // the controller: one normalised feature, then one hidden unit, per lane (as the CPU's loops)
      p1 = __shfl_sync(kAllLanes, p1, 0);
      p2 = __shfl_sync(kAllLanes, p2, 0);
      ent = __shfl_sync(kAllLanes, ent, 0);
      last_change = __shfl_sync(kAllLanes, last_change, 0);
      const prr::FeatureInputs fin{static_cast<float>(info.prompt_len + p.gen_length),
                                   static_cast<float>(info.masks_in_row),
                                   static_cast<float>(nfe),
                                   static_cast<float>(p.steps),
                                   static_cast<float>(info.prompt_len + ctx.active_block * BL),
                                   static_cast<float>(BL),
                                   static_cast<float>(info.masks_in_block),
                                   static_cast<float>(step),
                                   static_cast<float>(p.steps_per_block),
                                   args.log_vocab};
      for (int k = lane; k < L.in; k += 32) {
        float f = k < prr::kNumBaseFeatures
                      ? prr::token_feature(fin, k, static_cast<float>(j), p1, p2, ent, last_change, info.prev_p1)
                      : args.extra_features[ri * n_extra + (k - prr::kNumBaseFeatures)];
        prr::normalize_feature(controller, L, k, f);
        mlp_f[k] = f;
      }
      __syncwarp();
      for (int u = lane; u < L.h1; u += 32)  // (the weights are input-major: the lanes read consecutive words)
        mlp_h1[u] = prr::dense_unit(controller + L.w0, L.h1, u, controller[L.b0 + u], mlp_f, L.in);
      __syncwarp();
      TL(kTlFinHidden1);
      const float* hl = mlp_h1;
      if (L.h2 > 0) {
        for (int u = lane; u < L.h2; u += 32)
          mlp_h2[u] = prr::dense_unit(controller + L.w1, L.h2, u, controller[L.b1 + u], mlp_h1, L.h1);
        __syncwarp();
        hl = mlp_h2;
      }
      score = lane == 0 ? prr::output_unit(controller, L, hl) : 0.0f;
      TL(kTlFinScore);
    }
    if (lane == 0) {
      out.stats[prr::kStatScore] = score;
      if (p.shaping == prr::kShapeTemperature) {
        const float temp = prr::temperature_of(controller, L, score);
        out.stats[prr::kStatTemperature] = temp;
        out.inv_shaping_temp = 1.0f / temp;
        out.row_max = static_cast<float>(merged.m);
      } else {
        const float shaped = p.shaping == prr::kShapePower ? prr::shape_power(p_cand, score, p.alpha)
                                                            : prr::shape_weighted(p_cand, score, p.alpha);
        out.key = prr::rank_key(shaped);
        out.stats[prr::kStatKey] = static_cast<float>(out.key);
      }
    }
  }
  TL(kTlFinDone);
}

// The kernel. T: the logits' element type; C: the compute type of the statistics (double for fp64 confidence).
// static: the kernel has internal linkage, as the one translation unit that launches it needs. ptxas compiles an
// externally visible kernel (.visible .entry) differently, with more spills in finalize_row.
template <typename T, typename C>
static __global__ void __launch_bounds__(kThreads, kMinCtas) step_kernel(const __grid_constant__ KernelArgs args) {
  using TileT = Tile<T>;
  constexpr int VEC = TileT::VEC;
  const StepParams& p = args.p;
  const int tid = threadIdx.x, threads = blockDim.x, warp = tid >> 5;
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = static_cast<int>(cluster.block_rank());
  const bool leader = rank == 0;
  const int64_t BL = p.block_length, total = p.B * BL, grid_clusters = gridDim.x / args.cluster_size;
  const bool temperature_shaping = prr::temperature_shaped(p);
  const bool klass = p.policy == prr::kKLASS;
  // the rules whose row needs a second sweep in every CTA of its cluster (from the merged statistics)
  const bool second_sweep = temperature_shaping || klass;

  __shared__ union {  // used one after another
    BlockPartial<C> part[kMaxWarps];  // block_merge
    C sum[kMaxWarps];                 // block_sum
    double dsum[kMaxWarps];           // block_sum (fp64: KLASS's KL)
    SortSmem sort;                    // select_and_commit
  } smem;
  __shared__ C max_scratch[kMaxWarps];
  __shared__ int64_t int_scratch[kMaxWarps];
  __shared__ Stats<C> partials[2][kMaxCluster];  // the cluster's row partials (leader; double-buffered by row parity)
  __shared__ float tempered[2][kMaxCluster];     // the cluster's tempered partial sums (leader)
  __shared__ double kl_part[2][kMaxCluster];     // the cluster's partial KLASS KL sums (leader)
  __shared__ RowInfo info;                       // controller inputs (leader)
  __shared__ RowResult out;
  __shared__ RowContext ctx;
  __shared__ float mlp_f[prr::kMaxFeatures], mlp_h1[prr::kMaxHidden], mlp_h2[prr::kMaxHidden];
  // the controller's weights (its matvecs would otherwise wait on L2 per weight); 16-byte aligned for cp.async
  extern __shared__ __align__(16) float ctrl_smem[];

  // DSMEM rule: no CTA writes into another's shared memory before the whole cluster has started. Arrive now, wait
  // right before the first remote write, so the barrier overlaps the prologue (compute-sanitizer's racecheck reports
  // a remote write that comes before it).
  TL(kTlEntry);
  bool cluster_started = args.cluster_size == 1;
  if (!cluster_started) cluster_arrive_relaxed();

  // ---- phase 0: the active block (a snapshot: row_state is only written after every CTA has read it)
  int64_t active;
  if (p.B == 1) {
    active = seq_block(args.row_state, 0, p);
  } else {
    int64_t v = std::numeric_limits<int64_t>::max();
    for (int64_t bb = tid; bb < p.B; bb += threads) v = min(v, seq_block(args.row_state, bb, p));
    active = block_min_all(v, int_scratch);
  }
  const bool valid = active < p.num_blocks;
  const int64_t lo = valid ? p.gen_start + active * BL : 0;  // the active block's first canvas column
  const int64_t row_offset = (valid && p.Lr != p.L) ? lo : 0;  // logits row 0's canvas column (block-only logits)
  // the controller's weights: an asynchronous copy (cp.async), waited for before the first merge, so that it
  // overlaps the row_state -> canvas -> logits chain instead of adding a round trip to it
  if (args.controller_words > 0) {
    const int n16 = reinterpret_cast<uintptr_t>(args.controller) % 16 == 0 ? args.controller_words / 4 : 0;
    for (int i = tid; i < n16; i += threads) {
      const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(ctrl_smem + 4 * i));
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(args.controller + 4 * i) : "memory");
    }
    asm volatile("cp.async.commit_group;\n" ::: "memory");
    for (int i = 4 * n16 + tid; i < args.controller_words; i += threads) ctrl_smem[i] = __ldg(args.controller + i);
  }
  TL(kTlActiveBlock);

  const Workspace ws(args.workspace, p.B, BL);
  // this CTA's slice of the row: 16-byte vectors slice_begin .. slice_end
  const int32_t vectors = static_cast<int32_t>((p.V + VEC - 1) / VEC);
  const int32_t slice_begin = rank * static_cast<int32_t>(args.vectors_per_cta);
  const int32_t slice_end = min(vectors, slice_begin + static_cast<int32_t>(args.vectors_per_cta));
  const int32_t V32 = static_cast<int32_t>(p.V);
  const int32_t tile_stride = kTileVecs * threads;  // vectors per tile of the CTA
  const bool sample = p.temperature > 0.0f && args.candidates == nullptr;
  const float inv_sample_temp = static_cast<float>(1.0 / static_cast<double>(p.temperature));
  const bool need_features = p.policy == prr::kPRR && args.scores == nullptr;

  // Rows (row_id = b * block_length + j) of this cluster: row_id = its cluster index, then, in a persistent grid
  // (fewer clusters than rows), row_id + grid_clusters, and so on. Every CTA of the cluster walks the same rows and
  // takes the same decisions. With claim_rows (one CTA per row) each row after the first wave goes to the CTA that
  // asks first instead: thread 0 claims it from the high half of ws.grid_counter while the row's last tiles are still
  // in flight, so that CTAs slowed by their place in the memory system take fewer rows and the grid's last rows
  // finish together. The launch's last arrival zeroes the counter, so every claim must come before the claiming
  // row's arrival: a row that reads logits claims in prefetch_next, one that does not before it arrives. Off for
  // B == 1 once the sequence is done (no row arrives).
  const bool claiming = args.claim_rows && (p.B > 1 || valid);
  __shared__ int64_t s_next_row;
  int64_t claimed = -1;  // thread 0: the row claimed for after this one (-1: not yet)
  const auto claim_next = [&] {
    if (tid == 0 && claimed < 0)
      claimed = grid_clusters + static_cast<int64_t>(atomicAdd(ws.grid_counter, 1ull << 32) >> 32);
  };
  const auto next_row = [&](int64_t row_id) -> int64_t {
    if (!claiming) return row_id + grid_clusters;
    if (tid == 0) s_next_row = claimed;
    claimed = -1;
    __syncthreads();
    return s_next_row;
  };
  int parity = 0;
  for (int64_t row_id = blockIdx.x / args.cluster_size; row_id < total; row_id = next_row(row_id)) {
    const int64_t b = row_id / BL, j = row_id % BL;
    __syncthreads();  // the previous row's shared state is consumed
    if (tid == 0) {
      ctx.active_block = active;
      ctx.block_start = lo;
      ctx.row_offset = row_offset;
      ctx.seq_active = valid && seq_block(args.row_state, b, p) == active;
      ctx.col = lo + j;
      ctx.logits_row = ctx.col - row_offset;
      ctx.masked = ctx.seq_active && prr::is_open(__ldcg(args.x + b * p.L + ctx.col), p.mask_id);
      ctx.step = ctx.seq_active ? __ldcg(args.row_state + b * prr::kRsCols + prr::kRsStep) : 0;
      ctx.nfe = ctx.seq_active ? __ldcg(args.row_state + b * prr::kRsCols + prr::kRsNfe) : 0;
      ctx.arrival = 0;
    }
    __syncthreads();
    TL(kTlRowKnown);
    const bool masked = ctx.masked;
    const int64_t col = ctx.col, r = ctx.logits_row, step = ctx.step, nfe = ctx.nfe;

    // ---- defaults of the outputs this cluster owns: columns / logits rows congruent to j modulo block_length
    if (leader) {
      const int64_t first_col = (lo + j) % BL;
      for (int64_t c = first_col + static_cast<int64_t>(tid) * BL; c < p.L; c += static_cast<int64_t>(threads) * BL)
        args.commit[b * p.L + c] = false;
      const int64_t first_row = (((lo + j - row_offset) % BL) + BL) % BL;
      const float nan = std::numeric_limits<float>::quiet_NaN();
      for (int64_t rr = first_row + static_cast<int64_t>(tid) * BL; rr < p.Lr;
           rr += static_cast<int64_t>(threads) * BL) {
        if (masked && rr == r) continue;  // written with the row's values below
        args.tokens[b * p.Lr + rr] = -1;
        float* stats_out = args.stats + (b * p.Lr + rr) * prr::kNumStats;
#pragma unroll
        for (int c = 0; c < prr::kNumStats; ++c) stats_out[c] = nan;
      }
    }

    if (!masked) {  // an idle or unmasked position: no logits to read
      if (claiming) claim_next();
      if (leader && tid == 0 && ctx.seq_active) {
        if (step == 0) {  // entering the block resets the trajectory of every position
          args.traj[(b * BL + j) * 2] = -1;
          args.traj[(b * BL + j) * 2 + 1] = 0;
          args.prev_p1[b * BL + j] = 0.0f;
        }
        ws.flags[b * BL + j] = 0;
      }
      if (ctx.seq_active || p.B > 1) arrive_and_finish(args, ctx, b, 1, smem.sort, int_scratch);
      continue;
    }

    // ---- phase 1: this CTA's slice of the row, all 16-byte loads in flight first
    const T* row = static_cast<const T*>(args.logits) + b * p.stride_b + r * p.stride_r;  // int64 offsets
    const bool vec_ok = (reinterpret_cast<uintptr_t>(row) % 16 == 0) && (p.V % VEC == 0);
    TileT tile;
    tile.load(row, V32, slice_begin + tid, threads, slice_end, vec_ok);
    // L2 prefetch (cp.async.bulk, one instruction for a whole tile of this CTA's slice) of tile u of row rp: of this
    // row, or of the cluster's next row (persistent grids).
    const auto prefetch_tile = [&](const T* rp, int u) {
      const int32_t v = slice_begin + u * tile_stride;
      if (v >= slice_end || reinterpret_cast<uintptr_t>(rp) % 16 != 0 || p.V % VEC != 0) return;
      const uint4* from = reinterpret_cast<const uint4*>(rp) + v;
      const uint32_t bytes = static_cast<uint32_t>(min(tile_stride, slice_end - v)) * 16u;
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(from), "r"(bytes) : "memory");
    };
    // The L2 prefetch of the tile after tile u: of this row, or the first of the cluster's next row (thread 0; only
    // if that row is masked). One tile ahead: 2 or 3 tiles ahead were slower at every shape measured. With
    // claim_rows the next row is claimed one tile ahead of its prefetch, so the atomic's round trip overlaps a tile.
    const auto prefetch_next = [&](int u) {
      if (tid != 0) return;
      if (claiming && u + 2 >= args.tiles) claim_next();
      if (u + 1 < args.tiles) {
        prefetch_tile(row, u + 1);
      } else if (args.prefetch && (claiming ? claimed : row_id + grid_clusters) < total) {
        const int64_t next = claiming ? claimed : row_id + grid_clusters, next_b = next / BL, next_j = next % BL;
        if (valid && seq_block(args.row_state, next_b, p) == active &&
            prr::is_open(__ldcg(args.x + next_b * p.L + lo + next_j), p.mask_id))
          prefetch_tile(static_cast<const T*>(args.logits) + next_b * p.stride_b +
                            (lo + next_j - row_offset) * p.stride_r, 0);
      }
    };
    prefetch_next(0);

    const uint64_t seed = static_cast<uint64_t>(__ldg(args.seed + b));
    // leader: per-row controller inputs (overlaps the loads)
    if (leader) {
      int64_t masks_in_block = 0, masks_in_row = 0;
      if (need_features) {
        for (int64_t c = p.gen_start + tid; c < p.L; c += threads) {
          const bool m = prr::is_open(__ldcg(args.x + b * p.L + c), p.mask_id);
          masks_in_row += m;
          masks_in_block += (m && c >= lo && c < lo + BL) ? 1 : 0;
        }
        masks_in_block = block_count_all(masks_in_block, int_scratch);
        masks_in_row = block_count_all(masks_in_row, int_scratch);
      }
      if (tid == 0) {
        info.masks_in_block = masks_in_block;
        info.masks_in_row = masks_in_row;
        info.traj0 = step == 0 ? -1 : args.traj[(b * BL + j) * 2];
        info.traj1 = step == 0 ? 0 : args.traj[(b * BL + j) * 2 + 1];
        info.prev_p1 = step == 0 ? 0.0f : args.prev_p1[b * BL + j];
        info.prompt_len = need_features ? args.prompt_lens[b] : 0;
      }
    }

    Stats<C> st;  // this thread's statistics of the row
    const uint32_t col32 = static_cast<uint32_t>(col), nfe32 = static_cast<uint32_t>(nfe);
    // One call site for the (large, fully unrolled) per-tile code: the kernel is big enough that instruction
    // fetch shows up in its stalls (ncu), so the hot loop is not duplicated for the first tile.
#pragma unroll 1
    for (int u = 0; u < args.tiles; ++u) {  // rows longer than one register tile per thread loop
      if (u > 0) {
        tile.load(row, V32, slice_begin + u * tile_stride + tid, threads, slice_end, vec_ok);
        prefetch_next(u);
      }
      tile_into<T, C>(tile, p, st, u == 0, sample, seed, col32, nfe32, inv_sample_temp, slice_end, args.packed != 0);
    }
    if constexpr (kHasPacked<T, C>) {
      // one register tile per thread (few rows, a cluster per row): a vector argmax key is resolved here, from the
      // registers, instead of by finalize_row's dependent 16-byte read
      if (args.packed && args.tiles == 1 && st.i1 != kKeyNone && (st.i1 & 1)) {
        const int g = static_cast<int>(static_cast<int32_t>((st.i1 >> 1) / VEC) - tile.first_vec) / tile.vec_stride;
        const int k = tile.template first_eq<float>(g, st.c1);
        st.i1 = k >= 0 ? exact_key(tile.index(k)) : kKeyNone;
      }
    }
    TL(kTlTilesDone);
    // the controller's weights: visible to every thread after the merge's barrier
    if (args.controller_words > 0) asm volatile("cp.async.wait_all;\n" ::: "memory");
    st = block_merge(st, smem.part, max_scratch);
    TL(kTlCtaMerged);

    // ---- phase 2: partials to the leader (DSMEM), merged in rank order
    if (!cluster_started) {
      cluster_wait();
      cluster_started = true;
    }
    if (tid == 0) *cluster.map_shared_rank(&partials[parity][rank], 0) = st;
    cluster_arrive();
    cluster_wait();
    TL(kTlClusterMerged);
    if (leader || second_sweep) {
      const Stats<C>* leader_partials = cluster.map_shared_rank(partials[parity], 0);
      const RowInfo* leader_info = cluster.map_shared_rank(&info, 0);
      if (warp == 0)
        finalize_row<T, C>(args, ctx, leader_partials, leader_info, out, ctrl_smem, mlp_f, mlp_h1, mlp_h2, row, b, j,
                           seed, sample);
      __syncthreads();
    }
    TL(kTlFinalized);

    if (temperature_shaping) {
      // ---- PRR temperature shaping: exact p(candidate) under softmax(logits / T), second sweep from registers
      C tempered_sum = C(0);
      if (out.usable) {
        const float row_max = out.row_max, inv_t = out.inv_shaping_temp;
        const auto getf = [&](int k) { return static_cast<float>(tile.packs[k / VEC].v[k % VEC]); };
        // the last tile is still in registers; the others are read again (from L2 if still there)
        tempered_sum = C(prr::tempered_tile_sum<C, TileT::N>(getf, row_max, inv_t));
        for (int u = 0; u + 1 < args.tiles; ++u) {
          tile.load(row, V32, slice_begin + u * tile_stride + tid, threads, slice_end, vec_ok);
          tempered_sum += C(prr::tempered_tile_sum<C, TileT::N>(getf, row_max, inv_t));
        }
      }
      tempered_sum = block_sum(tempered_sum, smem.sum);
      if (tid == 0) *cluster.map_shared_rank(&tempered[parity][rank], 0) = static_cast<float>(tempered_sum);
      cluster_arrive();
      cluster_wait();
      if (leader && tid == 0 && out.usable) {
        float z = 0.0f;
        for (int k = 0; k < args.cluster_size; ++k) z += tempered[parity][k];
        const float shaped = expf((out.cand_logit - out.row_max) * out.inv_shaping_temp) / z;
        out.key = prr::rank_key(shaped);
        out.stats[prr::kStatKey] = static_cast<float>(out.key);
      }
    }
    if (klass) {
      // ---- KLASS: KL(p || p_prev) of the row, and the kept log-probabilities replaced, in a second sweep as the
      // tempered one (its tiles read again, from L2 if still there); the CTAs' sums meet in the leader
      double kl = 0.0;
      if (out.usable) {
        float* keep = args.prev_logp + (b * BL + j) * p.V;
        const bool keep_aligned = reinterpret_cast<uintptr_t>(keep) % (VEC >= 4 ? 16 : 8) == 0;
        kl = kl_sweep<T>(row, V32, slice_begin + tid, threads, tile_stride, slice_end, args.tiles, vec_ok, keep,
                         keep_aligned, out.row_shift, out.log_z);
      }
      kl = block_sum(kl, smem.dsum);
      if (tid == 0) *cluster.map_shared_rank(&kl_part[parity][rank], 0) = kl;
      cluster_arrive();
      cluster_wait();
      if (leader && tid == 0 && out.usable) {
        double sum = 0.0;
        for (int k = 0; k < args.cluster_size; ++k) sum += kl_part[parity][k];
        out.kl = sum;
      }
    }
    TL(kTlTempered);
    parity ^= 1;
    if (!leader) continue;  // the leader arrives on the counters for the whole cluster

    // ---- phase 3: the row's outputs, its record for the selection, the trajectory; then arrive
    if (tid == 0) {
      args.tokens[b * p.Lr + r] = out.cand;
      float* stats_out = args.stats + (b * p.Lr + r) * prr::kNumStats;
#pragma unroll
      for (int c = 0; c < prr::kNumStats; ++c) stats_out[c] = out.stats[c];
      const int64_t pos = b * BL + j;  // the row's record in the workspace, and its trajectory
      ws.flags[pos] = kFlagMasked | (out.usable ? kFlagUsable : 0);
      ws.key[pos] = __double_as_longlong(out.key);
      ws.cand[pos] = out.cand;
      if (out.usable || step == 0) {  // unusable rows keep their trajectory (reset on entering the block)
        args.traj[pos * 2] = out.traj0;
        args.traj[pos * 2 + 1] = out.traj1;
        args.prev_p1[pos] = out.new_prev_p1;
      }
      if (p.needs_rules) {  // what prr/rules.h reads besides the key and candidate
        ws.conf[pos] = __double_as_longlong(out.conf);
        ws.argmax[pos] = out.argmax;
        ws.p1[pos] = static_cast<int64_t>(__float_as_uint(out.p1));
      }
      if (klass) {
        // the steps in a row with KL < kappa, as the CPU op counts them: the block's first step keeps no previous
        // distribution (the CPU resets the count to -1 first), nor does a position whose last row was unusable
        double* count = args.rule_state + pos * prr::kRuleStateCols + prr::kRsKlCount;
        if (out.usable) {
          const double before = __ldcg(count);
          const double kl = (step == 0 || before < 0.0) ? std::numeric_limits<double>::infinity() : out.kl;
          *count = kl < p.rule.kl_threshold ? fmax(before, 0.0) + 1.0 : 0.0;
        } else {
          *count = -1.0;
        }
      }
    }
    arrive_and_finish(args, ctx, b, static_cast<unsigned long long>(args.cluster_size), smem.sort, int_scratch);
  }
  if (!cluster_started) cluster_wait();  // no row of this cluster was read: complete the start barrier
  if (args.controller_words > 0) asm volatile("cp.async.wait_all;\n" ::: "memory");
  TL(kTlExit);
}

}  // namespace prr::gpu
