// Prompted attention pooling, CPU: the fused attention step (see attn_pool.h); the projections
// are shared with CUDA in csrc/attn_pool.cpp.
#include "attn_pool.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

namespace cora {
namespace {

// Regions in parallel; per region, its L tokens are built once (in the accumulation type), then
// logits = keys . tokens^T [H, L] and z = softmax(logits) . tokens [H, C] are two small GEMMs on
// this thread, with the softmax in between: no [n, L, C] token tensor is ever materialised.
template <typename scalar_t>
void attend_kernel_impl(const at::Tensor& keys, const at::Tensor& x, const at::Tensor& mean,
                        const at::Tensor& pos, at::Tensor& z) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t heads = keys.size(0), num = keys.size(1), channels = keys.size(2);
  const int64_t spatial = x.size(1), tokens = spatial + 1;
  const acc_t* key_data = keys.const_data_ptr<acc_t>();
  const scalar_t* x_data = x.const_data_ptr<scalar_t>();
  const int64_t x_stride[3] = {x.stride(0), x.stride(1), x.stride(2)};
  const scalar_t* mean_data = mean.const_data_ptr<scalar_t>();
  const scalar_t* pos_data = pos.const_data_ptr<scalar_t>();
  scalar_t* z_data = z.mutable_data_ptr<scalar_t>();
  constexpr bool same_type = std::is_same_v<scalar_t, acc_t>;
  const auto acc_options = keys.options();

  at::parallel_for(0, num, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> tok(tokens * channels), weight(heads * tokens), acc(same_type ? 0 : heads * channels);
    // Views of the buffers for at::mm_out (BLAS); ATen calls are fine inside at::parallel_for,
    // where nested parallelism runs inline.
    const at::Tensor tok_t = at::from_blob(tok.data(), {tokens, channels}, acc_options);
    at::Tensor weight_t = at::from_blob(weight.data(), {heads, tokens}, acc_options);
    at::Tensor acc_t_ = at::from_blob(acc.data(), {same_type ? 0 : heads, channels}, acc_options);
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t j = 0; j < tokens; ++j) {
        const scalar_t* p = pos_data + j * channels;
        acc_t* t = tok.data() + j * channels;
        if (j == 0) {
          const scalar_t* u = mean_data + i * channels;
          for (int64_t c = 0; c < channels; ++c) t[c] = acc_t(u[c]) + acc_t(p[c]);
        } else {
          const scalar_t* u = x_data + i * x_stride[0] + (j - 1) * x_stride[1];
          for (int64_t c = 0; c < channels; ++c) t[c] = acc_t(u[c * x_stride[2]]) + acc_t(p[c]);
        }
      }
      // Region i's keys are rows i, n + i, 2n + i, ... of keys [H, n, C].
      const at::Tensor keys_i = at::from_blob(const_cast<acc_t*>(key_data + i * channels), {heads, channels},
                                              {num * channels, 1}, acc_options);
      at::mm_out(weight_t, keys_i, tok_t.t());  // logits [H, L]
      for (int64_t h = 0; h < heads; ++h) {
        acc_t* w = weight.data() + h * tokens;
        const acc_t max = *std::max_element(w, w + tokens);
        acc_t sum = 0;
        for (int64_t j = 0; j < tokens; ++j) sum += w[j] = std::exp(w[j] - max);
        for (int64_t j = 0; j < tokens; ++j) w[j] /= sum;
      }
      if constexpr (same_type) {
        at::Tensor z_i = at::from_blob(z_data + i * channels, {heads, channels}, {num * channels, 1}, acc_options);
        at::mm_out(z_i, weight_t, tok_t);
      } else {
        at::mm_out(acc_t_, weight_t, tok_t);
        for (int64_t h = 0; h < heads; ++h) {
          scalar_t* out = z_data + (h * num + i) * channels;
          for (int64_t c = 0; c < channels; ++c) out[c] = static_cast<scalar_t>(acc[h * channels + c]);
        }
      }
    }
  });
}

void attend_cpu(const at::Tensor& keys, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& pos,
                at::Tensor& z) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "prompted_attn_pool_cpu", [&] {
    attend_kernel_impl<scalar_t>(keys, x, mean, pos, z);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(cora, CPU, m) {
  m.impl("prompted_attn_pool", &prompted_attn_pool_with<&attend_cpu>);
}

}  // namespace cora
