// timeline.cuh — phase stamps for development (benchmarks/dev/timeline.py), compiled out by default.
//
// With -DPRR_TIMELINE thread 0 of every CTA records %globaltimer (ns, comparable across SMs), clock64 (cycles) and
// its SM at the phase boundaries of its last row into g_timeline; the prr_dev::timeline op (step_cuda.cu) copies it
// out. Without the define TL(k) is nothing, so the stamps cost nothing in a normal build.
#pragma once

#include <cstdint>

namespace prr::gpu {

#ifdef PRR_TIMELINE
constexpr int kTlCtas = 2048, kTlSlots = 24;
__device__ unsigned long long g_timeline[kTlCtas][2 * kTlSlots + 1];
__device__ __forceinline__ void tl_stamp(int k) {
  if (threadIdx.x != 0 || blockIdx.x >= kTlCtas) return;
  unsigned long long g, c;
  unsigned sm;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(g));
  asm volatile("mov.u64 %0, %%clock64;" : "=l"(c));
  asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
  g_timeline[blockIdx.x][k] = g;
  g_timeline[blockIdx.x][kTlSlots + k] = c;
  g_timeline[blockIdx.x][2 * kTlSlots] = sm;
}
#define TL(k) tl_stamp(k)
#else
#define TL(k) ((void)0)
#endif

}  // namespace prr::gpu
