// RoIAlign math shared by the CPU and CUDA kernels. The semantics are specified in
// cora/ops/roi_align.py; this file only computes them, identically on both devices.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace cora {
namespace roi_align_detail {

// Where and how densely one RoI is sampled, in feature-map pixels.
// `valid` is false when the RoI must produce zeros: a non-finite coordinate, a box whose scaled
// coordinates or extent overflow (a huge finite box gives zeros as an infinite one does), or a batch
// index outside [0, batch_size). The Python wrapper rejects bad batch indices before launch; the
// kernels still never read out of bounds when it is bypassed (tracing, direct op calls).
template <typename T>
struct RoIGeometry {
  bool valid;
  int64_t batch;
  T start_h, start_w;    // top-left corner
  T bin_h, bin_w;        // bin size
  int64_t grid_h, grid_w;  // samples per bin along each axis
  T count;               // number of samples per bin, at least 1 (empty bins give 0 / 1 = 0)
};

// Adaptive samples per bin along one axis are capped here (torchvision: ceil(extent / pooled),
// uncapped). Only boxes wider than kMaxAdaptiveGrid * pooled feature pixels reach the cap, where the
// bin average is taken over a coarser grid; the kernels visit only samples inside the map, so the
// work per RoI is bounded by the map size either way.
constexpr int64_t kMaxAdaptiveGrid = int64_t(1) << 30;

// v - v is 0 for finite v and NaN for +-inf / NaN; portable to host and device code alike.
template <typename T>
C10_HOST_DEVICE inline bool is_finite(T v) {
  return v - v == T(0);
}

template <typename T>
C10_HOST_DEVICE inline int64_t samples_per_bin(T roi_extent, int64_t pooled, int64_t sampling_ratio) {
  if (sampling_ratio > 0) return sampling_ratio;
  const T n = ceil(roi_extent / static_cast<T>(pooled));
  const T max_n = static_cast<T>(kMaxAdaptiveGrid);
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
    if (!is_finite(roi[i])) g.valid = false;
  }
  // Written as !(in range) so that NaN also lands here.
  if (!(roi[0] >= T(0) && roi[0] < static_cast<T>(batch_size))) g.valid = false;
  if (g.valid) {
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
    // A finite box can still overflow here (x2 - x1 > FLT_MAX, or coordinates x scale); its bins
    // would be inf wide and its samples NaN (0 * inf), so it is treated as a non-finite box.
    g.valid = is_finite(g.start_w) && is_finite(g.start_h) && is_finite(roi_w) && is_finite(roi_h);
    g.batch = static_cast<int64_t>(roi[0]);
    g.bin_h = roi_h / static_cast<T>(pooled_h);
    g.bin_w = roi_w / static_cast<T>(pooled_w);
    g.grid_h = samples_per_bin(roi_h, pooled_h, sampling_ratio);
    g.grid_w = samples_per_bin(roi_w, pooled_w, sampling_ratio);
  }
  if (!g.valid) {
    g.batch = 0;
    g.grid_h = g.grid_w = 0;
    g.count = T(1);
    return g;
  }
  // In T: up to 2^60 samples per bin.
  const T n = static_cast<T>(g.grid_h) * static_cast<T>(g.grid_w);
  g.count = n > T(1) ? n : T(1);
  return g;
}

// Position of sample i of bin p along one axis (torchvision's formula, operation for operation).
template <typename T>
C10_HOST_DEVICE inline T sample_position(T start, T bin, int64_t grid, int64_t p, int64_t i) {
  return start + static_cast<T>(p) * bin + (static_cast<T>(i) + T(0.5)) * bin / static_cast<T>(grid);
}

// Position of sample (iy, ix) of bin (ph, pw).
template <typename T>
C10_HOST_DEVICE inline T sample_y(const RoIGeometry<T>& g, int64_t ph, int64_t iy) {
  return sample_position(g.start_h, g.bin_h, g.grid_h, ph, iy);
}
template <typename T>
C10_HOST_DEVICE inline T sample_x(const RoIGeometry<T>& g, int64_t pw, int64_t ix) {
  return sample_position(g.start_w, g.bin_w, g.grid_w, pw, ix);
}

// The samples [begin, end) of bin p along one axis that lie in [-1, size]; the others contribute
// nothing (see sample_outside) but still count in the bin average. The position is non-decreasing
// in i when bin > 0 (every rounding step is monotone), so bisection finds exactly the samples a full
// loop would keep. This bounds the work of a huge box by the map size instead of the box area. Small
// grids (every normal box) and negative bins (a fixed sampling_ratio <= the bound) are returned whole;
// the kernels' per-sample check drops their outside samples.
struct SampleRange {
  int64_t begin, end;
};

template <typename T>
C10_HOST_DEVICE inline SampleRange samples_inside(T start, T bin, int64_t grid, int64_t p, int64_t size) {
  constexpr int64_t kSmallGrid = 16;
  if (grid <= kSmallGrid || !(bin > T(0))) return {0, grid};
  int64_t lo = 0, hi = grid;
  while (lo < hi) {  // first sample at or after -1
    const int64_t mid = lo + (hi - lo) / 2;
    if (sample_position(start, bin, grid, p, mid) < T(-1)) lo = mid + 1; else hi = mid;
  }
  const int64_t begin = lo;
  hi = grid;
  while (lo < hi) {  // first sample after size
    const int64_t mid = lo + (hi - lo) / 2;
    if (sample_position(start, bin, grid, p, mid) > static_cast<T>(size)) hi = mid; else lo = mid + 1;
  }
  return {begin, lo};
}
template <typename T>
C10_HOST_DEVICE inline SampleRange rows_inside(const RoIGeometry<T>& g, int64_t ph, int64_t height) {
  return samples_inside(g.start_h, g.bin_h, g.grid_h, ph, height);
}
template <typename T>
C10_HOST_DEVICE inline SampleRange cols_inside(const RoIGeometry<T>& g, int64_t pw, int64_t width) {
  return samples_inside(g.start_w, g.bin_w, g.grid_w, pw, width);
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
