// Batched linear assignment, CPU kernel: problems run in parallel, one thread each, through the
// solver shared with the CUDA kernel (linear_assignment_common.h), with a shortcut for the first
// step of each row (RowMinima). Semantics: cora/ops/linear_assignment.py.
#include "linear_assignment_check.h"
#include "linear_assignment_common.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <new>
#include <thread>
#include <tuple>
#include <vector>

namespace cora {
namespace {

using lsa_detail::Workspace;

// The two passes of RowMinima (below), over lanes: lane t takes x[c * lanes + t] for c < chunks.
// Everything stays in the cost's own type (counts and chunk indices too, exact below 2^24 in
// float32), so that each loop vectorises without converting masks between widths.
//
// Pass 1: each lane's minimum, and a sum that turns NaN when any element is NaN or +-inf (x * 0 is
// NaN exactly for those).
template <typename scalar_t>
__attribute__((always_inline)) inline void lane_minimum_impl(const scalar_t* __restrict__ x, int64_t chunks, int64_t lanes,
                                                             scalar_t* __restrict__ minimum,
                                                             scalar_t* __restrict__ poison) {
  for (int64_t c = 0; c < chunks; ++c) {
    const scalar_t* __restrict__ xc = x + c * lanes;
    for (int64_t t = 0; t < lanes; ++t) {
      const scalar_t v = xc[t];
      minimum[t] = v < minimum[t] ? v : minimum[t];
      poison[t] += v * scalar_t(0);
    }
  }
}

// Pass 2: how often each lane meets its target value, and the last chunk where it did.
template <typename scalar_t>
__attribute__((always_inline)) inline void lane_find_impl(const scalar_t* __restrict__ x, int64_t chunks, int64_t lanes,
                                                          const scalar_t* __restrict__ target,
                                                          scalar_t* __restrict__ count, scalar_t* __restrict__ last) {
  for (int64_t c = 0; c < chunks; ++c) {
    const scalar_t* __restrict__ xc = x + c * lanes;
    const scalar_t at = static_cast<scalar_t>(c);
    for (int64_t t = 0; t < lanes; ++t) {
      // Arithmetic instead of a select on `last`, which would read memory conditionally (a branch).
      // Exact: integers below 2^24.
      const scalar_t hit = xc[t] == target[t] ? scalar_t(1) : scalar_t(0);
      count[t] += hit;
      last[t] += hit * (at - last[t]);
    }
  }
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
// Also compiled for AVX2 and picked at load time on CPUs that have it (as cpu/axpy4.h). Without
// unroll-and-jam: at -O3 GCC fuses pairs of chunks into one inner loop that no longer vectorises
// (a scalar loop with a branch per element).
#define CORA_LSA_CLONES \
  __attribute__((target_clones("arch=x86-64-v3", "default"), optimize("no-loop-unroll-and-jam")))
#else
#define CORA_LSA_CLONES
#endif
CORA_LSA_CLONES static void lane_minimum(const float* x, int64_t chunks, int64_t lanes, float* minimum, float* poison) {
  lane_minimum_impl(x, chunks, lanes, minimum, poison);
}
CORA_LSA_CLONES static void lane_minimum(const double* x, int64_t chunks, int64_t lanes, double* minimum,
                                         double* poison) {
  lane_minimum_impl(x, chunks, lanes, minimum, poison);
}
CORA_LSA_CLONES static void lane_find(const float* x, int64_t chunks, int64_t lanes, const float* target,
                                      float* count, float* last) {
  lane_find_impl(x, chunks, lanes, target, count, last);
}
CORA_LSA_CLONES static void lane_find(const double* x, int64_t chunks, int64_t lanes, const double* target,
                                      double* count, double* last) {
  lane_find_impl(x, chunks, lanes, target, count, last);
}
#undef CORA_LSA_CLONES

// Checks that all costs are finite and finds the minimum of each solver row and, when it is unique,
// its column, for the solver's first-step shortcut (lsa_detail::solve): two vectorised passes in the
// stored layout (the minima, then where they occur, on a problem already in cache) instead of one
// scalar scan per row.
//
// Lanes: wide matrices (solver row = stored row): 8 lanes along each row, lane t taking columns t,
// t + 8, ... Tall ones (solver row i = stored column i, of n): kGroup * n lanes over kGroup stored
// rows at a time, lane g * n + i taking column i of stored rows g, g + kGroup, ... Elements past
// the last whole chunk are taken one at a time.
template <typename scalar_t>
struct RowMinima {
  static constexpr int64_t kWideLanes = 8;
  static constexpr int64_t kGroup = 4;
  static constexpr int64_t kMaxChunks = int64_t(1) << 24;  // chunk indices are exact in scalar_t below
  // Scratch of max(kWideLanes, kGroup * min(rows, cols)) entries each.
  scalar_t* value;  // pass 1: the lane minima; pass 2: the targets (each lane's row minimum)
  scalar_t* tally;  // pass 1: the poison sums; pass 2: the counts
  scalar_t* last;   // pass 2: the last chunks

  static constexpr scalar_t inf() { return std::numeric_limits<scalar_t>::infinity(); }

  void start(int64_t lanes) const {
    std::fill(value, value + lanes, inf());
    std::fill(tally, tally + lanes, scalar_t(0));
  }

  // Pass 2 with target m_row(t) already in value[t].
  void find(const scalar_t* x, int64_t chunks, int64_t lanes) const {
    std::fill(tally, tally + lanes, scalar_t(0));
    std::fill(last, last + lanes, scalar_t(0));
    lane_find(x, chunks, lanes, value, tally, last);
  }

  // One solver row is the lanes t0 + g * stride (g < k) and the elements past the whole chunks,
  // tail[j * tail_stride] (j < tail_count). Its minimum over pass 1's lane minima and the tail; the
  // tail's poison is added to `bad`.
  scalar_t row_minimum(int64_t t0, int64_t stride, int64_t k, const scalar_t* tail, int64_t tail_stride,
                       int64_t tail_count, scalar_t& bad) const {
    scalar_t m = inf();
    for (int64_t g = 0; g < k; ++g) m = std::min(m, value[t0 + g * stride]);
    for (int64_t j = 0; j < tail_count; ++j) {
      m = std::min(m, tail[j * tail_stride]);
      bad += tail[j * tail_stride] * scalar_t(0);
    }
    return m;
  }

  // After pass 2 (target m): the row's minimum and its column when unique, else -1. Lane g met m last
  // in chunk last[t], i.e. at column(last, g); tail element j is at column tail_at + j.
  template <typename Column>
  void finish_row(scalar_t m, int64_t t0, int64_t stride, int64_t k, const scalar_t* tail, int64_t tail_stride,
                  int64_t tail_count, int64_t tail_at, const Column& column, double* row_min,
                  int32_t* row_arg) const {
    int64_t hits = 0, at = -1;
    for (int64_t g = 0; g < k; ++g) {
      const int64_t t = t0 + g * stride;
      if (tally[t] == 0) continue;
      hits += static_cast<int64_t>(tally[t]);
      at = column(static_cast<int64_t>(last[t]), g);
    }
    for (int64_t j = 0; j < tail_count; ++j) {
      if (tail[j * tail_stride] != m) continue;
      ++hits;
      at = tail_at + j;
    }
    *row_min = static_cast<double>(m);
    *row_arg = hits == 1 ? static_cast<int32_t>(at) : -1;
  }

  bool operator()(const scalar_t* data, int64_t rows, int64_t cols, const Workspace& w) const {
    if (std::min(rows, cols) < 2) return false;  // one row: its scan is all the work anyway
    if (cols >= rows) {
      const int64_t lanes = kWideLanes, chunks = cols / lanes, tail_count = cols - chunks * lanes;
      if (chunks >= kMaxChunks) return false;
      const auto column = [&](int64_t chunk, int64_t t) { return chunk * lanes + t; };
      for (int64_t i = 0; i < rows; ++i) {
        const scalar_t* x = data + i * cols;
        const scalar_t* tail = x + chunks * lanes;
        start(lanes);
        lane_minimum(x, chunks, lanes, value, tally);
        scalar_t bad = 0;
        for (int64_t t = 0; t < lanes; ++t) bad += tally[t];
        const scalar_t m = row_minimum(0, 1, lanes, tail, 1, tail_count, bad);
        if (bad != 0) return false;  // NaN: a non-finite cost
        std::fill(value, value + lanes, m);
        find(x, chunks, lanes);
        finish_row(m, 0, 1, lanes, tail, 1, tail_count, chunks * lanes, column, &w.row_min[i], &w.row_arg[i]);
      }
      return true;
    }
    const int64_t n = cols, lanes = kGroup * n, chunks = rows / kGroup;
    if (chunks >= kMaxChunks) return false;
    const scalar_t* tail = data + chunks * lanes;  // the last rows - chunks * kGroup stored rows
    const int64_t tail_rows = rows - chunks * kGroup;
    const auto column = [](int64_t chunk, int64_t g) { return chunk * kGroup + g; };
    start(lanes);
    lane_minimum(data, chunks, lanes, value, tally);
    scalar_t bad = 0;
    for (int64_t t = 0; t < lanes; ++t) bad += tally[t];
    for (int64_t i = 0; i < n; ++i) {
      const scalar_t m = row_minimum(i, n, kGroup, tail + i, n, tail_rows, bad);
      for (int64_t g = 0; g < kGroup; ++g) value[g * n + i] = m;
    }
    if (bad != 0) return false;
    find(data, chunks, lanes);
    for (int64_t i = 0; i < n; ++i) {
      finish_row(value[i], i, n, kGroup, tail + i, n, tail_rows, chunks * kGroup, column, &w.row_min[i],
                 &w.row_arg[i]);
    }
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

// Problem p is the r[p] x c[p] row-major matrix at data[p]. Each problem is solved into the solving
// thread's scratch, then handed to emit(p, status, row, col, n) on that thread (n = min(r[p], c[p])
// pairs, sorted by row; col = -1 marks a dropped pair), which writes it where the caller wants it:
// writing the results, the list face's tensor allocations included, is shared by the threads too.
template <typename scalar_t, typename Emit>
void solve_all_kernel_impl(const scalar_t* const* data, const int64_t* r, const int64_t* c, const AssignmentPlan& plan,
                           const Emit& emit, int8_t* status) {
  const int64_t num = static_cast<int64_t>(plan.slot_offset.size()) - 1;
  const int64_t max_rows = plan.max_rows, max_cols = plan.max_cols;
  int64_t total = 0;
  for (int64_t p = 0; p < num; ++p) total += r[p] * c[p];
  const int64_t helpers = total < kMinParallelCosts || at::in_parallel_region()
      ? 0
      : std::min<int64_t>(at::get_num_threads(), num) - 1;
  auto queue = std::make_shared<WorkQueue>();

  auto work = [=, &emit]() {
    queue->active.fetch_add(1, std::memory_order_acq_rel);
    int64_t p = queue->next.fetch_add(1, std::memory_order_relaxed);
    if (p < num) try {
      std::vector<double> doubles(Workspace::doubles(max_rows, max_cols)), row_min(max_rows);
      std::vector<int32_t> ints(Workspace::ints(max_rows, max_cols)), row_arg(max_rows), order(max_cols);
      std::vector<int64_t> pairs(3 * max_rows);  // row, col, problem of each pair
      const int64_t lanes = std::max(RowMinima<scalar_t>::kWideLanes, RowMinima<scalar_t>::kGroup * max_rows);
      std::vector<scalar_t> lane_scratch(3 * lanes);
      const RowMinima<scalar_t> row_minima{lane_scratch.data(), lane_scratch.data() + lanes,
                                           lane_scratch.data() + 2 * lanes};
      for (; p < num; p = queue->next.fetch_add(1, std::memory_order_relaxed)) {
        const int64_t n = std::min(r[p], c[p]);
        Workspace w = Workspace::carve(doubles.data(), ints.data(), n, std::max(r[p], c[p]));
        w.row_min = row_min.data();
        w.row_arg = row_arg.data();
        w.order = order.data();
        int64_t* row = pairs.data();
        int64_t* col = row + max_rows;
        status[p] = lsa_detail::solve_problem(lsa_detail::SerialTeam{}, data[p], r[p], c[p], w, p, row, col,
                                              col + max_rows, row_minima);
        emit(p, status[p], static_cast<const int64_t*>(row), static_cast<const int64_t*>(col), n);
      }
    } catch (...) {  // no exception may escape a helper; the caller raises instead
      queue->failed.store(true);
    }
    queue->active.fetch_sub(1, std::memory_order_acq_rel);
  };

  for (int64_t h = 0; h < helpers; ++h) at::launch(work);
  work();
  // Every problem is taken; wait for the helpers still solving one (emit is the caller's: no helper
  // may touch it after this returns).
  while (queue->active.load(std::memory_order_acquire) != 0) std::this_thread::yield();
  TORCH_CHECK(!queue->failed.load(), "linear assignment: could not allocate memory for the CPU solver");
}

// Solves the problems at `data` (one address per problem, pointing at `dtype` values), handing each
// to emit (see solve_all_kernel_impl); returns each problem's status.
template <typename Emit>
std::vector<int8_t> solve_all(at::ScalarType dtype, const std::vector<const void*>& data, const int64_t* r,
                              const int64_t* c, const AssignmentPlan& plan, const Emit& emit) {
  std::vector<int8_t> status(data.size(), lsa_detail::kSolved);
  AT_DISPATCH_FLOATING_TYPES(dtype, "linear_assignment_cpu", [&] {
    solve_all_kernel_impl<scalar_t>(reinterpret_cast<const scalar_t* const*>(data.data()), r, c, plan, emit,
                                    status.data());
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
  int64_t* row_out = row.mutable_data_ptr<int64_t>();
  int64_t* col_out = col.mutable_data_ptr<int64_t>();
  int64_t* prob_out = prob.mutable_data_ptr<int64_t>();
  auto emit = [&](int64_t p, int8_t, const int64_t* pair_row, const int64_t* pair_col, int64_t n) {
    const int64_t s = plan.slot_offset[p];
    std::copy(pair_row, pair_row + n, row_out + s);
    std::copy(pair_col, pair_col + n, col_out + s);
    std::fill(prob_out + s, prob_out + s + n, p);
  };
  const std::vector<int8_t> status =
      solve_all(x.scalar_type(), data, r.const_data_ptr<int64_t>(), c.const_data_ptr<int64_t>(), plan, emit);
  check_linear_assignment_status(status.data(), num);
  if (std::find(status.begin(), status.end(), lsa_detail::kDropped) == status.end()) return {row, col, prob};
  const at::Tensor keep = col.ge(0).nonzero().squeeze(1);
  return {row.index_select(0, keep), col.index_select(0, keep), prob.index_select(0, keep)};
}

// The memory of the list op's 2P result tensors: one malloc block for the call, shared by reference
// count. Each tensor still has a storage of its own (no tensor aliases another): its DataPtr points at
// its slice of the block, and dropping it (freeing the tensor, or a resize_ that moves the storage to
// the CPU allocator) releases one reference; the last one frees the block. One block instead of 2P
// allocations: on 1057 small problems the per-tensor malloc and free were 13% of the call, and a
// profiler check on each allocation made c10's CPU allocator slower still (benchmarks/README.md). The
// cost: the block stays allocated while any result tensor lives (16 bytes per pair of the call).
class ResultBlock {
 public:
  // Room for `pairs` (row, col) index pairs, and `references` references held by the caller, who
  // hands one to each tensor (tensor()) and drops the rest (release()).
  ResultBlock(int64_t pairs, int64_t references) {
    const size_t bytes = sizeof(Header) + 2 * static_cast<size_t>(pairs) * sizeof(int64_t);
    header_ = static_cast<Header*>(std::malloc(bytes));
    if (!header_) throw std::bad_alloc();
    new (&header_->references) std::atomic<int64_t>(references);
  }
  ResultBlock(const ResultBlock&) = delete;
  ResultBlock& operator=(const ResultBlock&) = delete;

  int64_t* data() const { return reinterpret_cast<int64_t*>(header_ + 1); }

  // A 1-D int64 CPU tensor of n elements at data() + offset, holding one reference.
  at::Tensor tensor(int64_t offset, int64_t n) const {
    int64_t* at = data() + offset;
    auto storage = c10::make_intrusive<c10::StorageImpl>(
        c10::StorageImpl::use_byte_size_t(), n * static_cast<int64_t>(sizeof(int64_t)),
        c10::DataPtr(at, header_, &ResultBlock::drop, at::kCPU), c10::GetCPUAllocator(), /*resizable=*/true);
    at::Tensor t = at::detail::make_tensor<c10::TensorImpl>(
        std::move(storage), c10::DispatchKeySet(c10::DispatchKey::CPU), caffe2::TypeMeta::Make<int64_t>());
    t.unsafeGetTensorImpl()->set_sizes_contiguous({n});
    return t;
  }

  // Drops `count` of the caller's references.
  void release(int64_t count) const { release(header_, count); }

 private:
  struct alignas(16) Header {
    std::atomic<int64_t> references;
  };
  static void drop(void* header) { ResultBlock::release(static_cast<Header*>(header), 1); }
  static void release(Header* header, int64_t count) {
    if (count > 0 && header->references.fetch_sub(count, std::memory_order_acq_rel) == count) std::free(header);
  }
  Header* header_;
};

// The list face: every per-matrix step (checks, conversion, result tensors) is a C++ loop. Matrices
// already contiguous in the solver's dtype are read in place; with maximize, all are negated into one
// buffer (the solver minimises).
std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> linear_sum_assignment_cpu(at::TensorList costs,
                                                                                        bool maximize) {
  const ListProblems problems = check_linear_sum_assignment(costs);
  const int64_t num = static_cast<int64_t>(costs.size());
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

  // Each problem's pairs in tensors of their own (a custom op's outputs may not alias each other; they
  // share the memory block, not a storage), without its forbidden pairs (col < 0), made by the thread
  // that solved it: on small problems making them is most of the op's time.
  std::vector<at::Tensor> row_ind(num), col_ind(num);
  const std::vector<int64_t>& slot = problems.plan.slot_offset;
  const ResultBlock block(slot[num], 2 * num + 1);  // a reference per tensor, one for this call
  auto emit = [&](int64_t p, int8_t status, const int64_t* pair_row, const int64_t* pair_col, int64_t n) {
    if (status != lsa_detail::kSolved && status != lsa_detail::kDropped) return;  // raised below
    const int64_t kept =
        status == lsa_detail::kDropped ? std::count_if(pair_col, pair_col + n, [](int64_t j) { return j >= 0; }) : n;
    int64_t* r_out = block.data() + 2 * slot[p];
    int64_t* c_out = r_out + kept;
    for (int64_t k = 0; k < n; ++k) {
      if (pair_col[k] < 0) continue;
      *r_out++ = pair_row[k];
      *c_out++ = pair_col[k];
    }
    row_ind[p] = block.tensor(2 * slot[p], kept);
    col_ind[p] = block.tensor(2 * slot[p] + kept, kept);
  };
  // The references of the tensors not made (problems with an error) and this call's, once solved.
  const auto release_unused = [&] {
    const int64_t made = std::count_if(row_ind.begin(), row_ind.end(), [](const at::Tensor& t) { return t.defined(); });
    block.release(2 * (num - made) + 1);
  };
  std::vector<int8_t> status;
  try {
    status = solve_all(dtype, data, problems.rows.data(), problems.cols.data(), problems.plan, emit);
  } catch (...) {
    release_unused();
    throw;
  }
  release_unused();
  check_linear_sum_assignment_status(status.data(), num, maximize);
  return {std::move(row_ind), std::move(col_ind)};
}

}  // namespace

TORCH_LIBRARY_IMPL(cora, CPU, m) {
  m.impl("batched_linear_assignment", &batched_linear_assignment_cpu);
  m.impl("linear_sum_assignment", &linear_sum_assignment_cpu);
}

}  // namespace cora
