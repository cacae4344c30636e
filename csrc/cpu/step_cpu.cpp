// step_cpu.cpp — CPU implementation of prr_ext::step.
//
// What it fuses: for every masked position of the active block, ONE streaming pass over its logits row computes
// the softmax shift/normaliser, the first-index argmax and second-best logit, the entropy and (when sampling) the
// Gumbel-max candidate (prr/row_stats.h); the PRR controller then runs on the token's features
// (prr/controller.h), and a second pass over the row happens only for PRR's temperature shaping. Finally each
// sequence sorts its candidates by the policy's key and commits a prefix (prr/select.h). Tokens are processed in
// parallel, then sequences. Accumulation is in double. Spec: prr_ext/reference.py; CUDA twin: csrc/cuda/step_cuda.cu.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "prr/controller.h"
#include "prr/params.h"
#include "prr/philox.h"
#include "prr/row_stats.h"
#include "prr/rules.h"
#include "prr/select.h"
#include "step_args.h"

namespace prr_ext {
namespace {

using prr::StepParams;

// Per-sequence quantities fixed for the whole step.
struct SeqInfo {
  bool active = false;
  int64_t step = 0, nfe = 0;
  int64_t first_token = 0, num_tokens = 0;  // range in the token list (block order)
  prr::FeatureInputs feat{};
};

// One candidate token: a masked position of the active block of an active sequence.
struct Token {
  int64_t b = 0, col = 0, r = 0, pos = 0;  // sequence, canvas column, logits row, position in the block
  bool usable = false;                     // no NaN/+Inf in the row, a finite non-mask logit, a valid candidate
  int64_t cand = -1, argmax = -1;
  double conf = 0.0;  // p(candidate) in the confidence dtype
  double key = 0.0;   // the policy's ranking key
  float stats[prr::kNumStats];
};

// Optional inputs, as raw pointers (nullptr when absent).
struct Inputs {
  const int64_t* candidates = nullptr;  // [B, Lr]
  const float* random_conf = nullptr;   // [B, Lr]
  const float* scores = nullptr;        // [B, Lr]
  const float* extra = nullptr;         // [B, Lr, n_extra]
  const float* ctrl = nullptr;          // packed controller
  const int64_t* seed = nullptr;        // [B]
  double* rule_state = nullptr;         // [B, block_length, kRuleStateCols]
  float* prev_logp = nullptr;           // [B, block_length, V] (KLASS)
};

// KLASS: KL(p || p_prev) of a row against its kept log-probabilities (fp64, terms with p == 0 add nothing), which
// are then replaced by this row's (fp32). Twin: prr_ext/reference.py::kl_divergence.
template <typename scalar_t>
double kl_and_keep(const scalar_t* row, int64_t V, float* keep) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t v = 0; v < V; ++v) m = std::max(m, static_cast<double>(row[v]));
  double z = 0.0;
  for (int64_t v = 0; v < V; ++v) z += std::exp(static_cast<double>(row[v]) - m);
  const double log_z = std::log(z);
  double kl = 0.0;
  for (int64_t v = 0; v < V; ++v) {
    const double lp = (static_cast<double>(row[v]) - m) - log_z, p = std::exp(lp);
    if (p > 0.0) kl += p * (lp - static_cast<double>(keep[v]));
    keep[v] = static_cast<float>(lp);
  }
  return kl;
}

// Round a probability to the confidence dtype (bf16/fp16 round an fp32 value, as torch's reduced softmax does).
inline double round_conf(double p, int conf_dtype) {
  switch (conf_dtype) {
    case prr::kConfBF16: return static_cast<float>(c10::BFloat16(static_cast<float>(p)));
    case prr::kConfF16: return static_cast<float>(c10::Half(static_cast<float>(p)));
    case prr::kConfF64: return p;
    default: return static_cast<float>(p);
  }
}

// Everything per token up to its ranking key. C: compute type (float, or double for fp64 confidence).
template <typename scalar_t, typename C>
void process_token(const StepParams& p, const scalar_t* row, Token& t, const SeqInfo& s, const Inputs& in,
                   int64_t* traj, float* prev_p1) {
  using Stats = prr::RowStats<C, double>;
  const int64_t V = p.V, mask = p.mask_id, ri = t.b * p.Lr + t.r;
  const uint64_t seed = static_cast<uint64_t>(in.seed[t.b]);
  for (float& v : t.stats) v = std::numeric_limits<float>::quiet_NaN();

  // ---- pass 1: streaming statistics (and the Gumbel-max sample)
  Stats st;
  st.init();
  const bool sample = p.temperature > 0.0f && in.candidates == nullptr;
  if (sample) {
    const float inv_t = static_cast<float>(1.0 / static_cast<double>(p.temperature));
    for (int64_t g = 0; g * 4 < V; ++g) {
      const prr::Philox4 bits = prr::gumbel_block(seed, t.col, s.nfe, g);
      for (int lane = 0; lane < 4 && g * 4 + lane < V; ++lane) {
        const int64_t v = g * 4 + lane;
        const scalar_t raw = row[v];
        st.push(static_cast<C>(raw), v, v == mask);
        if (v != mask) st.push_sample(static_cast<float>(raw) * inv_t + prr::gumbel_from_bits(bits.w[lane]), v);
      }
    }
  } else {
    for (int64_t v = 0; v < V; ++v) st.push(static_cast<C>(row[v]), v, v == mask);
  }
  int64_t cand = sample ? st.gidx : st.i1;
  if (in.candidates != nullptr) {
    cand = in.candidates[ri];
    if (cand < 0 || cand >= V || cand == mask) cand = -1;  // never commit an invalid token
  }
  t.usable = st.usable() && cand >= 0 && cand < V;
  if (!t.usable) {
    if (p.policy == prr::kKLASS)  // no distribution kept for this position
      in.rule_state[(t.b * p.block_length + t.pos) * prr::kRuleStateCols + prr::kRsKlCount] = -1.0;
    return;
  }
  t.cand = cand;

  const double conf = round_conf(static_cast<double>(st.prob(static_cast<C>(row[cand]))), p.conf_dtype);
  const float p1 = static_cast<float>(st.prob(st.c1)), p2 = static_cast<float>(st.prob(st.c2));
  const float entropy = static_cast<float>(st.entropy());
  t.conf = conf;
  t.argmax = st.i1;
  t.stats[prr::kStatConf] = static_cast<float>(conf);
  t.stats[prr::kStatP1] = p1;
  t.stats[prr::kStatP2] = p2;
  t.stats[prr::kStatEntropy] = entropy;

  // ---- trajectory of the argmax at this block position (PRR features; kept for every policy)
  if (traj[0] != st.i1) traj[1] = s.step;
  traj[0] = st.i1;
  const float prev = *prev_p1;
  *prev_p1 = p1;

  // ---- KLASS: the KL to the previous step's distribution (kept when the count is >= 0), and this step's kept
  if (p.policy == prr::kKLASS) {
    double* count = in.rule_state + (t.b * p.block_length + t.pos) * prr::kRuleStateCols + prr::kRsKlCount;
    double kl = kl_and_keep(row, V, in.prev_logp + (t.b * p.block_length + t.pos) * V);
    if (*count < 0.0) kl = std::numeric_limits<double>::infinity();
    *count = kl < p.rule.kl_threshold ? std::max(*count, 0.0) + 1.0 : 0.0;
  }

  // ---- the policy's key
  switch (p.policy) {
    case prr::kRandomRemask:
      t.key = in.random_conf ? double(in.random_conf[ri]) : double(prr::random_conf(seed, t.col, s.nfe));
      break;
    case prr::kEntropyBound:
      t.key = -static_cast<double>(entropy);
      break;
    case prr::kPRR: {
      const prr::MlpLayout L = prr::MlpLayout::make(p.mlp_in, p.mlp_h1, p.mlp_h2);
      float score;
      if (in.scores != nullptr) {
        score = in.scores[ri];
      } else {
        float f[prr::kMaxFeatures];
        prr::token_features(s.feat, static_cast<float>(t.pos), p1, p2, entropy, static_cast<float>(traj[1]), prev, f);
        for (int k = 0; k < p.n_extra; ++k) f[prr::kNumBaseFeatures + k] = in.extra[ri * p.n_extra + k];
        score = prr::mlp_forward(in.ctrl, L, f);
      }
      const float p_cand = static_cast<float>(st.prob(static_cast<C>(row[cand])));
      float shaped, temp = std::numeric_limits<float>::quiet_NaN();
      if (p.shaping == prr::kShapeTemperature) {
        temp = prr::temperature_of(in.ctrl, L, score);
        // ---- pass 2: exact p(candidate) under softmax(logits / T)
        const float inv_t = 1.0f / temp, mf = static_cast<float>(st.m);
        prr::TemperedSum<float, double> zt;
        zt.init();
        for (int64_t v = 0; v < V; ++v) zt.push(static_cast<float>(row[v]), mf, inv_t);
        shaped = static_cast<float>(
            static_cast<double>(std::exp((static_cast<float>(row[cand]) - mf) * inv_t)) / zt.z);
      } else if (p.shaping == prr::kShapePower) {
        shaped = prr::shape_power(p_cand, score, p.alpha);
      } else {
        shaped = prr::shape_weighted(p_cand, score, p.alpha);
      }
      t.stats[prr::kStatScore] = score;
      t.stats[prr::kStatTemperature] = temp;
      t.key = shaped;
      break;
    }
    default:
      t.key = conf;
  }
  t.key = prr::rank_key(t.key);
  t.stats[prr::kStatKey] = static_cast<float>(t.key);
}

// One sequence's active block as prr/rules.h reads it (the Blk interface documented there).
struct BlockOnCpu {
  std::vector<const Token*> at;  // block position -> its token (nullptr: not masked at the start of the step)
  const std::vector<int64_t>& ranked;  // token indices in rank order (usable ones)
  const std::vector<Token>& toks;
  int64_t lo;
  int64_t* xb;       // the sequence's canvas row
  bool* commit_row;  // the sequence's commit mask row
  double* rule_row;  // rule_state[b]

  BlockOnCpu(const std::vector<Token>& toks_, const SeqInfo& s, const std::vector<int64_t>& ranked_, int64_t BL,
             int64_t lo_, int64_t* xb_, bool* commit_row_, double* rule_row_)
      : at(BL, nullptr), ranked(ranked_), toks(toks_), lo(lo_), xb(xb_), commit_row(commit_row_), rule_row(rule_row_) {
    for (int64_t i = s.first_token; i < s.first_token + s.num_tokens; ++i) at[toks[i].pos] = &toks[i];
  }
  bool masked(int64_t j) const { return at[j] != nullptr; }
  bool usable(int64_t j) const { return at[j] != nullptr && at[j]->usable; }
  double conf(int64_t j) const { return at[j]->conf; }
  int64_t cand(int64_t j) const { return at[j]->cand; }
  int64_t argmax(int64_t j) const { return at[j]->argmax; }
  float p1(int64_t j) const { return at[j]->stats[prr::kStatP1]; }
  int64_t order(int64_t i) const { return toks[ranked[i]].pos; }
  bool committed(int64_t j) const { return commit_row[lo + j]; }
  void commit(int64_t j, int64_t token) {
    xb[lo + j] = token;
    commit_row[lo + j] = true;
  }
  double rule(int64_t j, int c) const { return rule_row[j * prr::kRuleStateCols + c]; }
  void set_rule(int64_t j, int c, double v) { rule_row[j * prr::kRuleStateCols + c] = v; }
};

// Move sequence b to its next block; adaptive policies also skip blocks that hold no masks.
void advance_block(const StepParams& p, const int64_t* xb, int64_t* rs) {
  rs[prr::kRsStep] = 0;
  int64_t next = rs[prr::kRsBlock] + 1;
  if (p.adaptive) {
    for (; next < p.num_blocks; ++next) {
      const int64_t lo = p.gen_start + next * p.block_length;
      const auto open = [&](int64_t v) { return prr::is_open(v, p.mask_id); };
      if (std::any_of(xb + lo, xb + lo + p.block_length, open)) break;
    }
  }
  rs[prr::kRsBlock] = next;
}

StepOutputs step_cpu(const StepArgs& a) {
  StepParams p = make_step_params(a);
  const at::Tensor& logits = a.logits;
  at::Tensor& x = a.x;
  const int64_t B = p.B, L = p.L, Lr = p.Lr, BL = p.block_length;
  auto commit = at::zeros({B, L}, x.options().dtype(at::kBool));
  auto tokens = at::full({B, Lr}, -1, x.options());
  auto stats = at::full({B, Lr, prr::kNumStats}, std::numeric_limits<float>::quiet_NaN(),
                        x.options().dtype(at::kFloat));
  if (B == 0) return {commit, tokens, stats};

  int64_t* xp = x.data_ptr<int64_t>();
  int64_t* rs = a.row_state.data_ptr<int64_t>();
  int64_t* tr = a.traj.data_ptr<int64_t>();
  float* pp = a.prev_p1.data_ptr<float>();
  const int64_t* plen = a.prompt_lens.data_ptr<int64_t>();
  double* rst = a.rule_state.data_ptr<double>();
  int64_t active = std::numeric_limits<int64_t>::max();
  for (int64_t b = 0; b < B; ++b) {
    // row_state is State-managed; a corrupt one must not turn into out-of-bounds reads or writes
    const int64_t* r = rs + b * prr::kRsCols;
    TORCH_CHECK(r[prr::kRsBlock] >= 0 && r[prr::kRsBlock] <= p.num_blocks && r[prr::kRsStep] >= 0 &&
                    r[prr::kRsStep] < p.block_cap && r[prr::kRsSchedN] >= 0 && r[prr::kRsSchedN] <= BL &&
                    r[prr::kRsNfe] >= 0,
                msg("row_state is corrupt at row ", b, " (block ", r[prr::kRsBlock], ", step ", r[prr::kRsStep],
                    ", n ", r[prr::kRsSchedN], ", nfe ", r[prr::kRsNfe], "); build it with prr_ext.State"));
    active = std::min(active, r[prr::kRsBlock]);
  }
  if (active >= p.num_blocks) return {commit, tokens, stats};
  const int64_t lo = p.gen_start + active * BL, hi = lo + BL;
  p.row_offset = (Lr == L) ? 0 : lo;

  // ---- per sequence: enter the block if needed, count masks, list the candidate positions (block order)
  std::vector<SeqInfo> seqs(B);
  std::vector<Token> toks;
  for (int64_t b = 0; b < B; ++b) {
    int64_t* r = rs + b * prr::kRsCols;
    if (r[prr::kRsBlock] != active) continue;
    const int64_t* xb = xp + b * L;
    SeqInfo& s = seqs[b];
    s.active = true;
    s.step = r[prr::kRsStep];
    s.nfe = r[prr::kRsNfe];
    int64_t masks_in_block = 0, masks_in_row = 0;
    for (int64_t c = lo; c < hi; ++c) masks_in_block += prr::is_open(xb[c], p.mask_id);
    for (int64_t c = p.gen_start; c < L; ++c) masks_in_row += prr::is_open(xb[c], p.mask_id);
    if (s.step == 0) {  // entering the block: fix the schedule's n, reset the trajectory features
      r[prr::kRsSchedN] = masks_in_block;
      for (int64_t j = 0; j < BL; ++j) {
        tr[(b * BL + j) * 2] = -1;
        tr[(b * BL + j) * 2 + 1] = 0;
        pp[b * BL + j] = 0.0f;
        double* rule = rst + (b * BL + j) * prr::kRuleStateCols;  // no streak, no kept distribution
        std::fill(rule, rule + prr::kRuleStateCols, 0.0);
        rule[prr::kRsStreakToken] = -1.0;
        rule[prr::kRsKlCount] = -1.0;
      }
      std::fill(r + prr::kRsSpanStart, r + prr::kRsCols, int64_t(0));  // a fresh SlowFast sub-cycle
    }
    const float row_len = static_cast<float>(plen[b] + p.gen_length);
    s.feat = prr::FeatureInputs{row_len,
                                static_cast<float>(masks_in_row),
                                static_cast<float>(s.nfe),
                                static_cast<float>(p.steps),
                                static_cast<float>(plen[b] + active * BL),
                                static_cast<float>(BL),
                                static_cast<float>(masks_in_block),
                                static_cast<float>(s.step),
                                static_cast<float>(p.steps_per_block),
                                static_cast<float>(std::log(static_cast<double>(p.V)))};
    s.first_token = static_cast<int64_t>(toks.size());
    for (int64_t c = lo; c < hi; ++c) {
      if (!prr::is_open(xb[c], p.mask_id)) continue;
      Token t;
      t.b = b;
      t.col = c;
      t.r = c - p.row_offset;
      t.pos = c - lo;
      toks.push_back(t);
    }
    s.num_tokens = static_cast<int64_t>(toks.size()) - s.first_token;
  }

  // ---- per token: statistics, candidate, controller, key (parallel)
  Inputs in;
  in.seed = a.seed.data_ptr<int64_t>();
  in.rule_state = rst;
  if (p.policy == prr::kKLASS) in.prev_logp = a.prev_logp.data_ptr<float>();
  if (a.candidates) in.candidates = a.candidates->data_ptr<int64_t>();
  if (a.random_conf) in.random_conf = a.random_conf->data_ptr<float>();
  if (p.policy == prr::kPRR) {
    if (a.scores) in.scores = a.scores->data_ptr<float>();
    if (a.controller) in.ctrl = a.controller->data_ptr<float>();
    if (p.n_extra > 0) in.extra = a.extra_features->data_ptr<float>();
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "prr_step_cpu", [&] {
    const scalar_t* lg = logits.data_ptr<scalar_t>();
    at::parallel_for(0, static_cast<int64_t>(toks.size()), 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        Token& t = toks[i];
        const scalar_t* row = lg + t.b * p.stride_b + t.r * p.stride_r;
        int64_t* trj = tr + (t.b * BL + t.pos) * 2;
        float* prv = pp + t.b * BL + t.pos;
        if (p.conf_dtype == prr::kConfF64)
          process_token<scalar_t, double>(p, row, t, seqs[t.b], in, trj, prv);
        else
          process_token<scalar_t, float>(p, row, t, seqs[t.b], in, trj, prv);
      }
    });
  });

  // ---- per sequence: sort by key, commit a prefix, bookkeeping (parallel)
  bool* cm = commit.data_ptr<bool>();
  int64_t* tk = tokens.data_ptr<int64_t>();
  float* sp = stats.data_ptr<float>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> order;
    std::vector<double> keys;
    for (int64_t b = begin; b < end; ++b) {
      const SeqInfo& s = seqs[b];
      if (!s.active) continue;
      int64_t* r = rs + b * prr::kRsCols;
      int64_t* xb = xp + b * L;
      order.clear();
      for (int64_t i = s.first_token; i < s.first_token + s.num_tokens; ++i) {
        const Token& t = toks[i];
        std::copy(t.stats, t.stats + prr::kNumStats, sp + (b * Lr + t.r) * prr::kNumStats);
        if (!t.usable) continue;
        tk[b * Lr + t.r] = t.cand;
        order.push_back(i);
      }
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t c) { return toks[a].key > toks[c].key; });
      keys.resize(order.size());
      for (size_t i = 0; i < order.size(); ++i) keys[i] = toks[order[i]].key;
      const int64_t k = prr::step_k(p, r[prr::kRsSchedN], s.step);
      const int64_t n_usable = static_cast<int64_t>(keys.size());
      if (p.policy < prr::kLocalLeap) {  // a prefix of the candidates in rank order (prr/select.h)
        const int64_t n_commit = prr::commit_count(p.policy, keys.data(), n_usable, k, p.param, p.union_schedule,
                                                   p.rule.factor_variant);
        for (int64_t i = 0; i < n_commit; ++i) {
          const Token& t = toks[order[i]];
          xb[t.col] = t.cand;
          cm[b * L + t.col] = true;
        }
      }
      if (p.policy >= prr::kLocalLeap || p.r2) {  // the rules of prr/rules.h, on this sequence's block
        BlockOnCpu blk(toks, s, order, BL, lo, xb, cm + b * L, rst + b * BL * prr::kRuleStateCols);
        prr::run_rules(blk, p, n_usable, k, static_cast<uint64_t>(in.seed[b]), lo, s.nfe, r);
      }
      // bookkeeping: the step is consumed; leave the block after block_cap steps, or once it is empty (adaptive)
      r[prr::kRsStep] = s.step + 1;
      r[prr::kRsNfe] = s.nfe + 1;
      const bool empty = std::none_of(xb + lo, xb + hi, [&](int64_t v) { return prr::is_open(v, p.mask_id); });
      if (s.step + 1 >= p.block_cap || (p.adaptive && empty)) advance_block(p, xb, r);
    }
  });
  return {commit, tokens, stats};
}

}  // namespace

TORCH_LIBRARY_IMPL(prr_ext, CPU, m) { m.impl("step", &step_entry<step_cpu>); }

}  // namespace prr_ext
