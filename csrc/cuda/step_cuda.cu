// step_cuda.cu — the CUDA backend of prr_ext::step: tensors in, one kernel launch out (the torch binding).
//
// make_step_params (step_args.h, shared with the CPU op) checks the op's arguments and builds prr::StepParams; this
// file allocates the outputs, fills the kernel's raw pointers (KernelArgs), dispatches on the logits dtype and the
// confidence dtype (fp64 confidence computes in double), launches through launch.cuh and registers the
// implementation for the CUDA dispatch key. It also holds the launch overrides read from the environment
// (launch_shape.h) and, in -DPRR_TIMELINE builds, the prr_dev::timeline op. The kernel is csrc/cuda/step_kernel.cuh;
// docs/cuda.md explains the design. This is the one translation unit of the CUDA code: every header of csrc/cuda
// is compiled here.
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

#include <cmath>
#include <mutex>
#include <optional>
#include <vector>

#include "cuda/config.h"
#include "cuda/kernel_args.cuh"
#include "cuda/launch.cuh"
#include "cuda/launch_shape.h"
#include "cuda/timeline.cuh"
#include "prr/params.h"
#include "step_args.h"

namespace prr::gpu {
namespace {
std::mutex overrides_mutex;
std::optional<LaunchOverrides> overrides;  // read at the first launch, re-read by reload_launch_overrides()
}  // namespace

LaunchOverrides launch_overrides() {
  const std::lock_guard<std::mutex> lock(overrides_mutex);
  if (!overrides) overrides = read_launch_overrides();
  return *overrides;
}

void reload_launch_overrides() {
  const std::lock_guard<std::mutex> lock(overrides_mutex);
  overrides = read_launch_overrides();
}

}  // namespace prr::gpu

namespace prr_ext {
namespace {

using prr::StepParams;
using prr::gpu::KernelArgs;
using prr::gpu::kMaxCluster;

// One launch of step_kernel<T, C> on the current device and stream; CUDA errors become exceptions.
template <typename T, typename C>
void launch(const KernelArgs& args, int device, cudaStream_t stream) {
  C10_CUDA_CHECK((prr::gpu::launch_step<T, C>(args, device, stream, prr::gpu::launch_overrides())));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

StepOutputs step_cuda(const StepArgs& a) {
  StepParams p = make_step_params(a);
  const at::Tensor& logits = a.logits;
  at::Tensor& x = a.x;
  TORCH_CHECK(logits.is_cuda(), "prr_ext::step (CUDA): logits must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = p.B, L = p.L, Lr = p.Lr;
  // every element of the outputs is written by the kernel: no fill launches
  auto commit = at::empty({B, L}, x.options().dtype(at::kBool));
  auto tokens = at::empty({B, Lr}, x.options());
  auto stats = at::empty({B, Lr, prr::kNumStats}, x.options().dtype(at::kFloat));
  if (B == 0) return {commit, tokens, stats};
  p.row_offset = 0;  // decided on the device

  KernelArgs args{};
  args.p = p;
  args.logits = logits.data_ptr();
  args.x = x.data_ptr<int64_t>();
  args.row_state = a.row_state.data_ptr<int64_t>();
  args.traj = a.traj.data_ptr<int64_t>();
  args.prev_p1 = a.prev_p1.data_ptr<float>();
  args.workspace = a.workspace.data_ptr<int64_t>();
  args.rule_state = a.rule_state.data_ptr<double>();
  if (p.policy == prr::kKLASS) {  // make_step_params has checked its shape [B, block_length, V]
    TORCH_CHECK(a.prev_logp.numel() == B * p.block_length * p.V, "prr_ext::step (CUDA): KLASS needs prev_logp");
    args.prev_logp = a.prev_logp.data_ptr<float>();
  }
  args.seed = a.seed.data_ptr<int64_t>();
  args.prompt_lens = a.prompt_lens.data_ptr<int64_t>();
  if (p.policy == prr::kPRR) {
    if (a.controller.has_value()) {
      args.controller = a.controller->data_ptr<float>();
      args.controller_words = static_cast<int>(a.controller->numel());
    }
    if (a.scores.has_value()) args.scores = a.scores->data_ptr<float>();
    if (p.n_extra > 0) args.extra_features = a.extra_features->data_ptr<float>();
  }
  if (a.candidates.has_value()) args.candidates = a.candidates->data_ptr<int64_t>();
  if (a.random_conf.has_value()) args.random_conf = a.random_conf->data_ptr<float>();
  args.commit = commit.data_ptr<bool>();
  args.tokens = tokens.data_ptr<int64_t>();
  args.stats = stats.data_ptr<float>();
  args.log_vocab = static_cast<float>(std::log(static_cast<double>(p.V)));

  // the grid has up to kMaxCluster CTAs per row, and its size is a 32-bit count
  const int64_t rows = B * p.block_length, max_rows = ((int64_t(1) << 31) - 1) / kMaxCluster;
  TORCH_CHECK(rows <= max_rows, msg("prr_ext::step (CUDA): B * block_length = ", rows, " rows is too many (at most ",
                                    max_rows, "); step fewer sequences at once"));
  const int device = x.device().index();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  const bool f64 = p.conf_dtype == prr::kConfF64;
  switch (logits.scalar_type()) {
    case at::kFloat:
      f64 ? launch<float, double>(args, device, stream) : launch<float, float>(args, device, stream);
      break;
    case at::kDouble:
      f64 ? launch<double, double>(args, device, stream) : launch<double, float>(args, device, stream);
      break;
    case at::kHalf:
      f64 ? launch<c10::Half, double>(args, device, stream) : launch<c10::Half, float>(args, device, stream);
      break;
    case at::kBFloat16:
      f64 ? launch<c10::BFloat16, double>(args, device, stream) : launch<c10::BFloat16, float>(args, device, stream);
      break;
    default:
      TORCH_CHECK(false, msg("prr_ext::step (CUDA): logits dtype ", logits.scalar_type(),
                             " is not supported; pass float32, float64, float16 or bfloat16 logits"));
  }
  return {commit, tokens, stats};
}

}  // namespace

TORCH_LIBRARY_IMPL(prr_ext, CUDA, m) { m.impl("step", &step_entry<step_cuda>); }

#ifdef PRR_TIMELINE
// prr_dev::timeline(out): copies g_timeline into `out` (int64 CUDA, numel >= its size) and clears it.
void timeline_cuda(at::Tensor& out) {
  using prr::gpu::g_timeline;
  TORCH_CHECK(out.is_cuda() && out.scalar_type() == at::kLong && out.numel() * 8 >= int64_t(sizeof(g_timeline)),
              msg("timeline: out must be int64 CUDA with ", sizeof(g_timeline) / 8, " elements"));
  C10_CUDA_CHECK(cudaMemcpyFromSymbol(out.data_ptr(), g_timeline, sizeof(g_timeline), 0, cudaMemcpyDeviceToDevice));
  static const std::vector<unsigned char> zeros(sizeof(g_timeline), 0);
  C10_CUDA_CHECK(cudaMemcpyToSymbol(g_timeline, zeros.data(), sizeof(g_timeline)));
}
TORCH_LIBRARY_FRAGMENT(prr_dev, m) { m.def("timeline(Tensor(a!) out) -> ()"); }
TORCH_LIBRARY_IMPL(prr_dev, CUDA, m) { m.impl("timeline", &timeline_cuda); }
#endif

}  // namespace prr_ext
