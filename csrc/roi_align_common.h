// RoIAlign math shared by the CPU and CUDA kernels. The semantics are specified in
// cora/ops/roi_align.py; this file only computes them, identically on both devices.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace cora {
namespace roi_align_detail {

// Where and how densely one RoI is sampled, in feature-map pixels.
// `valid` is false when the RoI must produce zeros: a non-finite coordinate, or a batch index
// outside [0, batch_size). The Python wrapper rejects bad batch indices before launch; the kernels
// still never read out of bounds when it is bypassed (tracing, direct op calls).
template <typename T>
struct RoIGeometry {
  bool valid;
  int64_t batch;
  T start_h, start_w;    // top-left corner
  T bin_h, bin_w;        // bin size
  int64_t grid_h, grid_w;  // samples per bin along each axis
  T count;               // number of samples per bin, at least 1 (empty bins give 0 / 1 = 0)
};

template <typename T>
C10_HOST_DEVICE inline int64_t samples_per_bin(T roi_extent, int64_t pooled, int64_t sampling_ratio) {
  if (sampling_ratio > 0) return sampling_ratio;
  // Adaptive: ceil(extent / pooled). The extent is finite here, so the cast is defined unless a box
  // spans more than ~9e18 pixels per bin; clamp so that such boxes degrade instead of overflowing.
  T n = ceil(roi_extent / static_cast<T>(pooled));
  const T max_n = static_cast<T>(1 << 30);
  return n <= T(0) ? 0 : static_cast<int64_t>(n < max_n ? n : max_n);
}

// roi = [batch_index, x1, y1, x2, y2] in input-image coordinates.
template <typename T>
C10_HOST_DEVICE inline RoIGeometry<T> roi_geometry(
    const T* roi, int64_t batch_size, T spatial_scale, int64_t pooled_h, int64_t pooled_w,
    int64_t sampling_ratio, bool aligned) {
  RoIGeometry<T> g{};
  g.valid = true;
  for (int i = 0; i < 5; ++i) {
    // v - v is 0 for finite v and NaN for +-inf / NaN; portable to host and device code alike.
    if (!(roi[i] - roi[i] == T(0))) g.valid = false;
  }
  // Written as !(in range) so that NaN also lands here.
  if (!(roi[0] >= T(0) && roi[0] < static_cast<T>(batch_size))) g.valid = false;
  if (!g.valid) {
    g.batch = 0;
    g.grid_h = g.grid_w = 0;
    g.count = T(1);
    return g;
  }
  g.batch = static_cast<int64_t>(roi[0]);
  const T offset = aligned ? T(0.5) : T(0);
  g.start_w = roi[1] * spatial_scale - offset;
  g.start_h = roi[2] * spatial_scale - offset;
  T roi_w = roi[3] * spatial_scale - offset - g.start_w;
  T roi_h = roi[4] * spatial_scale - offset - g.start_h;
  if (!aligned) {
    // Legacy (Detectron) behaviour: malformed RoIs are forced to be at least 1x1.
    roi_w = roi_w > T(1) ? roi_w : T(1);
    roi_h = roi_h > T(1) ? roi_h : T(1);
  }
  g.bin_h = roi_h / static_cast<T>(pooled_h);
  g.bin_w = roi_w / static_cast<T>(pooled_w);
  g.grid_h = samples_per_bin(roi_h, pooled_h, sampling_ratio);
  g.grid_w = samples_per_bin(roi_w, pooled_w, sampling_ratio);
  const int64_t n = g.grid_h * g.grid_w;
  g.count = static_cast<T>(n > 1 ? n : 1);
  return g;
}

// Position of sample (iy, ix) of bin (ph, pw).
template <typename T>
C10_HOST_DEVICE inline T sample_y(const RoIGeometry<T>& g, int64_t ph, int64_t iy) {
  return g.start_h + static_cast<T>(ph) * g.bin_h +
      (static_cast<T>(iy) + T(0.5)) * g.bin_h / static_cast<T>(g.grid_h);
}
template <typename T>
C10_HOST_DEVICE inline T sample_x(const RoIGeometry<T>& g, int64_t pw, int64_t ix) {
  return g.start_w + static_cast<T>(pw) * g.bin_w +
      (static_cast<T>(ix) + T(0.5)) * g.bin_w / static_cast<T>(g.grid_w);
}

// A sample more than one pixel outside the map contributes nothing. Kernels skip such samples
// rather than multiply by zero weights, so that a NaN/inf pixel elsewhere cannot leak in (0 * NaN).
template <typename T>
C10_HOST_DEVICE inline bool sample_outside(int64_t height, int64_t width, T y, T x) {
  return y < T(-1) || y > static_cast<T>(height) || x < T(-1) || x > static_cast<T>(width);
}

// The four pixels a bilinear sample reads (offsets y * width + x inside one plane) and their weights.
// A sample more than one pixel outside the map has all weights 0 (and offsets 0, always in bounds).
template <typename T>
struct BilinearTap {
  int64_t o1, o2, o3, o4;
  T w1, w2, w3, w4;
};

template <typename T>
C10_HOST_DEVICE inline BilinearTap<T> bilinear_tap(int64_t height, int64_t width, T y, T x) {
  BilinearTap<T> t{0, 0, 0, 0, T(0), T(0), T(0), T(0)};
  if (sample_outside(height, width, y, x)) return t;
  if (y <= T(0)) y = T(0);
  if (x <= T(0)) x = T(0);
  int64_t y_low = static_cast<int64_t>(y);
  int64_t x_low = static_cast<int64_t>(x);
  int64_t y_high, x_high;
  if (y_low >= height - 1) {
    y_high = y_low = height - 1;
    y = static_cast<T>(y_low);
  } else {
    y_high = y_low + 1;
  }
  if (x_low >= width - 1) {
    x_high = x_low = width - 1;
    x = static_cast<T>(x_low);
  } else {
    x_high = x_low + 1;
  }
  const T ly = y - static_cast<T>(y_low), lx = x - static_cast<T>(x_low);
  const T hy = T(1) - ly, hx = T(1) - lx;
  t.o1 = y_low * width + x_low;
  t.o2 = y_low * width + x_high;
  t.o3 = y_high * width + x_low;
  t.o4 = y_high * width + x_high;
  t.w1 = hy * hx;
  t.w2 = hy * lx;
  t.w3 = ly * hx;
  t.w4 = ly * lx;
  return t;
}

}  // namespace roi_align_detail
}  // namespace cora
