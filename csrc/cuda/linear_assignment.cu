// Batched linear assignment, CUDA kernels. Semantics: cora/ops/linear_assignment.py.
//
// Each problem is solved by one team running the solver shared with the CPU kernel
// (linear_assignment_common.h): a warp for problems whose larger side has at most kBlockColumns
// columns, a block of kThreads threads for larger ones. The team's members split every column scan
// and agree through shuffles (warp) or shared memory (block). Per-problem scratch lives in global
// memory, carved from two buffers at offsets the host computes. No device-side asserts: a problem
// with a NaN / -inf cost or a float64 overflow reports it in `status`, which the host turns into
// an error after the launch.
#include "linear_assignment_check.h"
#include "linear_assignment_common.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

namespace cora {
namespace {

using lsa_detail::Choice;
using lsa_detail::Workspace;

constexpr int kWarp = 32;
constexpr int kThreads = 256;  // warp kernel: 8 problems per block; block kernel: the team
constexpr int kWarpsPerBlock = kThreads / kWarp;
constexpr int64_t kBlockColumns = 512;

// Per-problem table uploaded by the host: rows, cols, address of the matrix, first output slot, first
// double and first int of the problem's scratch.
constexpr int kMeta = 6;

// The Team methods are host-device so that the shared (host-device) solver compiles for both
// passes; they only ever run on the device.
__device__ __forceinline__ Choice warp_argmin(Choice c) {
  for (int mask = kWarp / 2; mask > 0; mask >>= 1) {
    const Choice other{__shfl_xor_sync(0xffffffffu, c.value, mask), __shfl_xor_sync(0xffffffffu, c.tie, mask)};
    if (lsa_detail::better(other, c)) c = other;
  }
  return c;
}

__device__ __forceinline__ double warp_min(double x) {
  for (int mask = kWarp / 2; mask > 0; mask >>= 1) {
    const double other = __shfl_xor_sync(0xffffffffu, x, mask);
    x = other < x ? other : x;
  }
  return x;
}

__device__ __forceinline__ double warp_max(double x) {
  for (int mask = kWarp / 2; mask > 0; mask >>= 1) {
    const double other = __shfl_xor_sync(0xffffffffu, x, mask);
    x = other > x ? other : x;
  }
  return x;
}

struct WarpTeam {
  C10_HOST_DEVICE int32_t rank() const {
#ifdef __CUDA_ARCH__
    return static_cast<int32_t>(threadIdx.x % kWarp);
#else
    return 0;
#endif
  }
  C10_HOST_DEVICE int32_t size() const { return kWarp; }
  C10_HOST_DEVICE void sync() const {
#ifdef __CUDA_ARCH__
    __syncwarp();
#endif
  }
  C10_HOST_DEVICE Choice argmin(Choice c) const {
#ifdef __CUDA_ARCH__
    return warp_argmin(c);
#else
    return c;
#endif
  }
  C10_HOST_DEVICE double min(double x) const {
#ifdef __CUDA_ARCH__
    return warp_min(x);
#else
    return x;
#endif
  }
  C10_HOST_DEVICE double max(double x) const {
#ifdef __CUDA_ARCH__
    return warp_max(x);
#else
    return x;
#endif
  }
  C10_HOST_DEVICE bool any(bool x) const {
#ifdef __CUDA_ARCH__
    return __any_sync(0xffffffffu, x);
#else
    return x;
#endif
  }
};

// A block of kThreads threads: warp reductions, then every thread combines the warps' results from
// shared memory (kWarpsPerBlock broadcast reads), then a barrier before the slots are reused.
struct BlockTeam {
  Choice* choices;  // [kWarpsPerBlock] shared
  double* values;   // [kWarpsPerBlock] shared

  C10_HOST_DEVICE int32_t rank() const {
#ifdef __CUDA_ARCH__
    return static_cast<int32_t>(threadIdx.x);
#else
    return 0;
#endif
  }
  C10_HOST_DEVICE int32_t size() const { return kThreads; }
  C10_HOST_DEVICE void sync() const {
#ifdef __CUDA_ARCH__
    __syncthreads();
#endif
  }
  C10_HOST_DEVICE Choice argmin(Choice c) const {
#ifdef __CUDA_ARCH__
    c = warp_argmin(c);
    if (threadIdx.x % kWarp == 0) choices[threadIdx.x / kWarp] = c;
    __syncthreads();
    c = choices[0];
    for (int w = 1; w < kWarpsPerBlock; ++w) {
      if (lsa_detail::better(choices[w], c)) c = choices[w];
    }
    __syncthreads();
#endif
    return c;
  }
  C10_HOST_DEVICE double min(double x) const {
#ifdef __CUDA_ARCH__
    x = warp_min(x);
    if (threadIdx.x % kWarp == 0) values[threadIdx.x / kWarp] = x;
    __syncthreads();
    x = values[0];
    for (int w = 1; w < kWarpsPerBlock; ++w) x = values[w] < x ? values[w] : x;
    __syncthreads();
#endif
    return x;
  }
  C10_HOST_DEVICE double max(double x) const {
#ifdef __CUDA_ARCH__
    x = warp_max(x);
    if (threadIdx.x % kWarp == 0) values[threadIdx.x / kWarp] = x;
    __syncthreads();
    x = values[0];
    for (int w = 1; w < kWarpsPerBlock; ++w) x = values[w] > x ? values[w] : x;
    __syncthreads();
#endif
    return x;
  }
  C10_HOST_DEVICE bool any(bool x) const {
#ifdef __CUDA_ARCH__
    return __syncthreads_or(x) != 0;
#else
    return x;
#endif
  }
};

struct Outputs {
  int64_t* row;
  int64_t* col;
  int64_t* prob;
  int8_t* status;
};

template <typename scalar_t, typename Team>
__device__ void solve_one(const Team& team, const int64_t* __restrict__ meta,
                          int64_t p, double* dscratch, int32_t* iscratch, const Outputs& out) {
  const int64_t* m = meta + p * kMeta;
  const int64_t rows = m[0], cols = m[1], slot = m[3];
  const Workspace w = Workspace::carve(dscratch + m[4], iscratch + m[5], rows < cols ? rows : cols,
                                       rows < cols ? cols : rows);
  const scalar_t* costs = reinterpret_cast<const scalar_t*>(m[2]);
  const lsa_detail::Status s = lsa_detail::solve_problem(team, costs, rows, cols, w, p, out.row + slot,
                                                         out.col + slot, out.prob + slot, lsa_detail::NoRowMinima{});
  if (team.rank() == 0) out.status[p] = s;
}

// One warp per problem of `list`.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) warp_kernel(
    const int64_t* __restrict__ meta, const int64_t* __restrict__ list, int64_t count, double* dscratch,
    int32_t* iscratch, Outputs out) {
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t k = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp; k < count; k += warps) {
    solve_one<scalar_t>(WarpTeam{}, meta, list[k], dscratch, iscratch, out);
  }
}

// One block per problem of `list`.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) block_kernel(
    const int64_t* __restrict__ meta, const int64_t* __restrict__ list, int64_t count, double* dscratch,
    int32_t* iscratch, Outputs out) {
  __shared__ Choice choices[kWarpsPerBlock];
  __shared__ double values[kWarpsPerBlock];
  const BlockTeam team{choices, values};
  for (int64_t k = blockIdx.x; k < count; k += gridDim.x) {
    solve_one<scalar_t>(team, meta, list[k], dscratch, iscratch, out);
  }
}

// Pairs in slot layout, on the device, and each problem's status, on the host.
struct Solved {
  at::Tensor row, col, prob, status;
};

// Solves problem p, the r[p] x c[p] row-major matrix of `dtype` values at device address address[p].
// The costs must stay alive until the status is read back (done here: the call synchronises).
Solved solve_all(at::ScalarType dtype, const std::vector<int64_t>& address, const int64_t* rp, const int64_t* cp,
                 const AssignmentPlan& plan, const at::TensorOptions& options) {
  const int64_t num = static_cast<int64_t>(address.size()), slots = plan.slot_offset[num];
  const auto long_options = options.dtype(at::kLong);
  Solved out{at::empty({slots}, long_options), at::empty({slots}, long_options), at::empty({slots}, long_options),
             at::zeros({num}, at::kChar)};
  if (slots == 0) return out;

  // Host table: [num, kMeta] problem rows, then the warp problems' ids, then the block problems'.
  std::vector<int64_t> warp_list, block_list;
  at::Tensor table = at::empty({num * kMeta + num}, at::kLong);
  int64_t* t = table.mutable_data_ptr<int64_t>();
  int64_t doubles = 0, ints = 0;
  for (int64_t p = 0; p < num; ++p) {
    const int64_t nr = std::min(rp[p], cp[p]), nc = std::max(rp[p], cp[p]);
    int64_t* m = t + p * kMeta;
    m[0] = rp[p];
    m[1] = cp[p];
    m[2] = address[p];
    m[3] = plan.slot_offset[p];
    m[4] = doubles;
    m[5] = ints;
    if (nr == 0) continue;
    doubles += Workspace::doubles(nr, nc);
    ints += Workspace::ints(nr, nc);
    (nc > kBlockColumns ? block_list : warp_list).push_back(p);
  }
  std::copy(warp_list.begin(), warp_list.end(), t + num * kMeta);
  std::copy(block_list.begin(), block_list.end(), t + num * kMeta + warp_list.size());
  const at::Tensor table_d = table.to(options.device());
  const int64_t* meta = table_d.const_data_ptr<int64_t>();
  const int64_t* warp_ids = meta + num * kMeta;
  const int64_t* block_ids = warp_ids + warp_list.size();

  at::Tensor dscratch = at::empty({doubles}, options.dtype(at::kDouble));
  at::Tensor iscratch = at::empty({ints}, options.dtype(at::kInt));
  at::Tensor status = at::zeros({num}, options.dtype(at::kChar));
  const Outputs outputs{out.row.mutable_data_ptr<int64_t>(), out.col.mutable_data_ptr<int64_t>(),
                        out.prob.mutable_data_ptr<int64_t>(), status.mutable_data_ptr<int8_t>()};
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t n_warp = static_cast<int64_t>(warp_list.size()), n_block = static_cast<int64_t>(block_list.size());
  AT_DISPATCH_FLOATING_TYPES(dtype, "batched_linear_assignment_cuda", [&] {
    if (n_warp > 0) {
      const int64_t blocks = std::min<int64_t>((n_warp + kWarpsPerBlock - 1) / kWarpsPerBlock, sms * 16);
      warp_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
          meta, warp_ids, n_warp, dscratch.mutable_data_ptr<double>(), iscratch.mutable_data_ptr<int32_t>(), outputs);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (n_block > 0) {
      const int64_t blocks = std::min<int64_t>(n_block, sms * 8);
      block_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
          meta, block_ids, n_block, dscratch.mutable_data_ptr<double>(), iscratch.mutable_data_ptr<int32_t>(),
          outputs);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  out.status = status.to(at::kCPU);
  return out;
}

bool any_dropped(const at::Tensor& status_h) {
  const int8_t* s = status_h.const_data_ptr<int8_t>();
  return std::find(s, s + status_h.numel(), lsa_detail::kDropped) != s + status_h.numel();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batched_linear_assignment_cuda(
    const at::Tensor& costs, const at::Tensor& rows, const at::Tensor& cols, const at::Tensor& offsets) {
  check_linear_assignment_tensors(costs, rows, cols, offsets);
  TORCH_CHECK_VALUE(costs.is_cuda(), "batched_linear_assignment: costs must be on the GPU when rows, cols or "
                    "offsets are, got ", costs.device());
  c10::cuda::CUDAGuard device_guard(costs.device());
  // The problem table is read on the host (a synchronisation when it is on the GPU): the checks
  // and the scratch layout need it, and the output size depends on the data anyway.
  const at::Tensor r = rows.to(at::kCPU).contiguous(), c = cols.to(at::kCPU).contiguous();
  const at::Tensor o = offsets.to(at::kCPU).contiguous();
  const AssignmentPlan plan = plan_linear_assignment(costs.numel(), r, c, o);
  const at::Tensor x = costs.contiguous();
  const int64_t num = r.numel();
  const int64_t* op = o.const_data_ptr<int64_t>();
  const int64_t base = reinterpret_cast<int64_t>(x.const_data_ptr()), element = x.element_size();
  std::vector<int64_t> address(num);
  for (int64_t p = 0; p < num; ++p) address[p] = base + op[p] * element;
  Solved s = solve_all(x.scalar_type(), address, r.const_data_ptr<int64_t>(), c.const_data_ptr<int64_t>(), plan,
                       costs.options());
  check_linear_assignment_status(s.status.const_data_ptr<int8_t>(), num);
  if (!any_dropped(s.status)) return {s.row, s.col, s.prob};
  const at::Tensor keep = s.col.ge(0).nonzero().squeeze(1);
  return {s.row.index_select(0, keep), s.col.index_select(0, keep), s.prob.index_select(0, keep)};
}

// The list face. Matrices already contiguous in the solver's dtype are read in place (their addresses
// go to the kernel); others are converted first; with maximize, all are negated into one buffer.
std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> linear_sum_assignment_cuda(at::TensorList costs,
                                                                                         bool maximize) {
  const ListProblems problems = check_linear_sum_assignment(costs);
  c10::cuda::CUDAGuard device_guard(costs[0].device());
  const int64_t num = static_cast<int64_t>(costs.size());
  const at::ScalarType dtype = problems.dtype;
  const auto options = costs[0].options();
  const std::vector<at::Tensor> matrices = solver_matrices(costs, dtype);
  std::vector<int64_t> address(num);
  for (int64_t p = 0; p < num; ++p) address[p] = reinterpret_cast<int64_t>(matrices[p].const_data_ptr());
  at::Tensor negated;
  if (maximize) {
    std::vector<at::Tensor> flats;
    std::vector<int64_t> offset(num);
    int64_t total = 0;
    for (int64_t p = 0; p < num; ++p) {
      offset[p] = total;
      total += matrices[p].numel();
      if (matrices[p].numel() > 0) flats.push_back(matrices[p].view({-1}));
    }
    negated = at::empty({total}, options.dtype(dtype));
    if (total > 0) at::cat_out(negated, flats).neg_();
    const int64_t base = reinterpret_cast<int64_t>(negated.const_data_ptr());
    for (int64_t p = 0; p < num; ++p) address[p] = base + offset[p] * negated.element_size();
  }
  const AssignmentPlan& plan = problems.plan;
  const Solved s = solve_all(dtype, address, problems.rows.data(), problems.cols.data(), plan, options);
  check_linear_sum_assignment_status(s.status.const_data_ptr<int8_t>(), num, maximize);

  // kept[p]: problem p's pairs; with forbidden pairs, those kept (col >= 0), compacted over all problems.
  std::vector<int64_t> kept(num);
  for (int64_t p = 0; p < num; ++p) kept[p] = plan.slot_offset[p + 1] - plan.slot_offset[p];
  at::Tensor row = s.row, col = s.col;
  if (any_dropped(s.status)) {
    const at::Tensor keep = col.ge(0);
    const at::Tensor counts =
        at::zeros({num}, options.dtype(at::kLong)).index_add_(0, s.prob, keep.to(at::kLong)).to(at::kCPU);
    std::copy(counts.const_data_ptr<int64_t>(), counts.const_data_ptr<int64_t>() + num, kept.begin());
    const at::Tensor index = keep.nonzero().squeeze(1);
    row = row.index_select(0, index);
    col = col.index_select(0, index);
  }
  // Each problem's pairs in tensors of their own (a custom op's outputs may not alias each other),
  // filled from the pieces of row / col by one multi-tensor copy.
  std::vector<at::Tensor> row_ind(num), col_ind(num);
  for (int64_t p = 0; p < num; ++p) {
    row_ind[p] = at::empty({kept[p]}, options.dtype(at::kLong));
    col_ind[p] = at::empty({kept[p]}, options.dtype(at::kLong));
  }
  at::_foreach_copy_(row_ind, row.split_with_sizes(kept));
  at::_foreach_copy_(col_ind, col.split_with_sizes(kept));
  return {std::move(row_ind), std::move(col_ind)};
}

}  // namespace

TORCH_LIBRARY_IMPL(cora, CUDA, m) {
  m.impl("batched_linear_assignment", &batched_linear_assignment_cuda);
  m.impl("linear_sum_assignment", &linear_sum_assignment_cuda);
}

}  // namespace cora
