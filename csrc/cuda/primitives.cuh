// primitives.cuh — synchronisation primitives and deterministic CTA reductions of the step kernel.
//
// Every reduction here runs a fixed tree (shuffles inside a warp, then the warps' partials in warp order), never
// float atomics, so a row's statistics are bit-identical from run to run and between the CTAs of a cluster that
// reduce the same partials. The counters the CTAs arrive on use acquire/release atomics at gpu scope, and the
// cluster barriers are split into arrive and wait so that independent work can sit between the two.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

#include "config.h"
#include "prr/row_stats.h"

namespace prr::gpu {

constexpr unsigned kAllLanes = 0xffffffffu;  // the member mask of a whole warp's shuffles, ballots and votes

template <typename C>
using Stats = prr::RowStats<C, C>;

// Arrival on a counter: one acq_rel atomic at gpu scope. After a __syncthreads, thread 0's release covers the CTA's
// writes, and its acquire (then a __syncthreads) the other arrivals' (CUTLASS's semaphore pattern); cheaper than
// fence.sc + atomic + fence.sc.
__device__ __forceinline__ unsigned long long arrive_acq_rel(unsigned long long* ctr, unsigned long long v) {
  unsigned long long old;
  asm volatile("atom.acq_rel.gpu.global.add.u64 %0, [%1], %2;\n" : "=l"(old) : "l"(ctr), "l"(v) : "memory");
  return old;
}
// The two halves of a cluster barrier: arrive (releasing this CTA's writes, or relaxed: ordering nothing), then wait
// (acquiring the other CTAs' writes).
__device__ __forceinline__ void cluster_arrive() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void cluster_arrive_relaxed() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() {
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}

// __shfl_down_sync of a trivially copyable struct, one 32-bit word at a time.
template <typename S>
__device__ __forceinline__ S shfl_down_struct(const S& s, int delta) {
  static_assert(sizeof(S) % sizeof(uint32_t) == 0, "struct size must be a multiple of 4");
  constexpr int W = sizeof(S) / sizeof(uint32_t);
  uint32_t w[W];
  memcpy(w, &s, sizeof(S));
#pragma unroll
  for (int i = 0; i < W; ++i) w[i] = __shfl_down_sync(kAllLanes, w[i], delta);
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
struct BlockPartial {
  C z, s, c1, c2;
  int64_t i1, gidx;
  float gbest;
  int bad;
  __device__ __forceinline__ void combine(const BlockPartial& o) {  // o: the higher lanes / warps
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

// Warp tree of BlockPartial::combine; lane 0 ends with the warp's partial.
template <typename C>
__device__ __forceinline__ BlockPartial<C> warp_combine(BlockPartial<C> v) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int delta = 16; delta > 0; delta >>= 1) {
    const BlockPartial<C> o = shfl_down_struct(v, delta);
    if (lane + delta < 32) v.combine(o);
  }
  return v;
}

// The statistics of the whole CTA from each thread's `st`, valid in thread 0. scratch: kMaxWarps partials,
// max_scratch: kMaxWarps values, both free again on return.
template <typename C>
__device__ Stats<C> block_merge(const Stats<C>& st, BlockPartial<C>* scratch, C* max_scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  // 1. the block max (NaN-ignoring; a NaN row is "bad" anyway)
  C M = st.m;
#pragma unroll
  for (int delta = 16; delta > 0; delta >>= 1) M = prr::max_c(M, __shfl_xor_sync(kAllLanes, M, delta));
  if (lane == 0) max_scratch[warp] = M;
  __syncthreads();
  M = max_scratch[0];
  for (int w = 1; w < nwarps; ++w) M = prr::max_c(M, max_scratch[w]);
  // 2. rebased sums, then one tree for everything
  BlockPartial<C> v;
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

// A sum over the CTA in a fixed tree, valid in thread 0 (scratch: kMaxWarps values, free again on return).
template <typename A>
__device__ A block_sum(A v, A* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int delta = 16; delta > 0; delta >>= 1) {
    const A o = __shfl_down_sync(kAllLanes, v, delta);
    if (lane + delta < 32) v += o;
  }
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < nwarps ? scratch[lane] : A(0);
#pragma unroll
    for (int delta = 16; delta > 0; delta >>= 1) {
      const A o = __shfl_down_sync(kAllLanes, v, delta);
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
    for (int e = 0; e < N; ++e) v[e] = op(e, v[e], __shfl_xor_sync(kAllLanes, v[e], delta));
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
__device__ inline int64_t block_min_all(int64_t v, int64_t* scratch) {
  int64_t a[1] = {v};
  block_reduce_all(a, reinterpret_cast<int64_t(*)[1]>(scratch), [](int, int64_t x, int64_t y) { return min(x, y); });
  __syncthreads();
  return a[0];
}

__device__ inline int64_t block_count_all(int64_t v, int64_t* scratch) {
  int64_t a[1] = {v};
  block_reduce_all(a, reinterpret_cast<int64_t(*)[1]>(scratch), [](int, int64_t x, int64_t y) { return x + y; });
  __syncthreads();
  return a[0];
}

}  // namespace prr::gpu
