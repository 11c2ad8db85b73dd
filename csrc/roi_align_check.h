// Argument checks shared by the CPU and CUDA RoIAlign kernels. The fake kernels in
// cora/ops/roi_align.py repeat them with the same messages.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace cora {

// Largest fixed sampling_ratio (samples per bin along each axis): 64 x 64 samples per bin is already
// far denser than any pixel grid needs, and a larger value only allocates (100000 -> MemoryError).
constexpr int64_t kMaxSamplingRatio = 64;

// The scalar arguments, as ValueError in Python (TORCH_CHECK_VALUE).
inline void check_roi_align_scalars(double spatial_scale, int64_t sampling_ratio) {
  TORCH_CHECK_VALUE(std::isfinite(spatial_scale) && spatial_scale > 0,
                    "roi_align: spatial_scale must be a finite number > 0 (feature-map pixels per input "
                    "pixel), got ", spatial_scale);
  TORCH_CHECK_VALUE(sampling_ratio <= kMaxSamplingRatio, "roi_align: sampling_ratio must be <= ",
                    kMaxSamplingRatio, " (samples per bin along each axis; <= 0 samples adaptively), got ",
                    sampling_ratio);
}

inline void check_roi_align_rois(const at::Tensor& rois, int64_t pooled_height, int64_t pooled_width) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "roi_align: rois must be Tensor[K, 5], got ",
              rois.sizes());
  TORCH_CHECK(at::isFloatingType(rois.scalar_type()),
              "roi_align: rois must be a floating-point tensor, got ", rois.scalar_type());
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0,
              "roi_align: output size must be positive, got (", pooled_height, ", ", pooled_width, ")");
}

inline void check_floating(const char* name, const at::Tensor& t) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
              "roi_align: ", name, " must be float16, bfloat16, float32 or float64, got ", dtype);
}

inline void check_roi_align_inputs(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                   int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio) {
  TORCH_CHECK(input.dim() == 4, "roi_align: input must be Tensor[N, C, H, W], got ", input.sizes());
  check_floating("input", input);
  check_roi_align_rois(rois, pooled_height, pooled_width);
  check_roi_align_scalars(spatial_scale, sampling_ratio);
  TORCH_CHECK(input.device() == rois.device(), "roi_align: input and rois must be on the same device, got ",
              input.device(), " and ", rois.device());
}

inline void check_roi_align_backward_inputs(const at::Tensor& grad, const at::Tensor& rois,
                                            double spatial_scale, int64_t pooled_height,
                                            int64_t pooled_width, int64_t sampling_ratio,
                                            int64_t channels) {
  check_floating("grad", grad);
  check_roi_align_rois(rois, pooled_height, pooled_width);
  check_roi_align_scalars(spatial_scale, sampling_ratio);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                  grad.size(2) == pooled_height && grad.size(3) == pooled_width,
              "roi_align: grad must be Tensor[", rois.size(0), ", ", channels, ", ", pooled_height, ", ",
              pooled_width, "], got ", grad.sizes());
  TORCH_CHECK(grad.device() == rois.device(), "roi_align: grad and rois must be on the same device, got ",
              grad.device(), " and ", rois.device());
}

}  // namespace cora
