// kernel_args.cuh — what the step kernel receives (KParams, filled on the host) and its view of State.workspace.
//
// The host fills one KParams per launch: the step's scalar description (prr::StepParams, the same struct the CPU op
// reads), raw pointers to every tensor (nullptr for absent optional inputs) and the launch shape. It travels as a
// __grid_constant__ kernel parameter, so no copy to device memory precedes the launch.
#pragma once

#include <cstdint>

#include "config.h"
#include "prr/params.h"

namespace prr::gpu {

using prr::StepParams;

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

}  // namespace prr::gpu
