// RoIAlign CUDA kernels (forward and backward). Semantics: cora/ops/roi_align.py; the math is shared
// with the CPU kernels through roi_align_common.h.
//
// NCHW: one thread per output (or grad) element. Channels-last: one warp per output bin, lanes
// striding over channels so that every load / atomic along C is coalesced; each lane recomputes the
// (warp-uniform) sample taps, which costs less than shuffling them.
#include "roi_align_check.h"
#include "roi_align_common.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

namespace cora {
namespace {

using roi_align_detail::bilinear_tap;
using roi_align_detail::cols_inside;
using roi_align_detail::roi_geometry;
using roi_align_detail::rows_inside;
using roi_align_detail::sample_x;
using roi_align_detail::sample_outside;
using roi_align_detail::sample_y;

constexpr int kThreads = 256;  // a multiple of the warp size: warp kernels index warps by thread / 32
constexpr int kWarp = 32;
// Channels-last kernels: channels each lane holds per pass. A pass covers kWarp * kTile channels,
// so the taps of a bin are recomputed once per pass rather than once per 32 channels.
constexpr int kTile = 4;

__device__ __forceinline__ int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_threads() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// Output [K, C, PH, PW] contiguous; index = ((k * C + c) * PH + ph) * PW + pw.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) forward_nchw_kernel(
    int64_t total, const scalar_t* __restrict__ input, const acc_t* __restrict__ rois,
    acc_t spatial_scale, int64_t batch, int64_t channels, int64_t height, int64_t width,
    int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned,
    scalar_t* __restrict__ output) {
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const int64_t pw = i % pooled_w;
    const int64_t ph = (i / pooled_w) % pooled_h;
    const int64_t c = (i / (pooled_w * pooled_h)) % channels;
    const int64_t k = i / (pooled_w * pooled_h * channels);
    const auto g = roi_geometry<acc_t>(rois + k * 5, batch, spatial_scale, pooled_h, pooled_w,
                                       sampling_ratio, aligned);
    if (!g.valid) {
      output[i] = scalar_t(0);
      continue;
    }
    const scalar_t* p = input + (g.batch * channels + c) * height * width;
    const auto rows = rows_inside(g, ph, height);
    const auto cols = cols_inside(g, pw, width);
    acc_t sum = 0;
    for (int64_t iy = rows.begin; iy < rows.end; ++iy) {
      const acc_t y = sample_y(g, ph, iy);
      for (int64_t ix = cols.begin; ix < cols.end; ++ix) {
        const acc_t x = sample_x(g, pw, ix);
        if (sample_outside(height, width, y, x)) continue;
        const auto t = bilinear_tap(height, width, y, x);
        sum += t.w1 * acc_t(p[t.o1]) + t.w2 * acc_t(p[t.o2]) + t.w3 * acc_t(p[t.o3]) +
            t.w4 * acc_t(p[t.o4]);
      }
    }
    output[i] = static_cast<scalar_t>(sum / g.count);
  }
}

// Input [N, H, W, C] and output [K, PH, PW, C] in memory; one warp per bin (k, ph, pw).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) forward_channels_last_kernel(
    int64_t num_bins, const scalar_t* __restrict__ input, const acc_t* __restrict__ rois,
    acc_t spatial_scale, int64_t batch, int64_t channels, int64_t height, int64_t width,
    int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned,
    scalar_t* __restrict__ output) {
  const int lane = threadIdx.x % kWarp;
  // Loop bounds are warp-uniform (c0 - lane is the pass base), so lanes only diverge at c < C.
  for (int64_t bin = global_thread() / kWarp; bin < num_bins; bin += grid_threads() / kWarp) {
    const int64_t pw = bin % pooled_w;
    const int64_t ph = (bin / pooled_w) % pooled_h;
    const int64_t k = bin / (pooled_w * pooled_h);
    const auto g = roi_geometry<acc_t>(rois + k * 5, batch, spatial_scale, pooled_h, pooled_w,
                                       sampling_ratio, aligned);
    scalar_t* out = output + bin * channels;
    if (!g.valid) {
      for (int64_t c = lane; c < channels; c += kWarp) out[c] = scalar_t(0);
      continue;
    }
    const scalar_t* in_b = input + g.batch * height * width * channels;
    const auto rows = rows_inside(g, ph, height);
    const auto cols = cols_inside(g, pw, width);
    for (int64_t c0 = lane; c0 - lane < channels; c0 += kWarp * kTile) {
      acc_t sum[kTile];
#pragma unroll
      for (int j = 0; j < kTile; ++j) sum[j] = acc_t(0);
      for (int64_t iy = rows.begin; iy < rows.end; ++iy) {
        const acc_t y = sample_y(g, ph, iy);
        for (int64_t ix = cols.begin; ix < cols.end; ++ix) {
          const acc_t x = sample_x(g, pw, ix);
          if (sample_outside(height, width, y, x)) continue;
          const auto t = bilinear_tap(height, width, y, x);
          const scalar_t* p1 = in_b + t.o1 * channels;
          const scalar_t* p2 = in_b + t.o2 * channels;
          const scalar_t* p3 = in_b + t.o3 * channels;
          const scalar_t* p4 = in_b + t.o4 * channels;
#pragma unroll
          for (int j = 0; j < kTile; ++j) {
            const int64_t c = c0 + j * kWarp;
            if (c < channels) {
              sum[j] += t.w1 * acc_t(p1[c]) + t.w2 * acc_t(p2[c]) + t.w3 * acc_t(p3[c]) +
                  t.w4 * acc_t(p4[c]);
            }
          }
        }
      }
#pragma unroll
      for (int j = 0; j < kTile; ++j) {
        const int64_t c = c0 + j * kWarp;
        if (c < channels) out[c] = static_cast<scalar_t>(sum[j] / g.count);
      }
    }
  }
}

// grad [K, C, PH, PW] contiguous; grad_input [N, C, H, W] contiguous, in acc_t.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) backward_nchw_kernel(
    int64_t total, const scalar_t* __restrict__ grad, const acc_t* __restrict__ rois,
    acc_t spatial_scale, int64_t batch, int64_t channels, int64_t height, int64_t width,
    int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned,
    acc_t* __restrict__ grad_input) {
  for (int64_t i = global_thread(); i < total; i += grid_threads()) {
    const int64_t pw = i % pooled_w;
    const int64_t ph = (i / pooled_w) % pooled_h;
    const int64_t c = (i / (pooled_w * pooled_h)) % channels;
    const int64_t k = i / (pooled_w * pooled_h * channels);
    const auto g = roi_geometry<acc_t>(rois + k * 5, batch, spatial_scale, pooled_h, pooled_w,
                                       sampling_ratio, aligned);
    if (!g.valid) continue;
    acc_t* q = grad_input + (g.batch * channels + c) * height * width;
    const acc_t v = acc_t(grad[i]) / g.count;
    const auto rows = rows_inside(g, ph, height);
    const auto cols = cols_inside(g, pw, width);
    for (int64_t iy = rows.begin; iy < rows.end; ++iy) {
      const acc_t y = sample_y(g, ph, iy);
      for (int64_t ix = cols.begin; ix < cols.end; ++ix) {
        const acc_t x = sample_x(g, pw, ix);
        if (sample_outside(height, width, y, x)) continue;
        const auto t = bilinear_tap(height, width, y, x);
        gpuAtomicAdd(q + t.o1, t.w1 * v);
        gpuAtomicAdd(q + t.o2, t.w2 * v);
        gpuAtomicAdd(q + t.o3, t.w3 * v);
        gpuAtomicAdd(q + t.o4, t.w4 * v);
      }
    }
  }
}

// grad [K, PH, PW, C] and grad_input [N, H, W, C] (acc_t) in memory; one warp per bin.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) backward_channels_last_kernel(
    int64_t num_bins, const scalar_t* __restrict__ grad, const acc_t* __restrict__ rois,
    acc_t spatial_scale, int64_t batch, int64_t channels, int64_t height, int64_t width,
    int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned,
    acc_t* __restrict__ grad_input) {
  const int lane = threadIdx.x % kWarp;
  for (int64_t bin = global_thread() / kWarp; bin < num_bins; bin += grid_threads() / kWarp) {
    const int64_t pw = bin % pooled_w;
    const int64_t ph = (bin / pooled_w) % pooled_h;
    const int64_t k = bin / (pooled_w * pooled_h);
    const auto g = roi_geometry<acc_t>(rois + k * 5, batch, spatial_scale, pooled_h, pooled_w,
                                       sampling_ratio, aligned);
    if (!g.valid) continue;
    const scalar_t* go = grad + bin * channels;
    acc_t* q_b = grad_input + g.batch * height * width * channels;
    const auto rows = rows_inside(g, ph, height);
    const auto cols = cols_inside(g, pw, width);
    for (int64_t c0 = lane; c0 - lane < channels; c0 += kWarp * kTile) {
      acc_t v[kTile];
#pragma unroll
      for (int j = 0; j < kTile; ++j) {
        const int64_t c = c0 + j * kWarp;
        v[j] = c < channels ? acc_t(go[c]) / g.count : acc_t(0);
      }
      for (int64_t iy = rows.begin; iy < rows.end; ++iy) {
        const acc_t y = sample_y(g, ph, iy);
        for (int64_t ix = cols.begin; ix < cols.end; ++ix) {
          const acc_t x = sample_x(g, pw, ix);
          if (sample_outside(height, width, y, x)) continue;
          const auto t = bilinear_tap(height, width, y, x);
          acc_t* q1 = q_b + t.o1 * channels;
          acc_t* q2 = q_b + t.o2 * channels;
          acc_t* q3 = q_b + t.o3 * channels;
          acc_t* q4 = q_b + t.o4 * channels;
#pragma unroll
          for (int j = 0; j < kTile; ++j) {
            const int64_t c = c0 + j * kWarp;
            if (c < channels) {
              gpuAtomicAdd(q1 + c, t.w1 * v[j]);
              gpuAtomicAdd(q2 + c, t.w2 * v[j]);
              gpuAtomicAdd(q3 + c, t.w3 * v[j]);
              gpuAtomicAdd(q4 + c, t.w4 * v[j]);
            }
          }
        }
      }
    }
  }
}

// Blocks for `threads` work items in a grid-stride loop: enough to fill the device a few times
// over, and never above the launch limit (total can exceed 2^31 threads).
unsigned int num_blocks(int64_t threads) {
  const int64_t max_blocks =
      static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  const int64_t needed = (threads + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(needed, max_blocks)));
}

at::Tensor roi_align_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                  double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                  int64_t sampling_ratio, bool aligned) {
  check_roi_align_inputs(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio);
  const auto format = input.suggest_memory_format();
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;
  at::Tensor output = at::empty({rois.size(0), input.size(1), pooled_height, pooled_width},
                                input.options().memory_format(format));
  if (output.numel() == 0) return output;
  c10::cuda::CUDAGuard device_guard(input.device());
  // N = 0 (every RoI invalid) or an empty map (every sample outside): all bins are 0. Also keeps
  // bilinear_tap away from height - 1 = -1.
  if (input.numel() == 0) return output.zero_();

  const at::Tensor x = input.contiguous(format);
  const int64_t batch = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "roi_align_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // Box geometry in the accumulation type: fp16 boxes would lose whole pixels past 1024.
    const at::Tensor r = rois.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const auto scale = static_cast<acc_t>(spatial_scale);
    if (channels_last) {
      const int64_t num_bins = rois.size(0) * pooled_height * pooled_width;
      forward_channels_last_kernel<scalar_t, acc_t><<<num_blocks(num_bins * kWarp), kThreads, 0, stream>>>(
          num_bins, x.const_data_ptr<scalar_t>(), r.const_data_ptr<acc_t>(), scale, batch, channels,
          height, width, pooled_height, pooled_width, sampling_ratio, aligned,
          output.mutable_data_ptr<scalar_t>());
    } else {
      const int64_t total = output.numel();
      forward_nchw_kernel<scalar_t, acc_t><<<num_blocks(total), kThreads, 0, stream>>>(
          total, x.const_data_ptr<scalar_t>(), r.const_data_ptr<acc_t>(), scale, batch, channels,
          height, width, pooled_height, pooled_width, sampling_ratio, aligned,
          output.mutable_data_ptr<scalar_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois,
                                   double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                   int64_t batch_size, int64_t channels, int64_t height,
                                   int64_t width, int64_t sampling_ratio, bool aligned) {
  check_roi_align_backward_inputs(grad, rois, spatial_scale, pooled_height, pooled_width,
                                  sampling_ratio, channels);
  // grad_input takes the layout of grad (the forward output has the layout of the input).
  const auto format = grad.suggest_memory_format();
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;
  c10::cuda::CUDAGuard device_guard(grad.device());
  at::Tensor grad_input;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    // at::zeros ignores the memory format in its options: allocate with it, then zero.
    at::Tensor acc = at::empty({batch_size, channels, height, width},
                               grad.options().dtype(acc_type).memory_format(format))
                         .zero_();
    if (grad.numel() != 0 && acc.numel() != 0) {
      const at::Tensor g = grad.contiguous(format);
      const at::Tensor r = rois.to(acc_type).contiguous();
      const auto scale = static_cast<acc_t>(spatial_scale);
      const auto stream = at::cuda::getCurrentCUDAStream();
      if (channels_last) {
        const int64_t num_bins = rois.size(0) * pooled_height * pooled_width;
        backward_channels_last_kernel<scalar_t, acc_t><<<num_blocks(num_bins * kWarp), kThreads, 0, stream>>>(
            num_bins, g.const_data_ptr<scalar_t>(), r.const_data_ptr<acc_t>(), scale, batch_size,
            channels, height, width, pooled_height, pooled_width, sampling_ratio, aligned,
            acc.mutable_data_ptr<acc_t>());
      } else {
        const int64_t total = g.numel();
        backward_nchw_kernel<scalar_t, acc_t><<<num_blocks(total), kThreads, 0, stream>>>(
            total, g.const_data_ptr<scalar_t>(), r.const_data_ptr<acc_t>(), scale, batch_size,
            channels, height, width, pooled_height, pooled_width, sampling_ratio, aligned,
            acc.mutable_data_ptr<acc_t>());
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    grad_input = acc.to(grad.scalar_type());
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(cora, CUDA, m) {
  m.impl("roi_align", &roi_align_forward_cuda);
  m.impl("_roi_align_backward", &roi_align_backward_cuda);
}

}  // namespace cora
