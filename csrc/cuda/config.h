// config.h — the compile-time shape of the CUDA step kernel, shared by the device code (csrc/cuda/*.cuh) and the
// host's launch-shape choice (launch_shape.h). Plain C++: no CUDA, no torch.
#pragma once

namespace prr::gpu {

// 16-byte vectors per thread per register tile: 8 (64 bf16 logits) lets 8 CTAs of 256 threads hold a 126464-entry
// row in one tile. 4 (half the code per tile, twice the tiles) is 2-10 % slower at every benchmark shape (H100).
constexpr int kTileVecs = 8;

// The largest cluster of CTAs that share a row: 8, the portable cluster size.
constexpr int kMaxCluster = 8;

// Blocks of up to kSortCap positions keep their candidates in shared memory for the selection (select.cuh); longer
// blocks rank them through the workspace.
constexpr int kSortCap = 1024;

// The launch bound: CTAs of up to kThreads threads, kMinCtas of them per SM, which caps the kernel at 128 registers
// per thread. At 3 CTAs per SM (80 registers) the kernel spills 284-440 bytes and is slower at every benchmark shape
// (H100, LowConfidence (32,256): 1169 us against 940). The launcher reads the compiled thread limit back and
// launches smaller CTAs where they are faster (launch_shape.h).
constexpr int kThreads = 256;
constexpr int kMinCtas = 2;
constexpr int kMaxWarps = kThreads / 32;

}  // namespace prr::gpu
