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

// Launch step_kernel<T, C> on `device` (the current device) and `stream`: the launch shape from launch_shape.h,
// then a persistent grid when fewer clusters than rows fit at once. `args` carries everything but the shape.
template <typename T, typename C>
cudaError_t launch_step(KernelArgs args, int device, cudaStream_t stream, const LaunchOverrides& overrides) {
  const auto kernel = step_kernel<T, C>;
  static OnceCache<int, int> max_threads_cache;  // per instantiation and device
  DeviceInfo dev{device_sms(device), 0};
  cudaError_t err = max_threads_cache.get(device, dev.max_threads, [&](int& v) {
    cudaFuncAttributes attr{};
    const cudaError_t e = cudaFuncGetAttributes(&attr, kernel);
    v = attr.maxThreadsPerBlock;
    return e;
  });
  if (err != cudaSuccess) return err;

  const StepParams& p = args.p;
  const LaunchShape shape = choose_launch_shape(p, static_cast<int>(16 / sizeof(T)), dev, overrides);
  args.cluster_size = shape.cluster_size;
  args.vectors_per_cta = shape.vectors_per_cta;
  args.tiles = shape.tiles;
  args.packed = overrides.packed ? 1 : 0;
  args.select_sort = overrides.select_sort ? 1 : 0;

  cudaLaunchConfig_t cfg{};
  cfg.blockDim = dim3(static_cast<unsigned>(shape.threads), 1, 1);
  cfg.dynamicSmemBytes = static_cast<size_t>(args.controller_words) * sizeof(float);  // the controller's weights
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
    static OnceCache<std::tuple<int, int, int, size_t>, int> occupancy;  // per instantiation, device and shape
    cfg.gridDim = dim3(static_cast<unsigned>(shape.cluster_size), 1, 1);
    (void)occupancy.get({device, shape.cluster_size, shape.threads, cfg.dynamicSmemBytes}, max_active_clusters,
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
