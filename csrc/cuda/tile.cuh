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

// Register tile of one thread: kTileVecs 16-byte vectors of the row (vector v covers vocabulary [v * VEC, v * VEC +
// VEC)); vectors past the CTA's slice, and entries past V, hold -inf (which no statistic sees).
template <typename T>
struct alignas(16) Pack {  // one 16-byte vector of logits
  static constexpr int VEC = 16 / sizeof(T);
  T v[VEC];
};

template <typename T>
struct Tile {
  static constexpr int VEC = Pack<T>::VEC;
  static constexpr int N = kTileVecs * VEC;
  Pack<T> packs[kTileVecs];
  // packs[i] is the row's vector first_vec + i * vec_stride (V < 2^31, so 32-bit indices suffice)
  int32_t first_vec;
  int32_t vec_stride;

  // Load the vectors first, first + stride, ... below slice_end (16-byte streaming loads, all issued before any use;
  // vec_ok: the row is 16-byte aligned and V a multiple of VEC, else element by element).
  __device__ __forceinline__ void load(const T* row, int32_t V, int32_t first, int32_t stride, int32_t slice_end,
                                       bool vec_ok) {
    first_vec = first;
    vec_stride = stride;
    if (vec_ok && first + (kTileVecs - 1) * stride < slice_end) {  // the common case: a whole tile, no per-vector test
      const uint4* src = reinterpret_cast<const uint4*>(row) + first;
#pragma unroll
      for (int i = 0; i < kTileVecs; ++i) *reinterpret_cast<uint4*>(&packs[i]) = __ldcs(src + i * stride);
      return;
    }
    const T ninf = T(-std::numeric_limits<float>::infinity());
#pragma unroll
    for (int i = 0; i < kTileVecs; ++i) {
      const int32_t v = first + i * stride;
      if (v < slice_end && vec_ok) {
        *reinterpret_cast<uint4*>(&packs[i]) = __ldcs(reinterpret_cast<const uint4*>(row) + v);
      } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const int32_t idx = v * VEC + e;
          packs[i].v[e] = (v < slice_end && idx < V) ? row[idx] : ninf;
        }
      }
    }
  }
  // The vocabulary index of the tile's k-th logit (k = vector * VEC + element).
  __device__ __forceinline__ int32_t index(int k) const {
    return (first_vec + (k / VEC) * vec_stride) * VEC + (k % VEC);
  }
  // The first k of vector g (run time) whose value (as C) equals v, or -1: one select chain over the vectors.
  template <typename C>
  __device__ __forceinline__ int first_eq(int g, C v) const {
    Pack<T> cur = packs[0];
#pragma unroll
    for (int i = 1; i < kTileVecs; ++i)
      if (i == g) cur = packs[i];
    int k = -1;
#pragma unroll
    for (int e = VEC - 1; e >= 0; --e)
      if (static_cast<C>(cur.v[e]) == v) k = g * VEC + e;
    return k;
  }
  // The k of vocabulary index `idx` in this tile, or -1.
  __device__ __forceinline__ int find(int32_t idx) const {
    const int32_t d = idx / VEC - first_vec;
    if (d < 0 || d % vec_stride != 0 || d / vec_stride >= kTileVecs) return -1;
    return (d / vec_stride) * VEC + idx % VEC;
  }
};

// Word `lane` of a Philox block.
__device__ __forceinline__ uint32_t philox_word(const prr::Philox4& b, int lane) {
  return lane == 0 ? b.w[0] : lane == 1 ? b.w[1] : lane == 2 ? b.w[2] : b.w[3];
}

// Gumbel-max over one 16-byte vector (vocabulary base .. base + VEC): the best score l * (1 / T) + g over the
// non-mask tokens (no FMA contraction, as the CPU), first index on ties. Out of line: Philox and two logs per entry
// would otherwise crowd the registers that hold the tile.
struct Sample {
  float score;
  int32_t idx;  // INT32_MAX: none (every entry past V or the mask token)
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

// 16-bit logits (bf16 / fp16, fp32 compute): tile_stats_packed.
//
// prr::tile_stats2 interleaves the top-2 and the sums per 16-byte vector (~11 instructions per logit: the max is
// tracked in fp32 and the sums are rescaled whenever it rises). With 16-bit logits the tile's top-2 runs on pairs
// (max.NaN / min / max on bf16x2 or f16x2: 1.5 instructions per logit, exact: the values are the logits), so the
// tile's maximum is known before any exponential and the sums need no rescaling: t = (l - m) log2(e), e = 2^t,
// Z += e, S += e t (two chains). Z' = Z - 1 (the max's own term is 2^0 = 1 exactly), S' = S ln 2. The per-logit path
// is kept short (ncu, (8,256) LowConfidence: ~670 instructions per warp per tile, where a packed path with the
// clamp, the max's vector and the argmax handled per logit issues ~964):
//  * the -inf clamp applies to the packed logits (one instruction per pair, not one per logit in fp32): a logit below
//    kClamp16 counts as kClamp16, whose term is exactly 0 for the tile maxima that take this path (kClamp16);
//  * the vector holding each lane's maximum is tracked on packed pairs (one compare-mask + one LOP3 per vector);
//  * the argmax is not located inside its vector per tile (that would be a select chain over the tile's registers).
//    The statistics carry an argmax KEY instead: 2 * index for an exact index, 2 * (vector * VEC) + 1 for "the first
//    element of that vector equal to c1". Keys order like indices (different tiles hold different vectors), so every
//    merge and tie-break is unchanged; finalize_row resolves the winning key with one 16-byte read
//    (argmax_from_key), or the kernel from its registers when the row is one tile per thread;
//  * the tile holding the mask token (one per row) takes the exact path: prr::top2_without_mask, exact key;
//  * t = fma(l, log2 e, -fl(m log2 e)): one FFMA instead of a subtract and a multiply, the shift's rounding error
//    (exact by one more FMA) corrected once per tile; bf16 pairs widen to fp32 with two bit operations.
//
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

// Argmax keys of the packed path (RowStats::i1): kKeyNone, an exact index, or the first index of a 16-byte vector.
constexpr int64_t kKeyNone = prr::kNoIndex;
__device__ __forceinline__ int64_t exact_key(int64_t idx) { return idx * 2; }
__device__ __forceinline__ int64_t vector_key(int64_t first_index) { return first_index * 2 + 1; }

// The statistics of one tile of 16-bit logits; mask_k: the k of the mask token in this tile, or -1.

template <typename T>
__device__ __forceinline__ Stats<float> tile_stats_packed(const Tile<T>& t, int mask_k) {
  using P = Pair16<T>;
  constexpr int VEC = Tile<T>::VEC, N = Tile<T>::N, PAIRS = VEC / 2;
  const float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f, tmin = -1e30f;
  // pass 1: per-lane top-2, and per lane the first vector holding its maximum (packed: 16 bits per lane)
  P c1 = pair_of<P>(-INFINITY), c2 = c1;
  uint32_t max_vecs = 0xffffffffu;  // per lane (16 bits each): the vector where its max last rose (0xffff: none)
#pragma unroll
  for (int i = 0; i < kTileVecs; ++i) {
    const P* pr = reinterpret_cast<const P*>(&t.packs[i]);
    const P before = c1;
#pragma unroll
    for (int j = 0; j < PAIRS; ++j) {
      c2 = __hmax2(c2, __hmin2(c1, pr[j]));
      c1 = __hmax2_nan(c1, pr[j]);
    }
    const uint32_t rose = __hgt2_mask(c1, before);  // 0xffff per lane whose max rose
    max_vecs = (rose & (static_cast<uint32_t>(i) * 0x00010001u)) | (~rose & max_vecs);
  }
  const float c1x = __low2float(c1), c1y = __high2float(c1);
  Stats<float> st;
  st.init();
  const float tile_max = prr::max_nan_c(c1x, c1y);
  st.bad = (tile_max != tile_max) || tile_max == INFINITY;
  if (st.bad || tile_max == -INFINITY) return st;
  float second = prr::max_c(prr::min_c(c1x, c1y), prr::max_c(__low2float(c2), __high2float(c2)));
  const int vec_x = (max_vecs & 0xffffu) == 0xffffu ? -1 : static_cast<int>(max_vecs & 0xffffu);
  const int vec_y = (max_vecs >> 16) == 0xffffu ? -1 : static_cast<int>(max_vecs >> 16);
  // the first vector that holds the tile maximum
  const int max_vec =
      c1x > c1y ? vec_x : c1y > c1x ? vec_y : (vec_x < 0 ? vec_y : vec_y < 0 ? vec_x : min(vec_x, vec_y));
  const auto get = [&](int k) { return static_cast<float>(t.packs[k / VEC].v[k % VEC]); };
  // pass 2: the sums against the tile maximum (two chains)
  float z[2] = {0.0f, 0.0f}, s[2] = {0.0f, 0.0f};
  const P clamp = pair_of<P>(kClamp16<T>);
  if (tile_max > __low2float(clamp) + 200.0f && tile_max < 1e37f) {
    // t = fma(l, log2 e, -shift), shift = fl(m log2 e): one FFMA instead of a subtract and a multiply. Every t is
    // then (l - m) log2 e + delta with delta = m log2 e - shift, exact by one FMA (the rounding error of a product),
    // so the sums are 2^delta times the true ones and are corrected once per tile below; the max's own term is
    // 2^delta.
    const float shift = tile_max * kLog2e, delta = fmaf(tile_max, kLog2e, -shift);
#pragma unroll
    for (int i = 0; i < kTileVecs; ++i) {
      const P* pr = reinterpret_cast<const P*>(&t.packs[i]);
#pragma unroll
      for (int j = 0; j < PAIRS; ++j) {
        const float2 q = pair_to_float2(__hmax2(pr[j], clamp));  // -inf -> kClamp16 (its term is 0)
        const float tx = fmaf(q.x, kLog2e, -shift), ty = fmaf(q.y, kLog2e, -shift);
        const float ex = prr::exp2_bulk(tx), ey = prr::exp2_bulk(ty);
        z[0] += ex;
        s[0] += ex * tx;
        z[1] += ey;
        s[1] += ey * ty;
      }
    }
    // true Z = z 2^-delta = 1 + Z', true S = s 2^-delta - delta Z (log2 units); f = 2^-delta - 1 without cancellation
    const float zs = z[0] + z[1], f = expm1f(-delta * kLn2);
    // (clamped to their signs: when every other term underflows, 2^delta - 1 from ex2.approx is ~1 ulp off)
    const float zrest = fmaxf((zs - 1.0f) + zs * f, 0.0f);
    st.m = tile_max;
    st.zrest = zrest;
    st.srest = fminf(((s[0] + s[1]) * (1.0f + f) - delta * (1.0f + zrest)) * kLn2, 0.0f);
  } else {  // a tile maximum near the clamp: the exact per-logit clamp
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float tt = prr::max_c((get(k) - tile_max) * kLog2e, tmin);
      const float e = prr::exp2_bulk(tt);
      z[k & 1] += e;
      s[k & 1] += e * tt;
    }
    st.m = tile_max;
    st.zrest = (z[0] + z[1]) - 1.0f;
    st.srest = (s[0] + s[1]) * kLn2;
  }
  st.c1 = tile_max;
  st.c2 = second;
  st.i1 = vector_key(static_cast<int64_t>(t.first_vec + max_vec * t.vec_stride) * VEC);  // max_vec >= 0: finite max
  if (mask_k >= 0) {  // the one tile of the row that holds the mask token: exact top-2 without it, exact key
    float first = tile_max;
    int k1 = t.template first_eq<float>(max_vec, tile_max);
    prr::top2_without_mask<float, N>(get, mask_k, first, second, k1);
    st.c1 = first;
    st.c2 = second;
    st.i1 = (k1 >= 0 && first != -INFINITY) ? exact_key(t.index(k1)) : kKeyNone;
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

// Whether step_kernel<T, C> has the packed path: 16-bit logits with fp32 confidence.
template <typename T, typename C>
constexpr bool kHasPacked =
    std::is_same_v<C, float> && (std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>);

// Statistics of one tile (+ the Gumbel-max sample over it), merged into the thread's running state `st` (first:
// the row's first tile, which initialises it).
template <typename T, typename C>
__device__ __forceinline__ void tile_into(const Tile<T>& t, const StepParams& p, Stats<C>& st, bool first,
                                          bool sample, uint64_t seed, uint32_t col, uint32_t nfe, float inv_t,
                                          int32_t slice_end, bool packed) {
  constexpr int VEC = Tile<T>::VEC, N = Tile<T>::N;
  const auto get = [&](int k) { return static_cast<C>(t.packs[k / VEC].v[k % VEC]); };
  const auto index = [&](int k) { return static_cast<int64_t>(t.index(k)); };
  const auto first_eq = [&](int g, C v) { return t.template first_eq<C>(g, v); };
  const int mask_k = p.mask_id < 0 ? -1 : t.find(static_cast<int32_t>(p.mask_id));  // -1: no mask token here
  Stats<C> ts;
  if constexpr (kHasPacked<T, C>) {
    if (packed) {
      ts = tile_stats_packed<T>(t, mask_k);
    } else {
      ts = prr::tile_stats2<C, C, N, VEC>(get, index, first_eq, mask_k);
    }
  } else {
    ts = prr::tile_stats2<C, C, N, VEC>(get, index, first_eq, mask_k);
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
      if (t.first_vec + i * t.vec_stride >= slice_end) break;  // past this CTA's slice
      const Sample drawn =
          sample_vec<T>(t.packs[i], (t.first_vec + i * t.vec_stride) * VEC, V, mask, seed, col, nfe, inv_t);
      if (drawn.idx != INT32_MAX) st.push_sample(drawn.score, drawn.idx);
    }
  }
}

}  // namespace prr::gpu
