// config.h — the compile-time shape of the CUDA step kernel, shared by the device code (csrc/cuda/*.cuh) and the
// host's launch-shape choice (launch_shape.h). Plain C++: no CUDA, no torch.
#pragma once

namespace prr::gpu {

constexpr int kTileVecs = 8;     // 16-byte vectors per thread per register tile
constexpr int kMaxCluster = 8;   // portable cluster size
constexpr int kSortCap = 1024;   // block_length up to this sorts in shared memory
constexpr int kThreads = 256;   // CTA size (launch bound: the launcher reads the compiled limit back)
constexpr int kMinCtas = 2;      // CTAs per SM the register budget is sized for (2: <= 128 registers per thread)
constexpr int kMaxWarps = kThreads / 32;

}  // namespace prr::gpu
