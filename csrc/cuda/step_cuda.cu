// step_cuda.cu — the CUDA backend of prr_ext::step: tensors in, one kernel launch out.
//
// The op's arguments are checked and turned into prr::StepParams by make_step_params (step_args.h, shared with the
// CPU op); this file adds the kernel's raw pointers (KParams), picks the launch shape, dispatches on the logits dtype
// and the confidence dtype (fp64 confidence computes in double) and registers the implementation for the CUDA
// dispatch key. The kernel itself is in csrc/cuda/step_kernel.cuh; docs/cuda.md explains the design.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <vector>

#include "cuda/config.h"
#include "cuda/kernel_args.cuh"
#include "cuda/step_kernel.cuh"
#include "cuda/timeline.cuh"
#include "prr/params.h"
#include "step_args.h"

namespace prr_ext {
namespace {

using prr::StepParams;
using prr::gpu::KParams;
using prr::gpu::kMaxCluster;
using prr::gpu::kMinCtas;
using prr::gpu::kSortCap;
using prr::gpu::kTileVecs;
using prr::gpu::step_kernel;

// ---------------------------------------------------------------------------------------------------------------
// Launcher
// ---------------------------------------------------------------------------------------------------------------
int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return (v != nullptr && *v != '\0') ? std::atoi(v) : fallback;
}

template <typename T, typename C>
void launch(const KParams& base, int64_t grid_clusters, cudaStream_t stream) {
  auto kernel = step_kernel<T, C>;
  static int max_threads = [&] {
    cudaFuncAttributes attr{};
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
    return attr.maxThreadsPerBlock;
  }();
  KParams kp = base;
  const StepParams& p = kp.p;
  constexpr int VEC = 16 / sizeof(T);
  const int64_t nvec = (p.V + VEC - 1) / VEC;
  const int64_t need = (nvec + kTileVecs - 1) / kTileVecs;  // threads per row for one register tile each
  // launch shape. Many rows: one CTA per row (the fewest fixed costs per byte; rows longer than a register tile
  // loop over tiles, each L2-prefetched one ahead), and small CTAs when the rows are very many (below). Few rows:
  // split each row over a cluster of up to 8 CTAs so that the SMs fill. PRR_CUDA_CS / PRR_CUDA_NT override
  // (benchmarks/tuning).
  static const int2 dev_info = [] {
    int dev = 0, sms = 132, l2 = 50 << 20;
    (void)cudaGetDevice(&dev);
    (void)cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    (void)cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev);
    return make_int2(sms, l2);
  }();
  const int64_t slots = static_cast<int64_t>(dev_info.x) * kMinCtas, rows = p.B * p.block_length;
  int cs_fit = kMaxCluster;  // enough CTAs of 256 threads for one register tile each
  for (int c = 1; c <= kMaxCluster; c <<= 1) {
    if ((need + c - 1) / c <= 256) {
      cs_fit = c;
      break;
    }
  }
  // measured on the H100 (benchmarks/RESULTS.md notes): one CTA per row from ~128 rows up; below, the largest
  // cluster for which every row's cluster is co-resident at once (8-CTA clusters pack to ~90% of the CTA slots)
  int cs = 1;
  if (rows * 2 < slots) {
    cs = kMaxCluster;
    while (cs > 1 && rows * cs > (slots * 9) / 10) cs >>= 1;
  }
  cs = std::min(cs, cs_fit);
  const int64_t per_cta = (need + cs - 1) / cs;
  int nt = static_cast<int>(std::min<int64_t>(256, std::max<int64_t>(128, ((per_cta + 31) / 32) * 32)));
  // Many rows (>= 6 per SM): CTAs of 2 warps, 8 per SM. Each CTA's per-row tail (the reduction, finalize_row, the
  // arrival) then stalls 2 warps while the other 14 stream, instead of 8 of 16 (v9 sweeps, benchmarks/RESULTS.md:
  // LowConfidence (32,256) 1.59x -> 1.26x floor, (4,256) 1.78x -> 1.49x). Blocks over 512 positions get 4 warps: the
  // last CTA's sort of the block needs the threads (v11, H200, (1,1024): LowConfidence 127.5 / 127.9 / 137.8 us at
  // 256 / 128 / 64 threads, PRR 209.2 / 196.2 / 206.3 us); blocks over kSortCap keep 256 for their rank sort.
  if (cs == 1 && p.block_length <= kSortCap && rows >= 6 * static_cast<int64_t>(dev_info.x))
    nt = p.block_length <= 512 ? 64 : 128;
  // Very few rows of a large vocabulary (<= 2 CTAs per SM even at 8 per row): 8-CTA clusters of 4 warps instead of
  // 4 of 8 (v12, H200, (1,32) LowConfidence 17.9 -> 16.7 us). Not for PRR's temperature shaping, which gains
  // nothing from it (26.5 -> 26.4 us at (1,32), 27.6 -> 29.1 us for the full-sequence case).
  const bool temp_mode = prr::temperature_shaped(p);
  if (cs == 4 && cs_fit == kMaxCluster && !temp_mode && rows * kMaxCluster <= 2 * static_cast<int64_t>(dev_info.x)) {
    cs = kMaxCluster;
    nt = 128;
  }
  cs = std::min(kMaxCluster, std::max(1, env_int("PRR_CUDA_CS", cs)));
  while (cs & (cs - 1)) cs &= cs - 1;  // a power of two (the cluster merge is a halving tree)
  nt = env_int("PRR_CUDA_NT", nt);
  const int nt_cap = std::min(1024, (max_threads / 32) * 32);
  nt = std::max(32, std::min(nt, nt_cap)) & ~31;  // whole warps (the selection's shuffles use full masks)
  kp.cs = cs;
  kp.packed = env_int("PRR_CUDA_PACKED", 1);  // 0: prr::tile_stats2 for 16-bit logits too (the v5 path)
  kp.select_sort = env_int("PRR_CUDA_SELECT_SORT", 0) != 0;  // 1: the bitonic sort for every rule (v13 and before)
  kp.vpc = (nvec + cs - 1) / cs;
  kp.tiles = static_cast<int>(std::max<int64_t>(1, (kp.vpc + int64_t(kTileVecs) * nt - 1) / (int64_t(kTileVecs) * nt)));

  cudaLaunchConfig_t cfg{};
  cfg.blockDim = dim3(static_cast<unsigned>(nt), 1, 1);
  cfg.dynamicSmemBytes = static_cast<size_t>(kp.ctrl_words) * sizeof(float);
  if (cfg.dynamicSmemBytes > 0)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(cfg.dynamicSmemBytes)));
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(cs);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  // persistent grid: as many clusters as can be co-resident (each walks rows cid, cid + grid, ...), and each
  // prefetches its next row into L2; PRR_CUDA_PERSIST=0 launches one cluster per row instead.
  int64_t clusters = grid_clusters;
  kp.prefetch = 0;
  if (env_int("PRR_CUDA_PERSIST", 1) != 0) {
    static thread_local int64_t cached_key = -1;
    static thread_local int cached_n = 0;
    const int64_t key = (static_cast<int64_t>(cs) << 40) | (static_cast<int64_t>(nt) << 20) |
                        static_cast<int64_t>(cfg.dynamicSmemBytes);
    if (key != cached_key) {
      cfg.gridDim = dim3(static_cast<unsigned>(cs), 1, 1);
      int n = 0;
      if (cudaOccupancyMaxActiveClusters(&n, kernel, &cfg) != cudaSuccess) {
        (void)cudaGetLastError();
        n = 0;
      }
      cached_key = key;
      cached_n = n;
    }
    if (cached_n > 0 && cached_n < clusters) {
      clusters = cached_n;
      kp.prefetch = 1;
    }
  }
  // 0: persistent CTAs walk cid, cid + grid, ... (v16 and before)
  kp.dyn_rows = kp.prefetch && cs == 1 && env_int("PRR_CUDA_DYNROWS", 1) != 0;
  cfg.gridDim = dim3(static_cast<unsigned>(clusters * cs), 1, 1);
  C10_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, kp));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> step_cuda(
    const at::Tensor& logits, at::Tensor& x, at::Tensor& row_state, at::Tensor& traj, at::Tensor& prev_p1,
    at::Tensor& workspace, const at::Tensor& seed, const at::Tensor& prompt_lens,
    const c10::optional<at::Tensor>& controller, const c10::optional<at::Tensor>& scores,
    const c10::optional<at::Tensor>& extra_features, const c10::optional<at::Tensor>& candidates,
    const c10::optional<at::Tensor>& random_conf, int64_t mask_id, int64_t gen_start, int64_t block_length,
    int64_t steps, int64_t policy, int64_t confidence_dtype, int64_t shaping, bool union_schedule, double temperature,
    double param, double alpha, at::IntArrayRef mlp_dims) {
  StepParams p = make_step_params(logits, x, row_state, traj, prev_p1, workspace, seed, prompt_lens, controller,
                                  scores, extra_features, candidates, random_conf, mask_id, gen_start, block_length,
                                  steps, policy, confidence_dtype, shaping, union_schedule, temperature, param, alpha,
                                  mlp_dims);
  TORCH_CHECK(logits.is_cuda(), "prr_ext::step (CUDA): logits must be a CUDA tensor");
  if (prr::temperature_shaped(p))
    TORCH_CHECK(controller.has_value(), "PRR temperature shaping needs the controller buffer (its temperature map)");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = p.B, L = p.L, Lr = p.Lr;
  // every element of the outputs is written by the kernel: no fill launches
  auto commit = at::empty({B, L}, x.options().dtype(at::kBool));
  auto tokens = at::empty({B, Lr}, x.options());
  auto stats = at::empty({B, Lr, prr::kNumStats}, x.options().dtype(at::kFloat));
  if (B == 0) return {commit, tokens, stats};
  p.row_offset = 0;  // decided on the device

  KParams kp{};
  kp.p = p;
  kp.logits = logits.data_ptr();
  kp.x = x.data_ptr<int64_t>();
  kp.rs = row_state.data_ptr<int64_t>();
  kp.traj = traj.data_ptr<int64_t>();
  kp.prev_p1 = prev_p1.data_ptr<float>();
  kp.ws = workspace.data_ptr<int64_t>();
  kp.seed = seed.data_ptr<int64_t>();
  kp.plen = prompt_lens.data_ptr<int64_t>();
  if (p.policy == prr::kPRR) {
    if (controller.has_value()) {
      kp.ctrl = controller->data_ptr<float>();
      kp.ctrl_words = static_cast<int>(controller->numel());
    }
    if (scores.has_value()) kp.scores = scores->data_ptr<float>();
    if (p.n_extra > 0) kp.extra = extra_features->data_ptr<float>();
  }
  if (candidates.has_value()) kp.candidates = candidates->data_ptr<int64_t>();
  if (random_conf.has_value()) kp.random_conf = random_conf->data_ptr<float>();
  kp.commit = commit.data_ptr<bool>();
  kp.tokens = tokens.data_ptr<int64_t>();
  kp.stats = stats.data_ptr<float>();
  kp.log_vocab = static_cast<float>(std::log(static_cast<double>(p.V)));

  const int64_t clusters = B * p.block_length;
  TORCH_CHECK(clusters * kMaxCluster < (int64_t(1) << 31), "prr_ext::step (CUDA): B * block_length too large");
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  const bool f64 = p.conf_dtype == prr::kConfF64;
  switch (logits.scalar_type()) {
    case at::kFloat: f64 ? launch<float, double>(kp, clusters, stream) : launch<float, float>(kp, clusters, stream); break;
    case at::kDouble: f64 ? launch<double, double>(kp, clusters, stream) : launch<double, float>(kp, clusters, stream); break;
    case at::kHalf:
      f64 ? launch<c10::Half, double>(kp, clusters, stream) : launch<c10::Half, float>(kp, clusters, stream);
      break;
    case at::kBFloat16:
      f64 ? launch<c10::BFloat16, double>(kp, clusters, stream) : launch<c10::BFloat16, float>(kp, clusters, stream);
      break;
    default: TORCH_CHECK(false, "prr_ext::step (CUDA): unsupported logits dtype ", logits.scalar_type());
  }
  return {commit, tokens, stats};
}

}  // namespace

TORCH_LIBRARY_IMPL(prr_ext, CUDA, m) { m.impl("step", &step_cuda); }

#ifdef PRR_TIMELINE
// prr_dev::timeline(out): copies g_timeline into `out` (int64 CUDA, numel >= its size) and clears it.
void timeline_cuda(at::Tensor& out) {
  using prr::gpu::g_timeline;
  TORCH_CHECK(out.is_cuda() && out.scalar_type() == at::kLong && out.numel() * 8 >= int64_t(sizeof(g_timeline)),
              "timeline: out must be int64 CUDA with ", sizeof(g_timeline) / 8, " elements");
  C10_CUDA_CHECK(cudaMemcpyFromSymbol(out.data_ptr(), g_timeline, sizeof(g_timeline), 0, cudaMemcpyDeviceToDevice));
  static const std::vector<unsigned char> zeros(sizeof(g_timeline), 0);
  C10_CUDA_CHECK(cudaMemcpyToSymbol(g_timeline, zeros.data(), sizeof(g_timeline)));
}
TORCH_LIBRARY_FRAGMENT(prr_dev, m) { m.def("timeline(Tensor(a!) out) -> ()"); }
TORCH_LIBRARY_IMPL(prr_dev, CUDA, m) { m.impl("timeline", &timeline_cuda); }
#endif

}  // namespace prr_ext
