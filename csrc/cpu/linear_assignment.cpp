// Batched linear assignment, CPU kernel: problems run in parallel, one thread each, through the
// solver shared with the CUDA kernel (linear_assignment_common.h), with a shortcut for the first
// step of each row (RowMinima). Semantics: cora/ops/linear_assignment.py.
#include "linear_assignment_check.h"
#include "linear_assignment_common.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <thread>
#include <tuple>
#include <vector>

namespace cora {
namespace {

using lsa_detail::Workspace;

// The inner loop of RowMinima (below): branch-free, with masks instead of selects on the
// integers, so that it vectorises.
template <typename scalar_t>
__attribute__((always_inline)) inline int accumulate_lanes_impl(
    const scalar_t* x, int64_t chunks, int64_t lanes, int32_t step, scalar_t* __restrict__ mn,
    int32_t* __restrict__ tie, int32_t* __restrict__ pos, const int32_t* __restrict__ off) {
  int all_finite = 1;
  for (int64_t c = 0; c < chunks; ++c) {
    const scalar_t* __restrict__ xc = x + c * lanes;
    const int32_t base = static_cast<int32_t>(c) * step;
    for (int64_t t = 0; t < lanes; ++t) {
      const scalar_t v = xc[t], m = mn[t];
      const int32_t eq = v == m, mask = -static_cast<int32_t>(v < m);
      mn[t] = v < m ? v : m;
      tie[t] = (tie[t] | eq) & ~mask;
      pos[t] = (pos[t] & ~mask) | ((base + off[t]) & mask);
      all_finite &= std::abs(v) < std::numeric_limits<scalar_t>::infinity();
    }
  }
  return all_finite;
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
// Also compiled for AVX2 and picked at load time on CPUs that have it (as cpu/axpy4.h).
#define CORA_LSA_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CORA_LSA_CLONES
#endif
CORA_LSA_CLONES static int accumulate_lanes(const float* x, int64_t chunks, int64_t lanes, int32_t step, float* mn,
                                            int32_t* tie, int32_t* pos, const int32_t* off) {
  return accumulate_lanes_impl(x, chunks, lanes, step, mn, tie, pos, off);
}
CORA_LSA_CLONES static int accumulate_lanes(const double* x, int64_t chunks, int64_t lanes, int32_t step, double* mn,
                                            int32_t* tie, int32_t* pos, const int32_t* off) {
  return accumulate_lanes_impl(x, chunks, lanes, step, mn, tie, pos, off);
}
#undef CORA_LSA_CLONES

// Checks that all costs are finite and finds the minimum of each solver row and, when it is unique,
// its column, for the solver's first-step shortcut (lsa_detail::solve). One pass in the stored
// layout, vectorised by the compiler, instead of one scalar scan per row.
//
// The pass runs over lanes: lane t accumulates the elements t, t + L, t + 2L, ... of a contiguous
// range (L lanes), keeping its minimum, whether that occurs more than once, and where it last
// became smaller; the lanes of a row are folded at the end. Wide matrices (solver row = stored
// row): 8 lanes along each row. Tall ones (solver row i = stored column i, of n): L = kGroup * n
// lanes over kGroup stored rows at a time, lane t holding solver row t % n. Elements past the last
// whole group go to lanes 0..n (tall) or lane 0 (wide) one at a time.
template <typename scalar_t>
struct RowMinima {
  static constexpr int64_t kWideLanes = 8;
  static constexpr int64_t kGroup = 4;
  // Scratch of max(kWideLanes, kGroup * min(rows, cols)) entries each.
  scalar_t* minimum;
  int32_t* tied;  // the minimum occurs more than once
  int32_t* position;
  int32_t* lane_offset;

  static bool finite(scalar_t x) { return std::abs(x) < std::numeric_limits<scalar_t>::infinity(); }

  void reset(int64_t lanes) const {
    std::fill(minimum, minimum + lanes, std::numeric_limits<scalar_t>::infinity());
    std::fill(tied, tied + lanes, 0);
    std::fill(position, position + lanes, 0);
  }

  // Lane t takes x[c * lanes + t] for c < chunks, at position c * step + lane_offset[t].
  int accumulate(const scalar_t* x, int64_t chunks, int64_t lanes, int32_t step) const {
    return accumulate_lanes(x, chunks, lanes, step, minimum, tied, position, lane_offset);
  }

  int accumulate_one(scalar_t v, int32_t at, int64_t lane) const {
    if (v < minimum[lane]) {
      minimum[lane] = v;
      tied[lane] = 0;
      position[lane] = at;
    } else if (v == minimum[lane]) {
      tied[lane] = 1;
    }
    return finite(v);
  }

  // Folds lanes first, first + stride, ... (num of them) into solver row i.
  void fold(int64_t first, int64_t stride, int64_t num, int64_t i, const Workspace& w) const {
    scalar_t m = minimum[first];
    for (int64_t s = 1; s < num; ++s) m = std::min(m, minimum[first + s * stride]);
    int32_t n = 0, at = -1;  // n: occurrences of m, counting a tied lane as two
    for (int64_t s = 0; s < num; ++s) {
      if (minimum[first + s * stride] == m) {
        n += 1 + tied[first + s * stride];
        at = position[first + s * stride];
      }
    }
    w.row_min[i] = static_cast<double>(m);
    w.row_arg[i] = n == 1 ? at : -1;
  }

  bool operator()(const scalar_t* data, int64_t rows, int64_t cols, const Workspace& w) const {
    if (std::min(rows, cols) < 2) return false;  // one row: its scan is all the work anyway
    int all_finite = 1;
    if (cols >= rows) {
      const int64_t chunks = cols / kWideLanes;
      for (int64_t t = 0; t < kWideLanes; ++t) lane_offset[t] = static_cast<int32_t>(t);
      for (int64_t i = 0; i < rows; ++i) {
        const scalar_t* x = data + i * cols;
        reset(kWideLanes);
        all_finite &= accumulate(x, chunks, kWideLanes, kWideLanes);
        for (int64_t j = chunks * kWideLanes; j < cols; ++j) all_finite &= accumulate_one(x[j], j, 0);
        fold(0, 1, kWideLanes, i, w);
      }
      return all_finite != 0;
    }
    const int64_t n = cols, lanes = kGroup * n, groups = rows / kGroup;
    for (int64_t g = 0; g < kGroup; ++g) {
      std::fill(lane_offset + g * n, lane_offset + (g + 1) * n, static_cast<int32_t>(g));
    }
    reset(lanes);
    all_finite &= accumulate(data, groups, lanes, kGroup);
    for (int64_t k = groups * kGroup; k < rows; ++k) {
      for (int64_t i = 0; i < n; ++i) all_finite &= accumulate_one(data[k * n + i], static_cast<int32_t>(k), i);
    }
    if (!all_finite) return false;
    for (int64_t i = 0; i < n; ++i) fold(i, n, kGroup, i, w);
    return true;
  }
};

// Below this many cost entries in all, one thread solves everything (waking helpers costs more).
constexpr int64_t kMinParallelCosts = 1 << 15;

// Problems are handed out one at a time from a shared counter: their sizes differ by orders of
// magnitude, so a static split would leave a thread idle. The calling thread solves problems too,
// helped by tasks on torch's inter-op pool, and waits only for helpers that took a problem: a
// helper that starts late (its core busy, e.g. with data loading) finds nothing left and is not
// waited for, where an OpenMP region would wait for every thread at its closing barrier. So the
// counters live on the heap, and a helper touches the call's data only after claiming a problem.
struct WorkQueue {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> active{0};
  std::atomic<bool> failed{false};  // a thread could not allocate its scratch
};

// Problem p is the r[p] x c[p] row-major matrix at data[p].
template <typename scalar_t>
void solve_all_kernel_impl(const scalar_t* const* data, const int64_t* r, const int64_t* c, const AssignmentPlan& plan,
                           int64_t* row, int64_t* col, int64_t* prob, int8_t* status) {
  const int64_t num = static_cast<int64_t>(plan.slot_offset.size()) - 1;
  const AssignmentPlan* layout = &plan;
  auto queue = std::make_shared<WorkQueue>();

  auto work = [=]() {
    queue->active.fetch_add(1, std::memory_order_acq_rel);
    int64_t p = queue->next.fetch_add(1, std::memory_order_relaxed);
    if (p < num) try {
      const int64_t max_rows = layout->max_rows, max_cols = layout->max_cols;
      std::vector<double> doubles(Workspace::doubles(max_rows, max_cols)), row_min(max_rows);
      std::vector<int32_t> ints(Workspace::ints(max_rows, max_cols)), row_arg(max_rows);
      const int64_t lanes = std::max(RowMinima<scalar_t>::kWideLanes, RowMinima<scalar_t>::kGroup * max_rows);
      std::vector<scalar_t> minimum(lanes);
      std::vector<int32_t> tied(lanes), position(lanes), lane_offset(lanes);
      const RowMinima<scalar_t> row_minima{minimum.data(), tied.data(), position.data(), lane_offset.data()};
      for (; p < num; p = queue->next.fetch_add(1, std::memory_order_relaxed)) {
        Workspace w = Workspace::carve(doubles.data(), ints.data(), std::min(r[p], c[p]), std::max(r[p], c[p]));
        w.row_min = row_min.data();
        w.row_arg = row_arg.data();
        const int64_t s = layout->slot_offset[p];
        status[p] = lsa_detail::solve_problem(lsa_detail::SerialTeam{}, data[p], r[p], c[p], w, p, row + s,
                                              col + s, prob + s, row_minima);
      }
    } catch (...) {  // no exception may escape a helper; the caller raises instead
      queue->failed.store(true);
    }
    queue->active.fetch_sub(1, std::memory_order_acq_rel);
  };

  int64_t total = 0;
  for (int64_t p = 0; p < num; ++p) total += r[p] * c[p];
  const int64_t helpers = total < kMinParallelCosts || at::in_parallel_region()
      ? 0
      : std::min<int64_t>(at::get_num_threads(), num) - 1;
  for (int64_t h = 0; h < helpers; ++h) at::launch(work);
  work();
  // Every problem is taken; wait for the helpers still solving one.
  while (queue->active.load(std::memory_order_acquire) != 0) std::this_thread::yield();
  TORCH_CHECK(!queue->failed.load(), "batched_linear_assignment: could not allocate the CPU solver's scratch");
}

// Solves the problems at `data` (one address per problem, pointing at `dtype` values) into
// slot-layout outputs; returns each problem's status.
std::vector<int8_t> solve_all(at::ScalarType dtype, const std::vector<const void*>& data, const int64_t* r,
                              const int64_t* c, const AssignmentPlan& plan, int64_t* row, int64_t* col,
                              int64_t* prob) {
  std::vector<int8_t> status(data.size(), lsa_detail::kSolved);
  AT_DISPATCH_FLOATING_TYPES(dtype, "batched_linear_assignment_cpu", [&] {
    solve_all_kernel_impl<scalar_t>(reinterpret_cast<const scalar_t* const*>(data.data()), r, c, plan, row, col,
                                    prob, status.data());
  });
  return status;
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
  const char* base = static_cast<const char*>(x.const_data_ptr());
  const int64_t* op = o.const_data_ptr<int64_t>();
  std::vector<const void*> data(num);
  for (int64_t p = 0; p < num; ++p) data[p] = base + op[p] * x.element_size();
  const std::vector<int8_t> status =
      solve_all(x.scalar_type(), data, r.const_data_ptr<int64_t>(), c.const_data_ptr<int64_t>(), plan,
                row.mutable_data_ptr<int64_t>(), col.mutable_data_ptr<int64_t>(), prob.mutable_data_ptr<int64_t>());
  check_linear_assignment_status(status.data(), num);
  if (std::find(status.begin(), status.end(), lsa_detail::kDropped) == status.end()) return {row, col, prob};
  const at::Tensor keep = col.ge(0).nonzero().squeeze(1);
  return {row.index_select(0, keep), col.index_select(0, keep), prob.index_select(0, keep)};
}

// The list face: every per-matrix step (checks, conversion, result tensors) is a C++ loop. Matrices
// already contiguous in the solver's dtype are read in place; with maximize, all are negated into one
// buffer (the solver minimises).
std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> linear_sum_assignment_cpu(at::TensorList costs,
                                                                                        bool maximize) {
  const ListProblems problems = check_linear_sum_assignment(costs);
  const int64_t num = static_cast<int64_t>(costs.size()), slots = problems.plan.slot_offset[num];
  const at::ScalarType dtype = problems.dtype;
  const std::vector<at::Tensor> matrices = solver_matrices(costs, dtype);
  std::vector<const void*> data(num);
  for (int64_t p = 0; p < num; ++p) data[p] = matrices[p].const_data_ptr();
  at::Tensor negated;
  if (maximize) {
    int64_t total = 0;
    for (const at::Tensor& m : matrices) total += m.numel();
    negated = at::empty({total}, at::TensorOptions(dtype));
    AT_DISPATCH_FLOATING_TYPES(dtype, "linear_sum_assignment_cpu", [&] {
      scalar_t* out = negated.mutable_data_ptr<scalar_t>();
      for (int64_t p = 0; p < num; ++p) {
        const scalar_t* x = matrices[p].const_data_ptr<scalar_t>();
        for (int64_t k = 0, n = matrices[p].numel(); k < n; ++k) out[k] = -x[k];
        data[p] = out;
        out += matrices[p].numel();
      }
    });
  }

  std::vector<int64_t> row(slots), col(slots), prob(slots);
  const std::vector<int8_t> status = solve_all(dtype, data, problems.rows.data(), problems.cols.data(),
                                               problems.plan, row.data(), col.data(), prob.data());
  check_linear_sum_assignment_status(status.data(), num, maximize);

  // Each problem's pairs in tensors of their own (a custom op's outputs may not alias each other),
  // without its forbidden pairs (col < 0). empty_cpu skips the dispatcher: this loop is most of the
  // op's time on small problems.
  std::vector<at::Tensor> row_ind(num), col_ind(num);
  for (int64_t p = 0; p < num; ++p) {
    const int64_t* r = row.data() + problems.plan.slot_offset[p];
    const int64_t* c = col.data() + problems.plan.slot_offset[p];
    const int64_t n = problems.plan.slot_offset[p + 1] - problems.plan.slot_offset[p];
    const int64_t kept = status[p] == lsa_detail::kDropped ? std::count_if(c, c + n, [](int64_t j) { return j >= 0; })
                                                           : n;
    row_ind[p] = at::detail::empty_cpu({kept}, at::kLong);
    col_ind[p] = at::detail::empty_cpu({kept}, at::kLong);
    int64_t* r_out = row_ind[p].mutable_data_ptr<int64_t>();
    int64_t* c_out = col_ind[p].mutable_data_ptr<int64_t>();
    for (int64_t k = 0; k < n; ++k) {
      if (c[k] < 0) continue;
      *r_out++ = r[k];
      *c_out++ = c[k];
    }
  }
  return {std::move(row_ind), std::move(col_ind)};
}

}  // namespace

TORCH_LIBRARY_IMPL(cora, CPU, m) {
  m.impl("batched_linear_assignment", &batched_linear_assignment_cpu);
  m.impl("linear_sum_assignment", &linear_sum_assignment_cpu);
}

}  // namespace cora
