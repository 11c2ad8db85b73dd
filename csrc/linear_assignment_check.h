// Argument checks and output layout shared by the CPU and CUDA batched linear assignment kernels.
// cora/ops/linear_assignment.py repeats the checks before the call, with the same wording.
#pragma once

#include "linear_assignment_common.h"

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace cora {

// Tensor-level checks; the problem table is checked by plan_linear_assignment.
inline void check_linear_assignment_tensors(const at::Tensor& costs, const at::Tensor& rows,
                                            const at::Tensor& cols, const at::Tensor& offsets) {
  TORCH_CHECK_VALUE(costs.dim() == 1, "batched_linear_assignment: costs must be a 1-D tensor, got shape ",
                    costs.sizes());
  TORCH_CHECK_TYPE(costs.scalar_type() == at::kFloat || costs.scalar_type() == at::kDouble,
                   "batched_linear_assignment: costs must be float32 or float64, got ", costs.scalar_type());
  const int64_t num = rows.numel();
  auto check_table = [&](const char* name, const at::Tensor& t) {
    TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == num, "batched_linear_assignment: ", name,
                      " must be Tensor[P] with P = rows.numel() = ", num, ", got shape ", t.sizes());
    TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, "batched_linear_assignment: ", name, " must be int64, got ",
                     t.scalar_type());
    TORCH_CHECK_VALUE(t.device().is_cpu() || t.device() == costs.device(), "batched_linear_assignment: ", name,
                      " must be on the CPU or on costs' device (", costs.device(), "), got ", t.device());
  };
  check_table("rows", rows);
  check_table("cols", cols);
  check_table("offsets", offsets);
}

// Per-problem layout of the result: problem p owns slots [slot_offset[p], slot_offset[p + 1]),
// one per pair of a full matching (min(rows, cols)), before forbidden pairs are dropped.
struct AssignmentPlan {
  std::vector<int64_t> slot_offset;  // [P + 1]
  int64_t max_rows = 0;              // the largest min(rows, cols)
  int64_t max_cols = 0;              // the largest max(rows, cols)
};

// rows/cols/offsets: int64 CPU tensors. Checks that every problem lies inside costs, so that a direct
// call of the op can never read out of bounds.
inline AssignmentPlan plan_linear_assignment(int64_t numel, const at::Tensor& rows, const at::Tensor& cols,
                                             const at::Tensor& offsets) {
  // The solver indexes within a problem with int32 and encodes ties as 2 * side: keep sides < 2^30.
  constexpr int64_t kMaxSide = int64_t(1) << 30;
  const int64_t num = rows.numel();
  const int64_t* r = rows.const_data_ptr<int64_t>();
  const int64_t* c = cols.const_data_ptr<int64_t>();
  const int64_t* o = offsets.const_data_ptr<int64_t>();
  AssignmentPlan plan;
  plan.slot_offset.resize(num + 1);
  plan.slot_offset[0] = 0;
  for (int64_t p = 0; p < num; ++p) {
    TORCH_CHECK_VALUE(r[p] >= 0 && c[p] >= 0 && r[p] < kMaxSide && c[p] < kMaxSide,
                      "batched_linear_assignment: problem ", p, " must have 0 <= rows, cols < 2^30, got rows ",
                      r[p], ", cols ", c[p]);
    // rows * cols <= numel - offset, without overflow (both sides < 2^30).
    TORCH_CHECK_VALUE(o[p] >= 0 && o[p] <= numel && r[p] * c[p] <= numel - o[p],
                      "batched_linear_assignment: problem ", p, " (", r[p], " x ", c[p], " at offset ", o[p],
                      ") must lie inside costs of ", numel, " elements");
    const int64_t n = std::min(r[p], c[p]);
    plan.slot_offset[p + 1] = plan.slot_offset[p] + n;
    plan.max_rows = std::max(plan.max_rows, n);
    plan.max_cols = std::max(plan.max_cols, std::max(r[p], c[p]));
  }
  return plan;
}

// Raises for the first problem whose status is an error.
inline void check_linear_assignment_status(const int8_t* status, int64_t num) {
  for (int64_t p = 0; p < num; ++p) {
    TORCH_CHECK_VALUE(status[p] != lsa_detail::kNonFinite, "batched_linear_assignment: problem ", p,
                      " has a NaN or -inf cost; expected finite costs, or +inf for a forbidden pair");
    TORCH_CHECK_VALUE(status[p] != lsa_detail::kOverflow, "batched_linear_assignment: problem ", p,
                      " overflows float64 arithmetic; expected finite costs of magnitude below ~1e300");
  }
}

}  // namespace cora
