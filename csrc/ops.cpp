// The schemas of all cora ops (one TORCH_LIBRARY block) and their C++ entry points.
// Kernels register themselves per device in <op>.cpp / <op>.cu; autograd and fake (meta) kernels
// are registered from Python beside each wrapper in cora/ops/.
#include "cora_ops.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace cora {

at::Tensor roi_align(
    const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
    int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("cora::roi_align", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, c10::SymInt,
                                         c10::SymInt, int64_t, bool)>();
  return op.call(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned);
}

at::Tensor prompted_attn_pool(
    const at::Tensor& x, const at::Tensor& positional_embedding, const std::optional<at::Tensor>& prompt,
    const at::Tensor& q_proj_weight, const at::Tensor& q_proj_bias, const at::Tensor& k_proj_weight,
    const at::Tensor& v_proj_weight, const at::Tensor& v_proj_bias, const at::Tensor& c_proj_weight,
    const at::Tensor& c_proj_bias, int64_t num_heads) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("cora::prompted_attn_pool", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                         const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, int64_t)>();
  return op.call(x, positional_embedding, prompt, q_proj_weight, q_proj_bias, k_proj_weight, v_proj_weight,
                 v_proj_bias, c_proj_weight, c_proj_bias, num_heads);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batched_linear_assignment(
    const at::Tensor& costs, const at::Tensor& rows, const at::Tensor& cols, const at::Tensor& offsets) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("cora::batched_linear_assignment", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op.call(costs, rows, cols, offsets);
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> linear_sum_assignment(at::TensorList costs,
                                                                                    bool maximize) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("cora::linear_sum_assignment", "")
                       .typed<std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>>(at::TensorList, bool)>();
  return op.call(costs, maximize);
}

}  // namespace cora

TORCH_LIBRARY(cora, m) {
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, "
      "int sampling_ratio, bool aligned) -> Tensor");
  // k_proj_bias is not an argument: it adds a per-head constant to the logits, which the softmax
  // cancels (see csrc/attn_pool.cpp).
  m.def(
      "prompted_attn_pool(Tensor x, Tensor positional_embedding, Tensor? prompt, Tensor q_proj_weight, "
      "Tensor q_proj_bias, Tensor k_proj_weight, Tensor v_proj_weight, Tensor v_proj_bias, "
      "Tensor c_proj_weight, Tensor c_proj_bias, int num_heads) -> Tensor");
  m.def(
      "_prompted_attn_pool_backward(Tensor grad, Tensor x, Tensor positional_embedding, Tensor? prompt, "
      "Tensor q_proj_weight, Tensor q_proj_bias, Tensor k_proj_weight, Tensor v_proj_weight, "
      "Tensor v_proj_bias, Tensor c_proj_weight, int num_heads) -> (Tensor, Tensor, Tensor)");
  // Output size depends on the data (forbidden pairs are dropped).
  m.def(
      "batched_linear_assignment(Tensor costs, Tensor rows, Tensor cols, Tensor offsets) "
      "-> (Tensor row_idx, Tensor col_idx, Tensor problem_idx)");
  // scipy's linear_sum_assignment for a list of matrices: per-matrix (row_ind, col_ind).
  m.def("linear_sum_assignment(Tensor[] costs, bool maximize=False) -> (Tensor[] row_ind, Tensor[] col_ind)");
}

// linear_sum_assignment's outputs are indices: nothing to differentiate. A fallthrough (instead of
// torch's boxed "not implemented" autograd fallback) keeps unboxed calls unboxed down to the kernel.
TORCH_LIBRARY_IMPL(cora, Autograd, m) {
  m.impl("linear_sum_assignment", torch::CppFunction::makeFallthrough());
}
