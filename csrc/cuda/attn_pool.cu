// Prompted attention pooling, CUDA: the fused softmax + weighted token sum (see attn_pool.h); the
// projections are shared with the CPU in csrc/attn_pool.cpp.
//
// One block per (region, chunk of kThreads channels, group of kHeads heads), one thread per channel.
// The block first puts the softmax weights of its heads in shared memory, then each thread streams
// its channel of the L tokens once (coalesced over C) and accumulates all kHeads heads in registers.
#include "attn_pool.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

namespace cora {
namespace {

constexpr int kThreads = 256;  // a multiple of the warp size: the softmax gives one warp per head
constexpr int kWarp = 32;
constexpr int kHeads = 16;  // heads per block; a multiple of 4 for the 16-byte weight loads
constexpr int64_t kMaxGridY = 65535;
constexpr size_t kMaxSharedBytes = 48 * 1024;  // the default dynamic shared memory limit

__device__ __forceinline__ float exp_acc(float v) { return expf(v); }
__device__ __forceinline__ double exp_acc(double v) { return exp(v); }
__device__ __forceinline__ float max_acc(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double max_acc(double a, double b) { return fmax(a, b); }

template <typename acc_t>
__device__ __forceinline__ acc_t warp_max(acc_t v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v = max_acc(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// The kHeads weights of one token, a 16-byte aligned row of the [L, kHeads] table. Explicit vector
// loads: with one shared load per head, the loads rather than the FMAs would bound the token loop.
__device__ __forceinline__ void load_weights(const float* row, float (&w)[kHeads]) {
#pragma unroll
  for (int k = 0; k < kHeads / 4; ++k) {
    const float4 v = reinterpret_cast<const float4*>(row)[k];
    w[4 * k] = v.x;
    w[4 * k + 1] = v.y;
    w[4 * k + 2] = v.z;
    w[4 * k + 3] = v.w;
  }
}
__device__ __forceinline__ void load_weights(const double* row, double (&w)[kHeads]) {
#pragma unroll
  for (int k = 0; k < kHeads / 2; ++k) {
    const double2 v = reinterpret_cast<const double2*>(row)[k];
    w[2 * k] = v.x;
    w[2 * k + 1] = v.y;
  }
}

// logits [n, H, L] (acc_t); x [n, L - 1, C], mean [n, C], pos [L, C], z [n, H, C]; all contiguous.
// blockIdx.x = channel chunk * groups + head group: the groups of one (region, chunk) read the same x
// and run side by side, so x comes from DRAM about once. blockIdx.y strides over regions.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) softmax_sum_kernel(
    int64_t num, int64_t heads, int64_t tokens, int64_t channels, int64_t groups,
    const acc_t* __restrict__ logits, const scalar_t* __restrict__ x, const scalar_t* __restrict__ mean,
    const scalar_t* __restrict__ pos, scalar_t* __restrict__ z) {
  extern __shared__ __align__(16) unsigned char shared_raw[];
  acc_t* weights = reinterpret_cast<acc_t*>(shared_raw);  // [tokens, kHeads]

  const int64_t group = blockIdx.x % groups;
  const int64_t c = (blockIdx.x / groups) * kThreads + threadIdx.x;
  const int64_t h0 = group * kHeads;
  const int64_t group_heads = heads - h0 < kHeads ? heads - h0 : kHeads;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t spatial = tokens - 1;

  // Block-uniform loop: every thread, c >= channels included, reaches the barriers.
  for (int64_t i = blockIdx.y; i < num; i += gridDim.y) {
    for (int g = warp; g < kHeads; g += kThreads / kWarp) {
      if (g < group_heads) {
        const acc_t* lg = logits + (i * heads + h0 + g) * tokens;
        acc_t max = -std::numeric_limits<acc_t>::infinity();
        for (int64_t j = lane; j < tokens; j += kWarp) max = max_acc(max, lg[j]);
        max = warp_max(max);
        acc_t sum = 0;
        for (int64_t j = lane; j < tokens; j += kWarp) {
          const acc_t e = exp_acc(lg[j] - max);
          weights[j * kHeads + g] = e;
          sum += e;
        }
        sum = warp_sum(sum);
        // Each lane rescales only the entries it wrote: no barrier needed before this.
        for (int64_t j = lane; j < tokens; j += kWarp) weights[j * kHeads + g] /= sum;
      } else {
        // Missing heads of a partial last group weigh 0, so the token loop needs no per-head guard.
        for (int64_t j = lane; j < tokens; j += kWarp) weights[j * kHeads + g] = acc_t(0);
      }
    }
    __syncthreads();

    if (c < channels) {
      acc_t acc[kHeads], w[kHeads];
      const acc_t t0 = acc_t(mean[i * channels + c]) + acc_t(pos[c]);
      load_weights(weights, w);
#pragma unroll
      for (int g = 0; g < kHeads; ++g) acc[g] = w[g] * t0;
      const scalar_t* xi = x + i * spatial * channels + c;
#pragma unroll 4
      for (int64_t j = 1; j < tokens; ++j) {
        const acc_t t = acc_t(xi[(j - 1) * channels]) + acc_t(pos[j * channels + c]);
        load_weights(weights + j * kHeads, w);
#pragma unroll
        for (int g = 0; g < kHeads; ++g) acc[g] += w[g] * t;
      }
      scalar_t* zi = z + (i * heads + h0) * channels + c;
#pragma unroll
      for (int g = 0; g < kHeads; ++g) {
        if (g < group_heads) zi[g * channels] = static_cast<scalar_t>(acc[g]);
      }
    }
    // The next region's softmax overwrites the weights this one is still reading.
    __syncthreads();
  }
}

void softmax_sum_cuda(const at::Tensor& logits, const at::Tensor& x, const at::Tensor& mean,
                      const at::Tensor& pos, at::Tensor& z) {
  const int64_t num = x.size(0), channels = x.size(2), tokens = x.size(1) + 1, heads = logits.size(1);
  if (num == 0 || channels == 0) return;
  c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t groups = (heads + kHeads - 1) / kHeads;
  const int64_t chunks = (channels + kThreads - 1) / kThreads;
  TORCH_CHECK(chunks * groups <= std::numeric_limits<int32_t>::max(),
              "prompted_attn_pool (CUDA): too many channels x heads, C = ", channels, ", H = ", heads);
  const dim3 grid(static_cast<unsigned int>(chunks * groups),
                  static_cast<unsigned int>(std::min(num, kMaxGridY)));
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "prompted_attn_pool_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const size_t shared_bytes = static_cast<size_t>(kHeads) * tokens * sizeof(acc_t);
    TORCH_CHECK(shared_bytes <= kMaxSharedBytes, "prompted_attn_pool (CUDA): S*S + 1 = ", tokens,
                " tokens need ", shared_bytes, " bytes of shared memory for the softmax weights, more than the ",
                kMaxSharedBytes, " available; at most ", kMaxSharedBytes / (kHeads * sizeof(acc_t)),
                " tokens are supported for ", x.scalar_type());
    softmax_sum_kernel<scalar_t, acc_t><<<grid, kThreads, shared_bytes, stream>>>(
        num, heads, tokens, channels, groups, logits.const_data_ptr<acc_t>(), x.const_data_ptr<scalar_t>(),
        mean.const_data_ptr<scalar_t>(), pos.const_data_ptr<scalar_t>(), z.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor prompted_attn_pool_cuda(
    const at::Tensor& x, const at::Tensor& positional_embedding, const std::optional<at::Tensor>& prompt,
    const at::Tensor& q_proj_weight, const at::Tensor& q_proj_bias, const at::Tensor& k_proj_weight,
    const at::Tensor& v_proj_weight, const at::Tensor& v_proj_bias, const at::Tensor& c_proj_weight,
    const at::Tensor& c_proj_bias, int64_t num_heads) {
  return prompted_attn_pool_forward(x, positional_embedding, prompt, q_proj_weight, q_proj_bias, k_proj_weight,
                                    v_proj_weight, v_proj_bias, c_proj_weight, c_proj_bias, num_heads,
                                    &softmax_sum_cuda);
}

}  // namespace

TORCH_LIBRARY_IMPL(cora, CUDA, m) {
  m.impl("prompted_attn_pool", &prompted_attn_pool_cuda);
}

}  // namespace cora
