// Prompted attention pooling: the device-independent part (projections through at::matmul, chunking,
// backward) shared by the CPU and CUDA registrations. Semantics: cora/ops/attn_pool.py.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace cora {

// The attention step each device implements, for one chunk of n regions: with tokens
// t_0 = mean[i] + pos[0], t_j = x[i, j - 1] + pos[j] (j = 1 .. S*S),
//   z[h, i, :] = sum_j softmax_j(keys[h, i, :] . t_j) t_j.
// keys [H, n, C] in the accumulation type (float for half types, already scaled by 1/sqrt(d));
// x [n, S*S, C] (any strides: a view of NCHW or channels-last x), mean [n, C], pos [L, C] and
// z [H, n, C] in the input dtype, contiguous but x.
// Logits, softmax and the weighted sum are computed in the accumulation type.
using AttendFn = void (*)(const at::Tensor& keys, const at::Tensor& x, const at::Tensor& mean,
                          const at::Tensor& pos, at::Tensor& z);

at::Tensor prompted_attn_pool_forward(
    const at::Tensor& x, const at::Tensor& positional_embedding, const std::optional<at::Tensor>& prompt,
    const at::Tensor& q_proj_weight, const at::Tensor& q_proj_bias, const at::Tensor& k_proj_weight,
    const at::Tensor& v_proj_weight, const at::Tensor& v_proj_bias, const at::Tensor& c_proj_weight,
    const at::Tensor& c_proj_bias, int64_t num_heads, AttendFn attend);

// The op's kernel for one device: the forward above with that device's attention step (its registration:
// m.impl("prompted_attn_pool", &prompted_attn_pool_with<&attend_cpu>)).
template <AttendFn attend>
at::Tensor prompted_attn_pool_with(
    const at::Tensor& x, const at::Tensor& positional_embedding, const std::optional<at::Tensor>& prompt,
    const at::Tensor& q_proj_weight, const at::Tensor& q_proj_bias, const at::Tensor& k_proj_weight,
    const at::Tensor& v_proj_weight, const at::Tensor& v_proj_bias, const at::Tensor& c_proj_weight,
    const at::Tensor& c_proj_bias, int64_t num_heads) {
  return prompted_attn_pool_forward(x, positional_embedding, prompt, q_proj_weight, q_proj_bias, k_proj_weight,
                                    v_proj_weight, v_proj_bias, c_proj_weight, c_proj_bias, num_heads, attend);
}

// Gradients with respect to (x, positional_embedding, prompt); the last is empty without a prompt.
std::tuple<at::Tensor, at::Tensor, at::Tensor> prompted_attn_pool_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& positional_embedding,
    const std::optional<at::Tensor>& prompt, const at::Tensor& q_proj_weight,
    const at::Tensor& q_proj_bias, const at::Tensor& k_proj_weight, const at::Tensor& v_proj_weight,
    const at::Tensor& v_proj_bias, const at::Tensor& c_proj_weight, int64_t num_heads);

}  // namespace cora
