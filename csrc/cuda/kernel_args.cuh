// kernel_args.cuh — what the step kernel receives (KernelArgs, filled on the host) and its view of State.workspace.
//
// The host fills one KernelArgs per launch: the step's scalar description (prr::StepParams, the same struct the CPU op
// reads), raw pointers to every tensor (nullptr for absent optional inputs) and the launch shape. It travels as a
// __grid_constant__ kernel parameter, so no copy to device memory precedes the launch.
#pragma once

#include <cstdint>

#include "config.h"
#include "prr/params.h"

namespace prr::gpu {

using prr::StepParams;

// Everything the kernel reads: the step's description, raw pointers to its tensors (nullptr for absent optional
// inputs; the names are the op's argument names) and the launch shape (launch_shape.h).
struct KernelArgs {
  StepParams p;
  const void* logits;  // [B, Lr, V], element type T of step_kernel<T, C>
  int64_t* x;          // the canvas [B, L]
  int64_t* row_state;  // [B, prr::kRsCols]
  int64_t* traj;       // [B, block_length, 2]
  float* prev_p1;      // [B, block_length]
  int64_t* workspace;  // State.workspace (Workspace below)
  double* rule_state;  // [B, block_length, prr::kRuleStateCols]: the newer rules' per-position state (prr/rules.h)
  float* prev_logp;    // [B, block_length, V]: KLASS's previous log-probabilities (nullptr for other policies)
  const int64_t* seed;
  const int64_t* prompt_lens;
  const float* controller;  // the packed controller MLP (prr/controller.h MlpLayout)
  const float* scores;
  const float* extra_features;
  const int64_t* candidates;
  const float* random_conf;
  bool* commit;   // outputs: commit mask [B, L], tokens [B, Lr], stats [B, Lr, prr::kNumStats]
  int64_t* tokens;
  float* stats;
  int cluster_size;      // CTAs per row
  int tiles;             // register tiles per thread
  int controller_words;  // floats of the controller buffer staged in shared memory (0: none)
  int prefetch;          // bulk-prefetch each cluster's next row into L2 (persistent grids)
  int packed;            // 16-bit logits: top-2 on packed pairs, then one exponential sweep (tile_stats_packed)
  int select_sort;       // blocks of 33 .. kSortCap positions always sort (else a radix select where the rule allows)
  int claim_rows;        // persistent one-CTA rows: each CTA claims its next row from a counter (else a static walk)
  int64_t vectors_per_cta;  // 16-byte vectors of the row in each CTA's slice
  float log_vocab;          // float(log(double(V))), a controller feature
};

// Views of State.workspace (layout: prr/params.h workspace_words).
//   grid_counter: low 32 bits, the grid's row arrivals (B > 1); high 32 bits, the rows claimed past the first wave
//   (claim_rows). Both are zeroed by the launch's last arrival, after every claim of the launch (each CTA's last
//   claim comes before its last row's arrival).
//   seq_counter[b]: the arrivals on sequence b's rows; the last one selects, then zeroes it.
//   key / cand / flags [b * block_length + j]: the record of block position j (its selection key as fp64 bits, its
//   candidate token, RowFlag bits), written by the row's leader CTA and read by the selection.
//   sorted_key / sorted_pos: the rank sort's output for blocks longer than kSortCap.
//   conf / argmax / p1 [b * block_length + j]: what prr/rules.h reads of a masked position besides its key and
//   candidate (the candidate's confidence as fp64 bits, the row's argmax, p(argmax) as fp32 bits), written with the
//   record by the row's leader CTA when StepParams::needs_rules.
struct Workspace {
  unsigned long long* grid_counter;
  unsigned long long* seq_counter;
  int64_t* staged_block;  // B > 1: the next block index of each sequence, copied into row_state by the last CTA
  int64_t* key;
  int64_t* cand;
  int64_t* flags;
  int64_t* sorted_key;
  int64_t* sorted_pos;
  int64_t* conf;
  int64_t* argmax;
  int64_t* p1;
  __device__ Workspace(int64_t* words, int64_t B, int64_t BL) {
    grid_counter = reinterpret_cast<unsigned long long*>(words);
    seq_counter = reinterpret_cast<unsigned long long*>(words + 1);
    staged_block = words + 1 + B;
    const int64_t n = B * BL;
    key = words + 1 + 2 * B;
    cand = key + n;
    flags = cand + n;
    sorted_key = flags + n;
    sorted_pos = sorted_key + n;
    conf = sorted_pos + n;
    argmax = conf + n;
    p1 = argmax + n;
  }
};

// Bits of a block position's record (Workspace::flags): a masked position, and one with a usable candidate.
enum RowFlag : int64_t { kFlagMasked = 1, kFlagUsable = 2 };

}  // namespace prr::gpu
