// Batched linear assignment: the solver shared by the CPU and CUDA kernels, written once. The
// semantics are specified in cora/ops/linear_assignment.py; this file only computes them.
//
// Each problem is solved by the shortest augmenting path method of Crouse (2016), as scipy's
// linear_sum_assignment (scipy/optimize/_lsap/rectangular_lsap.cpp): same arithmetic, same scan
// order and the same tie rule, so that both give the same indices in most tied cases too.
//
// The code is generic over a Team: the threads that solve one problem together. A team of one
// (SerialTeam, below) is the CPU kernel; a CUDA warp or block is a team of 32 or more
// (csrc/cuda/linear_assignment.cu). Team members split every column scan (member r takes
// positions r, r + size, ...; a team of one scans by column instead, see ScansByColumn), combine
// their partial results with the team's reductions, which
// give every member the same answer, and leave the sequential steps (editing the list of remaining
// columns, augmenting) to member 0, followed by team.sync(). A Team provides:
//   int32_t rank() const;  int32_t size() const;  void sync() const;
//   Choice argmin(Choice) const;  double min(double) const;  double max(double) const;
//   bool any(bool) const;
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace cora {
namespace lsa_detail {

// Per-problem outcome, written by the kernels and turned into errors by the host.
enum Status : int8_t {
  kSolved = 0,
  kDropped = 1,    // solved; some pairs were forbidden (+inf) and are marked for removal
  kNonFinite = 2,  // NaN or -inf cost: an error
  kOverflow = 3,   // float64 overflow in the reduced costs (finite costs near 1e308): an error
};

C10_HOST_DEVICE inline double inf() {
  return static_cast<double>(INFINITY);
}

// A candidate column of one shortest-path step, ordered by (value, tie). scipy scans the remaining
// columns in order and keeps the first minimum, except that an equal value in an unassigned column
// replaces it (finding a sink early matters on integer costs with many ties): the winner is the
// last unassigned column among the minima, else the first one. tie = nc - 1 - pos for unassigned
// and nc + pos for assigned columns encodes that as a total order, so a team's reduction picks
// scipy's column whatever the split. pos (the position in the remaining list) is decoded from tie.
struct Choice {
  double value;
  int32_t tie;
};

C10_HOST_DEVICE inline Choice make_choice(double value, int32_t pos, bool unassigned, int32_t nc) {
  return {value, pos < 0 ? INT32_MAX : (unassigned ? nc - 1 - pos : nc + pos)};
}

C10_HOST_DEVICE inline bool better(const Choice& a, const Choice& b) {
  return a.value < b.value || (a.value == b.value && a.tie < b.tie);
}

C10_HOST_DEVICE inline int32_t position_of(int32_t tie, int32_t nc) {
  return tie < nc ? nc - 1 - tie : tie - nc;
}

// The threads of one CPU task: a team of one.
struct SerialTeam {
  C10_HOST_DEVICE int32_t rank() const { return 0; }
  C10_HOST_DEVICE int32_t size() const { return 1; }
  C10_HOST_DEVICE void sync() const {}
  C10_HOST_DEVICE Choice argmin(Choice c) const { return c; }
  C10_HOST_DEVICE double min(double x) const { return x; }
  C10_HOST_DEVICE double max(double x) const { return x; }
  C10_HOST_DEVICE bool any(bool x) const { return x; }
};

// Whether a team scans by column (below) instead of by position in the remaining list: a team of
// one, whose scans then vectorise (contiguous columns, no indirection), with the tie rule of the
// position scan kept through each column's position (Workspace::order).
template <typename Team>
struct ScansByColumn {
  static constexpr bool value = false;
};
template <>
struct ScansByColumn<SerialTeam> {
  static constexpr bool value = true;
};

// Scratch of one problem with nr <= nc: nr + 2 nc doubles and nr + 3 nc ints.
struct Workspace {
  double* u;            // [nr] row duals
  double* v;            // [nc] column duals
  double* spc;          // [nc] shortest path cost to each column
  int32_t* col4row;     // [nr]
  int32_t* row4col;     // [nc] (-1: unassigned)
  int32_t* path;        // [nc] predecessor row of each column
  int32_t* remaining;   // [nc] columns not yet reached, then (from the end) the columns reached
  // Optional first-step shortcut (filled by a RowMinima functor, see solve_problem): the minimum of
  // each row and its column when that minimum is unique, else -1.
  double* row_min;      // [nr] or nullptr
  int32_t* row_arg;     // [nr] or nullptr
  int32_t* order;       // [nc] position of each column in remaining (teams that scan by column only)

  C10_HOST_DEVICE static int64_t doubles(int64_t nr, int64_t nc) { return nr + 2 * nc; }
  C10_HOST_DEVICE static int64_t ints(int64_t nr, int64_t nc) { return nr + 3 * nc; }
  C10_HOST_DEVICE static Workspace carve(double* d, int32_t* i, int64_t nr, int64_t nc) {
    return {d, d + nr, d + nr + nc, i, i + nr, i + nr + nc, i + nr + 2 * nc, nullptr, nullptr, nullptr};
  }
};

// The problem as the solver sees it: nr = min(rows, cols) rows, the stored matrix transposed when
// it is tall (as scipy does). Problems with a +inf (forbidden) pair are solved on a completed
// matrix (see `complete`).
template <typename scalar_t>
struct CostView {
  const scalar_t* data;  // the stored rows x cols matrix, row-major
  int64_t ld;            // its number of columns
  bool transposed;       // solver (i, j) is stored (j, i)
  bool completed;        // finite c -> (c - lo) * inv_range, +inf -> big
  double lo, inv_range, big;

  C10_HOST_DEVICE double raw(int32_t i, int32_t j) const {
    return static_cast<double>(transposed ? data[int64_t(j) * ld + i] : data[int64_t(i) * ld + j]);
  }
  C10_HOST_DEVICE double operator()(int32_t i, int32_t j) const {
    const double c = raw(i, j);
    if (!completed) return c;
    return c == inf() ? big : (c - lo) * inv_range;
  }
};

// Forbidden pairs (+inf). Finite costs are mapped onto [0, 1] and +inf onto big = n + 2, where n is
// the size of every full matching (the smaller side). Then a full matching with f forbidden pairs
// costs between f * big and f * big + (n - f), so one with fewer forbidden pairs always costs less
// (by at least big - n = 2): the optimum first has the fewest forbidden pairs, i.e. the most allowed
// ones, and among those the least finite cost. Any allowed matching completes to a full one with
// forbidden pairs, so dropping those leaves a maximum-size allowed matching of minimum cost. The
// rescaling keeps every reduced cost below ~n^2, far from float64 limits, and costs ~n^2 * 1e-16
// of the finite range in accuracy. If all finite costs are equal they all map to 0 and big = 1.
// Returns false when the finite range overflows float64 (costs near +-1e308).
template <typename scalar_t>
C10_HOST_DEVICE bool complete(CostView<scalar_t>& view, double lo, double hi, int64_t n) {
  const double range = hi - lo;
  if (!(range < inf())) return false;
  view.completed = true;
  view.lo = lo;
  view.inv_range = range > 0 ? 1.0 / range : 0.0;
  view.big = range > 0 ? static_cast<double>(n) + 2.0 : 1.0;
  return true;
}

// The scan of one Dijkstra step by column (ScansByColumn teams): relaxes the shortest path costs of
// the columns still remaining through row i (the first step: sets them, from row i = cur), and returns
// scipy's choice among them. Two passes: the update and the minimum (no branch, no indirection: it
// vectorises), then the tie rule among the columns at the minimum (usually one).
template <typename Cost>
C10_HOST_DEVICE Choice scan_columns(const Cost& cost, int32_t i, double min_val, double u_i, int32_t nc,
                                    int32_t num_remaining, bool first, const Workspace& w) {
  double best = inf();
  if (first) {
    for (int32_t k = 0; k < nc; ++k) {
      const double r = min_val + cost(i, k) - u_i - w.v[k];
      w.spc[k] = r;
      best = r < best ? r : best;
    }
  } else {
    for (int32_t k = 0; k < nc; ++k) {
      const double r = min_val + cost(i, k) - u_i - w.v[k];
      const double s = w.spc[k];
      const int32_t p = w.path[k];
      // `order[k] < num_remaining` stays written out twice: held in a bool, GCC no longer vectorised
      // the loop (packed op 20% slower).
      const bool lower = w.order[k] < num_remaining && r < s;
      const double t = lower ? r : s;
      w.spc[k] = t;
      w.path[k] = lower ? i : p;
      best = w.order[k] < num_remaining && t < best ? t : best;
    }
  }
  Choice choice = make_choice(best, -1, false, nc);
  if (!(best < inf())) return choice;
  for (int32_t k = 0; k < nc; ++k) {
    if (w.spc[k] != best) continue;
    const int32_t pos = first ? nc - 1 - k : w.order[k];
    if (pos >= num_remaining) continue;
    const Choice c = make_choice(best, pos, w.row4col[k] < 0, nc);
    if (better(c, choice)) choice = c;
  }
  return choice;
}

// Minimum-cost assignment of all nr rows to distinct columns (nr <= nc) into w.col4row / w.row4col.
// Returns false if a reduced cost overflowed (then the outputs are meaningless).
//
// Inside a member's scan, `r < best || (r == best && unassigned)` is scipy's rule restricted to the
// member's positions, i.e. the minimum of the total order of Choice over them.
//
// With row minima (w.row_min / w.row_arg valid, `minima` true), the first step of row cur needs no
// scan when its minimum is unique, at column j with v[j] == 0, and no v is positive: v only
// decreases from 0 in exact arithmetic (reached columns have spc <= min_val), so every other reduced
// cost c - v >= c is strictly above c[cur][j], the reduced cost of j. The scan would find j, with the
// same value bits; a positive v (rounding) turns the shortcut off for the rest of the problem.
template <typename Team, typename Cost>
C10_HOST_DEVICE bool solve(const Team& team, const Cost& cost, int32_t nr, int32_t nc, const Workspace& w,
                           bool minima) {
  const int32_t rank = team.rank(), step = team.size();
  for (int32_t j = rank; j < nc; j += step) {
    w.v[j] = 0;
    w.row4col[j] = -1;
  }
  for (int32_t i = rank; i < nr; i += step) {
    w.u[i] = 0;
    w.col4row[i] = -1;
  }
  team.sync();

  for (int32_t cur = 0; cur < nr; ++cur) {
    // Dijkstra from row cur over the columns, until an unassigned column (the sink) is reached.
    // First step: all columns remain, listed by scipy in reverse order (remaining[pos] = nc - 1 - pos;
    // a constant matrix then gives the identity), and every shortest path cost is +inf, which row
    // cur always beats. Only the minimum is computed here: on most rows (always on tall problems
    // with few rows) the first column reached is unassigned, and the step's spc / path / remaining
    // are never read. Otherwise they are written below, spc recomputed bit for bit (a scan by column
    // has written it already).
    const double u_cur = w.u[cur];
    double min_val = 0;
    double best_value = inf();
    int32_t best_pos = -1;
    bool scanned = false;  // by column: spc holds the first step's costs
    if (minima && w.row_arg[cur] >= 0 && w.v[w.row_arg[cur]] == 0.0) {
      best_value = w.row_min[cur];
      best_pos = nc - 1 - w.row_arg[cur];
    } else if constexpr (ScansByColumn<Team>::value) {
      const Choice c = scan_columns(cost, cur, min_val, u_cur, nc, nc, true, w);
      best_value = c.value;
      best_pos = c.tie == INT32_MAX ? -1 : position_of(c.tie, nc);
      scanned = true;
    } else {
      for (int32_t it = rank; it < nc; it += step) {
        const int32_t j = nc - 1 - it;
        const double r = min_val + cost(cur, j) - u_cur - w.v[j];
        if (r < best_value || (r == best_value && w.row4col[j] < 0)) {
          best_value = r;
          best_pos = it;
        }
      }
    }
    Choice best = team.argmin(
        make_choice(best_value, best_pos, best_pos >= 0 && w.row4col[nc - 1 - best_pos] < 0, nc));
    min_val = best.value;
    if (!(min_val < inf())) return false;  // NaN or +inf: every member returns (same value)
    int32_t pos = position_of(best.tie, nc);
    int32_t j = nc - 1 - pos;
    if (w.row4col[j] < 0) {
      // Sink at once: the dual update is u[cur] += min_val (v[j] -= min_val - spc[j] = 0).
      team.sync();  // everyone has read row4col[j]
      if (rank == 0) {
        w.u[cur] += min_val;
        w.row4col[j] = cur;
        w.col4row[cur] = j;
      }
      team.sync();
      continue;
    }
    for (int32_t it = rank; it < nc; it += step) {
      const int32_t k = nc - 1 - it;
      w.remaining[it] = k;
      if (!scanned) w.spc[k] = 0.0 + cost(cur, k) - u_cur - w.v[k];
      w.path[k] = cur;
      if constexpr (ScansByColumn<Team>::value) w.order[k] = it;
    }

    int32_t num_remaining = nc;
    int32_t sink;
    while (true) {
      team.sync();  // scan writes visible; everyone has read remaining[pos] and row4col[j]
      if (rank == 0) {
        // Move j to the reached part at the end; the order of the rest is scipy's.
        w.remaining[pos] = w.remaining[num_remaining - 1];
        w.remaining[num_remaining - 1] = j;
        if constexpr (ScansByColumn<Team>::value) {
          w.order[w.remaining[pos]] = pos;
          w.order[j] = num_remaining - 1;
        }
      }
      --num_remaining;
      if (w.row4col[j] < 0) {
        sink = j;
        break;
      }
      const int32_t i = w.row4col[j];
      const double u_i = w.u[i];
      team.sync();  // the edit of remaining is visible
      if (ScansByColumn<Team>::value && 2 * num_remaining >= nc) {
        // By column while most columns remain (the scan then also passes the reached ones).
        best = scan_columns(cost, i, min_val, u_i, nc, num_remaining, false, w);
      } else {
        best_value = inf();
        best_pos = -1;
        for (int32_t it = rank; it < num_remaining; it += step) {
          const int32_t k = w.remaining[it];
          const double r = min_val + cost(i, k) - u_i - w.v[k];
          double s = w.spc[k];
          if (r < s) {
            w.spc[k] = s = r;
            w.path[k] = i;
          }
          if (s < best_value || (s == best_value && w.row4col[k] < 0)) {
            best_value = s;
            best_pos = it;
          }
        }
        best = team.argmin(
            make_choice(best_value, best_pos, best_pos >= 0 && w.row4col[w.remaining[best_pos]] < 0, nc));
      }
      min_val = best.value;
      if (!(min_val < inf())) return false;
      pos = position_of(best.tie, nc);
      j = w.remaining[pos];  // remaining is not written by the scan: no sync needed before reading
    }
    team.sync();  // the last edit of remaining is visible

    // Dual update over the reached columns remaining[num_remaining..nc) and their rows (the rows
    // reached are cur and the owners of the reached columns other than the sink).
    if (rank == 0) w.u[cur] += min_val;
    bool v_positive = false;
    for (int32_t k = num_remaining + rank; k < nc; k += step) {
      const int32_t c = w.remaining[k];
      const double d = min_val - w.spc[c];
      if (c != sink) w.u[w.row4col[c]] += d;
      w.v[c] -= d;
      v_positive |= w.v[c] > 0.0;
    }
    minima = minima && !team.any(v_positive);
    team.sync();
    if (rank == 0) {
      int32_t c = sink;
      while (true) {
        const int32_t r = w.path[c];
        w.row4col[c] = r;
        const int32_t previous = w.col4row[r];
        w.col4row[r] = c;
        c = previous;
        if (r == cur) break;
      }
    }
    team.sync();
  }
  return true;
}

// Marks a problem's n output slots as dropped (col = -1).
template <typename Team>
C10_HOST_DEVICE void drop_all(const Team& team, int64_t n, int64_t p, int64_t* row, int64_t* col, int64_t* prob) {
  for (int64_t k = team.rank(); k < n; k += team.size()) {
    row[k] = -1;
    col[k] = -1;
    prob[k] = p;
  }
}

// A RowMinima functor that computes nothing (the solver then scans every first step).
struct NoRowMinima {
  template <typename scalar_t>
  C10_HOST_DEVICE bool operator()(const scalar_t*, int64_t, int64_t, const Workspace&) const {
    return false;
  }
};

// Solves problem p (rows x cols, row-major at `data`) and writes its min(rows, cols) pairs, sorted
// by row, to row/col/prob (slots of this problem only). Pairs whose cost is +inf get col = -1.
// Returns the problem's Status (the same on every team member).
// row_minima(data, rows, cols, w) may check that all costs are finite, fill w.row_min / w.row_arg for
// the solver's rows and return true; otherwise it returns false. It runs on every team member.
template <typename Team, typename scalar_t, typename RowMinima>
C10_HOST_DEVICE Status solve_problem(const Team& team, const scalar_t* data, int64_t rows, int64_t cols,
                                     const Workspace& w, int64_t p, int64_t* row, int64_t* col, int64_t* prob,
                                     const RowMinima& row_minima) {
  const int64_t n = rows < cols ? rows : cols;
  if (n == 0) return kSolved;
  const int32_t rank = team.rank(), step = team.size();
  const int64_t count = rows * cols;

  // A RowMinima that succeeds has also checked that every cost is finite. Otherwise: one pass for
  // the error / forbidden flags (NaN and -inf fail x > -inf), a second for the range of the finite
  // costs only when a +inf is present.
  const bool minima = row_minima(data, rows, cols, w);
  bool forbidden = false;
  CostView<scalar_t> view{data, cols, cols < rows, false, 0.0, 0.0, 0.0};
  if (!minima) {
    int bad = 0, inf_seen = 0;  // int, not bool: the CPU loop vectorises
    for (int64_t k = rank; k < count; k += step) {
      const scalar_t x = data[k];
      bad |= !(x > -static_cast<scalar_t>(INFINITY));
      inf_seen |= x == static_cast<scalar_t>(INFINITY);
    }
    if (team.any(bad != 0)) {
      drop_all(team, n, p, row, col, prob);
      return kNonFinite;
    }
    forbidden = team.any(inf_seen != 0);
  }
  if (forbidden) {
    double lo = inf(), hi = -inf();
    for (int64_t k = rank; k < count; k += step) {
      const double x = static_cast<double>(data[k]);
      if (x < inf()) {
        lo = x < lo ? x : lo;
        hi = x > hi ? x : hi;
      }
    }
    lo = team.min(lo);
    hi = team.max(hi);
    if (!(lo <= hi)) {  // every pair is forbidden
      drop_all(team, n, p, row, col, prob);
      return kDropped;
    }
    if (!complete(view, lo, hi, n)) {
      drop_all(team, n, p, row, col, prob);
      return kOverflow;
    }
  }

  const int32_t nr = static_cast<int32_t>(n);
  const int32_t nc = static_cast<int32_t>(rows < cols ? cols : rows);
  if (!solve(team, view, nr, nc, w, minima)) {
    drop_all(team, n, p, row, col, prob);
    return kOverflow;
  }

  // Pairs in the caller's orientation, sorted by row. A dropped pair keeps its slot with col = -1.
  bool dropped = false;
  if (!view.transposed) {
    for (int32_t i = rank; i < nr; i += step) {
      const int32_t j = w.col4row[i];
      const bool keep = !forbidden || view.raw(i, j) < inf();
      row[i] = i;
      col[i] = keep ? j : -1;
      prob[i] = p;
      dropped |= !keep;
    }
  } else if (rank == 0) {
    // The caller's rows are the solver's columns: the assigned ones, in order. (Sequential, small
    // next to the solve: an insertion sort of the nr pairs when that is cheaper than a pass over nc.)
    if (int64_t(nr) * nr <= nc) {
      for (int32_t i = 0; i < nr; ++i) {
        const int64_t j = w.col4row[i];
        int64_t k = i;
        for (; k > 0 && row[k - 1] > j; --k) {
          row[k] = row[k - 1];
          col[k] = col[k - 1];
        }
        row[k] = j;
        col[k] = i;
      }
    } else {
      int64_t k = 0;
      for (int32_t j = 0; j < nc; ++j) {
        if (w.row4col[j] < 0) continue;
        row[k] = j;
        col[k] = w.row4col[j];
        ++k;
      }
    }
    for (int64_t k = 0; k < nr; ++k) {
      const bool keep = !forbidden || view.raw(static_cast<int32_t>(col[k]), static_cast<int32_t>(row[k])) < inf();
      col[k] = keep ? col[k] : -1;
      prob[k] = p;
      dropped |= !keep;
    }
  }
  return team.any(dropped) ? kDropped : kSolved;
}

}  // namespace lsa_detail
}  // namespace cora
