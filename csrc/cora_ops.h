// C++ entry points of the cora ops, for LibTorch deployments. Each call goes through the dispatcher,
// so it reaches the CPU or CUDA kernel of its inputs. Semantics: see the Python wrappers in cora/ops/.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>
#include <vector>

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

// torch.ops.cora.batched_linear_assignment: P row-major cost matrices packed in costs (1-D), with
// rows/cols/offsets [P] -> (row_idx, col_idx, problem_idx) of all matched pairs, sorted by problem
// then row; each problem solved as scipy.optimize.linear_sum_assignment (+inf: forbidden pair).
std::tuple<at::Tensor, at::Tensor, at::Tensor> batched_linear_assignment(
    const at::Tensor& costs, const at::Tensor& rows, const at::Tensor& cols, const at::Tensor& offsets);

// torch.ops.cora.linear_sum_assignment: P matrices [R_p, C_p], all on one device (at least one, for the
// dispatcher) -> (row_ind, col_ind), P int64 tensors each, as scipy.optimize.linear_sum_assignment
// per matrix (+inf, or -inf with maximize: forbidden pair).
std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> linear_sum_assignment(at::TensorList costs,
                                                                                    bool maximize = false);

}  // namespace cora
