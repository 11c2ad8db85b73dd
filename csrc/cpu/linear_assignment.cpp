// Batched linear assignment, CPU kernel: problems run in parallel, one thread each, through the
// solver shared with the CUDA kernel (linear_assignment_common.h). Semantics:
// cora/ops/linear_assignment.py.
#include "linear_assignment_check.h"
#include "linear_assignment_common.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

namespace cora {
namespace {

using lsa_detail::Workspace;

// Checks that all costs are finite and finds the minimum of each solver row and, when it is unique,
// its column (see lsa_detail::solve). Two passes in the stored layout, which the compiler
// vectorises, instead of one scalar scan per row. For a tall matrix the solver's rows are the stored
// columns: the passes then run along stored rows, updating all solver rows at once. `minimum` and
// `count` are scratch of size min(rows, cols).
template <typename scalar_t>
struct RowMinima {
  scalar_t* minimum;
  int32_t* count;

  static bool finite(scalar_t x) { return std::abs(x) < std::numeric_limits<scalar_t>::infinity(); }

  bool operator()(const scalar_t* data, int64_t rows, int64_t cols, const Workspace& w) const {
    if (std::min(rows, cols) < 2) return false;  // one row: its scan is all the work anyway
    int all_finite = 1;  // int, not bool: the loops vectorise
    if (cols >= rows) {
      for (int64_t i = 0; i < rows; ++i) {
        const scalar_t* x = data + i * cols;
        scalar_t m = x[0];
        for (int64_t j = 0; j < cols; ++j) {
          m = x[j] < m ? x[j] : m;
          all_finite &= finite(x[j]);
        }
        int32_t n = 0;
        for (int64_t j = 0; j < cols; ++j) n += x[j] == m;
        w.row_min[i] = static_cast<double>(m);
        w.row_arg[i] = n == 1 ? static_cast<int32_t>(std::find(x, x + cols, m) - x) : -1;
      }
      return all_finite != 0;
    }
    const int64_t n = cols;  // solver rows
    std::copy(data, data + n, minimum);
    for (int64_t k = 0; k < rows; ++k) {
      const scalar_t* x = data + k * n;
      for (int64_t i = 0; i < n; ++i) {
        minimum[i] = x[i] < minimum[i] ? x[i] : minimum[i];
        all_finite &= finite(x[i]);
      }
    }
    if (!all_finite) return false;
    std::fill(count, count + n, 0);
    std::fill(w.row_arg, w.row_arg + n, 0);
    for (int64_t k = 0; k < rows; ++k) {
      const scalar_t* x = data + k * n;
      const int32_t k32 = static_cast<int32_t>(k);
      for (int64_t i = 0; i < n; ++i) {
        const bool hit = x[i] == minimum[i];
        count[i] += hit;
        w.row_arg[i] = hit ? k32 : w.row_arg[i];
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      w.row_min[i] = static_cast<double>(minimum[i]);
      if (count[i] != 1) w.row_arg[i] = -1;
    }
    return true;
  }
};

template <typename scalar_t>
void solve_all_kernel_impl(const at::Tensor& costs, const at::Tensor& rows, const at::Tensor& cols,
                           const at::Tensor& offsets, const AssignmentPlan& plan, int64_t* row, int64_t* col,
                           int64_t* prob, int8_t* status) {
  const scalar_t* data = costs.const_data_ptr<scalar_t>();
  const int64_t* r = rows.const_data_ptr<int64_t>();
  const int64_t* c = cols.const_data_ptr<int64_t>();
  const int64_t* o = offsets.const_data_ptr<int64_t>();
  const int64_t num = rows.numel();
  // Problem sizes differ by orders of magnitude, so a static split would leave a thread idle: each
  // thread takes the next unsolved problem from a shared counter instead.
  std::atomic<int64_t> next{0};
  auto worker = [&](int64_t /*begin*/, int64_t /*end*/) {
    std::vector<double> doubles(Workspace::doubles(plan.max_rows, plan.max_cols));
    std::vector<int32_t> ints(Workspace::ints(plan.max_rows, plan.max_cols));
    std::vector<double> row_min(plan.max_rows);
    std::vector<int32_t> row_arg(plan.max_rows), count(plan.max_rows);
    std::vector<scalar_t> minimum(plan.max_rows);
    const RowMinima<scalar_t> row_minima{minimum.data(), count.data()};
    for (int64_t p = next.fetch_add(1, std::memory_order_relaxed); p < num;
         p = next.fetch_add(1, std::memory_order_relaxed)) {
      Workspace w = Workspace::carve(doubles.data(), ints.data(), std::min(r[p], c[p]), std::max(r[p], c[p]));
      w.row_min = row_min.data();
      w.row_arg = row_arg.data();
      const int64_t s = plan.slot_offset[p];
      status[p] = lsa_detail::solve_problem(lsa_detail::SerialTeam{}, data + o[p], r[p], c[p], w, p, row + s,
                                            col + s, prob + s, row_minima);
    }
  };
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), num);
  if (threads > 1 && !at::in_parallel_region()) {
    at::parallel_for(0, threads, 1, worker);
  } else {
    worker(0, num);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batched_linear_assignment_cpu(
    const at::Tensor& costs, const at::Tensor& rows, const at::Tensor& cols, const at::Tensor& offsets) {
  check_linear_assignment_tensors(costs, rows, cols, offsets);
  const at::Tensor r = rows.contiguous(), c = cols.contiguous(), o = offsets.contiguous();
  const AssignmentPlan plan = plan_linear_assignment(costs.numel(), r, c, o);
  const int64_t num = r.numel(), slots = plan.slot_offset[num];
  const auto options = costs.options().dtype(at::kLong);
  at::Tensor row = at::empty({slots}, options), col = at::empty({slots}, options), prob = at::empty({slots}, options);
  if (slots == 0) return {row, col, prob};

  const at::Tensor x = costs.contiguous();
  std::vector<int8_t> status(num, lsa_detail::kSolved);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batched_linear_assignment_cpu", [&] {
    solve_all_kernel_impl<scalar_t>(x, r, c, o, plan, row.mutable_data_ptr<int64_t>(),
                                    col.mutable_data_ptr<int64_t>(), prob.mutable_data_ptr<int64_t>(),
                                    status.data());
  });
  check_linear_assignment_status(status.data(), num);
  if (std::find(status.begin(), status.end(), lsa_detail::kDropped) == status.end()) return {row, col, prob};
  const at::Tensor keep = col.ge(0).nonzero().squeeze(1);
  return {row.index_select(0, keep), col.index_select(0, keep), prob.index_select(0, keep)};
}

}  // namespace

TORCH_LIBRARY_IMPL(cora, CPU, m) {
  m.impl("batched_linear_assignment", &batched_linear_assignment_cpu);
}

}  // namespace cora
