// acc[c] += w1 * p1[c] + w2 * p2[c] + w3 * p3[c] + w4 * p4[c]: the inner loop of the CPU kernels
// (a bilinear tap in RoIAlign, four tokens of a weighted sum in attention pooling).
#pragma once

#include <cstdint>

namespace cora {
namespace cpu {

template <typename scalar_t, typename acc_t>
inline void axpy4(acc_t* acc, const scalar_t* p1, const scalar_t* p2, const scalar_t* p3, const scalar_t* p4,
                  acc_t w1, acc_t w2, acc_t w3, acc_t w4, int64_t n) {
  for (int64_t c = 0; c < n; ++c) {
    acc[c] += w1 * acc_t(p1[c]) + w2 * acc_t(p2[c]) + w3 * acc_t(p3[c]) + w4 * acc_t(p4[c]);
  }
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
// The float case dominates: also compiled for AVX2+FMA and picked at load time on CPUs that have
// them, while the library stays portable x86-64. static: one resolver per translation unit.
__attribute__((target_clones("arch=x86-64-v3", "default"))) static void axpy4(
    float* acc, const float* p1, const float* p2, const float* p3, const float* p4, float w1, float w2,
    float w3, float w4, int64_t n) {
  for (int64_t c = 0; c < n; ++c) acc[c] += w1 * p1[c] + w2 * p2[c] + w3 * p3[c] + w4 * p4[c];
}
#endif

}  // namespace cpu
}  // namespace cora
