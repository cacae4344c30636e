// prr/select.h — how many of a sequence's candidates to commit, given their keys sorted descending.
//
// Every rule commits a prefix of the candidates ordered by the policy's key (descending; lowest column first on
// ties); this function only decides the prefix length. Keys are compared in fp64, sums run serially in order, so
// the CPU and CUDA kernels take identical decisions on identical keys. Python twin:
// prr_ext/reference.py::commit_count.
//   LowConfidence, RandomRemask: min(k_i, n)
//   Threshold, PRR:  max(floor, #{key >= tau})
//   Factor:          max(floor, longest prefix with (m + 1) * (1 - c_m) < f for every m <= prefix, 1-indexed);
//                    Fast-dLLM's variant: the prefix before the first m >= 2 with c_m < 1 - f / (m + 1), all n when
//                    that is the last
//   LocalLeap, SlowFast, KLASS and R²'s passes: prr/rules.h
//   EntropyBound:    key = -H (ascending entropy); max(floor, longest prefix with sum(H before m) <= gamma)
//   floor = max(k_i, 1), or 1 for PRR without the schedule union; the result is capped at n.
#pragma once

#include <cmath>
#include <cstdint>

#include "params.h"

namespace prr {

// The ranking key of a candidate as the selection sees it: a NaN key (e.g. from a NaN external PRR score) ranks
// last and never passes a threshold. Twin: prr_ext/reference.py::rank_key.
PRR_HD double rank_key(double k) { return k != k ? -static_cast<double>(INFINITY) : k; }

// Whether the rule reads the sorted keys one by one (Factor, EntropyBound). The others need only n and k, plus for
// Threshold and PRR the number of keys >= param (their passing set is a prefix of the sorted keys), so a kernel may
// count instead of sorting and call commit_count_from.
PRR_HD bool commit_count_needs_order(int policy) { return policy == kFactor || policy == kEntropyBound; }

// The rule given `extra`, the length of the prefix that passes the policy's test (Threshold, PRR: #{key >= param};
// unused by LowConfidence and RandomRemask).
PRR_HD int64_t commit_count_from(int policy, int64_t n, int64_t k, int64_t extra, bool union_schedule) {
  if (n <= 0) return 0;
  if (policy == kLowConfidence || policy == kRandomRemask) return k < n ? k : n;
  const int64_t floor_ = (policy == kPRR && !union_schedule) ? 1 : (k > 1 ? k : 1);
  const int64_t c = extra > floor_ ? extra : floor_;
  return c < n ? c : n;
}

// Factor's test at 0-based rank m: (m + 2) * (1 - key_m) < f. Along keys sorted descending (keys <= 1) its left
// side never decreases, so the passing ranks are a prefix and the test at rank floor - 1 decides whether any rank
// beyond the floor passes; at a fixed m it holds for every key above some bound, so the floor-th key passes iff at
// least floor keys pass the rank floor - 1 test (a count, no sort: the CUDA kernel's radix path).
PRR_HD bool factor_passes(int64_t m, double key, double f) { return double(m + 2) * (1.0 - key) < f; }

// Fast-dLLM's get_transfer_index_dynamic at 0-based rank m: threshold -1 at rank 0, else 1 - f / (m + 2), passed at
// equality. Its scan commits the ranks before the first failure, and all of them when the last rank is the first
// to fail (commit_count).
PRR_HD bool factor_passes_fast_dllm(int64_t m, double key, double f) {
  return m == 0 || key >= 1.0 - f / double(m + 2);
}

PRR_HD int64_t commit_count(int policy, const double* keys_sorted, int64_t n, int64_t k, double param,
                            bool union_schedule, int factor_variant = kFactorPaper) {
  int64_t extra = 0;
  if (policy == kThreshold || policy == kPRR) {
    while (extra < n && keys_sorted[extra] >= param) ++extra;
  } else if (policy == kFactor && factor_variant == kFactorFastDllm) {
    while (extra < n && factor_passes_fast_dllm(extra, keys_sorted[extra], param)) ++extra;
    if (extra == n - 1) extra = n;
  } else if (policy == kFactor) {
    while (extra < n && factor_passes(extra, keys_sorted[extra], param)) ++extra;
  } else if (policy == kEntropyBound) {
    double before = 0.0;  // sum of the entropies ahead of position `extra`
    while (extra < n && before <= param) {
      before += -keys_sorted[extra];
      ++extra;
    }
  }
  return commit_count_from(policy, n, k, extra, union_schedule);
}

}  // namespace prr
