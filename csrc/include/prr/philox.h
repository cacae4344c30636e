// prr/philox.h — stateless counter-based RNG (Philox4x32-10, Salmon et al. 2011) for sampling.
//
// Why stateless: the noise for (row seed, canvas column, the row's step count, vocab index) is a pure function of
// those integers, so the CPU and CUDA kernels draw bit-identical noise, a decode loop is reproducible per sequence
// whatever the batch, and nothing mutable has to be advanced on the host (CUDA-graph safe). The pure-PyTorch twin
// is prr_ext/reference.py: philox4x32 / philox_gumbel / philox_random_conf.
#pragma once

#include <cmath>
#include <cstdint>

#include "params.h"

namespace prr {

enum RngStream : uint32_t { kStreamGumbel = 0, kStreamRandomConf = 1, kStreamCluster = 2 };

struct Philox4 {
  uint32_t w[4];
};

PRR_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// Philox4x32-10 of counter (c0, c1, c2, c3) under the 64-bit key `seed`.
PRR_HD Philox4 philox4x32(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint64_t seed) {
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    if (r) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(0xD2511F53u, c0, hi0, lo0);
    mulhilo32(0xCD9E8D57u, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// uint32 -> uniform fp32 in (0, 1): the top 24 bits, centred (exact in fp32, never 0 or 1).
PRR_HD float uniform_from_bits(uint32_t w) { return (static_cast<float>(w >> 8) + 0.5f) * (1.0f / 16777216.0f); }

PRR_HD float gumbel_from_bits(uint32_t w) { return -logf(-logf(uniform_from_bits(w))); }

// The Philox block holding vocab entries [4g, 4g + 4) of the Gumbel noise of (seed, column, step).
PRR_HD Philox4 gumbel_block(uint64_t seed, int64_t col, int64_t step, int64_t group) {
  return philox4x32(static_cast<uint32_t>(group), static_cast<uint32_t>(col), static_cast<uint32_t>(step),
                    kStreamGumbel, seed);
}

// RandomRemask's ranking key for (seed, column, step).
PRR_HD float random_conf(uint64_t seed, int64_t col, int64_t step) {
  return uniform_from_bits(
      philox4x32(0u, static_cast<uint32_t>(col), static_cast<uint32_t>(step), kStreamRandomConf, seed).w[0]);
}

// R²'s random token-cluster choice: an index in [0, n) for the run starting at canvas column `col` (exact integer
// arithmetic: the high word of w0 * n).
PRR_HD int64_t cluster_pick(uint64_t seed, int64_t col, int64_t step, int64_t n) {
  const uint32_t w =
      philox4x32(0u, static_cast<uint32_t>(col), static_cast<uint32_t>(step), kStreamCluster, seed).w[0];
  return static_cast<int64_t>((static_cast<uint64_t>(w) * static_cast<uint64_t>(n)) >> 32);
}

}  // namespace prr
