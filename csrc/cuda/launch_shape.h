// launch_shape.h — how the step kernel is launched, as pure functions of the problem, the device and the overrides.
//
// Plain C++ (no CUDA runtime, no torch): the shape depends only on its arguments, so it can be read, and reasoned
// about, on its own. launch.cuh queries the device (SM count, the kernel's thread limit, how many clusters fit at
// once), caches those answers per device, and calls these functions. docs/cuda.md explains each choice.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <optional>

#include "config.h"
#include "prr/params.h"

namespace prr::gpu {

// Launch overrides for benchmarks and tests, read from the environment once, at the first launch; code that changes
// these variables at run time calls reload_launch_overrides() (prr_ext._C.reload_launch_overrides() from Python).
// The table in docs/cuda.md documents them.
struct LaunchOverrides {
  std::optional<int> cluster_size;  // PRR_CUDA_CS: CTAs per row (rounded down to a power of two in 1..kMaxCluster)
  std::optional<int> threads;       // PRR_CUDA_NT: threads per CTA (whole warps, 32 .. the kernel's limit)
  bool packed = true;               // PRR_CUDA_PACKED=0: prr::tile_stats2 for 16-bit logits too
  bool select_sort = false;         // PRR_CUDA_SELECT_SORT=1: blocks of 33 .. kSortCap positions always sort
  bool persistent = true;           // PRR_CUDA_PERSIST=0: one cluster per row instead of a persistent grid
  bool claim_rows = true;           // PRR_CUDA_DYNROWS=0: persistent one-CTA grids walk their rows statically
};

// An integer environment variable (std::atoi), or nullopt when it is unset or empty.
inline std::optional<int> env_int(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::atoi(v);
}

inline LaunchOverrides read_launch_overrides() {
  LaunchOverrides o;
  o.cluster_size = env_int("PRR_CUDA_CS");
  o.threads = env_int("PRR_CUDA_NT");
  o.packed = env_int("PRR_CUDA_PACKED").value_or(1) != 0;
  o.select_sort = env_int("PRR_CUDA_SELECT_SORT").value_or(0) != 0;
  o.persistent = env_int("PRR_CUDA_PERSIST").value_or(1) != 0;
  o.claim_rows = env_int("PRR_CUDA_DYNROWS").value_or(1) != 0;
  return o;
}

// The overrides the launcher uses (read on first use), and a re-read of the environment. Defined in step_cuda.cu.
LaunchOverrides launch_overrides();
void reload_launch_overrides();

// What the launch shape needs to know about the device and the compiled kernel.
struct DeviceInfo {
  int sms;          // streaming multiprocessors
  int max_threads;  // the kernel's threads-per-CTA limit (its launch bound, or fewer if registers bind)
};

struct LaunchShape {
  int cluster_size;         // CTAs per row: a power of two, 1 .. kMaxCluster (the cluster merge is a halving tree)
  int threads;              // threads per CTA: whole warps (the selection's shuffles use full masks)
  int64_t vectors_per_cta;  // 16-byte vectors of the row in each CTA's slice
  int tiles;                // register tiles per thread (a row longer than one tile per thread loops over tiles)
};

// The launch shape of one step: `vec` logits per 16-byte vector (16 / sizeof(logit)).
//
// Many rows: one CTA per row, the fewest fixed costs per byte; each thread loops over its register tiles, each
// bulk-prefetched into L2 one tile ahead. Few rows (fewer than half the CTA slots): each row is split over a cluster
// of up to kMaxCluster CTAs so that the SMs fill, the largest cluster for which every row's cluster is co-resident
// (8-CTA clusters pack to about 90 % of the CTA slots). The CTA is as small as holds one register tile per thread of
// its slice (128 .. kThreads threads), with two refinements measured on the H100 / H200:
//  * at least 6 rows per SM with one CTA per row: CTAs of 2 warps (8 per SM), so that each CTA's per-row tail (the
//    reduction, finalize_row, the arrival) stalls 2 of the SM's 16 warps instead of 8 (LowConfidence (32,256):
//    1.59x -> 1.26x the read floor); blocks of 513 .. kSortCap positions get 4 warps, because the last CTA's sort or
//    radix select of the block needs them (H200, (1,1024) PRR: 196 us at 128 threads against 209 at 256 and 206 at
//    64); blocks over kSortCap keep kThreads for their rank sort;
//  * very few rows of a large vocabulary (at most 2 CTAs per SM even with 8 per row): 8-CTA clusters of 4 warps
//    instead of 4 of 8 (H200, (1,32) LowConfidence 16.7 us against 17.9), except for PRR's temperature shaping,
//    which gains nothing from it.
// The overrides replace the cluster size and the thread count; both are then brought into their valid ranges.
inline LaunchShape choose_launch_shape(const StepParams& p, int vec, const DeviceInfo& dev,
                                       const LaunchOverrides& overrides) {
  const int64_t vectors = (p.V + vec - 1) / vec;                         // 16-byte vectors per row
  const int64_t one_tile_threads = (vectors + kTileVecs - 1) / kTileVecs;  // threads per row for one tile each
  const int64_t slots = static_cast<int64_t>(dev.sms) * kMinCtas, rows = p.B * p.block_length;
  int fit = kMaxCluster;  // the smallest cluster of kThreads-thread CTAs that holds the row in one tile per thread
  for (int c = 1; c <= kMaxCluster; c <<= 1) {
    if ((one_tile_threads + c - 1) / c <= kThreads) {
      fit = c;
      break;
    }
  }
  int cluster_size = 1;
  if (rows * 2 < slots) {
    cluster_size = kMaxCluster;
    while (cluster_size > 1 && rows * cluster_size > (slots * 9) / 10) cluster_size >>= 1;
  }
  cluster_size = std::min(cluster_size, fit);
  const int64_t per_cta = (one_tile_threads + cluster_size - 1) / cluster_size;
  int threads = static_cast<int>(std::min<int64_t>(kThreads, std::max<int64_t>(128, ((per_cta + 31) / 32) * 32)));
  if (cluster_size == 1 && p.block_length <= kSortCap && rows >= 6 * static_cast<int64_t>(dev.sms))
    threads = p.block_length <= 512 ? 64 : 128;
  if (cluster_size == 4 && fit == kMaxCluster && !prr::temperature_shaped(p) &&
      rows * kMaxCluster <= 2 * static_cast<int64_t>(dev.sms)) {
    cluster_size = kMaxCluster;
    threads = 128;
  }

  cluster_size = std::min(kMaxCluster, std::max(1, overrides.cluster_size.value_or(cluster_size)));
  while (cluster_size & (cluster_size - 1)) cluster_size &= cluster_size - 1;  // a power of two
  threads = overrides.threads.value_or(threads);
  const int thread_cap = std::min(1024, (dev.max_threads / 32) * 32);
  threads = std::max(32, std::min(threads, thread_cap)) & ~31;  // whole warps

  LaunchShape s;
  s.cluster_size = cluster_size;
  s.threads = threads;
  s.vectors_per_cta = (vectors + cluster_size - 1) / cluster_size;
  const int64_t tile_vectors = static_cast<int64_t>(kTileVecs) * threads;  // vectors per tile of the CTA
  s.tiles = static_cast<int>(std::max<int64_t>(1, (s.vectors_per_cta + tile_vectors - 1) / tile_vectors));
  return s;
}

struct GridPlan {
  int64_t clusters;  // clusters in the grid
  bool prefetch;     // persistent: each cluster bulk-prefetches its next row into L2
  bool claim_rows;   // persistent one-CTA rows: each CTA claims its next row from a counter
};

// The grid: one cluster per row, or, when fewer clusters than rows fit on the device at once (max_active_clusters,
// 0 if unknown), a persistent grid of that many clusters that walk the rows and prefetch each next row. With one CTA
// per row, every row past the first wave goes to the CTA that asks first, so a CTA that the memory system serves
// slowly takes fewer rows (H200, LowConfidence (32,256): 658 us against 708 for the static walk).
inline GridPlan plan_grid(int64_t rows, int max_active_clusters, int cluster_size, const LaunchOverrides& overrides) {
  GridPlan g{rows, false, false};
  if (overrides.persistent && max_active_clusters > 0 && max_active_clusters < rows) {
    g.clusters = max_active_clusters;
    g.prefetch = true;
  }
  g.claim_rows = g.prefetch && cluster_size == 1 && overrides.claim_rows;
  return g;
}

}  // namespace prr::gpu
