// RoIAlign CPU kernels (forward and backward). Semantics: cora/ops/roi_align.py.
//
// Every RoI's bilinear taps (4 offsets + 4 weights per sample) are computed once and reused for all
// channels.
#include "cpu/axpy4.h"
#include "roi_align_check.h"
#include "roi_align_common.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace cora {
namespace {

using roi_align_detail::BilinearTap;
using roi_align_detail::RoIGeometry;

// Taps of a span of output rows [ph_begin, ph_end) of one RoI, bin-major. Samples that fall
// outside the map are dropped (they contribute nothing), so bins may hold different tap counts:
// bin b's taps are taps[bin_start[b] .. bin_start[b + 1]).
template <typename acc_t>
struct RowTaps {
  std::vector<BilinearTap<acc_t>> taps;
  std::vector<int64_t> bin_start;

  void build(const RoIGeometry<acc_t>& g, int64_t height, int64_t width, int64_t ph_begin,
             int64_t ph_end, int64_t pooled_w) {
    taps.clear();
    bin_start.assign(1, 0);
    for (int64_t ph = ph_begin; ph < ph_end; ++ph) {
      const auto rows = roi_align_detail::rows_inside(g, ph, height);
      for (int64_t pw = 0; pw < pooled_w; ++pw) {
        const auto cols = roi_align_detail::cols_inside(g, pw, width);
        for (int64_t iy = rows.begin; iy < rows.end; ++iy) {
          const acc_t y = roi_align_detail::sample_y(g, ph, iy);
          for (int64_t ix = cols.begin; ix < cols.end; ++ix) {
            const acc_t x = roi_align_detail::sample_x(g, pw, ix);
            if (roi_align_detail::sample_outside(height, width, y, x)) continue;
            taps.push_back(roi_align_detail::bilinear_tap(height, width, y, x));
          }
        }
        bin_start.push_back(static_cast<int64_t>(taps.size()));
      }
    }
  }
};

// Output rows handled per tap-building pass: bounds the tap buffer for large, densely sampled RoIs.
// Only samples inside the map become taps: at most about 2 per map pixel along an adaptive axis
// (sample spacing >= 1/2 pixel), hence the min with the map size.
template <typename acc_t>
int64_t rows_per_pass(const RoIGeometry<acc_t>& g, int64_t height, int64_t width, int64_t pooled_w) {
  constexpr int64_t kMaxTaps = int64_t(1) << 18;
  const int64_t taps_per_row = std::min(g.grid_h, 2 * height + 4) * std::min(g.grid_w, 2 * width + 4) * pooled_w;
  return std::max<int64_t>(1, kMaxTaps / std::max<int64_t>(1, taps_per_row));
}

// The input is read channels-last (NCHW input is transposed once per call, a small cost next to
// K RoIs x PH x PW bins): each tap then reads four contiguous C-vectors, which vectorises, where
// NCHW would need four scalar gathers per tap and channel. A bin's C values are accumulated in a
// per-thread tile, written straight out for channels-last output or transposed into NCHW.
template <typename scalar_t>
void forward_kernel_impl(const at::Tensor& input_cl, const at::Tensor& rois, double spatial_scale,
                         int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned,
                         bool channels_last, at::Tensor& output) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch = input_cl.size(0), channels = input_cl.size(1);
  const int64_t height = input_cl.size(2), width = input_cl.size(3);
  const int64_t plane = height * width, bins = pooled_h * pooled_w;
  const scalar_t* in = input_cl.const_data_ptr<scalar_t>();
  const acc_t* roi_data = rois.const_data_ptr<acc_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();

  at::parallel_for(0, rois.size(0), 1, [&](int64_t begin, int64_t end) {
    RowTaps<acc_t> rt;
    std::vector<acc_t> tile;
    for (int64_t k = begin; k < end; ++k) {
      const auto g = roi_align_detail::roi_geometry<acc_t>(
          roi_data + k * 5, batch, static_cast<acc_t>(spatial_scale), pooled_h, pooled_w,
          sampling_ratio, aligned);
      // Output of RoI k: NCHW [C, PH, PW] or channels-last [PH, PW, C], both at k * C * bins.
      scalar_t* out_k = out + k * channels * bins;
      if (!g.valid) {
        std::fill(out_k, out_k + channels * bins, scalar_t(0));
        continue;
      }
      const scalar_t* in_b = in + g.batch * plane * channels;
      const int64_t step = rows_per_pass(g, height, width, pooled_w);
      for (int64_t ph0 = 0; ph0 < pooled_h; ph0 += step) {
        const int64_t ph1 = std::min(pooled_h, ph0 + step);
        rt.build(g, height, width, ph0, ph1, pooled_w);
        const int64_t bin0 = ph0 * pooled_w, nbins = (ph1 - ph0) * pooled_w;
        tile.assign(nbins * channels, acc_t(0));
        for (int64_t b = 0; b < nbins; ++b) {
          acc_t* acc = tile.data() + b * channels;
          for (int64_t s = rt.bin_start[b]; s < rt.bin_start[b + 1]; ++s) {
            const auto& t = rt.taps[s];
            cpu::axpy4(acc, in_b + t.o1 * channels, in_b + t.o2 * channels, in_b + t.o3 * channels,
                           in_b + t.o4 * channels, t.w1, t.w2, t.w3, t.w4, channels);
          }
        }
        const acc_t inv_count = acc_t(1) / g.count;
        if (channels_last) {
          scalar_t* o = out_k + bin0 * channels;
          for (int64_t i = 0; i < nbins * channels; ++i) o[i] = static_cast<scalar_t>(tile[i] * inv_count);
        } else {
          // Blocked transpose [nbins, C] -> [C, nbins]: both sides stay within a few cache lines.
          constexpr int64_t kTile = 16;
          for (int64_t c0 = 0; c0 < channels; c0 += kTile) {
            const int64_t c1 = std::min(channels, c0 + kTile);
            for (int64_t b0 = 0; b0 < nbins; b0 += kTile) {
              const int64_t b1 = std::min(nbins, b0 + kTile);
              for (int64_t c = c0; c < c1; ++c) {
                scalar_t* o = out_k + c * bins + bin0;
                for (int64_t b = b0; b < b1; ++b) o[b] = static_cast<scalar_t>(tile[b * channels + c] * inv_count);
              }
            }
          }
        }
      }
    }
  });
}

// Backward scatters into grad_input, where two RoIs may share pixels but two channels never do:
// each task owns a channel range and walks all RoIs (rebuilding their taps, which is cheap next to
// the channel loop). One parallel region for the whole call keeps fork/join costs out of the loop.
template <typename scalar_t>
void backward_kernel_impl(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                          int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned,
                          bool channels_last, at::Tensor& grad_input /* acc_t */) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch = grad_input.size(0), channels = grad_input.size(1);
  const int64_t height = grad_input.size(2), width = grad_input.size(3);
  const int64_t plane = height * width, bins = pooled_h * pooled_w;
  const scalar_t* gout = grad.const_data_ptr<scalar_t>();
  const acc_t* roi_data = rois.const_data_ptr<acc_t>();
  acc_t* gin = grad_input.mutable_data_ptr<acc_t>();
  // Channels per task: whole cache lines in channels-last.
  const int64_t grain = channels_last ? 64 : 16;

  at::parallel_for(0, channels, grain, [&](int64_t c0, int64_t c1) {
    RowTaps<acc_t> rt;
    for (int64_t k = 0; k < rois.size(0); ++k) {
      const auto g = roi_align_detail::roi_geometry<acc_t>(
          roi_data + k * 5, batch, static_cast<acc_t>(spatial_scale), pooled_h, pooled_w,
          sampling_ratio, aligned);
      if (!g.valid) continue;
      const scalar_t* gout_k = gout + k * channels * bins;
      acc_t* gin_b = gin + g.batch * channels * plane;
      const int64_t step = rows_per_pass(g, height, width, pooled_w);
      for (int64_t ph0 = 0; ph0 < pooled_h; ph0 += step) {
        const int64_t ph1 = std::min(pooled_h, ph0 + step);
        rt.build(g, height, width, ph0, ph1, pooled_w);
        const int64_t bin0 = ph0 * pooled_w, nbins = (ph1 - ph0) * pooled_w;
        if (channels_last) {
          for (int64_t b = 0; b < nbins; ++b) {
            const scalar_t* go = gout_k + (bin0 + b) * channels;
            for (int64_t s = rt.bin_start[b]; s < rt.bin_start[b + 1]; ++s) {
              const auto& t = rt.taps[s];
              acc_t* q1 = gin_b + t.o1 * channels;
              acc_t* q2 = gin_b + t.o2 * channels;
              acc_t* q3 = gin_b + t.o3 * channels;
              acc_t* q4 = gin_b + t.o4 * channels;
              for (int64_t c = c0; c < c1; ++c) {
                const acc_t v = acc_t(go[c]) / g.count;
                q1[c] += t.w1 * v;
                q2[c] += t.w2 * v;
                q3[c] += t.w3 * v;
                q4[c] += t.w4 * v;
              }
            }
          }
        } else {
          for (int64_t c = c0; c < c1; ++c) {
            const scalar_t* go = gout_k + c * bins + bin0;
            acc_t* q = gin_b + c * plane;
            for (int64_t b = 0; b < nbins; ++b) {
              const acc_t v = acc_t(go[b]) / g.count;
              for (int64_t s = rt.bin_start[b]; s < rt.bin_start[b + 1]; ++s) {
                const auto& t = rt.taps[s];
                q[t.o1] += t.w1 * v;
                q[t.o2] += t.w2 * v;
                q[t.o3] += t.w3 * v;
                q[t.o4] += t.w4 * v;
              }
            }
          }
        }
      }
    }
  });
}

at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                 double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                 int64_t sampling_ratio, bool aligned) {
  check_roi_align_inputs(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio);
  const auto format = input.suggest_memory_format();
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;
  at::Tensor output =
      at::empty({rois.size(0), input.size(1), pooled_height, pooled_width},
                input.options().memory_format(format));
  if (output.numel() == 0) return output;
  if (input.numel() == 0) return output.zero_();  // empty map: every sample is outside

  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_forward_cpu", [&] {
    // Box geometry in the accumulation type: fp16 boxes would lose whole pixels past 1024.
    const at::Tensor r = rois.to(c10::CppTypeToScalarType<at::opmath_type<scalar_t>>::value).contiguous();
    forward_kernel_impl<scalar_t>(x, r, spatial_scale, pooled_height, pooled_width, sampling_ratio,
                                  aligned, channels_last, output);
  });
  return output;
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                  double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                  int64_t batch_size, int64_t channels, int64_t height,
                                  int64_t width, int64_t sampling_ratio, bool aligned) {
  check_roi_align_backward_inputs(grad, rois, spatial_scale, pooled_height, pooled_width,
                                  sampling_ratio, channels);
  // grad_input takes the layout of grad (the forward output has the layout of the input).
  const auto format = grad.suggest_memory_format();
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;
  at::Tensor grad_input;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cpu", [&] {
    const auto acc_type = c10::CppTypeToScalarType<at::opmath_type<scalar_t>>::value;
    // at::zeros ignores the memory format in its options: allocate with it, then zero.
    at::Tensor acc = at::empty({batch_size, channels, height, width},
                               grad.options().dtype(acc_type).memory_format(format))
                         .zero_();
    if (grad.numel() != 0 && acc.numel() != 0) {
      const at::Tensor g = grad.contiguous(format);
      const at::Tensor r = rois.to(acc_type).contiguous();
      backward_kernel_impl<scalar_t>(g, r, spatial_scale, pooled_height, pooled_width,
                                     sampling_ratio, aligned, channels_last, acc);
    }
    grad_input = acc.to(grad.scalar_type());
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(cora, CPU, m) {
  m.impl("roi_align", &roi_align_forward_cpu);
  m.impl("_roi_align_backward", &roi_align_backward_cpu);
}

}  // namespace cora
