// step_cuda.cu — CUDA implementation of prr_ext::step: the whole step in ONE kernel launch.
//
// Shape (the CPU twin is csrc/cpu/step_cpu.cpp; the spec is prr_ext/reference.py; docs/cuda.md explains the design):
//   grid    = one thread-block CLUSTER of `cs` CTAs per (sequence b, block position j): B * block_length clusters.
//   phase 0 every CTA reads the active block (min of row_state[:, 0]) and whether canvas column lo + j is masked;
//           clusters of unmasked / idle positions fill their share of the default outputs and leave at once, so
//           only the rows of masked positions inside the active block are read from HBM.
//   phase 1 each CTA of a masked position's cluster loads its slice of the logits row into registers (16-byte
//           loads, all in flight before any math), computes the row statistics of its slice in two register sweeps
//           (prr::tile_stats; Philox Gumbel-max when sampling) and reduces them over the CTA in a fixed tree.
//   phase 2 the partials meet in the leader CTA's shared memory (DSMEM) behind a cluster barrier and are merged in
//           rank order (prr::RowStats::merge); the leader derives the candidate, its confidence, p1/p2/entropy, the
//           trajectory features, the PRR controller (warp-parallel prr::dense_unit) and the policy's key. PRR's
//           "temperature" shaping needs sum exp((l - m) / T) over the row: every CTA of the cluster runs the same
//           merge + controller (bit-identical), sums its slice from the registers it still holds, and the leader adds
//           the cs partials — the row is read from HBM once.
//   phase 3 last-block-done per sequence: every CTA arrives once on its sequence's counter (a finished row's
//           leader arrives for its whole cluster); the last arrival sorts the block's candidates (bitonic in SMEM,
//           key desc, block position asc), takes prr::commit_count of them, writes the tokens into x and does the
//           bookkeeping, then resets the counter. With B > 1 the block index of row_state is staged and copied by
//           the last CTA of the grid (a second counter), because every CTA of the grid reads row_state[:, 0].
//   Nothing is written that another CTA may still need to read: the counters order every read before the writes.
//
// Numerics: fp32 (fp64 in confidence_dtype=float64 mode) with fixed reduction trees and no float atomics, so the
// result is deterministic; the bulk exponentials use the hardware ex2 (prr::exp_bulk), the reported/ranked
// probabilities exp_c. Discrete decisions (argmax, sampled token, bad-row test) follow the shared headers exactly.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <limits>
#include <mutex>

#include "prr/controller.h"
#include "prr/params.h"
#include "prr/philox.h"
#include "prr/row_stats.h"
#include "prr/select.h"
#include "step_args.h"

namespace prr_ext {
namespace {

namespace cg = cooperative_groups;
using prr::StepParams;

constexpr int kTileVecs = 8;     // 16-byte vectors per thread per register tile
constexpr int kMaxCluster = 8;   // portable cluster size
constexpr int kSortCap = 1024;   // block_length up to this sorts in shared memory
constexpr int kThreads = 256;   // CTA size (launch bound: the launcher reads the compiled limit back)
constexpr int kMinCtas = 2;     // CTAs per SM the register budget is sized for (<= 128 registers per thread)
constexpr int kMaxWarps = kThreads / 32;
constexpr unsigned kFull = 0xffffffffu;

// Everything the kernel reads, as raw pointers (nullptr for absent optional inputs).
struct KParams {
  StepParams p;
  const void* logits;
  int64_t* x;
  int64_t* rs;
  int64_t* traj;
  float* prev_p1;
  int64_t* ws;
  const int64_t* seed;
  const int64_t* plen;
  const float* ctrl;
  const float* scores;
  const float* extra;
  const int64_t* candidates;
  const float* random_conf;
  bool* commit;
  int64_t* tokens;
  float* stats;
  int cs;           // CTAs per row (cluster size)
  int tiles;        // register tiles per thread
  int64_t vpc;      // 16-byte vectors per CTA slice
  float log_vocab;  // float(log(double(V)))
};

// Workspace views (layout: prr/params.h workspace_words).
struct Ws {
  unsigned long long* grid_ctr;
  unsigned long long* seq_ctr;
  int64_t* staged_block;
  int64_t* key;  // fp64 bits
  int64_t* cand;
  int64_t* flags;
  int64_t* skey;  // fp64 bits
  int64_t* spos;
  __device__ Ws(int64_t* ws, int64_t B, int64_t BL) {
    grid_ctr = reinterpret_cast<unsigned long long*>(ws);
    seq_ctr = reinterpret_cast<unsigned long long*>(ws + 1);
    staged_block = ws + 1 + B;
    const int64_t n = B * BL;
    key = ws + 1 + 2 * B;
    cand = key + n;
    flags = cand + n;
    skey = flags + n;
    spos = skey + n;
  }
};
constexpr int64_t kFlagMasked = 1, kFlagUsable = 2;

// Per-row inputs of the controller features, gathered by the leader CTA and read by the others through DSMEM.
struct RowInfo {
  int64_t masks_in_block, masks_in_row;
  int64_t traj0, traj1;  // stored trajectory of this block position (as of the start of the step)
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
};

// Scalars every thread of the CTA needs (broadcast through shared memory).
struct CtaInfo {
  int64_t active, lo, row_offset, col, r, step, nfe;
  int seq_active, masked, flags;
};

template <typename C>
using Stats = prr::RowStats<C, C>;

// ---------------------------------------------------------------------------------------------------------------
// Small device helpers
// ---------------------------------------------------------------------------------------------------------------
__device__ __forceinline__ void cluster_arrive() { asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory"); }

template <typename S>
__device__ __forceinline__ S shfl_down_struct(const S& s, int delta) {
  static_assert(sizeof(S) % sizeof(uint32_t) == 0, "struct size must be a multiple of 4");
  constexpr int W = sizeof(S) / sizeof(uint32_t);
  uint32_t w[W];
  memcpy(w, &s, sizeof(S));
#pragma unroll
  for (int i = 0; i < W; ++i) w[i] = __shfl_down_sync(kFull, w[i], delta);
  S o;
  memcpy(&o, w, sizeof(S));
  return o;
}

// Warp tree: lane i merges lane i + delta (delta = 16, 8, 4, 2, 1); lane 0 ends with lanes 0..31 merged in a fixed
// order, so the result does not depend on timing.
template <typename C>
__device__ __forceinline__ Stats<C> warp_merge(Stats<C> s) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int delta = 16; delta > 0; delta >>= 1) {
    const Stats<C> o = shfl_down_struct(s, delta);
    if (lane + delta < 32) s.merge(o);
  }
  return s;
}

// CTA reduction of the per-thread statistics; the result is valid in thread 0.
template <typename C>
__device__ Stats<C> block_merge(Stats<C> s, Stats<C>* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  s = warp_merge(s);
  if (lane == 0) scratch[warp] = s;
  __syncthreads();
  if (warp == 0) {
    if (lane < nwarps) {
      s = scratch[lane];
    } else {
      s.init();
    }
    s = warp_merge(s);
  }
  __syncthreads();  // scratch may be reused
  return s;
}

template <typename A>
__device__ A block_sum(A v, A* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int delta = 16; delta > 0; delta >>= 1) {
    const A o = __shfl_down_sync(kFull, v, delta);
    if (lane + delta < 32) v += o;
  }
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < nwarps ? scratch[lane] : A(0);
#pragma unroll
    for (int delta = 16; delta > 0; delta >>= 1) {
      const A o = __shfl_down_sync(kFull, v, delta);
      if (lane + delta < 32) v += o;
    }
  }
  __syncthreads();
  return v;
}

// Integer reductions whose result every thread receives.
__device__ int64_t block_min_all(int64_t v, int64_t* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int delta = 16; delta > 0; delta >>= 1) v = min(v, static_cast<int64_t>(__shfl_xor_sync(kFull, v, delta)));
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  int64_t r = scratch[0];
  for (int w = 1; w < nwarps; ++w) r = min(r, scratch[w]);
  __syncthreads();
  return r;
}

__device__ int64_t block_count_all(int64_t v, int64_t* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int delta = 16; delta > 0; delta >>= 1) v += static_cast<int64_t>(__shfl_xor_sync(kFull, v, delta));
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  int64_t r = 0;
  for (int w = 0; w < nwarps; ++w) r += scratch[w];
  __syncthreads();
  return r;
}

// Round a probability to the confidence dtype (bf16/fp16: round-to-nearest-even of the fp32 value, as c10 does).
__device__ __forceinline__ double round_conf(double p, int conf_dtype) {
  switch (conf_dtype) {
    case prr::kConfBF16: return static_cast<double>(__bfloat162float(__float2bfloat16_rn(static_cast<float>(p))));
    case prr::kConfF16: return static_cast<double>(__half2float(__float2half_rn(static_cast<float>(p))));
    case prr::kConfF64: return p;
    default: return static_cast<double>(static_cast<float>(p));
  }
}

__device__ __forceinline__ uint32_t philox_word(const prr::Philox4& b, int lane) {
  return lane == 0 ? b.w[0] : lane == 1 ? b.w[1] : lane == 2 ? b.w[2] : b.w[3];
}

// ---------------------------------------------------------------------------------------------------------------
// Register tile of one thread: kTileVecs 16-byte vectors of the row (vector v covers vocabulary [v * VEC, v * VEC +
// VEC)); vectors past the CTA's slice, and entries past V, hold -inf (which no statistic sees).
// ---------------------------------------------------------------------------------------------------------------
template <typename T>
struct alignas(16) Pack {
  static constexpr int VEC = 16 / sizeof(T);
  T v[VEC];
};

template <typename T>
struct Tile {
  static constexpr int VEC = Pack<T>::VEC;
  static constexpr int N = kTileVecs * VEC;
  Pack<T> pk[kTileVecs];
  int32_t v0;  // vector index of pk[0]; pk[i] is vector v0 + i * stride (V < 2^31, so 32-bit indices suffice)
  int32_t stride;

  __device__ __forceinline__ void load(const T* row, int32_t V, int32_t vfirst, int32_t vstride, int32_t vend,
                                       bool vec_ok) {
    v0 = vfirst;
    stride = vstride;
    const T ninf = T(-std::numeric_limits<float>::infinity());
#pragma unroll
    for (int i = 0; i < kTileVecs; ++i) {
      const int32_t v = vfirst + i * vstride;
      if (v < vend && vec_ok) {
        *reinterpret_cast<uint4*>(&pk[i]) = __ldcs(reinterpret_cast<const uint4*>(row) + v);
      } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const int32_t idx = v * VEC + e;
          pk[i].v[e] = (v < vend && idx < V) ? row[idx] : ninf;
        }
      }
    }
  }
  __device__ __forceinline__ int32_t index(int k) const { return (v0 + (k / VEC) * stride) * VEC + (k % VEC); }
  // The k of vocabulary index `idx` in this tile, or -1.
  __device__ __forceinline__ int find(int32_t idx) const {
    const int32_t d = idx / VEC - v0;
    if (d < 0 || d % stride != 0 || d / stride >= kTileVecs) return -1;
    return (d / stride) * VEC + idx % VEC;
  }
};

// Gumbel-max over one 16-byte vector (vocabulary base .. base + VEC): the best score l * (1 / T) + g over the
// non-mask tokens (no FMA contraction, as the CPU), first index on ties. Out of line: Philox and two logs per entry
// would otherwise crowd the registers that hold the tile.
struct Sample {
  float score;
  int32_t idx;
};
template <typename T>
__device__ __noinline__ Sample sample_vec(Pack<T> cur, int32_t base, int32_t V, int32_t mask, uint64_t seed,
                                          uint32_t col, uint32_t nfe, float inv_t) {
  constexpr int VEC = Pack<T>::VEC;
  Sample best{-std::numeric_limits<float>::infinity(), INT32_MAX};
  prr::Philox4 bits{};
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    const int32_t idx = base + e;
    if (VEC >= 4 ? (e % 4 == 0) : (e == 0))
      bits = prr::philox4x32(static_cast<uint32_t>(idx >> 2), col, nfe, prr::kStreamGumbel, seed);
    if (idx < V && idx != mask) {
      const float g = prr::gumbel_from_bits(philox_word(bits, VEC >= 4 ? (e & 3) : (idx & 3)));
      const float sc = __fadd_rn(__fmul_rn(static_cast<float>(cur.v[e]), inv_t), g);
      if (sc > best.score || (sc == best.score && idx < best.idx)) best = Sample{sc, idx};
    }
  }
  return best;
}

// Statistics of one tile (+ the Gumbel-max sample over it), merged into the thread's running state.
template <typename T, typename C>
__device__ __forceinline__ void tile_into(const Tile<T>& t, const StepParams& p, Stats<C>& st, bool first,
                                          bool sample, uint64_t seed, uint32_t col, uint32_t nfe, float inv_t,
                                          int32_t vend) {
  constexpr int VEC = Tile<T>::VEC, N = Tile<T>::N;
  const auto get = [&](int k) { return static_cast<C>(t.pk[k / VEC].v[k % VEC]); };
  const auto index = [&](int k) { return static_cast<int64_t>(t.index(k)); };
  const Stats<C> ts = prr::tile_stats<C, C, N, VEC>(get, index, t.find(static_cast<int32_t>(p.mask_id)));
  if (first) {
    st = ts;
  } else {
    st.merge(ts);
  }
  if (sample) {
    const int32_t V = static_cast<int32_t>(p.V), mask = static_cast<int32_t>(p.mask_id);
#pragma unroll
    for (int i = 0; i < kTileVecs; ++i) {
      if (t.v0 + i * t.stride >= vend) break;  // past this CTA's slice
      const Sample sm = sample_vec<T>(t.pk[i], (t.v0 + i * t.stride) * VEC, V, mask, seed, col, nfe, inv_t);
      if (sm.idx != INT32_MAX) st.push_sample(sm.score, sm.idx);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Selection of one sequence (run by the CTA that arrived last on the sequence's counter)
// ---------------------------------------------------------------------------------------------------------------
struct SortSmem {
  double key[kSortCap];
  int32_t pos[kSortCap];
};

__device__ __forceinline__ bool ranks_before(double ka, int64_t pa, double kb, int64_t pb) {
  return ka > kb || (ka == kb && pa < pb);
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
  int64_t n_masked = 0, n_usable = 0;
  const bool in_smem = BL <= kSortCap;
  int64_t n2 = 1;
  while (n2 < BL) n2 <<= 1;
  if (in_smem) {
    for (int64_t i = tid; i < n2; i += nt) {
      double k = ninf;
      int32_t pos = INT32_MAX;
      if (i < BL) {
        const int64_t f = __ldcg(ws.flags + base + i);
        n_masked += (f & kFlagMasked) ? 1 : 0;
        if (f & kFlagUsable) {
          ++n_usable;
          k = __longlong_as_double(__ldcg(ws.key + base + i));
          pos = static_cast<int32_t>(i);
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
  n_masked = block_count_all(n_masked, iscratch);
  n_usable = block_count_all(n_usable, iscratch);

  const double* keys_sorted;
  const int32_t* pos_smem = nullptr;
  const int64_t* pos_glob = nullptr;
  if (in_smem) {
    __syncthreads();
    // bitonic sort into "ranks_before" order (key desc, position asc): a total order, so this is the stable sort
    for (int64_t k = 2; k <= n2; k <<= 1) {
      for (int64_t jj = k >> 1; jj > 0; jj >>= 1) {
        for (int64_t i = tid; i < n2; i += nt) {
          const int64_t ixj = i ^ jj;
          if (ixj > i) {
            const bool up = (i & k) == 0;
            const double ki = srt.key[i], kj = srt.key[ixj];
            const int32_t pi = srt.pos[i], pj = srt.pos[ixj];
            const bool swap = up ? ranks_before(kj, pj, ki, pi) : ranks_before(ki, pi, kj, pj);
            if (swap) {
              srt.key[i] = kj;
              srt.key[ixj] = ki;
              srt.pos[i] = pj;
              srt.pos[ixj] = pi;
            }
          }
        }
        __syncthreads();
      }
    }
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

  // how many to commit (serial fp64 rule, prr/select.h)
  __shared__ int64_t s_commit;
  if (tid == 0) {
    const int64_t sched_n = step == 0 ? n_masked : sched;
    const int64_t k = prr::schedule_k(sched_n, p.steps_per_block, step);
    s_commit = prr::commit_count(p.policy, keys_sorted, n_usable, k, p.param, p.union_schedule);
  }
  __syncthreads();
  const int64_t n_commit = s_commit;
  for (int64_t i = tid; i < n_commit; i += nt) {
    const int64_t pos = in_smem ? static_cast<int64_t>(pos_smem[i]) : __ldcg(pos_glob + i);
    const int64_t col = lo + pos;
    kp.x[b * p.L + col] = __ldcg(ws.cand + base + pos);
    kp.commit[b * p.L + col] = true;
  }

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
    } else {
      ws.staged_block[b] = next;  // copied by the last CTA of the grid
    }
    ws.seq_ctr[b] = 0;  // ready for the next launch (and graph replay)
  }
  __syncthreads();
}

// Arrive on the sequence's counter (the last arrival selects) and, with B > 1, on the grid counter (the last
// arrival publishes the staged block indices). `units`: how many CTAs this arrival stands for.
__device__ __noinline__ void arrive_and_finish(const KParams& kp, CtaInfo& ci, int64_t b, unsigned long long units,
                                  SortSmem& srt, int64_t* iscratch) {
  const StepParams& p = kp.p;
  const Ws ws(kp.ws, p.B, p.block_length);
  __threadfence();  // every thread's writes before the arrival
  __syncthreads();
  if (threadIdx.x == 0) {
    int flags = 0;
    if (ci.seq_active) {
      const unsigned long long target = static_cast<unsigned long long>(p.block_length) * kp.cs;
      if (atomicAdd(ws.seq_ctr + b, units) + units == target) flags |= 1;
    }
    ci.flags = flags;
  }
  __syncthreads();
  if (ci.flags & 1) {
    __threadfence();
    select_and_commit(kp, ws, b, ci.active, srt, iscratch);
  }
  if (p.B > 1) {
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
      const unsigned long long total = gridDim.x;
      ci.flags = (atomicAdd(ws.grid_ctr, units) + units == total) ? 2 : 0;
    }
    __syncthreads();
    if (ci.flags & 2) {
      __threadfence();
      if (ci.active < p.num_blocks) {
        for (int64_t bb = threadIdx.x; bb < p.B; bb += blockDim.x) {
          int64_t* r = kp.rs + bb * prr::kRsCols;
          if (__ldcg(r + prr::kRsBlock) == ci.active) r[prr::kRsBlock] = __ldcg(ws.staged_block + bb);
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
// p1/p2/entropy, trajectory, controller score and the policy's key. Run by warp 0; the scalar work in lane 0, the
// controller's hidden units over the lanes. Every CTA that runs it on the same partials gets the same bits.
template <typename T, typename C>
__device__ __noinline__ void finalize_row(const KParams& kp, const CtaInfo& ci, const Stats<C>* lslots,
                                          const RowInfo* linfo, RowOut& out, float* mlp_f, float* mlp_h1,
                                          float* mlp_h2, const T* row, int64_t b, int64_t j, uint64_t seed,
                                          bool sample) {
  const StepParams& p = kp.p;
  const int lane = threadIdx.x & 31;
  const int64_t BL = p.block_length, r = ci.r, col = ci.col, step = ci.step, nfe = ci.nfe;
  Stats<C> m;
  if (lane < kp.cs) {
    m = lslots[lane];
  } else {
    m.init();
  }
  m = warp_merge(m);
  // finalisation in lane 0 (prr/row_stats.h, prr/controller.h), the MLP over the warp
  const int64_t ri = b * p.Lr + r;
  int usable = 0, run_mlp = 0;
  float p1 = 0.f, p2 = 0.f, ent = 0.f, p_cand = 0.f;
  if (lane == 0) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
#pragma unroll
    for (int c = 0; c < prr::kNumStats; ++c) out.st[c] = nan;
    out.key = 0.0;
    out.mf = out.inv_t = 0.0f;
    int64_t cand = sample ? m.gidx : m.i1;
    if (kp.candidates != nullptr) {
      cand = kp.candidates[ri];
      if (cand < 0 || cand >= p.V || cand == p.mask_id) cand = -1;
    }
    usable = m.usable() && cand >= 0 && cand < p.V;
    out.usable = usable;
    out.cand = usable ? cand : -1;
    out.traj0 = linfo->traj0;
    out.traj1 = linfo->traj1;
    out.new_prev = linfo->prev_p1;
    if (usable) {
      const C lc = static_cast<C>(row[cand]);
      const double conf = round_conf(static_cast<double>(m.prob(lc)), p.conf_dtype);
      p1 = static_cast<float>(m.prob(m.c1));
      p2 = static_cast<float>(m.prob(m.c2));
      ent = static_cast<float>(m.entropy());
      p_cand = static_cast<float>(m.prob(lc));
      out.st[prr::kStatConf] = static_cast<float>(conf);
      out.st[prr::kStatP1] = p1;
      out.st[prr::kStatP2] = p2;
      out.st[prr::kStatEntropy] = ent;
      // trajectory of the argmax at this block position
      const float prev = linfo->prev_p1;
      if (out.traj0 != m.i1) out.traj1 = step;
      out.traj0 = m.i1;
      out.new_prev = p1;
      switch (p.policy) {
        case prr::kRandomRemask:
          out.key = kp.random_conf ? static_cast<double>(kp.random_conf[ri])
                                   : static_cast<double>(prr::random_conf(seed, col, nfe));
          break;
        case prr::kEntropyBound: out.key = -static_cast<double>(ent); break;
        case prr::kPRR:
          if (kp.scores != nullptr) {
            mlp_h2[0] = kp.scores[ri];  // the score, handed to the shaping below
          } else {
            run_mlp = 1;
            const int64_t plen = kp.plen[b];
            const prr::FeatureInputs fin{static_cast<float>(plen + p.gen_length),
                                         static_cast<float>(linfo->masks_in_row),
                                         static_cast<float>(nfe),
                                         static_cast<float>(p.steps),
                                         static_cast<float>(plen + ci.active * BL),
                                         static_cast<float>(BL),
                                         static_cast<float>(linfo->masks_in_block),
                                         static_cast<float>(step),
                                         static_cast<float>(p.steps_per_block),
                                         kp.log_vocab};
            prr::token_features(fin, static_cast<float>(j), p1, p2, ent, static_cast<float>(out.traj1), prev,
                                mlp_f);
            for (int k = 0; k < p.n_extra; ++k) mlp_f[prr::kNumBaseFeatures + k] = kp.extra[ri * p.n_extra + k];
          }
          break;
        default: out.key = conf;
      }
    }
  }
  usable = __shfl_sync(kFull, usable, 0);
  run_mlp = __shfl_sync(kFull, run_mlp, 0);
  if (usable && p.policy == prr::kPRR) {
    const prr::MlpLayout L = prr::MlpLayout::make(p.mlp_in, p.mlp_h1, p.mlp_h2);
    float score;
    if (run_mlp) {  // the controller, one hidden unit per lane (prr::dense_unit, as the CPU's serial loop)
      __syncwarp();
      for (int k = lane; k < L.in; k += 32) prr::normalize_feature(kp.ctrl, L, k, mlp_f[k]);
      __syncwarp();
      for (int u = lane; u < L.h1; u += 32)
        mlp_h1[u] = prr::dense_unit(kp.ctrl + L.w0 + static_cast<int64_t>(u) * L.in, kp.ctrl[L.b0 + u], mlp_f, L.in);
      __syncwarp();
      const float* hl = mlp_h1;
      if (L.h2 > 0) {
        for (int u = lane; u < L.h2; u += 32)
          mlp_h2[u] =
              prr::dense_unit(kp.ctrl + L.w1 + static_cast<int64_t>(u) * L.h1, kp.ctrl[L.b1 + u], mlp_h1, L.h1);
        __syncwarp();
        hl = mlp_h2;
      }
      score = lane == 0 ? prr::output_unit(kp.ctrl, L, hl) : 0.0f;
    } else {
      __syncwarp();
      score = mlp_h2[0];
    }
    if (lane == 0) {
      out.st[prr::kStatScore] = score;
      if (p.shaping == prr::kShapeTemperature) {
        const float temp = prr::temperature_of(kp.ctrl, L, score);
        out.st[prr::kStatTemperature] = temp;
        out.inv_t = 1.0f / temp;
        out.mf = static_cast<float>(m.m);
      } else {
        const float shaped = p.shaping == prr::kShapePower ? prr::shape_power(p_cand, score, p.alpha)
                                                            : prr::shape_weighted(p_cand, score, p.alpha);
        out.key = shaped;
      }
    }
  }
  if (lane == 0 && usable && !(p.policy == prr::kPRR && p.shaping == prr::kShapeTemperature))
    out.st[prr::kStatKey] = static_cast<float>(out.key);
}

template <typename T, typename C>
__global__ void __launch_bounds__(kThreads, kMinCtas) step_kernel(const __grid_constant__ KParams kp) {
  using TileT = Tile<T>;
  constexpr int VEC = TileT::VEC;
  const StepParams& p = kp.p;
  const int tid = threadIdx.x, nt = blockDim.x, lane = tid & 31, warp = tid >> 5;
  cg::cluster_group cluster = cg::this_cluster();
  const int q = static_cast<int>(cluster.block_rank());
  const bool leader = q == 0;
  const int64_t cid = blockIdx.x / kp.cs;
  const int64_t BL = p.block_length, b = cid / BL, j = cid % BL;
  const bool temp_mode = p.policy == prr::kPRR && p.shaping == prr::kShapeTemperature;

  __shared__ union {
    Stats<C> part[kMaxWarps];
    C sum[kMaxWarps];
    SortSmem sort;
  } sm;
  __shared__ int64_t iscratch[kMaxWarps];
  __shared__ Stats<C> slots[kMaxCluster];  // row partials (leader)
  __shared__ float slot_t[kMaxCluster];    // tempered partial sums (leader)
  __shared__ RowInfo info;                 // controller inputs (leader)
  __shared__ RowOut out;
  __shared__ CtaInfo ci;
  __shared__ float mlp_f[prr::kMaxFeatures], mlp_h1[prr::kMaxHidden], mlp_h2[prr::kMaxHidden];

  // ---- phase 0: the active block (a snapshot: row_state is only written after every CTA has read it)
  int64_t active;
  if (p.B == 1) {
    active = __ldcg(kp.rs + prr::kRsBlock);
  } else {
    int64_t v = std::numeric_limits<int64_t>::max();
    for (int64_t bb = tid; bb < p.B; bb += nt) v = min(v, __ldcg(kp.rs + bb * prr::kRsCols + prr::kRsBlock));
    active = block_min_all(v, iscratch);
  }
  if (tid == 0) {
    const bool valid = active < p.num_blocks;
    ci.active = active;
    ci.lo = valid ? p.gen_start + active * BL : 0;
    ci.row_offset = (valid && p.Lr != p.L) ? ci.lo : 0;
    ci.seq_active = valid && __ldcg(kp.rs + b * prr::kRsCols + prr::kRsBlock) == active;
    ci.col = ci.lo + j;
    ci.r = ci.col - ci.row_offset;
    ci.masked = ci.seq_active && __ldcg(kp.x + b * p.L + ci.col) == p.mask_id;
    ci.step = ci.seq_active ? __ldcg(kp.rs + b * prr::kRsCols + prr::kRsStep) : 0;
    ci.nfe = ci.seq_active ? __ldcg(kp.rs + b * prr::kRsCols + prr::kRsNfe) : 0;
    ci.flags = 0;
  }
  __syncthreads();
  const bool masked = ci.masked;
  const int64_t lo = ci.lo, col = ci.col, r = ci.r, step = ci.step, nfe = ci.nfe;

  // ---- defaults of the outputs this cluster owns: columns / logits rows congruent to j modulo block_length
  if (leader) {
    const int64_t first_c = (lo + j) % BL;
    for (int64_t c = first_c + static_cast<int64_t>(tid) * BL; c < p.L; c += static_cast<int64_t>(nt) * BL)
      kp.commit[b * p.L + c] = false;
    const int64_t first_r = (((lo + j - ci.row_offset) % BL) + BL) % BL;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (int64_t rr = first_r + static_cast<int64_t>(tid) * BL; rr < p.Lr; rr += static_cast<int64_t>(nt) * BL) {
      if (masked && rr == r) continue;  // written with the row's values below
      kp.tokens[b * p.Lr + rr] = -1;
      float* sp = kp.stats + (b * p.Lr + rr) * prr::kNumStats;
#pragma unroll
      for (int c = 0; c < prr::kNumStats; ++c) sp[c] = nan;
    }
  }

  const Ws ws(kp.ws, p.B, BL);
  if (!masked) {  // an idle or unmasked position: no logits to read
    if (leader && tid == 0 && ci.seq_active) {
      if (step == 0) {  // entering the block resets the trajectory of every position
        kp.traj[(b * BL + j) * 2] = -1;
        kp.traj[(b * BL + j) * 2 + 1] = 0;
        kp.prev_p1[b * BL + j] = 0.0f;
      }
      ws.flags[b * BL + j] = 0;
    }
    if (ci.seq_active || p.B > 1) arrive_and_finish(kp, ci, b, 1, sm.sort, iscratch);
    return;
  }

  // ---- phase 1: this CTA's slice of the row, all 16-byte loads in flight first
  const T* row = static_cast<const T*>(kp.logits) + b * p.stride_b + r * p.stride_r;  // int64 offsets
  const bool vec_ok = (reinterpret_cast<uintptr_t>(row) % 16 == 0) && (p.V % VEC == 0);
  const int32_t V32 = static_cast<int32_t>(p.V);
  const int32_t nvec = static_cast<int32_t>((p.V + VEC - 1) / VEC);
  const int32_t vbeg = q * static_cast<int32_t>(kp.vpc), vend = min(nvec, vbeg + static_cast<int32_t>(kp.vpc));
  const int32_t tstride = kTileVecs * nt;  // vectors per tile of the CTA
  TileT tile;
  tile.load(row, V32, vbeg + tid, nt, vend, vec_ok);

  const uint64_t seed = static_cast<uint64_t>(__ldg(kp.seed + b));
  const bool sample = p.temperature > 0.0f && kp.candidates == nullptr;
  const float inv_temp = static_cast<float>(1.0 / static_cast<double>(p.temperature));

  // leader: per-row controller inputs (overlaps the loads)
  const bool need_features = p.policy == prr::kPRR && kp.scores == nullptr;
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
    }
  }

  Stats<C> st;
  const uint32_t col32 = static_cast<uint32_t>(col), nfe32 = static_cast<uint32_t>(nfe);
  tile_into<T, C>(tile, p, st, true, sample, seed, col32, nfe32, inv_temp, vend);
  for (int u = 1; u < kp.tiles; ++u) {  // rows longer than one register tile per thread
    tile.load(row, V32, vbeg + u * tstride + tid, nt, vend, vec_ok);
    tile_into<T, C>(tile, p, st, false, sample, seed, col32, nfe32, inv_temp, vend);
  }
  st = block_merge(st, sm.part);

  // ---- phase 2: partials to the leader (DSMEM), merged in rank order
  if (tid == 0) *cluster.map_shared_rank(&slots[q], 0) = st;
  cluster_arrive();
  if (!leader && !temp_mode) return;  // the leader arrives on the counters for the whole cluster
  cluster_wait();

  const Stats<C>* lslots = cluster.map_shared_rank(slots, 0);
  const RowInfo* linfo = cluster.map_shared_rank(&info, 0);
  if (warp == 0)
    finalize_row<T, C>(kp, ci, lslots, linfo, out, mlp_f, mlp_h1, mlp_h2, row, b, j, seed, sample);
  __syncthreads();

  if (temp_mode) {
    // ---- PRR temperature shaping: exact p(candidate) under softmax(logits / T), second sweep from registers
    C zt = C(0);
    if (out.usable) {
      const float mf = out.mf, it = out.inv_t;
      const auto getf = [&](int k) { return static_cast<float>(tile.pk[k / VEC].v[k % VEC]); };
      if (kp.tiles == 1) {
        zt = C(prr::tempered_tile_sum<C, TileT::N>(getf, mf, it));
      } else {
        for (int u = 0; u < kp.tiles; ++u) {
          tile.load(row, V32, vbeg + u * tstride + tid, nt, vend, vec_ok);
          zt += C(prr::tempered_tile_sum<C, TileT::N>(getf, mf, it));
        }
      }
    }
    zt = block_sum(zt, sm.sum);
    if (tid == 0) *cluster.map_shared_rank(&slot_t[q], 0) = static_cast<float>(zt);
    cluster_arrive();
    if (!leader) return;
    cluster_wait();
    if (tid == 0 && out.usable) {
      float z = 0.0f;
      for (int k = 0; k < kp.cs; ++k) z += slot_t[k];
      const float lc = static_cast<float>(row[out.cand]);
      const float shaped = expf((lc - out.mf) * out.inv_t) / z;
      out.key = shaped;
      out.st[prr::kStatKey] = shaped;
    }
  }

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

// ---------------------------------------------------------------------------------------------------------------
// Launcher
// ---------------------------------------------------------------------------------------------------------------
int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return (v != nullptr && *v != '\0') ? std::atoi(v) : fallback;
}

template <typename T, typename C>
void launch(const KParams& base, int64_t grid_clusters, cudaStream_t stream) {
  auto kernel = step_kernel<T, C>;
  static int max_threads = [&] {
    cudaFuncAttributes attr{};
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
    return attr.maxThreadsPerBlock;
  }();
  KParams kp = base;
  const StepParams& p = kp.p;
  constexpr int VEC = 16 / sizeof(T);
  const int64_t nvec = (p.V + VEC - 1) / VEC;
  const int64_t need = (nvec + kTileVecs - 1) / kTileVecs;  // threads per row for one register tile each
  // launch shape: the fewest CTAs per row (cluster size 1..8) whose 256-thread CTAs hold the row in one tile;
  // PRR_CUDA_CS / PRR_CUDA_NT override (benchmarks/tuning).
  int cs = kMaxCluster, nt = 256;
  for (int c = 1; c <= kMaxCluster; c <<= 1) {
    if ((need + c - 1) / c <= 256) {
      cs = c;
      break;
    }
  }
  int64_t per_cta = (need + cs - 1) / cs;
  nt = static_cast<int>(std::max<int64_t>(128, ((per_cta + 31) / 32) * 32));
  cs = std::min(kMaxCluster, std::max(1, env_int("PRR_CUDA_CS", cs)));
  nt = env_int("PRR_CUDA_NT", nt);
  const int nt_cap = std::min(1024, (max_threads / 32) * 32);
  nt = std::max(32, std::min(nt, nt_cap));
  kp.cs = cs;
  kp.vpc = (nvec + cs - 1) / cs;
  kp.tiles = static_cast<int>(std::max<int64_t>(1, (kp.vpc + int64_t(kTileVecs) * nt - 1) / (int64_t(kTileVecs) * nt)));

  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(grid_clusters * cs), 1, 1);
  cfg.blockDim = dim3(static_cast<unsigned>(nt), 1, 1);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(cs);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, kp));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> step_cuda(
    const at::Tensor& logits, at::Tensor& x, at::Tensor& row_state, at::Tensor& traj, at::Tensor& prev_p1,
    at::Tensor& workspace, const at::Tensor& seed, const at::Tensor& prompt_lens,
    const c10::optional<at::Tensor>& controller, const c10::optional<at::Tensor>& scores,
    const c10::optional<at::Tensor>& extra_features, const c10::optional<at::Tensor>& candidates,
    const c10::optional<at::Tensor>& random_conf, int64_t mask_id, int64_t gen_start, int64_t block_length,
    int64_t steps, int64_t policy, int64_t confidence_dtype, int64_t shaping, bool union_schedule, double temperature,
    double param, double alpha, at::IntArrayRef mlp_dims) {
  StepParams p = make_step_params(logits, x, row_state, traj, prev_p1, workspace, seed, prompt_lens, controller,
                                  scores, extra_features, candidates, random_conf, mask_id, gen_start, block_length,
                                  steps, policy, confidence_dtype, shaping, union_schedule, temperature, param, alpha,
                                  mlp_dims);
  TORCH_CHECK(logits.is_cuda(), "prr_ext::step (CUDA): logits must be a CUDA tensor");
  if (p.policy == prr::kPRR && p.shaping == prr::kShapeTemperature)
    TORCH_CHECK(controller.has_value(), "PRR temperature shaping needs the controller buffer (its temperature map)");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = p.B, L = p.L, Lr = p.Lr;
  // every element of the outputs is written by the kernel: no fill launches
  auto commit = at::empty({B, L}, x.options().dtype(at::kBool));
  auto tokens = at::empty({B, Lr}, x.options());
  auto stats = at::empty({B, Lr, prr::kNumStats}, x.options().dtype(at::kFloat));
  if (B == 0) return {commit, tokens, stats};
  p.row_offset = 0;  // decided on the device

  KParams kp{};
  kp.p = p;
  kp.logits = logits.data_ptr();
  kp.x = x.data_ptr<int64_t>();
  kp.rs = row_state.data_ptr<int64_t>();
  kp.traj = traj.data_ptr<int64_t>();
  kp.prev_p1 = prev_p1.data_ptr<float>();
  kp.ws = workspace.data_ptr<int64_t>();
  kp.seed = seed.data_ptr<int64_t>();
  kp.plen = prompt_lens.data_ptr<int64_t>();
  if (p.policy == prr::kPRR) {
    if (controller.has_value()) kp.ctrl = controller->data_ptr<float>();
    if (scores.has_value()) kp.scores = scores->data_ptr<float>();
    if (p.n_extra > 0) kp.extra = extra_features->data_ptr<float>();
  }
  if (candidates.has_value()) kp.candidates = candidates->data_ptr<int64_t>();
  if (random_conf.has_value()) kp.random_conf = random_conf->data_ptr<float>();
  kp.commit = commit.data_ptr<bool>();
  kp.tokens = tokens.data_ptr<int64_t>();
  kp.stats = stats.data_ptr<float>();
  kp.log_vocab = static_cast<float>(std::log(static_cast<double>(p.V)));

  const int64_t clusters = B * p.block_length;
  TORCH_CHECK(clusters * kMaxCluster < (int64_t(1) << 31), "prr_ext::step (CUDA): B * block_length too large");
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  const bool f64 = p.conf_dtype == prr::kConfF64;
  switch (logits.scalar_type()) {
#if !defined(PRR_CUDA_DEV_BF16_ONLY)  // (register-report builds of one instantiation)
    case at::kFloat: f64 ? launch<float, double>(kp, clusters, stream) : launch<float, float>(kp, clusters, stream); break;
    case at::kDouble: f64 ? launch<double, double>(kp, clusters, stream) : launch<double, float>(kp, clusters, stream); break;
    case at::kHalf:
      f64 ? launch<c10::Half, double>(kp, clusters, stream) : launch<c10::Half, float>(kp, clusters, stream);
      break;
#endif
    case at::kBFloat16:
#if !defined(PRR_CUDA_DEV_BF16_ONLY)
      f64 ? launch<c10::BFloat16, double>(kp, clusters, stream) : launch<c10::BFloat16, float>(kp, clusters, stream);
#else
      launch<c10::BFloat16, float>(kp, clusters, stream);
#endif
      break;
    default: TORCH_CHECK(false, "prr_ext::step (CUDA): unsupported logits dtype ", logits.scalar_type());
  }
  return {commit, tokens, stats};
}

}  // namespace

TORCH_LIBRARY_IMPL(prr_ext, CUDA, m) { m.impl("step", &step_cuda); }

}  // namespace prr_ext
