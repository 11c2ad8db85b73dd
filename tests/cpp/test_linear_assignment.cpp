// Smoke test of the LibTorch library libcora_ops.so for the assignment ops: calls
// cora::linear_sum_assignment and cora::batched_linear_assignment (cora_ops.h), which go through the
// dispatcher, so it also checks that the library registered them. The reference is a brute force over
// every assignment (matrices up to 4 x 4 here). Runs on the CPU, and on the GPU when the library has
// its CUDA kernels (CORA_WITH_CUDA) and one is visible. No test framework: prints each failed check
// and exits non-zero if any failed. Run by ctest.
#include "cora_ops.h"
#include "harness.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

namespace {

using cora_test::check;

constexpr double kInf = INFINITY;

using Matrix = std::vector<std::vector<double>>;

// The most allowed (finite) pairs, then the least total cost among those (the largest with
// maximize, where -inf is the forbidden marker): {pairs, cost}, over every injective map of the
// smaller side into the larger one.
std::pair<int, double> brute_force(const Matrix& m, bool maximize) {
  const int rows = static_cast<int>(m.size()), cols = rows ? static_cast<int>(m[0].size()) : 0;
  const bool tall = rows > cols;
  const int n = std::min(rows, cols), big = std::max(rows, cols);
  std::vector<int> perm(big);
  for (int k = 0; k < big; ++k) perm[k] = k;
  std::pair<int, double> best{-1, 0.0};
  do {  // the first n entries of each permutation of the larger side
    int pairs = 0;
    double cost = 0;
    for (int i = 0; i < n; ++i) {
      const double c = tall ? m[perm[i]][i] : m[i][perm[i]];
      if (std::isfinite(c)) {
        ++pairs;
        cost += c;
      }
    }
    const bool better = pairs > best.first ||
                        (pairs == best.first && (maximize ? cost > best.second : cost < best.second));
    if (better) best = {pairs, cost};
  } while (std::next_permutation(perm.begin(), perm.end()));
  return best;
}

at::Tensor to_tensor(const Matrix& m, const at::Device& device) {
  const int64_t rows = static_cast<int64_t>(m.size()), cols = rows ? static_cast<int64_t>(m[0].size()) : 0;
  at::Tensor t = at::empty({rows, cols}, at::kDouble);
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) t[i][j] = m[i][j];
  }
  return t.to(device);
}

// (row_ind, col_ind) of one matrix: a valid partial assignment, rows increasing, that reaches the
// brute force's number of pairs and cost.
void check_result(const Matrix& m, bool maximize, const at::Tensor& row_ind, const at::Tensor& col_ind,
                  const std::string& name) {
  const auto [pairs, cost] = brute_force(m, maximize);
  const at::Tensor r = row_ind.cpu(), c = col_ind.cpu();
  check(r.scalar_type() == at::kLong && c.scalar_type() == at::kLong, name + ": indices must be int64");
  check(r.numel() == pairs && c.numel() == pairs,
        name + ": " + std::to_string(r.numel()) + " pairs, expected " + std::to_string(pairs));
  if (r.numel() != pairs || c.numel() != pairs) return;
  double total = 0;
  std::vector<int64_t> used;
  for (int64_t k = 0; k < pairs; ++k) {
    const int64_t i = r[k].item<int64_t>(), j = c[k].item<int64_t>();
    check(k == 0 || i > r[k - 1].item<int64_t>(), name + ": row indices must increase");
    check(std::find(used.begin(), used.end(), j) == used.end(), name + ": a column is used twice");
    used.push_back(j);
    total += m[i][j];
  }
  check(std::abs(total - cost) <= 1e-9, name + ": total cost " + std::to_string(total) + ", brute force " +
                                            std::to_string(cost));
}

void run(const at::Device& device) {
  const std::string dev = device.str() + ": ";
  const std::vector<Matrix> mats = {
      {{4, 1, 3}, {2, 0, 5}, {3, 2, 2}},                   // square, unique optimum 5 (scipy's example)
      {{7, 2}, {1, 9}, {3, 3}, {8, 0}},                    // tall
      {{5, kInf, 1, 2}, {kInf, kInf, 4, 3}},               // wide, forbidden pairs
      {{kInf, 1}, {kInf, 2}, {kInf, 3}},                   // a column with no allowed row: 1 pair
      {{kInf, kInf}, {kInf, kInf}},                        // everything forbidden: no pair
      {},                                                  // 0 x 0
  };
  std::vector<at::Tensor> costs;
  for (const Matrix& m : mats) costs.push_back(to_tensor(m, device));
  costs.push_back(at::zeros({0, 3}, at::TensorOptions(at::kFloat).device(device)));  // 0 x 3

  auto [row_ind, col_ind] = cora::linear_sum_assignment(costs, /*maximize=*/false);
  check(row_ind.size() == costs.size() && col_ind.size() == costs.size(), dev + "one result per matrix");
  for (size_t p = 0; p < mats.size(); ++p) {
    check(row_ind[p].device() == device, dev + "results on the input's device");
    check_result(mats[p], false, row_ind[p], col_ind[p], dev + "costs[" + std::to_string(p) + "]");
  }
  check(row_ind.back().numel() == 0 && col_ind.back().numel() == 0, dev + "0 x 3 matrix: no pair");

  // maximize: -inf is the forbidden marker.
  std::vector<Matrix> negated = mats;
  for (Matrix& m : negated) {
    for (auto& row : m) {
      for (double& x : row) x = -x;
    }
  }
  std::vector<at::Tensor> negated_costs;
  for (const Matrix& m : negated) negated_costs.push_back(to_tensor(m, device));
  std::tie(row_ind, col_ind) = cora::linear_sum_assignment(negated_costs, /*maximize=*/true);
  for (size_t p = 0; p < negated.size(); ++p) {
    check_result(negated[p], true, row_ind[p], col_ind[p], dev + "maximize, costs[" + std::to_string(p) + "]");
  }

  // The packed op on the first two matrices: pairs sorted by problem, then row.
  const at::Tensor flat = at::cat({costs[0].reshape(-1), costs[1].reshape(-1)});
  const at::Tensor rows = at::tensor(std::vector<int64_t>{3, 4}), cols = at::tensor(std::vector<int64_t>{3, 2});
  const at::Tensor offsets = at::tensor(std::vector<int64_t>{0, 9});
  const auto [r, c, prob] = cora::batched_linear_assignment(flat, rows, cols, offsets);
  check(prob.cpu().equal(at::tensor(std::vector<int64_t>{0, 0, 0, 1, 1})), dev + "packed op: problem of each pair");
  const at::Tensor first = prob.eq(0), second = prob.eq(1);
  check_result(mats[0], false, r.masked_select(first), c.masked_select(first), dev + "packed op, problem 0");
  check_result(mats[1], false, r.masked_select(second), c.masked_select(second), dev + "packed op, problem 1");

  // A NaN is an error naming the matrix.
  at::Tensor bad = to_tensor({{1, 2}, {NAN, 3}}, device);
  bool named = false;
  try {
    cora::linear_sum_assignment({costs[0], bad}, false);
  } catch (const c10::ValueError& e) {
    named = std::string(e.what()).find("costs[1] contains NaN") != std::string::npos;
  }
  check(named, dev + "a NaN in costs[1] did not raise c10::ValueError naming costs[1]");
}

}  // namespace

int main() { return cora_test::run_on_every_device("test_linear_assignment", run); }
