// Argument checks and output layout shared by the CPU and CUDA linear assignment kernels (the packed
// op batched_linear_assignment and the list op linear_sum_assignment). cora/ops/linear_assignment.py
// repeats the checks in its fake kernels, with the same wording.
#pragma once

#include "linear_assignment_common.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <string>
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
  std::vector<int64_t> slot_offset{0};  // [P + 1]
  int64_t max_rows = 0;                 // the largest min(rows, cols)
  int64_t max_cols = 0;                 // the largest max(rows, cols)

  // Checks and appends problem p = slot_offset.size() - 1.
  void add(int64_t r, int64_t c) {
    // The solver indexes within a problem with int32 and encodes ties as 2 * side: keep sides < 2^30.
    constexpr int64_t kMaxSide = int64_t(1) << 30;
    TORCH_CHECK_VALUE(r >= 0 && c >= 0 && r < kMaxSide && c < kMaxSide, "batched_linear_assignment: problem ",
                      slot_offset.size() - 1, " must have 0 <= rows, cols < 2^30, got rows ", r, ", cols ", c);
    const int64_t n = std::min(r, c);
    slot_offset.push_back(slot_offset.back() + n);
    max_rows = std::max(max_rows, n);
    max_cols = std::max(max_cols, std::max(r, c));
  }
};

// rows/cols/offsets: int64 CPU tensors. Checks that every problem lies inside costs, so that a direct
// call of the op can never read out of bounds.
inline AssignmentPlan plan_linear_assignment(int64_t numel, const at::Tensor& rows, const at::Tensor& cols,
                                             const at::Tensor& offsets) {
  const int64_t num = rows.numel();
  const int64_t* r = rows.const_data_ptr<int64_t>();
  const int64_t* c = cols.const_data_ptr<int64_t>();
  const int64_t* o = offsets.const_data_ptr<int64_t>();
  AssignmentPlan plan;
  plan.slot_offset.reserve(num + 1);
  for (int64_t p = 0; p < num; ++p) {
    plan.add(r[p], c[p]);
    // rows * cols <= numel - offset, without overflow (both sides < 2^30).
    TORCH_CHECK_VALUE(o[p] >= 0 && o[p] <= numel && r[p] * c[p] <= numel - o[p],
                      "batched_linear_assignment: problem ", p, " (", r[p], " x ", c[p], " at offset ", o[p],
                      ") must lie inside costs of ", numel, " elements");
  }
  return plan;
}

// torch's Python name of a dtype, for messages of the list op that the Python face used to raise.
inline std::string python_dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kBool: return "torch.bool";
    case at::kComplexHalf: return "torch.complex32";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    default: return std::string("torch.") + c10::toString(t);
  }
}

// The list op's problems: costs[p] is a rows[p] x cols[p] matrix.
struct ListProblems {
  std::vector<int64_t> rows, cols;
  at::ScalarType dtype = at::kFloat;  // what the matrices are solved from: float32 or float64
  AssignmentPlan plan;
};

// Checks of linear_sum_assignment (costs non-empty), in the order of the spec: shapes, then device and
// dtype per matrix. Matrices are solved from float32 when all are float32 or narrower floats, else
// from float64 (float64 or integer matrices).
inline ListProblems check_linear_sum_assignment(at::TensorList costs) {
  ListProblems out;
  const int64_t num = static_cast<int64_t>(costs.size());
  out.rows.resize(num);
  out.cols.resize(num);
  for (int64_t p = 0; p < num; ++p) {
    TORCH_CHECK_VALUE(costs[p].dim() == 2, "linear_sum_assignment: costs[", p, "] must be Tensor[R, C], got shape ",
                      costs[p].sizes());
    out.rows[p] = costs[p].size(0);
    out.cols[p] = costs[p].size(1);
  }
  const c10::Device device = costs[0].device();
  bool wide = false;
  for (int64_t p = 0; p < num; ++p) {
    TORCH_CHECK_VALUE(costs[p].device() == device, "linear_sum_assignment: all cost matrices must be on one "
                      "device, got costs[0] on ", device, " and costs[", p, "] on ", costs[p].device());
    const at::ScalarType t = costs[p].scalar_type();
    TORCH_CHECK_TYPE(t != at::kBool && !at::isComplexType(t), "linear_sum_assignment: costs[", p,
                     "] must be a real (float or integer) tensor, got ", python_dtype_name(t));
    wide |= t == at::kDouble || !at::isFloatingType(t);
  }
  out.dtype = wide ? at::kDouble : at::kFloat;
  out.plan.slot_offset.reserve(num + 1);
  for (int64_t p = 0; p < num; ++p) out.plan.add(out.rows[p], out.cols[p]);
  return out;
}

// The matrices as the solver reads them: row-major and of `dtype`. A matrix that already is one is used
// in place (the common case: no copy); others are copied. (Tensor::to would return a transposed
// matrix unchanged: its suggested memory format is already "contiguous".)
inline std::vector<at::Tensor> solver_matrices(at::TensorList costs, at::ScalarType dtype) {
  std::vector<at::Tensor> out(costs.begin(), costs.end());
  for (at::Tensor& m : out) {
    if (m.scalar_type() != dtype || !m.is_contiguous()) m = at::empty(m.sizes(), m.options().dtype(dtype)).copy_(m);
  }
  return out;
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

// The list op's errors, for the first matrix with one: a NaN or -inf (after the negation of maximize),
// named as the input saw it, or an overflow.
inline void check_linear_sum_assignment_status(const int8_t* status, int64_t num, bool maximize) {
  for (int64_t p = 0; p < num; ++p) {
    TORCH_CHECK_VALUE(status[p] != lsa_detail::kNonFinite, "linear_sum_assignment: costs[", p, "] contains NaN or ",
                      maximize ? "+inf" : "-inf", "; expected finite costs, or ", maximize ? "-inf" : "+inf",
                      " for a forbidden pair", maximize ? " (maximize=True)" : "");
    TORCH_CHECK_VALUE(status[p] != lsa_detail::kOverflow, "linear_sum_assignment: costs[", p,
                      "] overflows float64 arithmetic; expected finite costs of magnitude below ~1e300");
  }
}

}  // namespace cora
