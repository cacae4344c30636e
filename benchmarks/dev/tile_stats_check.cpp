// Host check of prr::tile_stats / prr::tile_stats2 (csrc/include/prr/row_stats.h) against the element-wise
// RowStats::push on random tiles (ties, NaN, +-inf, mask token). No GPU needed:
//   g++ -O2 -std=c++20 -Icsrc/include benchmarks/dev/tile_stats_check.cpp -o /tmp/tsc && /tmp/tsc   # prints fails 0
#include <cstdio>
#include <random>
#include <vector>
#include <cmath>
#include "prr/row_stats.h"
using namespace prr;
constexpr int G = 8, NV = 8, N = G * NV;
int fails = 0;
template <int Variant>
void check(const std::vector<float>& x, int mask_k, int trial) {
  auto get = [&](int k) { return x[k]; };
  auto index = [&](int k) { return (int64_t)k; };
  auto first_eq = [&](int g, float v) { for (int e = 0; e < G; ++e) if (x[g * G + e] == v) return g * G + e; return -1; };
  RowStats<float, float> a = Variant == 1 ? tile_stats<float, float, N, G>(get, index, first_eq, mask_k)
                                          : tile_stats2<float, float, N, G>(get, index, first_eq, mask_k);
  RowStats<float, double> r; r.init();
  for (int k = 0; k < N; ++k) r.push(x[k], k, k == mask_k);
  bool ok = a.bad == r.bad;
  if (!r.bad) {
    ok = ok && a.c1 == r.c1 && a.c2 == r.c2 && a.i1 == r.i1 && (a.m == r.m || (std::isinf(a.m) && std::isinf(r.m)));
    if (r.usable()) {
      double p1a = a.prob(a.c1), p1r = r.prob(r.c1), ha = a.entropy(), hr = r.entropy();
      ok = ok && std::fabs(p1a - p1r) <= 1e-5 * p1r + 1e-7 && std::fabs(ha - hr) <= 1e-5 * std::fabs(hr) + 1e-6;
      if (!ok) printf("p1 %g %g H %g %g\n", p1a, p1r, ha, hr);
    }
  }
  if (!ok) { if (++fails < 10) printf("variant %d trial %d mask %d: bad %d/%d c1 %g/%g c2 %g/%g i1 %ld/%ld m %g/%g\n", Variant, trial, mask_k, a.bad, r.bad, a.c1, r.c1, a.c2, r.c2, (long)a.i1, (long)r.i1, a.m, r.m); }
}
int main() {
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0, 3);
  std::uniform_int_distribution<int> ui(-3, 3), kk(0, N - 1), kind(0, 9);
  for (int trial = 0; trial < 200000; ++trial) {
    std::vector<float> x(N);
    int kd = kind(rng);
    for (auto& v : x) v = kd < 4 ? nd(rng) : (float)ui(rng);
    if (kd == 5) for (int i = 0; i < 8; ++i) x[kk(rng)] = -INFINITY;
    if (kd == 6) { for (auto& v : x) v = -INFINITY; x[kk(rng)] = 1.0f; }
    if (kd == 7) x[kk(rng)] = NAN;
    if (kd == 8 && trial % 3 == 0) x[kk(rng)] = INFINITY;
    if (kd == 9 && trial % 7 == 0) for (auto& v : x) v = -INFINITY;
    if (kd == 2) x[kk(rng)] = 40.0f;  // peaked
    int mask_k = (trial % 3 == 0) ? kk(rng) : -1;
    if (mask_k >= 0 && trial % 2) x[mask_k] = 60.0f;
    check<1>(x, mask_k, trial);
    check<2>(x, mask_k, trial);
  }
  printf("fails %d\n", fails);
}
