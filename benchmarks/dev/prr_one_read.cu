// prr_one_read.cu — can PRR's temperature-shaped sum read each bf16 logits row from HBM once?
//
// PRR needs two sweeps over a row: the statistics (max m, normaliser s), from which the controller derives a
// temperature T, and then the tempered sum Σ exp((l − m)/T), which cannot start before T is known. The step kernel
// keeps what one tile per thread holds in registers and reads the rest of the row again; at the large shapes the rows
// in flight exceed the L2, so the second sweep comes mostly from HBM (docs/cuda.md) and PRR runs at 1.5–1.8× the
// one-sweep rules. This standalone benchmark measures the alternative issue #26 names: a cluster of CS CTAs holds
// the row in shared memory (each CTA a 1/CS slice, loaded by bulk copies that signal an mbarrier per chunk), the CTAs
// merge their statistics through distributed shared memory, and the tempered sum reads shared memory only.
//
// Kernels, each on the same rows, timed side by side (median of --reps launches, CUDA events):
//   stats_only      one sweep: m and s per row (what a one-sweep rule reads; the target is PRR <= 1.3x this)
//   two_sweeps      m, s, T, then the tempered sum re-reading the row from global memory (the step kernel's shape)
//   smem_cluster<CS>  one read: the row in the cluster's shared memory, CS = 2, 4, 8
//   smem_stats<CS>    the same loads and statistics without the tempered sum: what the second sweep's arithmetic
//                     costs once the row is on chip (the gap to smem_cluster) and what the bulk-copy path costs
//                     against register loads (the gap to stats_only)
//   smem_pipe<CS> xN  N persistent clusters whose CTAs double-buffer their slices: row i + 2's bulk copy is issued
//                     once row i is read, so the loads overlap the next row's arithmetic and cluster merges
//   smem_pipe<8>+poly the same, with a quarter of the tempered exponentials on the FMA pipe (exp2_fma)
// T = 0.7 + 0.3 · ln(s) / ln(V), a stand-in for the controller: any function of the statistics has the same data flow.
// Every kernel's m, s, T and tempered sum are checked against a double-precision CPU reference on a sample of rows.
//
//   nvcc -O3 -std=c++17 -arch=sm_90a benchmarks/dev/prr_one_read.cu -o /tmp/prr_one_read && /tmp/prr_one_read 256 2048 8192
//
// Arguments: row counts (B·block_length; default 256 1024 2048 8192), V = 126464 (LLaDA's vocabulary), bf16.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cooperative_groups.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <type_traits>
#include <vector>

namespace cg = cooperative_groups;

#define CK(x)                                                                                   \
  do {                                                                                          \
    cudaError_t e_ = (x);                                                                       \
    if (e_ != cudaSuccess) {                                                                    \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                             \
    }                                                                                           \
  } while (0)

constexpr int V = 126464;
constexpr int NT = 256;           // threads per CTA
constexpr int NCHUNK = 8;         // bulk copies (and mbarriers) per CTA slice
constexpr int kUnroll = 4;        // 16-byte loads in flight per thread in the one-CTA-per-row kernels
constexpr float LOG2E = 1.4426950408889634f;

struct RowOut {
  float m, s, T, st;  // max, Σ exp(l − m), temperature, Σ exp((l − m)/T)
};

__host__ __device__ inline float temperature_of(float s) { return 0.7f + 0.3f * logf(s) / logf(float(V)); }

// ---------------------------------------------------------------------------------------------------------------
// reductions
// ---------------------------------------------------------------------------------------------------------------
__device__ inline void merge(float& m, float& s, float m2, float s2) {  // online-softmax merge of (max, Σ exp(l − max))
  const float mn = fmaxf(m, m2);
  s = (m == -INFINITY ? 0.f : s * exp2f((m - mn) * LOG2E)) + (m2 == -INFINITY ? 0.f : s2 * exp2f((m2 - mn) * LOG2E));
  m = mn;
}

__device__ inline void block_stats(float& m, float& s, float* red) {  // red: 2·NT/32 floats
  for (int o = 16; o; o >>= 1) merge(m, s, __shfl_xor_sync(~0u, m, o), __shfl_xor_sync(~0u, s, o));
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) red[w] = m, red[NT / 32 + w] = s;
  __syncthreads();
  m = -INFINITY, s = 0.f;
  for (int i = 0; i < NT / 32; ++i) merge(m, s, red[i], red[NT / 32 + i]);  // every thread, the same order
  __syncthreads();
}

__device__ inline float block_sum(float v, float* red) {
  for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(~0u, v, o);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  float t = 0.f;
  for (int i = 0; i < NT / 32; ++i) t += red[i];
  __syncthreads();
  return t;
}

// the statistics of 8 bf16 values (one 16-byte vector)
__device__ inline void vec_stats(const uint4& q, float& m, float& s) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&q);
  float v[8];
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    v[2 * i] = f.x, v[2 * i + 1] = f.y;
  }
  float vm = v[0];
  for (int i = 1; i < 8; ++i) vm = fmaxf(vm, v[i]);
  if (vm > m) s *= exp2f((m - vm) * LOG2E), m = vm;
  for (int i = 0; i < 8; ++i) s += exp2f((v[i] - m) * LOG2E);
}

__device__ inline float vec_tempered(const uint4& q, float m, float k) {  // Σ exp2((l − m)·k), k = log2 e / T
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&q);
  float t = 0.f;
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    t += exp2f((f.x - m) * k) + exp2f((f.y - m) * k);
  }
  return t;
}

// ---------------------------------------------------------------------------------------------------------------
// one CTA per row: the statistics alone, or the statistics and the tempered sum re-reading global memory
// ---------------------------------------------------------------------------------------------------------------
template <bool kTempered>
__global__ void __launch_bounds__(NT) row_kernel(const __nv_bfloat16* __restrict__ logits, RowOut* out, int rows) {
  __shared__ float red[2 * NT / 32];
  for (int r = blockIdx.x; r < rows; r += gridDim.x) {
    const uint4* row = reinterpret_cast<const uint4*>(logits + size_t(r) * V);
    float m = -INFINITY, s = 0.f;
    for (int i = threadIdx.x; i < V / 8; i += kUnroll * NT) {  // kUnroll loads in flight per thread
      uint4 q[kUnroll];
      for (int u = 0; u < kUnroll; ++u) q[u] = i + u * NT < V / 8 ? __ldg(row + i + u * NT) : uint4{};
      for (int u = 0; u < kUnroll; ++u)
        if (i + u * NT < V / 8) vec_stats(q[u], m, s);
    }
    block_stats(m, s, red);
    RowOut o{m, s, 0.f, 0.f};
    if (kTempered) {
      o.T = temperature_of(s);
      const float k = LOG2E / o.T;
      float t = 0.f;
      for (int i = threadIdx.x; i < V / 8; i += kUnroll * NT) {
        uint4 q[kUnroll];
        for (int u = 0; u < kUnroll; ++u) q[u] = i + u * NT < V / 8 ? __ldg(row + i + u * NT) : uint4{};
        for (int u = 0; u < kUnroll; ++u)
          if (i + u * NT < V / 8) t += vec_tempered(q[u], m, k);
      }
      o.st = block_sum(t, red);
    }
    if (threadIdx.x == 0) out[r] = o;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// one cluster of CS CTAs per row, the row in their shared memory
// ---------------------------------------------------------------------------------------------------------------
__device__ inline uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

__device__ inline void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}

__device__ inline void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}

__device__ inline void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n\t.reg .pred p;\n"
      "WAIT:\n\t"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n\t"
      "@!p bra WAIT;\n}" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}

// global -> this CTA's shared memory, completion counted on `bar` (bytes: a multiple of 16, addresses 16-aligned)
__device__ inline void bulk_load(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   smem_addr(dst)),
               "l"(src), "r"(bytes), "r"(smem_addr(bar))
               : "memory");
}

template <int CS, bool kTempered>
__global__ void __launch_bounds__(NT) smem_cluster_kernel(const __nv_bfloat16* __restrict__ logits, RowOut* out) {
  constexpr int kSlice = V / CS;               // bf16 values per CTA
  constexpr int kChunk = kSlice / NCHUNK;      // values per bulk copy
  static_assert(V % (CS * NCHUNK * 8) == 0, "every chunk is whole 16-byte vectors");
  extern __shared__ __align__(128) uint4 slice[];  // kSlice bf16 = kSlice / 8 vectors
  __shared__ uint64_t bars[NCHUNK];
  __shared__ float red[2 * NT / 32];
  __shared__ float part[2];  // this CTA's (m, s), then its tempered sum, read by the others through DSMEM

  cg::cluster_group cluster = cg::this_cluster();
  const int rank = int(cluster.block_rank());
  const int r = blockIdx.x / CS;
  const __nv_bfloat16* src = logits + size_t(r) * V + size_t(rank) * kSlice;
  if (threadIdx.x == 0) {
    for (int c = 0; c < NCHUNK; ++c) mbar_init(&bars[c], 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    for (int c = 0; c < NCHUNK; ++c) {  // every chunk in flight at once
      mbar_expect_tx(&bars[c], kChunk * 2);
      bulk_load(reinterpret_cast<__nv_bfloat16*>(slice) + c * kChunk, src + c * kChunk, kChunk * 2, &bars[c]);
    }
  }
  __syncthreads();

  float m = -INFINITY, s = 0.f;
  for (int c = 0; c < NCHUNK; ++c) {  // statistics, chunk by chunk as the copies land
    mbar_wait(&bars[c], 0);
    for (int i = threadIdx.x; i < kChunk / 8; i += NT) vec_stats(slice[c * (kChunk / 8) + i], m, s);
  }
  block_stats(m, s, red);
  if (threadIdx.x == 0) part[0] = m, part[1] = s;
  cluster.sync();
  m = -INFINITY, s = 0.f;
  for (int j = 0; j < CS; ++j) {  // every CTA merges every slice in rank order: the same m, s and T everywhere
    const float* pj = cluster.map_shared_rank(part, j);
    merge(m, s, pj[0], pj[1]);
  }
  const float T = kTempered ? temperature_of(s) : 0.f, k = LOG2E / T;
  float t = 0.f;
  if (kTempered)
    for (int i = threadIdx.x; i < kSlice / 8; i += NT) t += vec_tempered(slice[i], m, k);
  t = block_sum(t, red);
  cluster.sync();  // everyone has read part[0..1]
  if (threadIdx.x == 0) part[0] = t;
  cluster.sync();
  if (rank == 0 && threadIdx.x == 0) {
    float st = 0.f;
    for (int j = 0; j < CS; ++j) st += cluster.map_shared_rank(part, j)[0];
    out[r] = RowOut{m, s, T, st};
  }
  cluster.sync();  // a CTA's shared memory must outlive the leader's reads
}

// ---------------------------------------------------------------------------------------------------------------
// persistent clusters, each CTA's slice double-buffered: the bulk copy of row i + 2 is issued as soon as the CTA has
// read row i, so loads overlap the statistics, the cluster merges and the tempered sum of row i + 1. kPoly: 2 of
// every 8 tempered exponentials on the FMA pipe (a degree-6 polynomial of 2^r, |r| <= 1/2, and the exponent added
// as an integer) instead of the MUFU, whose 16 results per SM-cycle two exponentials per element nearly fill at the
// read floor (2 x 1.5e12 elements/s against 16 x 132 SMs x ~1.75 GHz = 3.7e12/s on an H100).
// ---------------------------------------------------------------------------------------------------------------
__device__ inline void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

__device__ __forceinline__ float exp2_fma(float y) {  // 2^y for y <= 0, within ~2 ulp; 2^-125 and below flush
  y = fmaxf(y, -125.f);
  const float t = y + 12582912.f;  // 1.5 * 2^23: round(y) lands in t's low mantissa bits
  const float r = y - (t - 12582912.f);
  float p = 1.5403530e-4f;  // ln2^6 / 6!, ..., ln2, 1 (Taylor; the tail is < 1.2e-7 on |r| <= 1/2)
  p = fmaf(p, r, 1.3333558e-3f);
  p = fmaf(p, r, 9.6181291e-3f);
  p = fmaf(p, r, 5.5504109e-2f);
  p = fmaf(p, r, 2.4022651e-1f);
  p = fmaf(p, r, 6.9314718e-1f);
  p = fmaf(p, r, 1.f);
  return __int_as_float(__float_as_int(p) + (__float_as_int(t) << 23));  // t's bits << 23 = round(y) << 23
}

template <bool kPoly>
__device__ inline float vec_tempered_mix(const uint4& q, float m, float k) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&q);
  float t = 0.f;
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    if (kPoly && i == 0)
      t += exp2_fma((f.x - m) * k) + exp2_fma((f.y - m) * k);
    else
      t += exp2f((f.x - m) * k) + exp2f((f.y - m) * k);
  }
  return t;
}

template <int CS, bool kPoly>
__global__ void __launch_bounds__(NT) smem_pipe_kernel(const __nv_bfloat16* __restrict__ logits, RowOut* out,
                                                       int rows) {
  constexpr int kSlice = V / CS, kChunk = kSlice / NCHUNK;
  static_assert(V % (CS * NCHUNK * 8) == 0, "every chunk is whole 16-byte vectors");
  extern __shared__ __align__(128) uint4 buf[];  // two slices: rows of even and odd iteration
  __shared__ uint64_t bars[2][NCHUNK];
  __shared__ float red[2 * NT / 32];
  __shared__ float part[2][3];  // per iteration parity: this CTA's (m, s), then its tempered sum

  cg::cluster_group cluster = cg::this_cluster();
  const int rank = int(cluster.block_rank());
  const int c0 = blockIdx.x / CS, nclusters = gridDim.x / CS;
  const auto issue = [&](int row, int b) {  // thread 0: the slice of `row` into buffer b
    const __nv_bfloat16* src = logits + size_t(row) * V + size_t(rank) * kSlice;
    __nv_bfloat16* dst = reinterpret_cast<__nv_bfloat16*>(buf) + size_t(b) * kSlice;
    for (int c = 0; c < NCHUNK; ++c) {
      mbar_expect_tx(&bars[b][c], kChunk * 2);
      bulk_load(dst + c * kChunk, src + c * kChunk, kChunk * 2, &bars[b][c]);
    }
  };
  if (threadIdx.x == 0) {
    for (int b = 0; b < 2; ++b)
      for (int c = 0; c < NCHUNK; ++c) mbar_init(&bars[b][c], 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    for (int b = 0; b < 2 && c0 + b * nclusters < rows; ++b) issue(c0 + b * nclusters, b);
  }
  __syncthreads();

  int it = 0;
  for (int r = c0; r < rows; r += nclusters, ++it) {
    const int b = it & 1;
    const uint32_t parity = (it >> 1) & 1;
    const uint4* slice = buf + size_t(b) * (kSlice / 8);
    float m = -INFINITY, s = 0.f;
    for (int c = 0; c < NCHUNK; ++c) {
      mbar_wait(&bars[b][c], parity);
      for (int i = threadIdx.x; i < kChunk / 8; i += NT) vec_stats(slice[c * (kChunk / 8) + i], m, s);
    }
    block_stats(m, s, red);
    if (threadIdx.x == 0) part[b][0] = m, part[b][1] = s;
    cluster.sync();
    m = -INFINITY, s = 0.f;
    for (int j = 0; j < CS; ++j) {
      const float* pj = cluster.map_shared_rank(&part[b][0], j);
      merge(m, s, pj[0], pj[1]);
    }
    const float T = temperature_of(s), k = LOG2E / T;
    float t = 0.f;
    for (int i = threadIdx.x; i < kSlice / 8; i += NT) t += vec_tempered_mix<kPoly>(slice[i], m, k);
    t = block_sum(t, red);  // ends with a barrier: nobody reads buffer b any more
    if (threadIdx.x == 0) {
      part[b][2] = t;
      if (r + 2 * nclusters < rows) {
        fence_proxy_async();  // the generic-proxy reads of buffer b before the async-proxy writes into it
        issue(r + 2 * nclusters, b);
      }
    }
    cluster.sync();
    if (rank == 0 && threadIdx.x == 0) {
      float st = 0.f;
      for (int j = 0; j < CS; ++j) st += cluster.map_shared_rank(&part[b][0], j)[2];
      out[r] = RowOut{m, s, T, st};
    }
  }
  cluster.sync();  // a CTA's shared memory must outlive the leader's reads
}

// logits ~ N(0, 3^2), drawn on the device from a counter hash (splitmix64) and Box-Muller
__global__ void fill_normal(__nv_bfloat16* d, size_t n, unsigned long long seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    unsigned long long z = seed + 0x9e3779b97f4a7c15ull * (i + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    const float u1 = (float((z >> 40) & 0xffffff) + 1.f) / 16777217.f, u2 = float(z & 0xffffff) / 16777216.f;
    d[i] = __float2bfloat16(3.f * sqrtf(-2.f * logf(u1)) * cospif(2.f * u2));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// host
// ---------------------------------------------------------------------------------------------------------------
static RowOut reference_row(const __nv_bfloat16* d, int r) {
  std::vector<__nv_bfloat16> h(V);
  CK(cudaMemcpy(h.data(), d + size_t(r) * V, V * 2, cudaMemcpyDeviceToHost));
  const __nv_bfloat16* row = h.data();
  double m = -INFINITY, s = 0, st = 0;
  for (int i = 0; i < V; ++i) m = std::max(m, double(__bfloat162float(row[i])));
  for (int i = 0; i < V; ++i) s += std::exp(double(__bfloat162float(row[i])) - m);
  const double T = temperature_of(float(s));
  for (int i = 0; i < V; ++i) st += std::exp((double(__bfloat162float(row[i])) - m) / T);
  return RowOut{float(m), float(s), float(T), float(st)};
}

static bool agrees(double a, double b, double rel) { return std::fabs(a - b) <= rel * std::max(1.0, std::fabs(b)); }

template <class Launch>
static float time_us(Launch launch, int reps) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  std::vector<float> t;
  for (int i = 0; i < reps + 3; ++i) {
    CK(cudaEventRecord(a));
    launch();
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    if (i >= 3) t.push_back(ms * 1e3f);
  }
  CK(cudaGetLastError());
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

template <int CS>
static void allow_cluster_smem() {  // once, before timing: the slice exceeds the default 48 KB of dynamic smem
  CK(cudaFuncSetAttribute(smem_cluster_kernel<CS, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, (V / CS) * 2));
  CK(cudaFuncSetAttribute(smem_cluster_kernel<CS, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, (V / CS) * 2));
}

// A launch of clusters of cs CTAs of NT threads; `attr` holds the cluster shape and must outlive the launch.
static cudaLaunchConfig_t cluster_config(int ctas, int cs, size_t smem, cudaLaunchAttribute* attr) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(ctas);
  cfg.blockDim = dim3(NT);
  cfg.dynamicSmemBytes = smem;
  attr->id = cudaLaunchAttributeClusterDimension;
  attr->val.clusterDim.x = cs, attr->val.clusterDim.y = 1, attr->val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cfg;
}

template <int CS, bool kPoly>
static int pipe_grid(int rows) {  // persistent: as many clusters as fit at once, at most one per row
  constexpr size_t smem = size_t(2) * (V / CS) * 2;
  CK(cudaFuncSetAttribute(smem_pipe_kernel<CS, kPoly>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t cfg = cluster_config(CS, CS, smem, &attr);
  int n = 0;
  CK(cudaOccupancyMaxActiveClusters(&n, smem_pipe_kernel<CS, kPoly>, &cfg));
  return std::min(n, rows);
}

template <int CS, bool kPoly>
static void launch_pipe(const __nv_bfloat16* d, RowOut* o, int rows, int nclusters) {
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t cfg = cluster_config(nclusters * CS, CS, size_t(2) * (V / CS) * 2, &attr);
  CK(cudaLaunchKernelEx(&cfg, smem_pipe_kernel<CS, kPoly>, d, o, rows));
}

template <int CS, bool kTempered = true>
static void launch_cluster(const __nv_bfloat16* d, RowOut* o, int rows) {
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t cfg = cluster_config(rows * CS, CS, size_t(V / CS) * 2, &attr);
  CK(cudaLaunchKernelEx(&cfg, smem_cluster_kernel<CS, kTempered>, d, o));
}

int main(int argc, char** argv) {
  std::vector<int> shapes;
  for (int i = 1; i < argc; ++i) shapes.push_back(std::atoi(argv[i]));
  if (shapes.empty()) shapes = {256, 1024, 2048, 8192};
  const int max_rows = *std::max_element(shapes.begin(), shapes.end());
  const unsigned seed = std::random_device{}();
  std::printf("prr_one_read: V = %d bf16, NT = %d, %d chunks per slice, input seed %u\n", V, NT, NCHUNK, seed);

  const size_t n = size_t(max_rows) * V;
  __nv_bfloat16* d;
  RowOut* o;
  CK(cudaMalloc(&d, n * 2));
  CK(cudaMalloc(&o, sizeof(RowOut) * max_rows));
  fill_normal<<<1024, 256>>>(d, n, seed);
  CK(cudaDeviceSynchronize());

  allow_cluster_smem<2>();
  allow_cluster_smem<4>();
  allow_cluster_smem<8>();
  int sms;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  // the read floor: a device-to-device copy of the largest input, counting bytes read and written
  void* scratch;
  CK(cudaMalloc(&scratch, n * 2));
  const float copy_us = time_us([&] { CK(cudaMemcpyAsync(scratch, d, n * 2, cudaMemcpyDeviceToDevice)); }, 10);
  const double gbps = 2.0 * n * 2 / (copy_us * 1e3);
  CK(cudaFree(scratch));
  std::printf("copy bandwidth %.0f GB/s (read + write); floor = rows x V x 2 bytes / that\n\n", gbps);
  std::printf("%6s  %-18s %9s %8s %10s  %s\n", "rows", "kernel", "us", "x floor", "x stats", "check");

  for (int rows : shapes) {
    const double floor_us = double(rows) * V * 2 / (gbps * 1e3);
    std::vector<int> sample = {0, rows / 3, rows - 1};
    std::vector<RowOut> ref;
    for (int r : sample) ref.push_back(reference_row(d, r));
    float stats_us = 0;
    auto report = [&](const char* name, float us, bool tempered) {
      std::vector<RowOut> got(rows);
      CK(cudaMemcpy(got.data(), o, sizeof(RowOut) * rows, cudaMemcpyDeviceToHost));
      bool ok = true;
      for (size_t i = 0; i < sample.size(); ++i) {
        const RowOut& g = got[sample[i]];
        ok &= agrees(g.m, ref[i].m, 0) && agrees(g.s, ref[i].s, 1e-4);
        if (tempered) ok &= agrees(g.T, ref[i].T, 1e-5) && agrees(g.st, ref[i].st, 2e-5);
      }
      if (!stats_us) stats_us = us;
      std::printf("%6d  %-18s %9.1f %8.2f %10.2f  %s\n", rows, name, us, us / floor_us, us / stats_us,
                  ok ? "ok" : "MISMATCH");
    };
    const int grid = std::min(rows, sms * 8);
    CK(cudaMemset(o, 0, sizeof(RowOut) * rows));
    report("stats_only", time_us([&] { row_kernel<false><<<grid, NT>>>(d, o, rows); }, 20), false);
    CK(cudaMemset(o, 0, sizeof(RowOut) * rows));
    report("two_sweeps", time_us([&] { row_kernel<true><<<grid, NT>>>(d, o, rows); }, 20), true);
    CK(cudaMemset(o, 0, sizeof(RowOut) * rows));
    report("smem_cluster<2>", time_us([&] { launch_cluster<2>(d, o, rows); }, 20), true);
    CK(cudaMemset(o, 0, sizeof(RowOut) * rows));
    report("smem_cluster<4>", time_us([&] { launch_cluster<4>(d, o, rows); }, 20), true);
    CK(cudaMemset(o, 0, sizeof(RowOut) * rows));
    report("smem_cluster<8>", time_us([&] { launch_cluster<8>(d, o, rows); }, 20), true);
    CK(cudaMemset(o, 0, sizeof(RowOut) * rows));
    report("smem_stats<4>", time_us([&] { launch_cluster<4, false>(d, o, rows); }, 20), false);
    CK(cudaMemset(o, 0, sizeof(RowOut) * rows));
    report("smem_stats<8>", time_us([&] { launch_cluster<8, false>(d, o, rows); }, 20), false);
    const auto pipe = [&](auto cs, auto poly, const char* name) {
      constexpr int kCS = decltype(cs)::value;
      constexpr bool kP = decltype(poly)::value;
      const int nc = pipe_grid<kCS, kP>(rows);
      CK(cudaMemset(o, 0, sizeof(RowOut) * rows));
      char label[48];
      std::snprintf(label, sizeof label, "%s x%d", name, nc);
      report(label, time_us([&] { launch_pipe<kCS, kP>(d, o, rows, nc); }, 20), true);
    };
    pipe(std::integral_constant<int, 4>{}, std::false_type{}, "smem_pipe<4>");
    pipe(std::integral_constant<int, 8>{}, std::false_type{}, "smem_pipe<8>");
    pipe(std::integral_constant<int, 8>{}, std::true_type{}, "smem_pipe<8>+poly");
    std::printf("\n");
  }
  CK(cudaFree(d));
  CK(cudaFree(o));
  return 0;
}
