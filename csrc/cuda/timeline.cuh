// timeline.cuh — phase stamps for development (benchmarks/dev/timeline.py), compiled out by default.
//
// With -DPRR_TIMELINE thread 0 of every CTA records %globaltimer (ns, comparable across SMs), clock64 (cycles) and
// its SM at the phase boundaries of its last row into g_timeline; the prr_dev::timeline op (step_cuda.cu) copies it
// out. Without the define TL(k) is nothing, so the stamps cost nothing in a normal build.
#pragma once

#include <cstdint>

namespace prr::gpu {

// The stamps' slots, in the order of benchmarks/dev/timeline.py's names: the row loop's phases, then finalize_row's
// and the selection's.
enum TimelineSlot : int {
  kTlEntry = 0,
  kTlActiveBlock = 1,
  kTlRowKnown = 2,
  kTlTilesDone = 3,
  kTlCtaMerged = 4,
  kTlClusterMerged = 5,
  kTlFinalized = 6,
  kTlTempered = 7,
  kTlArrived = 8,
  kTlSelected = 9,
  kTlExit = 10,
  kTlFinMerged = 11,
  kTlFinFeatures = 12,
  kTlFinHidden1 = 13,
  kTlFinScore = 14,
  kTlFinDone = 15,
  kTlSelLoaded = 16,
  kTlSelSorted = 17,
  kTlSelCounted = 18,
  kTlSelCommitted = 19,
};

#ifdef PRR_TIMELINE
constexpr int kTlCtas = 2048, kTlSlots = 24;  // CTAs recorded; slots per CTA (room beyond TimelineSlot)
__device__ unsigned long long g_timeline[kTlCtas][2 * kTlSlots + 1];
__device__ __forceinline__ void tl_stamp(int k) {
  if (threadIdx.x != 0 || blockIdx.x >= kTlCtas) return;
  unsigned long long g, c;
  unsigned smid;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(g));
  asm volatile("mov.u64 %0, %%clock64;" : "=l"(c));
  asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
  g_timeline[blockIdx.x][k] = g;
  g_timeline[blockIdx.x][kTlSlots + k] = c;
  g_timeline[blockIdx.x][2 * kTlSlots] = smid;
}
#define TL(k) tl_stamp(k)
#else
#define TL(k) ((void)0)
#endif

}  // namespace prr::gpu
