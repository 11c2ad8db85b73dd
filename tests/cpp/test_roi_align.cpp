// Smoke test of the LibTorch library libcora_ops.so: calls cora::roi_align (cora_ops.h), which goes
// through the dispatcher, so it also checks that the library's op registrations ran. Runs on the
// CPU, and also on the GPU when the library has its CUDA kernels (CORA_WITH_CUDA) and one is
// visible. No test framework: prints each failed check and exits non-zero if any failed. Run by
// ctest.
//
// Input: [N=2, C=3, H=4, W=4], value(n, c, y, x) = 1000 n + 100 c + 10 y + x, linear in (x, y).
// Bilinear interpolation reproduces a linear map exactly between pixel centres (0 <= x, y <= 3),
// and the samples of a bin are evenly spaced and symmetric about the bin centre, so every output
// (the mean of its bin's samples) equals the map at the bin centre, whatever the sampling ratio.
// With aligned=true a box [x1, y1, x2, y2] covers [x1 * scale - 0.5, x2 * scale - 0.5] (same in y).
//
//  RoI A = [0, 0.5, 0.5, 2.5, 2.5], scale 1: x, y in [0, 2].
//    1x1 output: bin centre (x, y) = (1, 1): 10 * 1 + 1 = 11, i.e. 11 + 100 c.
//    2x2 output: bins 1 px wide, centres 0.5 and 1.5:
//      (ph, pw) = (0, 0): 10 * 0.5 + 0.5 = 5.5;  (0, 1): 5 + 1.5 = 6.5;
//                 (1, 0): 15 + 0.5 = 15.5;       (1, 1): 15 + 1.5 = 16.5   (+ 100 c).
//  RoI B = [1, 1.0, 0.5, 3.5, 2.5], scale 1: image n = 1, x in [0.5, 3.0], y in [0, 2].
//    2x2 output: bins 1.25 px wide, x centres 0.5 + 0.625 = 1.125 and 0.5 + 1.875 = 2.375
//    (the outermost sample, with sampling_ratio 2, is at 0.5 + 1.25 * 1.75 = 2.6875 <= 3);
//    y centres 0.5 and 1.5:
//      (0, 0): 1000 + 5 + 1.125 = 1006.125;  (0, 1): 1000 + 5 + 2.375 = 1007.375;
//      (1, 0): 1000 + 15 + 1.125 = 1016.125; (1, 1): 1000 + 15 + 2.375 = 1017.375  (+ 100 c).
// (Checked against torch.ops.cora.roi_align from Python.)
#include "cora_ops.h"
#include "harness.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

namespace {

using cora_test::check;

// out[k, c, ph, pw] == expected[ph][pw] + 100 c for every channel.
void check_roi(const at::Tensor& out, int64_t k, const double (&expected)[2][2], int64_t pooled,
               const std::string& name) {
  for (int64_t c = 0; c < out.size(1); ++c) {
    for (int64_t ph = 0; ph < pooled; ++ph) {
      for (int64_t pw = 0; pw < pooled; ++pw) {
        const double want = expected[ph][pw] + 100.0 * static_cast<double>(c);
        const double got = out[k][c][ph][pw].item<double>();
        check(std::abs(got - want) <= 1e-4,
              name + ": out[" + std::to_string(k) + "][" + std::to_string(c) + "][" +
                  std::to_string(ph) + "][" + std::to_string(pw) + "] = " + std::to_string(got) +
                  ", expected " + std::to_string(want));
      }
    }
  }
}

bool check_shape(const at::Tensor& out, at::IntArrayRef want, const std::string& name) {
  const bool ok = out.sizes() == want;
  check(ok, name + ": shape " + c10::str(out.sizes()) + ", expected " + c10::str(want));
  return ok;
}

void run(const at::Device& device) {
  const std::string dev = device.str() + ": ";
  const auto opts = at::TensorOptions().dtype(at::kFloat).device(device);
  const at::Tensor n = at::arange(2, opts).view({2, 1, 1, 1});
  const at::Tensor c = at::arange(3, opts).view({1, 3, 1, 1});
  const at::Tensor y = at::arange(4, opts).view({1, 1, 4, 1});
  const at::Tensor x = at::arange(4, opts).view({1, 1, 1, 4});
  const at::Tensor input = (1000 * n + 100 * c + 10 * y + x).contiguous();
  const at::Tensor rois = at::tensor({0.0f, 0.5f, 0.5f, 2.5f, 2.5f,    // RoI A
                                      1.0f, 1.0f, 0.5f, 3.5f, 2.5f},   // RoI B
                                     opts)
                              .view({2, 5});
  const double a_1x1[2][2] = {{11.0, 0.0}, {0.0, 0.0}};  // only [0][0] is used
  const double a_2x2[2][2] = {{5.5, 6.5}, {15.5, 16.5}};
  const double b_2x2[2][2] = {{1006.125, 1007.375}, {1016.125, 1017.375}};

  // 1. RoI A, 1x1 output, sampling_ratio 2.
  {
    const at::Tensor out = cora::roi_align(input, rois.slice(0, 0, 1), 1.0, 1, 1, 2, true);
    if (check_shape(out, {1, 3, 1, 1}, dev + "A 1x1")) check_roi(out, 0, a_1x1, 1, dev + "A 1x1");
  }
  // 2. Same RoI given in 2x image coordinates with spatial_scale 0.5, adaptive sampling (0).
  {
    const at::Tensor rois_2x =
        rois.slice(0, 0, 1) * at::tensor({1.0f, 2.0f, 2.0f, 2.0f, 2.0f}, opts);
    const at::Tensor out = cora::roi_align(input, rois_2x, 0.5, 1, 1, 0, true);
    if (check_shape(out, {1, 3, 1, 1}, dev + "A 1x1 scale 0.5 adaptive")) {
      check_roi(out, 0, a_1x1, 1, dev + "A 1x1 scale 0.5 adaptive");
    }
  }
  // 3. Both RoIs, 2x2 output, NCHW input.
  {
    const at::Tensor out = cora::roi_align(input, rois, 1.0, 2, 2, 2, true);
    if (check_shape(out, {2, 3, 2, 2}, dev + "A,B 2x2 NCHW")) {
      check_roi(out, 0, a_2x2, 2, dev + "A,B 2x2 NCHW");
      check_roi(out, 1, b_2x2, 2, dev + "A,B 2x2 NCHW");
    }
  }
  // 4. The same on channels-last input (the kernels' other path); the output is channels-last.
  {
    const at::Tensor input_cl = input.contiguous(at::MemoryFormat::ChannelsLast);
    check(input_cl.suggest_memory_format() == at::MemoryFormat::ChannelsLast,
          dev + "channels-last input is not channels-last");
    const at::Tensor out = cora::roi_align(input_cl, rois, 1.0, 2, 2, 2, true);
    check(out.is_contiguous(at::MemoryFormat::ChannelsLast),
          dev + "A,B 2x2 channels-last: output is not channels-last");
    if (check_shape(out, {2, 3, 2, 2}, dev + "A,B 2x2 channels-last")) {
      check_roi(out, 0, a_2x2, 2, dev + "A,B 2x2 channels-last");
      check_roi(out, 1, b_2x2, 2, dev + "A,B 2x2 channels-last");
    }
  }
  // 5. No RoIs: an empty [0, C, PH, PW] result.
  {
    const at::Tensor out = cora::roi_align(input, at::zeros({0, 5}, opts), 1.0, 2, 2, 2, true);
    check_shape(out, {0, 3, 2, 2}, dev + "K=0");
  }
  // 6. Argument checks reach C++ callers as c10::Error.
  {
    bool threw = false;
    try {
      cora::roi_align(input, at::zeros({1, 4}, opts), 1.0, 2, 2, 2, true);
    } catch (const c10::Error&) {
      threw = true;
    }
    check(threw, dev + "rois of shape [1, 4] did not raise c10::Error");
  }
}

}  // namespace

int main() { return cora_test::run_on_every_device("test_roi_align", run); }
