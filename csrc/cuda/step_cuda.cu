// step_cuda.cu — CUDA implementation of prr_ext::step: the whole step in ONE kernel launch.
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
#include <type_traits>
#include <vector>

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

// Development only (benchmarks/dev/timeline.py): with -DPRR_TIMELINE every CTA's thread 0 stamps %globaltimer and
// clock64 at the phase boundaries of its last row into g_timeline, read back by the prr_dev::timeline op. Compiled
// out otherwise.
#ifdef PRR_TIMELINE
constexpr int kTlCtas = 2048, kTlSlots = 24;
__device__ unsigned long long g_timeline[kTlCtas][2 * kTlSlots + 1];
__device__ __forceinline__ void tl_stamp(int k) {
  if (threadIdx.x != 0 || blockIdx.x >= kTlCtas) return;
  unsigned long long g, c;
  unsigned sm;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(g));
  asm volatile("mov.u64 %0, %%clock64;" : "=l"(c));
  asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
  g_timeline[blockIdx.x][k] = g;
  g_timeline[blockIdx.x][kTlSlots + k] = c;
  g_timeline[blockIdx.x][2 * kTlSlots] = sm;
}
#define TL(k) tl_stamp(k)
#else
#define TL(k) ((void)0)
#endif

constexpr int kTileVecs = 8;     // 16-byte vectors per thread per register tile
constexpr int kMaxCluster = 8;   // portable cluster size
constexpr int kSortCap = 1024;   // block_length up to this sorts in shared memory
constexpr int kThreads = 256;   // CTA size (launch bound: the launcher reads the compiled limit back)
constexpr int kMinCtas = 2;      // CTAs per SM the register budget is sized for (2: <= 128 registers per thread)
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
  int ctrl_words;   // floats of the controller buffer staged in shared memory (0: none)
  int prefetch;     // bulk-prefetch the cluster's next row into L2 (persistent grids)
  int packed;       // 16-bit logits: top-2 on packed pairs, then one exponential sweep (tile_stats_packed)
  int select_sort;  // 1: blocks of 33 .. kSortCap positions always sort (else a radix select where the rule allows)
  int dyn_rows;     // persistent one-CTA rows: each CTA claims its next row from a counter (else cid + grid, ...)
  int64_t vpc;      // 16-byte vectors per CTA slice
  float log_vocab;  // float(log(double(V)))
};

// Workspace views (layout: prr/params.h workspace_words).
//   grid_ctr: low 32 bits, the grid's row arrivals (B > 1); high 32 bits, the rows claimed past the first wave
//   (dyn_rows). Both are zeroed by the launch's last arrival, after every claim of the launch (each CTA's last claim
//   comes before its last row's arrival).
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

template <typename C>
using Stats = prr::RowStats<C, C>;

// ---------------------------------------------------------------------------------------------------------------
// Small device helpers
// ---------------------------------------------------------------------------------------------------------------
// Arrival on a counter: one acq_rel atomic at gpu scope. After a __syncthreads, thread 0's release covers the CTA's
// writes, and its acquire (then a __syncthreads) the other arrivals' (CUTLASS's semaphore pattern); cheaper than
// fence.sc + atomic + fence.sc.
__device__ __forceinline__ unsigned long long arrive_acq_rel(unsigned long long* ctr, unsigned long long v) {
  unsigned long long old;
  asm volatile("atom.acq_rel.gpu.global.add.u64 %0, [%1], %2;\n" : "=l"(old) : "l"(ctr), "l"(v) : "memory");
  return old;
}
__device__ __forceinline__ void cluster_arrive() { asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void cluster_arrive_relaxed() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
}
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
__device__ __forceinline__ Stats<C> warp_merge(Stats<C> s, int width = 32) {
  const int lane = threadIdx.x & 31;
  for (int delta = width >> 1; delta > 0; delta >>= 1) {
    const Stats<C> o = shfl_down_struct(s, delta);
    if (lane + delta < 32) s.merge(o);
  }
  return s;
}

// The decomposed CTA reduction of the per-thread statistics (what RowStats::merge does, reassociated): the block
// max M first, then each thread rebases its sums to M once (RowStats::rebased_sums), then plain sums, the top-2 and
// the sample go up fixed shuffle trees. One exp per thread instead of one per tree level: the reduction's dependent
// chain is a few dozen instructions, not several hundred. Deterministic (fixed trees, no atomics).
template <typename C>
struct Part {
  C z, s, c1, c2;
  int64_t i1, gidx;
  float gbest;
  int bad;
  __device__ __forceinline__ void combine(const Part& o) {  // o: the higher lanes / warps
    z = z + o.z;
    s = s + o.s;
    Stats<C> t;
    t.c1 = c1;
    t.i1 = i1;
    t.c2 = c2;
    t.merge_top2(o.c1, o.i1, o.c2);
    c1 = t.c1;
    i1 = t.i1;
    c2 = t.c2;
    if (o.gbest > gbest || (o.gbest == gbest && o.gidx < gidx)) {
      gbest = o.gbest;
      gidx = o.gidx;
    }
    bad |= o.bad;
  }
};

template <typename C>
__device__ __forceinline__ Part<C> warp_combine(Part<C> v) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int delta = 16; delta > 0; delta >>= 1) {
    const Part<C> o = shfl_down_struct(v, delta);
    if (lane + delta < 32) v.combine(o);
  }
  return v;
}

template <typename C>
__device__ Stats<C> block_merge(const Stats<C>& st, Part<C>* scratch, C* mscratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  // 1. the block max (NaN-ignoring; a NaN row is "bad" anyway)
  C M = st.m;
#pragma unroll
  for (int delta = 16; delta > 0; delta >>= 1) M = prr::max_c(M, __shfl_xor_sync(kFull, M, delta));
  if (lane == 0) mscratch[warp] = M;
  __syncthreads();
  M = mscratch[0];
  for (int w = 1; w < nwarps; ++w) M = prr::max_c(M, mscratch[w]);
  // 2. rebased sums, then one tree for everything
  Part<C> v;
  st.rebased_sums(M, v.z, v.s);
  v.c1 = st.c1;
  v.i1 = st.i1;
  v.c2 = st.c2;
  v.gbest = st.gbest;
  v.gidx = st.gidx;
  v.bad = st.bad ? 1 : 0;
  v = warp_combine(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  Stats<C> r;
  r.init();
  if (warp == 0) {
    if (lane < nwarps) {
      v = scratch[lane];
    } else {
      v.z = v.s = C(0);
      v.c1 = v.c2 = prr::neg_inf<C>();
      v.i1 = v.gidx = prr::kNoIndex;
      v.gbest = -std::numeric_limits<float>::infinity();
      v.bad = 0;
    }
    v = warp_combine(v);
    if (M != prr::neg_inf<C>()) {
      r.m = M;
      r.zrest = v.z - C(1);
      r.srest = v.s;
    }
    r.c1 = v.c1;
    r.i1 = v.i1;
    r.c2 = v.c2;
    r.gbest = v.gbest;
    r.gidx = v.gidx;
    r.bad = v.bad != 0;
  }
  __syncthreads();  // scratch may be reused
  return r;
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

// N values per thread reduced over the CTA by op(e, a, b) (e: which value), the result in every thread: a shuffle tree
// per warp, then the warps' partials from shared memory in warp order, the same order in every thread (one result,
// also for floating point). One barrier; a caller that reuses `scratch` next needs another.
template <int N, typename A, typename Op>
__device__ void block_reduce_all(A (&v)[N], A (*scratch)[N], Op op) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int delta = 16; delta > 0; delta >>= 1) {
#pragma unroll
    for (int e = 0; e < N; ++e) v[e] = op(e, v[e], __shfl_xor_sync(kFull, v[e], delta));
  }
  if (lane == 0) {
#pragma unroll
    for (int e = 0; e < N; ++e) scratch[warp][e] = v[e];
  }
  __syncthreads();
#pragma unroll
  for (int e = 0; e < N; ++e) {
    v[e] = scratch[0][e];
    for (int w = 1; w < nwarps; ++w) v[e] = op(e, v[e], scratch[w][e]);
  }
}

// Integer reductions whose result every thread receives (scratch: kMaxWarps entries, free again on return).
__device__ int64_t block_min_all(int64_t v, int64_t* scratch) {
  int64_t a[1] = {v};
  block_reduce_all(a, reinterpret_cast<int64_t(*)[1]>(scratch), [](int, int64_t x, int64_t y) { return min(x, y); });
  __syncthreads();
  return a[0];
}

__device__ int64_t block_count_all(int64_t v, int64_t* scratch) {
  int64_t a[1] = {v};
  block_reduce_all(a, reinterpret_cast<int64_t(*)[1]>(scratch), [](int, int64_t x, int64_t y) { return x + y; });
  __syncthreads();
  return a[0];
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
    if (vec_ok && vfirst + (kTileVecs - 1) * vstride < vend) {  // the common case: a whole tile, no per-vector test
      const uint4* src = reinterpret_cast<const uint4*>(row) + vfirst;
#pragma unroll
      for (int i = 0; i < kTileVecs; ++i) *reinterpret_cast<uint4*>(&pk[i]) = __ldcs(src + i * vstride);
      return;
    }
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
  // The first k of vector g (run time) whose value (as C) equals v, or -1: one select chain over the vectors.
  template <typename C>
  __device__ __forceinline__ int first_eq(int g, C v) const {
    Pack<T> cur = pk[0];
#pragma unroll
    for (int i = 1; i < kTileVecs; ++i)
      if (i == g) cur = pk[i];
    int k = -1;
#pragma unroll
    for (int e = VEC - 1; e >= 0; --e)
      if (static_cast<C>(cur.v[e]) == v) k = g * VEC + e;
    return k;
  }
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

// ---------------------------------------------------------------------------------------------------------------
// 16-bit logits (bf16 / fp16, fp32 compute): prr::tile_stats with the max pass on packed pairs (v9).
//
// prr::tile_stats interleaves the top-2 and the sums per 16-byte vector (~11 instructions per logit, the max being
// tracked in fp32 and the sums rescaled whenever it rises). With 16-bit logits the tile's top-2 runs on pairs
// (max.NaN / min / max on bf16x2 or f16x2: 1.5 instructions per logit, exact: the values are the logits), so the
// tile's maximum is known before any exponential and the sums need no rescaling: t = (l - m) log2(e), e = 2^t,
// Z += e, S += e t (two chains). Z' = Z - 1 (the max's own term is 2^0 = 1 exactly), S' = S ln 2.
//
// What v9 removed from the per-logit path (ncu, v8: ~15 instructions per logit in the tile loop):
//  * the -inf clamp moved from fp32 t (one FMNMX per logit) to the packed logits (one per pair): a logit below
//    kClamp16 counts as kClamp16, whose term is exactly 0 for the tile maxima that take this path (kClamp16);
//  * the vector holding each lane's maximum is tracked on packed pairs (one compare-mask + one LOP3 per vector);
//  * the argmax is not located inside the vector per tile (a select chain over the tile's registers). The statistics
//    carry an argmax KEY instead: 2 * index for an exact index, 2 * (vector * VEC) + 1 for "the first element of
//    that vector equal to c1". Keys order like indices (different tiles hold different vectors), so every merge and
//    tie-break is unchanged; finalize_row resolves the winning key with one 16-byte read (argmax_from_key).
//  * the tile holding the mask token (one per row) takes the exact path: prr::top2_without_mask, exact key;
//  * t = fma(l, log2 e, -fl(m log2 e)): one FFMA instead of a subtract and a multiply, the shift's rounding error
//    (exact by one more FMA) corrected once per tile; bf16 pairs widen to fp32 with two bit operations.
// v8 -> v9: ~964 -> ~670 instructions per warp per tile (ncu, (8,256) LowConfidence).
// ---------------------------------------------------------------------------------------------------------------
// The packed pair of 16-bit logits; the bf16x2 / f16x2 intrinsics used below are overloaded for both.
template <typename T>
using Pair16 = std::conditional_t<std::is_same_v<T, c10::BFloat16>, __nv_bfloat162, __half2>;
template <typename P>
__device__ __forceinline__ P pair_of(float v) {
  if constexpr (std::is_same_v<P, __nv_bfloat162>) {
    return __float2bfloat162_rn(v);
  } else {
    return __float2half2_rn(v);
  }
}
// The two fp32 values of a packed pair: for bf16 two bit operations (a bf16 is the high half of its fp32).
template <typename P>
__device__ __forceinline__ float2 pair_to_float2(P q) {
  if constexpr (std::is_same_v<P, __nv_bfloat162>) {
    uint32_t u;
    memcpy(&u, &q, sizeof(u));
    return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
  } else {
    return __half22float2(q);
  }
}

// kClamp16: a finite stand-in for -inf logits (bf16: about -1e30; fp16: its lowest finite value). Its term is
// exactly 0 when the tile maximum m is at least 200 above it (t < -288 in log2 units underflows) and below 1e37
// (so that (kClamp16 - m) log2 e stays finite); other tiles take the exact per-logit clamp.
template <typename T>
constexpr float kClamp16 = std::is_same_v<T, c10::BFloat16> ? -1.0e30f : -65504.0f;

constexpr int64_t kKeyNone = prr::kNoIndex;
__device__ __forceinline__ int64_t exact_key(int64_t idx) { return idx * 2; }
__device__ __forceinline__ int64_t vector_key(int64_t first_index) { return first_index * 2 + 1; }

template <typename T>
__device__ __forceinline__ Stats<float> tile_stats_packed(const Tile<T>& t, int mask_k) {
  using P = Pair16<T>;
  constexpr int VEC = Tile<T>::VEC, N = Tile<T>::N, PAIRS = VEC / 2;
  const float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f, tmin = -1e30f;
  // pass 1: per-lane top-2, and per lane the first vector holding its maximum (packed: 16 bits per lane)
  P c1 = pair_of<P>(-INFINITY), c2 = c1;
  uint32_t gpair = 0xffffffffu;  // per lane: the vector where its max last rose (0xffff: none)
#pragma unroll
  for (int i = 0; i < kTileVecs; ++i) {
    const P* pr = reinterpret_cast<const P*>(&t.pk[i]);
    const P before = c1;
#pragma unroll
    for (int j = 0; j < PAIRS; ++j) {
      c2 = __hmax2(c2, __hmin2(c1, pr[j]));
      c1 = __hmax2_nan(c1, pr[j]);
    }
    const uint32_t rose = __hgt2_mask(c1, before);  // 0xffff per lane whose max rose
    gpair = (rose & (static_cast<uint32_t>(i) * 0x00010001u)) | (~rose & gpair);
  }
  const float c1x = __low2float(c1), c1y = __high2float(c1);
  Stats<float> st;
  st.init();
  const float cm = prr::max_nan_c(c1x, c1y);
  st.bad = (cm != cm) || cm == INFINITY;
  if (st.bad || cm == -INFINITY) return st;
  float cc2 = prr::max_c(prr::min_c(c1x, c1y), prr::max_c(__low2float(c2), __high2float(c2)));
  const int g1x = (gpair & 0xffffu) == 0xffffu ? -1 : static_cast<int>(gpair & 0xffffu);
  const int g1y = (gpair >> 16) == 0xffffu ? -1 : static_cast<int>(gpair >> 16);
  const int gg = c1x > c1y ? g1x : c1y > c1x ? g1y : (g1x < 0 ? g1y : g1y < 0 ? g1x : min(g1x, g1y));
  const auto get = [&](int k) { return static_cast<float>(t.pk[k / VEC].v[k % VEC]); };
  // pass 2: the sums against the tile maximum (two chains)
  float z[2] = {0.0f, 0.0f}, sm[2] = {0.0f, 0.0f};
  const P lo = pair_of<P>(kClamp16<T>);
  if (cm > __low2float(lo) + 200.0f && cm < 1e37f) {
    // t = fma(l, log2 e, -cmk), cmk = fl(cm log2 e): one FFMA instead of a subtract and a multiply. Every t is then
    // (l - cm) log2 e + delta with delta = cm log2 e - cmk, exact by one FMA (the rounding error of a product), so
    // the sums are 2^delta times the true ones and are corrected once per tile below; the max's own term is 2^delta.
    const float cmk = cm * kLog2e, delta = fmaf(cm, kLog2e, -cmk);
#pragma unroll
    for (int i = 0; i < kTileVecs; ++i) {
      const P* pr = reinterpret_cast<const P*>(&t.pk[i]);
#pragma unroll
      for (int j = 0; j < PAIRS; ++j) {
        const float2 q = pair_to_float2(__hmax2(pr[j], lo));  // -inf -> kClamp16 (its term is 0)
        const float tx = fmaf(q.x, kLog2e, -cmk), ty = fmaf(q.y, kLog2e, -cmk);
        const float ex = prr::exp2_bulk(tx), ey = prr::exp2_bulk(ty);
        z[0] += ex;
        sm[0] += ex * tx;
        z[1] += ey;
        sm[1] += ey * ty;
      }
    }
    // true Z = z 2^-delta = 1 + Z', true S = s 2^-delta - delta Z (log2 units); f = 2^-delta - 1 without cancellation
    const float zs = z[0] + z[1], f = expm1f(-delta * kLn2);
    // (clamped to their signs: when every other term underflows, 2^delta - 1 from ex2.approx is ~1 ulp off)
    const float zrest = fmaxf((zs - 1.0f) + zs * f, 0.0f);
    st.m = cm;
    st.zrest = zrest;
    st.srest = fminf(((sm[0] + sm[1]) * (1.0f + f) - delta * (1.0f + zrest)) * kLn2, 0.0f);
  } else {  // a tile maximum near the clamp: the exact per-logit clamp
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float tt = prr::max_c((get(k) - cm) * kLog2e, tmin);
      const float e = prr::exp2_bulk(tt);
      z[k & 1] += e;
      sm[k & 1] += e * tt;
    }
    st.m = cm;
    st.zrest = (z[0] + z[1]) - 1.0f;
    st.srest = (sm[0] + sm[1]) * kLn2;
  }
  st.c1 = cm;
  st.c2 = cc2;
  st.i1 = vector_key(static_cast<int64_t>(t.v0 + gg * t.stride) * VEC);  // gg >= 0: cm is finite
  if (mask_k >= 0) {  // the one tile of the row that holds the mask token: exact top-2 without it, exact key
    float cc1 = cm;
    int k1 = t.template first_eq<float>(gg, cm);
    prr::top2_without_mask<float, N>(get, mask_k, cc1, cc2, k1);
    st.c1 = cc1;
    st.c2 = cc2;
    st.i1 = (k1 >= 0 && cc1 != -INFINITY) ? exact_key(t.index(k1)) : kKeyNone;
  }
  return st;
}

// The argmax index of a packed-path key (kKeyNone stays kNoIndex): an exact key is the index; a vector key is the
// first element of that vector whose logit equals c1 (one 16-byte read, from L2 in practice: the row was just read).
template <typename T>
__device__ __forceinline__ int64_t argmax_from_key(int64_t key, const T* row, int64_t V, float c1) {
  if (key == kKeyNone) return prr::kNoIndex;
  if (!(key & 1)) return key >> 1;
  const int64_t base = key >> 1;
  constexpr int VEC = Pack<T>::VEC;
  int64_t found = prr::kNoIndex;
#pragma unroll
  for (int e = VEC - 1; e >= 0; --e)
    if (base + e < V && static_cast<float>(row[base + e]) == c1) found = base + e;
  return found;
}

template <typename T, typename C>
constexpr bool kHasPacked =
    std::is_same_v<C, float> && (std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>);

// Statistics of one tile (+ the Gumbel-max sample over it), merged into the thread's running state.
template <typename T, typename C>
__device__ __forceinline__ void tile_into(const Tile<T>& t, const StepParams& p, Stats<C>& st, bool first,
                                          bool sample, uint64_t seed, uint32_t col, uint32_t nfe, float inv_t,
                                          int32_t vend, bool packed) {
  constexpr int VEC = Tile<T>::VEC, N = Tile<T>::N;
  const auto get = [&](int k) { return static_cast<C>(t.pk[k / VEC].v[k % VEC]); };
  const auto index = [&](int k) { return static_cast<int64_t>(t.index(k)); };
  const auto first_eq = [&](int g, C v) { return t.template first_eq<C>(g, v); };
  Stats<C> ts;
  if constexpr (kHasPacked<T, C>) {
    if (packed) {
      ts = tile_stats_packed<T>(t, t.find(static_cast<int32_t>(p.mask_id)));
    } else {
      ts = prr::tile_stats2<C, C, N, VEC>(get, index, first_eq, t.find(static_cast<int32_t>(p.mask_id)));
    }
  } else {
    ts = prr::tile_stats2<C, C, N, VEC>(get, index, first_eq, t.find(static_cast<int32_t>(p.mask_id)));
  }
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

template <typename T, typename C>
__global__ void __launch_bounds__(kThreads, kMinCtas) step_kernel(const __grid_constant__ KParams kp) {
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
  // launch shape. Many rows: one CTA per row (the fewest fixed costs per byte; rows longer than a register tile
  // loop over tiles, each L2-prefetched one ahead), and small CTAs when the rows are very many (below). Few rows:
  // split each row over a cluster of up to 8 CTAs so that the SMs fill. PRR_CUDA_CS / PRR_CUDA_NT override
  // (benchmarks/tuning).
  static const int2 dev_info = [] {
    int dev = 0, sms = 132, l2 = 50 << 20;
    (void)cudaGetDevice(&dev);
    (void)cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    (void)cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev);
    return make_int2(sms, l2);
  }();
  const int64_t slots = static_cast<int64_t>(dev_info.x) * kMinCtas, rows = p.B * p.block_length;
  int cs_fit = kMaxCluster;  // enough CTAs of 256 threads for one register tile each
  for (int c = 1; c <= kMaxCluster; c <<= 1) {
    if ((need + c - 1) / c <= 256) {
      cs_fit = c;
      break;
    }
  }
  // measured on the H100 (benchmarks/RESULTS.md notes): one CTA per row from ~128 rows up; below, the largest
  // cluster for which every row's cluster is co-resident at once (8-CTA clusters pack to ~90% of the CTA slots)
  int cs = 1;
  if (rows * 2 < slots) {
    cs = kMaxCluster;
    while (cs > 1 && rows * cs > (slots * 9) / 10) cs >>= 1;
  }
  cs = std::min(cs, cs_fit);
  const int64_t per_cta = (need + cs - 1) / cs;
  int nt = static_cast<int>(std::min<int64_t>(256, std::max<int64_t>(128, ((per_cta + 31) / 32) * 32)));
  // Many rows (>= 6 per SM): CTAs of 2 warps, 8 per SM. Each CTA's per-row tail (the reduction, finalize_row, the
  // arrival) then stalls 2 warps while the other 14 stream, instead of 8 of 16 (v9 sweeps, benchmarks/RESULTS.md:
  // LowConfidence (32,256) 1.59x -> 1.26x floor, (4,256) 1.78x -> 1.49x). Blocks over 512 positions get 4 warps: the
  // last CTA's sort of the block needs the threads (v11, H200, (1,1024): LowConfidence 127.5 / 127.9 / 137.8 us at
  // 256 / 128 / 64 threads, PRR 209.2 / 196.2 / 206.3 us); blocks over kSortCap keep 256 for their rank sort.
  if (cs == 1 && p.block_length <= kSortCap && rows >= 6 * static_cast<int64_t>(dev_info.x))
    nt = p.block_length <= 512 ? 64 : 128;
  // Very few rows of a large vocabulary (<= 2 CTAs per SM even at 8 per row): 8-CTA clusters of 4 warps instead of
  // 4 of 8 (v12, H200, (1,32) LowConfidence 17.9 -> 16.7 us). Not for PRR's temperature shaping, which gains
  // nothing from it (26.5 -> 26.4 us at (1,32), 27.6 -> 29.1 us for the full-sequence case).
  const bool temp_mode = prr::temperature_shaped(p);
  if (cs == 4 && cs_fit == kMaxCluster && !temp_mode && rows * kMaxCluster <= 2 * static_cast<int64_t>(dev_info.x)) {
    cs = kMaxCluster;
    nt = 128;
  }
  cs = std::min(kMaxCluster, std::max(1, env_int("PRR_CUDA_CS", cs)));
  while (cs & (cs - 1)) cs &= cs - 1;  // a power of two (the cluster merge is a halving tree)
  nt = env_int("PRR_CUDA_NT", nt);
  const int nt_cap = std::min(1024, (max_threads / 32) * 32);
  nt = std::max(32, std::min(nt, nt_cap)) & ~31;  // whole warps (the selection's shuffles use full masks)
  kp.cs = cs;
  kp.packed = env_int("PRR_CUDA_PACKED", 1);  // 0: prr::tile_stats2 for 16-bit logits too (the v5 path)
  kp.select_sort = env_int("PRR_CUDA_SELECT_SORT", 0) != 0;  // 1: the bitonic sort for every rule (v13 and before)
  kp.vpc = (nvec + cs - 1) / cs;
  kp.tiles = static_cast<int>(std::max<int64_t>(1, (kp.vpc + int64_t(kTileVecs) * nt - 1) / (int64_t(kTileVecs) * nt)));

  cudaLaunchConfig_t cfg{};
  cfg.blockDim = dim3(static_cast<unsigned>(nt), 1, 1);
  cfg.dynamicSmemBytes = static_cast<size_t>(kp.ctrl_words) * sizeof(float);
  if (cfg.dynamicSmemBytes > 0)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(cfg.dynamicSmemBytes)));
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(cs);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  // persistent grid: as many clusters as can be co-resident (each walks rows cid, cid + grid, ...), and each
  // prefetches its next row into L2; PRR_CUDA_PERSIST=0 launches one cluster per row instead.
  int64_t clusters = grid_clusters;
  kp.prefetch = 0;
  if (env_int("PRR_CUDA_PERSIST", 1) != 0) {
    static thread_local int64_t cached_key = -1;
    static thread_local int cached_n = 0;
    const int64_t key = (static_cast<int64_t>(cs) << 40) | (static_cast<int64_t>(nt) << 20) |
                        static_cast<int64_t>(cfg.dynamicSmemBytes);
    if (key != cached_key) {
      cfg.gridDim = dim3(static_cast<unsigned>(cs), 1, 1);
      int n = 0;
      if (cudaOccupancyMaxActiveClusters(&n, kernel, &cfg) != cudaSuccess) {
        (void)cudaGetLastError();
        n = 0;
      }
      cached_key = key;
      cached_n = n;
    }
    if (cached_n > 0 && cached_n < clusters) {
      clusters = cached_n;
      kp.prefetch = 1;
    }
  }
  // 0: persistent CTAs walk cid, cid + grid, ... (v16 and before)
  kp.dyn_rows = kp.prefetch && cs == 1 && env_int("PRR_CUDA_DYNROWS", 1) != 0;
  cfg.gridDim = dim3(static_cast<unsigned>(clusters * cs), 1, 1);
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
  if (prr::temperature_shaped(p))
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
    if (controller.has_value()) {
      kp.ctrl = controller->data_ptr<float>();
      kp.ctrl_words = static_cast<int>(controller->numel());
    }
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
    case at::kFloat: f64 ? launch<float, double>(kp, clusters, stream) : launch<float, float>(kp, clusters, stream); break;
    case at::kDouble: f64 ? launch<double, double>(kp, clusters, stream) : launch<double, float>(kp, clusters, stream); break;
    case at::kHalf:
      f64 ? launch<c10::Half, double>(kp, clusters, stream) : launch<c10::Half, float>(kp, clusters, stream);
      break;
    case at::kBFloat16:
      f64 ? launch<c10::BFloat16, double>(kp, clusters, stream) : launch<c10::BFloat16, float>(kp, clusters, stream);
      break;
    default: TORCH_CHECK(false, "prr_ext::step (CUDA): unsupported logits dtype ", logits.scalar_type());
  }
  return {commit, tokens, stats};
}

}  // namespace

TORCH_LIBRARY_IMPL(prr_ext, CUDA, m) { m.impl("step", &step_cuda); }

#ifdef PRR_TIMELINE
// prr_dev::timeline(out): copies g_timeline into `out` (int64 CUDA, numel >= its size) and clears it.
void timeline_cuda(at::Tensor& out) {
  TORCH_CHECK(out.is_cuda() && out.scalar_type() == at::kLong && out.numel() * 8 >= int64_t(sizeof(g_timeline)),
              "timeline: out must be int64 CUDA with ", sizeof(g_timeline) / 8, " elements");
  C10_CUDA_CHECK(cudaMemcpyFromSymbol(out.data_ptr(), g_timeline, sizeof(g_timeline), 0, cudaMemcpyDeviceToDevice));
  static const std::vector<unsigned char> zeros(sizeof(g_timeline), 0);
  C10_CUDA_CHECK(cudaMemcpyToSymbol(g_timeline, zeros.data(), sizeof(g_timeline)));
}
TORCH_LIBRARY_FRAGMENT(prr_dev, m) { m.def("timeline(Tensor(a!) out) -> ()"); }
TORCH_LIBRARY_IMPL(prr_dev, CUDA, m) { m.impl("timeline", &timeline_cuda); }
#endif

}  // namespace prr_ext
