// tile.cuh — one thread's register tile of a logits row and the statistics of that tile.
//
// A thread loads kTileVecs 16-byte vectors of its CTA's slice of the row into registers (all loads in flight before
// any math), then computes the tile's prr::RowStats from the registers: prr::tile_stats2 for fp32 / fp64 logits (and
// for 16-bit logits with fp64 confidence), tile_stats_packed for bf16 / fp16 logits, whose top-2 runs on packed pairs
// so that the exponential sweep needs no rescaling. When sampling, the Gumbel-max draw over the tile uses the shared
// Philox stream (prr/philox.h), so the CPU op draws the same token. Merged tiles give the row's statistics; the
// reductions that merge them across threads and CTAs are in primitives.cuh.
//
// The logits' element types are c10::BFloat16 / c10::Half (what the tensors hold; header-only c10 scalar types whose
// float conversions are the CUDA intrinsics), float and double.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "config.h"
#include "primitives.cuh"
#include "prr/params.h"
#include "prr/philox.h"
#include "prr/row_stats.h"

namespace prr::gpu {

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

}  // namespace prr::gpu
