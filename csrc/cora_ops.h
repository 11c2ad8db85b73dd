// C++ entry points of the cora ops, for LibTorch deployments. Each call goes through the dispatcher,
// so it reaches the CPU or CUDA kernel of its inputs. Semantics: see the Python wrappers in cora/ops/.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace cora {

// torch.ops.cora.roi_align: input [N, C, H, W], rois [K, 5] -> [K, C, pooled_height, pooled_width].
at::Tensor roi_align(
    const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
    int64_t pooled_width, int64_t sampling_ratio, bool aligned);

// torch.ops.cora.prompted_attn_pool: x [N, C, S, S] -> [N, out_dim], CLIP's attention pool applied
// to x + prompt (prompt [S, S, C] optional).
at::Tensor prompted_attn_pool(
    const at::Tensor& x, const at::Tensor& positional_embedding, const std::optional<at::Tensor>& prompt,
    const at::Tensor& q_proj_weight, const at::Tensor& q_proj_bias, const at::Tensor& k_proj_weight,
    const at::Tensor& v_proj_weight, const at::Tensor& v_proj_bias, const at::Tensor& c_proj_weight,
    const at::Tensor& c_proj_bias, int64_t num_heads);

}  // namespace cora
