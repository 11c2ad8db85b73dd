// C++ entry points of the cora ops, for LibTorch deployments. Each call goes through the dispatcher,
// so it reaches the CPU or CUDA kernel of its inputs. Semantics: see the Python wrappers in cora/ops/.
#pragma once

#include <ATen/core/Tensor.h>

namespace cora {

// torch.ops.cora.roi_align: input [N, C, H, W], rois [K, 5] -> [K, C, pooled_height, pooled_width].
at::Tensor roi_align(
    const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
    int64_t pooled_width, int64_t sampling_ratio, bool aligned);

}  // namespace cora
