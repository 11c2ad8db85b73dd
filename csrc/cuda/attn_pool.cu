// Prompted attention pooling, CUDA: the fused attention step (see attn_pool.h); the projections are
// shared with the CPU in csrc/attn_pool.cpp.
//
// One block per (region, group of kHeads heads), looping over all C channels, kVec adjacent channels
// per thread. Three phases, with nothing but z leaving the block:
//  1. logits[g, j] = keys[g] . t_j: each thread keeps its channels' keys in registers and streams the
//     tokens (coalesced over C); per token, a warp reduces its kHeads partial dot products with
//     shuffles, and the warps' partials meet in shared memory (fixed order: deterministic).
//  2. softmax over j, one warp per head, in place in shared memory.
//  3. z[g, c] = sum_j w[g, j] t_j[c]: each thread streams the tokens again (just read: mostly L2) and
//     accumulates all kHeads heads in registers.
// The groups of one region are adjacent in blockIdx.x, so they run side by side and x comes from
// DRAM about once.
#include "attn_pool.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>

namespace cora {
namespace {

constexpr int kThreads = 128;  // C = 2048 / 2560 / 3072 / 4096 are whole multiples of 128 * 4 channels
constexpr int kWarp = 32;
constexpr int kWarps = kThreads / kWarp;
// Heads per block. Must be 16: the reduction in phase 1 maps the 16 heads onto lane bits 1-4.
constexpr int kHeads = 16;
constexpr int kTokenTile = 32;  // tokens per phase-1 pass: bounds the per-warp partials in shared memory
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

// One halving step of the phase-1 reduction: lane bit b + 1 pairs with head bit b (kWidth = 2^b),
// and slots [kWidth, 2 * kWidth) go to the partner lane. A template so that every index is constant
// (a loop over the width leaves dot[] in local memory).
template <int kWidth, typename acc_t>
__device__ __forceinline__ void fold(acc_t (&dot)[kHeads]) {
#pragma unroll
  for (int p = 0; p < kWidth; ++p) dot[p] += __shfl_xor_sync(0xffffffffu, dot[p + kWidth], 2 * kWidth);
}

// V adjacent elements, loaded and stored as one access (the host checks the alignment).
template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

template <int V, typename T, typename acc_t>
__device__ __forceinline__ void load_acc(const T* p, acc_t (&out)[V]) {
  const Vec<T, V> in = *reinterpret_cast<const Vec<T, V>*>(p);
#pragma unroll
  for (int v = 0; v < V; ++v) out[v] = acc_t(in.v[v]);
}

// The kHeads weights of one token, a 16-byte aligned row of the [L, kHeads] table. Explicit vector
// loads: with one shared load per head, the loads rather than the FMAs would bound phase 3.
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

// keys [H, n, C] (acc_t); x [n, L - 1, C] with strides (x_region, x_token, 1); mean [n, C], pos [L, C]
// and z [H, n, C] contiguous. blockIdx.x = head group, blockIdx.y strides over regions. V: channels
// per thread and access.
template <typename scalar_t, typename acc_t, int V>
__global__ void __launch_bounds__(kThreads) attend_kernel(
    int64_t num, int64_t heads, int64_t tokens, int64_t channels, const acc_t* __restrict__ keys,
    const scalar_t* __restrict__ x, int64_t x_region, int64_t x_token, const scalar_t* __restrict__ mean,
    const scalar_t* __restrict__ pos, scalar_t* __restrict__ z) {
  extern __shared__ __align__(16) unsigned char shared_raw[];
  acc_t* partial = reinterpret_cast<acc_t*>(shared_raw);  // [kWarps, kTokenTile, kHeads]
  acc_t* weights = partial + kWarps * kTokenTile * kHeads;  // [tokens, kHeads]: logits, then softmax

  const int64_t h0 = static_cast<int64_t>(blockIdx.x) * kHeads;
  const int64_t group_heads = heads - h0 < kHeads ? heads - h0 : kHeads;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  // Phase 1 keeps head (p ^ head_of_lane) in register slot p. With that lane-dependent order, each
  // halving step of the reduction sends the upper half of the slots and keeps the lower half, with
  // no selects; slot 0 ends up holding head head_of_lane, summed over the warp.
  const int head_of_lane = (lane >> 1) & (kHeads - 1);
  const int64_t steps = (channels + kThreads * V - 1) / (kThreads * V);

  // Block-uniform loops: every thread, inactive channels included, reaches the barriers and shuffles.
  for (int64_t i = blockIdx.y; i < num; i += gridDim.y) {
    const scalar_t* xi = x + i * x_region;
    const scalar_t* mi = mean + i * channels;

    for (int64_t j0 = 0; j0 < tokens; j0 += kTokenTile) {
      const int64_t tile = tokens - j0 < kTokenTile ? tokens - j0 : kTokenTile;
      for (int64_t m = 0; m < steps; ++m) {
        const int64_t c = (m * kThreads + threadIdx.x) * V;
        const bool active = c < channels;
        acc_t key[kHeads][V];
#pragma unroll
        for (int p = 0; p < kHeads; ++p) {
          const int g = p ^ head_of_lane;
          if (active && g < group_heads) {
            load_acc<V>(keys + ((h0 + g) * num + i) * channels + c, key[p]);
          } else {
#pragma unroll
            for (int v = 0; v < V; ++v) key[p][v] = acc_t(0);
          }
        }
        for (int64_t jj = 0; jj < tile; ++jj) {
          const int64_t j = j0 + jj;
          acc_t t[V];
          if (active) {
            acc_t u[V];
            load_acc<V>(j == 0 ? mi + c : xi + (j - 1) * x_token + c, t);
            load_acc<V>(pos + j * channels + c, u);
#pragma unroll
            for (int v = 0; v < V; ++v) t[v] += u[v];
          } else {
#pragma unroll
            for (int v = 0; v < V; ++v) t[v] = acc_t(0);
          }
          acc_t dot[kHeads];
#pragma unroll
          for (int p = 0; p < kHeads; ++p) {
            dot[p] = key[p][0] * t[0];
#pragma unroll
            for (int v = 1; v < V; ++v) dot[p] += key[p][v] * t[v];
          }
          fold<8>(dot);
          fold<4>(dot);
          fold<2>(dot);
          fold<1>(dot);
          const acc_t total = dot[0] + __shfl_xor_sync(0xffffffffu, dot[0], 1);
          if ((lane & 1) == 0) {
            acc_t& slot = partial[(warp * kTokenTile + jj) * kHeads + head_of_lane];
            slot = m == 0 ? total : slot + total;
          }
        }
      }
      __syncthreads();
      for (int64_t e = threadIdx.x; e < tile * kHeads; e += kThreads) {
        acc_t sum = partial[e];
#pragma unroll
        for (int w = 1; w < kWarps; ++w) sum += partial[w * kTokenTile * kHeads + e];
        weights[j0 * kHeads + e] = sum;
      }
      // Also orders the next pass's partial writes after these reads.
      __syncthreads();
    }

    for (int g = warp; g < kHeads; g += kWarps) {
      if (g < group_heads) {
        acc_t max = -std::numeric_limits<acc_t>::infinity();
        for (int64_t j = lane; j < tokens; j += kWarp) max = max_acc(max, weights[j * kHeads + g]);
        max = warp_max(max);
        acc_t sum = 0;
        for (int64_t j = lane; j < tokens; j += kWarp) {
          const acc_t e = exp_acc(weights[j * kHeads + g] - max);
          weights[j * kHeads + g] = e;
          sum += e;
        }
        sum = warp_sum(sum);
        // Each lane rescales only the entries it wrote: no barrier needed before this.
        for (int64_t j = lane; j < tokens; j += kWarp) weights[j * kHeads + g] /= sum;
      } else {
        // Missing heads of a partial last group weigh 0, so phase 3 needs no per-head guard.
        for (int64_t j = lane; j < tokens; j += kWarp) weights[j * kHeads + g] = acc_t(0);
      }
    }
    __syncthreads();

    for (int64_t m = 0; m < steps; ++m) {
      const int64_t c = (m * kThreads + threadIdx.x) * V;
      if (c >= channels) break;
      acc_t acc[kHeads][V], w[kHeads], t[V], u[V];
      load_acc<V>(mi + c, t);
      load_acc<V>(pos + c, u);
      load_weights(weights, w);
#pragma unroll
      for (int g = 0; g < kHeads; ++g) {
#pragma unroll
        for (int v = 0; v < V; ++v) acc[g][v] = w[g] * (t[v] + u[v]);
      }
#pragma unroll 2
      for (int64_t j = 1; j < tokens; ++j) {
        load_acc<V>(xi + (j - 1) * x_token + c, t);
        load_acc<V>(pos + j * channels + c, u);
        load_weights(weights + j * kHeads, w);
#pragma unroll
        for (int v = 0; v < V; ++v) t[v] += u[v];
#pragma unroll
        for (int g = 0; g < kHeads; ++g) {
#pragma unroll
          for (int v = 0; v < V; ++v) acc[g][v] += w[g] * t[v];
        }
      }
#pragma unroll
      for (int g = 0; g < kHeads; ++g) {
        if (g < group_heads) {
          Vec<scalar_t, V> out;
#pragma unroll
          for (int v = 0; v < V; ++v) out.v[v] = static_cast<scalar_t>(acc[g][v]);
          *reinterpret_cast<Vec<scalar_t, V>*>(z + ((h0 + g) * num + i) * channels + c) = out;
        }
      }
    }
    // The next region's phase 1 overwrites the weights this one is still reading.
    __syncthreads();
  }
}

bool aligned(const void* p, size_t bytes) {
  return reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

void attend_cuda(const at::Tensor& keys, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& pos,
                 at::Tensor& z) {
  const int64_t heads = keys.size(0), num = keys.size(1), channels = keys.size(2), tokens = x.size(1) + 1;
  if (num == 0 || channels == 0) return;
  c10::cuda::CUDAGuard device_guard(x.device());
  // The kernel reads each token's C channels as one coalesced row; x from NCHW features (channel
  // stride S*S) is transposed once here instead.
  const at::Tensor xt = x.stride(2) == 1 ? x : x.contiguous();
  const int64_t x_region = xt.stride(0), x_token = xt.stride(1);
  const dim3 grid(static_cast<unsigned int>((heads + kHeads - 1) / kHeads),
                  static_cast<unsigned int>(std::min(num, kMaxGridY)));
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "prompted_attn_pool_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const size_t shared_bytes = (static_cast<size_t>(kWarps) * kTokenTile + tokens) * kHeads * sizeof(acc_t);
    TORCH_CHECK(shared_bytes <= kMaxSharedBytes, "prompted_attn_pool (CUDA): S*S + 1 = ", tokens,
                " tokens need ", shared_bytes, " bytes of shared memory, more than the ", kMaxSharedBytes,
                " available; at most ", kMaxSharedBytes / (kHeads * sizeof(acc_t)) - kWarps * kTokenTile,
                " tokens are supported for ", x.scalar_type());
    const acc_t* key_data = keys.const_data_ptr<acc_t>();
    const scalar_t* x_data = xt.const_data_ptr<scalar_t>();
    const scalar_t* mean_data = mean.const_data_ptr<scalar_t>();
    const scalar_t* pos_data = pos.const_data_ptr<scalar_t>();
    scalar_t* z_data = z.mutable_data_ptr<scalar_t>();
    // 16-byte accesses of acc_t (4 floats, 2 doubles) where C, x's strides and every base pointer
    // allow them: a narrowed or user-offset tensor can start anywhere.
    constexpr int kVec = 16 / sizeof(acc_t);
    const bool vectorized = channels % kVec == 0 && x_region % kVec == 0 && x_token % kVec == 0 &&
        aligned(key_data, kVec * sizeof(acc_t)) && aligned(x_data, kVec * sizeof(scalar_t)) &&
        aligned(mean_data, kVec * sizeof(scalar_t)) && aligned(pos_data, kVec * sizeof(scalar_t)) &&
        aligned(z_data, kVec * sizeof(scalar_t));
    if (vectorized) {
      attend_kernel<scalar_t, acc_t, kVec><<<grid, kThreads, shared_bytes, stream>>>(
          num, heads, tokens, channels, key_data, x_data, x_region, x_token, mean_data, pos_data, z_data);
    } else {
      attend_kernel<scalar_t, acc_t, 1><<<grid, kThreads, shared_bytes, stream>>>(
          num, heads, tokens, channels, key_data, x_data, x_region, x_token, mean_data, pos_data, z_data);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(cora, CUDA, m) {
  m.impl("prompted_attn_pool", &prompted_attn_pool_with<&attend_cuda>);
}

}  // namespace cora
