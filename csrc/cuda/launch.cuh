// launch.cuh — the host side of one launch: what the launch shape needs from the device, cached per device, then
// cudaLaunchKernelEx with the cluster dimension.
//
// The SM count, the kernel's thread limit and the number of co-resident clusters of a shape are properties of a
// device (and of the kernel instantiation), so they are cached per device: a process that steps on several GPUs
// gets each GPU's own answers. Torch-free: errors come back as cudaError_t, which step_cuda.cu turns into exceptions.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>

#include "config.h"
#include "kernel_args.cuh"
#include "launch_shape.h"
#include "step_kernel.cuh"

namespace prr::gpu {

// Values computed once per key and shared by every host thread. A computation that fails is not cached (the next
// call retries it).
template <typename Key, typename Value>
class OnceCache {
 public:
  // compute: cudaError_t(Value&)
  template <typename Compute>
  cudaError_t get(const Key& key, Value& out, Compute compute) {
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto it = values_.find(key);
    if (it != values_.end()) {
      out = it->second;
      return cudaSuccess;
    }
    Value v{};
    const cudaError_t err = compute(v);
    if (err != cudaSuccess) return err;
    values_.emplace(key, v);
    out = v;
    return cudaSuccess;
  }

 private:
  std::mutex mutex_;
  std::map<Key, Value> values_;
};

// The SM count of `device` (132, an H100's / H200's, if the query fails: the shape is then merely less well chosen).
inline int device_sms(int device) {
  static OnceCache<int, int> cache;
  int sms = 132;
  (void)cache.get(device, sms, [&](int& v) {
    v = 132;
    (void)cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device);
    return cudaSuccess;
  });
  return sms;
}

// The shared memory a CTA of `device` may opt into (227 KB on an H100 / H200; 48 KB if the query fails).
inline int device_smem_optin(int device) {
  static OnceCache<int, int> cache;
  int bytes = 48 * 1024;
  (void)cache.get(device, bytes, [&](int& v) {
    v = 48 * 1024;
    (void)cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    return cudaSuccess;
  });
  return bytes;
}

// What a launch needs to know about one compiled kernel on one device.
struct KernelInfo {
  int max_threads;  // its threads-per-CTA limit (its launch bound, or fewer if registers bind)
  int static_smem;  // bytes of its static shared memory
};

template <typename T, typename C, bool kSmemRows>
cudaError_t kernel_info(int device, KernelInfo& out) {
  static OnceCache<int, KernelInfo> cache;  // per instantiation and device
  return cache.get(device, out, [&](KernelInfo& v) {
    cudaFuncAttributes attr{};
    const cudaError_t e = cudaFuncGetAttributes(&attr, step_kernel<T, C, kSmemRows>);
    v.max_threads = attr.maxThreadsPerBlock;
    v.static_smem = static_cast<int>(attr.sharedSizeBytes);
    return e;
  });
}

// The instantiations with rows held in shared memory: 16-bit and fp32 logits with fp32 confidence (PRR's usual
// case); the others keep their rows in registers.
template <typename T, typename C>
constexpr bool kHasSmemRows = std::is_same_v<C, float> && !std::is_same_v<T, double>;

// Launch step_kernel on `device` (the current device) and `stream`: the launch shape from launch_shape.h, then a
// persistent grid when fewer clusters than rows fit at once. `args` carries everything but the shape.
template <typename T, typename C>
cudaError_t launch_step(KernelArgs args, int device, cudaStream_t stream, const LaunchOverrides& overrides) {
  KernelInfo info{};
  cudaError_t err = kernel_info<T, C, false>(device, info);
  if (err != cudaSuccess) return err;

  const StepParams& p = args.p;
  constexpr int vec = static_cast<int>(16 / sizeof(T));
  // dynamic shared memory: the controller's weights, then (rows held in shared memory) the CTA's slice of the row
  const size_t controller_bytes = static_cast<size_t>(args.controller_words) * sizeof(float);
  const size_t slice_offset = (controller_bytes + 15) / 16 * 16;
  DeviceInfo dev{device_sms(device), info.max_threads};
  if constexpr (kHasSmemRows<T, C>) {
    if (overrides.smem_rows) {
      KernelInfo held{};
      err = kernel_info<T, C, true>(device, held);
      if (err != cudaSuccess) return err;
      dev.row_smem_bytes = std::max<int64_t>(0, static_cast<int64_t>(device_smem_optin(device)) -
                                                    held.static_smem - static_cast<int64_t>(slice_offset));
    }
  }
  LaunchShape shape = choose_launch_shape(p, vec, dev, overrides);
  const bool aligned_rows = reinterpret_cast<uintptr_t>(args.logits) % 16 == 0 && p.V % vec == 0 &&
                            p.stride_b % vec == 0 && p.stride_r % vec == 0;
  if (const auto held = smem_row_shape(p, vec, dev, overrides, shape, aligned_rows)) shape = *held;
  auto kernel = step_kernel<T, C, false>;
  if constexpr (kHasSmemRows<T, C>) {
    if (shape.smem_rows) kernel = step_kernel<T, C, true>;
  }
  args.cluster_size = shape.cluster_size;
  args.vectors_per_cta = shape.vectors_per_cta;
  args.tiles = shape.tiles;
  args.packed = overrides.packed ? 1 : 0;
  args.select_sort = overrides.select_sort ? 1 : 0;
  args.row_smem_offset = shape.smem_rows ? static_cast<int>(slice_offset) : -1;

  cudaLaunchConfig_t cfg{};
  cfg.blockDim = dim3(static_cast<unsigned>(shape.threads), 1, 1);
  cfg.dynamicSmemBytes = shape.smem_rows ? slice_offset + static_cast<size_t>(shape.vectors_per_cta) * 16
                                         : controller_bytes;
  if (cfg.dynamicSmemBytes > 0) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(cfg.dynamicSmemBytes));
    if (err != cudaSuccess) return err;
  }
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(shape.cluster_size);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;

  // How many clusters of this shape are co-resident (0 if the query fails: one cluster per row).
  int max_active_clusters = 0;
  if (overrides.persistent) {
    static OnceCache<std::tuple<int, int, int, size_t, bool>, int> occupancy;  // per kernel, device and shape
    cfg.gridDim = dim3(static_cast<unsigned>(shape.cluster_size), 1, 1);
    (void)occupancy.get({device, shape.cluster_size, shape.threads, cfg.dynamicSmemBytes, shape.smem_rows},
                        max_active_clusters,
                        [&](int& v) {
                          if (cudaOccupancyMaxActiveClusters(&v, kernel, &cfg) != cudaSuccess) {
                            (void)cudaGetLastError();
                            v = 0;
                          }
                          return cudaSuccess;
                        });
  }
  const GridPlan grid = plan_grid(p.B * p.block_length, max_active_clusters, shape.cluster_size, overrides);
  args.prefetch = grid.prefetch ? 1 : 0;
  args.claim_rows = grid.claim_rows ? 1 : 0;
  cfg.gridDim = dim3(static_cast<unsigned>(grid.clusters * shape.cluster_size), 1, 1);
  return cudaLaunchKernelEx(&cfg, kernel, args);
}

}  // namespace prr::gpu
