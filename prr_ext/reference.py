"""Pure-PyTorch reference of `prr_ext.step`: the specification and the test oracle.

Written for clarity, not speed (it loops over sequences in Python and may synchronise with the device). The fused
CPU and CUDA ops must commit exactly the same tokens for greedy decoding and agree on every statistic within fp32
tolerance. docs/semantics.md states the same rules in prose; the C++ twin of each function is named beside it.

One step, for every sequence b whose block index equals the active block (the lowest block index in the batch):
  1. candidates = masked positions of the active block [lo, hi) whose logits row is usable (no NaN/+Inf, at least
     one finite non-mask logit). The mask token is never a candidate; it stays in the softmax normaliser.
  2. per candidate: argmax token (lowest index on ties), candidate token (the argmax, or a Gumbel-max sample at
     temperature > 0), its T=1 probability in `confidence_dtype`, top-1/top-2 probabilities and entropy in fp32.
  3. PRR only: features -> controller -> stability score s -> shaped confidence.
  4. selection: sort candidates by the policy's key (descending, lowest column first on ties), take a prefix whose
     length the policy decides, write those candidate tokens into x. LocalLeap, SlowFast and KLASS choose sets of
     block positions instead, and an R2 policy adds its passes after its base rule (select_block).
  5. bookkeeping: step/NFE counters, end of block, trajectory features for the next step.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from . import constants as K
from . import policies as P
# Columns of the per-token statistics (stats[b, r, :]) and of state.row_state[b, :]: prr_ext.constants.
from .constants import (NUM_BASE_FEATURES, NUM_STATS, RS_BLOCK, RS_NFE, RS_SCHED_N, RS_STEP, STAT_CONF,  # noqa: F401
                        STAT_ENTROPY, STAT_KEY, STAT_P1, STAT_P2, STAT_SCORE, STAT_TEMPERATURE)

# ---------------------------------------------------------------------------------------------------------------
# Counter-based RNG (Philox4x32-10), bit-identical to csrc/include/prr/philox.h.
# Key = the row's 64-bit seed; counter = (vocab index // 4, column, the row's step count, stream).
# ---------------------------------------------------------------------------------------------------------------
_M0, _M1, _W0, _W1, _MASK32 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85, 0xFFFFFFFF
STREAM_GUMBEL, STREAM_RANDOM_CONF, STREAM_CLUSTER = 0, 1, 2


def philox4x32(c0, c1, c2, c3, seed):
    """Philox4x32-10 on int64 tensors holding uint32 values (broadcastable); `seed` int64. Returns 4 words."""
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for r in range(10):
        if r:
            k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
        p0, p1 = c0 * _M0, c2 * _M1  # < 2^64: int64 wraps, the bit pattern is the exact product mod 2^64
        hi0, lo0 = (p0 >> 32) & _MASK32, p0 & _MASK32
        hi1, lo1 = (p1 >> 32) & _MASK32, p1 & _MASK32
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def uniform_from_bits(w: torch.Tensor) -> torch.Tensor:
    """uint32 -> fp32 uniform in (0, 1): the top 24 bits, centred, so 0 and 1 are never produced."""
    return ((w >> 8).to(torch.float32) + 0.5) * (2.0 ** -24)


def philox_gumbel(seed: torch.Tensor, col: torch.Tensor, step: torch.Tensor, vocab: int) -> torch.Tensor:
    """Gumbel(0, 1) noise [N, V] for rows keyed by (seed[N], col[N], step[N]); fp32."""
    v = torch.arange(vocab, device=seed.device, dtype=torch.int64)
    words = philox4x32((v >> 2)[None, :], col[:, None], step[:, None], torch.full_like(col, STREAM_GUMBEL)[:, None],
                       seed[:, None])
    lane = (v & 3)[None, :]
    w = torch.where(lane == 0, words[0], torch.where(lane == 1, words[1], torch.where(lane == 2, words[2], words[3])))
    return -torch.log(-torch.log(uniform_from_bits(w)))


def philox_random_conf(seed: torch.Tensor, col: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """RandomRemask's ranking key: one fp32 uniform per (row, column, step)."""
    zero = torch.zeros_like(col)
    return uniform_from_bits(philox4x32(zero, col, step, zero + STREAM_RANDOM_CONF, seed)[0])


def philox_cluster_pick(seed: int, col: int, step: int, n: int) -> int:
    """R²'s random token-cluster choice: an index in [0, n) for the run starting at canvas column `col`."""
    t = lambda v: torch.tensor([v], dtype=torch.int64)  # noqa: E731
    w = int(philox4x32(t(0), t(col), t(step), t(STREAM_CLUSTER), t(seed))[0])
    return (w * n) >> 32


# ---------------------------------------------------------------------------------------------------------------
# Per-token statistics                               (C++: row_stats.h, RowStats + finalize)
# ---------------------------------------------------------------------------------------------------------------
def token_statistics(rows: torch.Tensor, mask_id: int, confidence_dtype: torch.dtype, temperature: float = 0.0,
                     gumbel: Optional[torch.Tensor] = None, candidates: Optional[torch.Tensor] = None):
    """Statistics of logits rows [N, V].

    Returns a dict of [N] tensors:
      usable     bool   no NaN/+Inf in the row and some non-mask logit is finite
      argmax     int64  first index of the largest non-mask logit
      candidate  int64  token to commit: `candidates` if given, else argmax (T == 0) or
                        argmax(logits * (1/T) + gumbel) over non-mask tokens (T > 0)
      conf              p(candidate) = softmax(rows in confidence_dtype)[candidate]   (dtype confidence_dtype)
      p_cand     fp32   p(candidate) at T = 1 in fp32 (the input of PRR's power/weighted shaping)
      p1, p2     fp32   probabilities of the best and second-best non-mask tokens
      entropy    fp32   -sum p log p over the whole vocabulary (mask token included), 0 log 0 = 0
    Unusable rows get candidate -1 and NaN statistics.
    """
    n, vocab = rows.shape
    lf = rows.float()
    bad = torch.isnan(lf).any(-1) | torch.isposinf(lf).any(-1)
    nonmask = lf.clone()
    if mask_id >= 0:  # (a uniform canvas has no mask token)
        nonmask[:, mask_id] = -math.inf
    argmax = nonmask.argmax(-1)
    top1 = nonmask.gather(-1, argmax[:, None]).squeeze(-1)
    usable = ~bad & (top1 > -math.inf)
    second = nonmask.scatter(-1, argmax[:, None], -math.inf).amax(-1) if vocab > 1 else torch.full_like(top1, -math.inf)

    logp = torch.log_softmax(lf, -1)
    lse = torch.logsumexp(lf, -1)
    p1, p2 = torch.exp(top1 - lse), torch.exp(second - lse)
    p = logp.exp()
    entropy = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)

    if candidates is not None:
        cand = candidates.clone()
        usable = usable & (cand >= 0) & (cand < vocab) & (cand != mask_id)  # never commit an invalid token
    elif temperature > 0:
        inv_t = torch.tensor(1.0 / temperature, dtype=torch.float32)
        score = lf * inv_t + gumbel
        if mask_id >= 0:
            score[:, mask_id] = -math.inf
        cand = score.argmax(-1)
    else:
        cand = argmax.clone()
    cand = torch.where(usable, cand, torch.full_like(cand, -1))
    safe = cand.clamp_min(0)[:, None]
    # bf16/fp16 confidences round an fp32 softmax (as torch's reduced-precision softmax does internally)
    wide = torch.float64 if confidence_dtype == torch.float64 else torch.float32
    conf = torch.softmax(rows.to(wide), -1).gather(-1, safe).squeeze(-1).to(confidence_dtype)
    p_cand = torch.exp(lf.gather(-1, safe).squeeze(-1) - lse)
    nan = torch.full_like(p1, math.nan)
    out = dict(usable=usable, argmax=torch.where(usable, argmax, torch.full_like(argmax, -1)), candidate=cand,
               conf=torch.where(usable, conf, nan.to(confidence_dtype)), p_cand=torch.where(usable, p_cand, nan),
               p1=torch.where(usable, p1, nan), p2=torch.where(usable, p2, nan),
               entropy=torch.where(usable, entropy, nan))
    return out


def tempered_probability(rows: torch.Tensor, candidate: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Exact p(candidate) under softmax(logits / T) per row, fp32 (PRR "temperature" shaping)."""
    lf = rows.float() / temperature[:, None]
    return torch.softmax(lf, -1).gather(-1, candidate.clamp_min(0)[:, None]).squeeze(-1)


def shape_confidence(shaping: int, alpha: float, p: torch.Tensor, s: torch.Tensor, rows=None, candidate=None,
                     temperature=None) -> torch.Tensor:
    """PRR's shaped confidence (fp32)."""
    if shaping == P.SHAPING_TEMPERATURE:
        return tempered_probability(rows, candidate, temperature)
    if shaping == P.SHAPING_POWER:
        return torch.pow(p, 1.0 - alpha * s)
    if shaping == P.SHAPING_WEIGHTED:
        return torch.clamp(p + alpha * torch.clamp(s - 0.5, min=0.0) * p * (1.0 - p), 0.0, 1.0)
    raise ValueError(f"unknown shaping code {shaping}")


# ---------------------------------------------------------------------------------------------------------------
# Selection                                             (C++: select.h, commit_count)
# ---------------------------------------------------------------------------------------------------------------
def schedule_k(n: int, steps_per_block: int, i: int) -> int:
    """LLaDA's per-block schedule: n masks over S steps, remainder front-loaded; 0 past the last step."""
    if i >= steps_per_block:
        return 0
    return n // steps_per_block + (1 if i < n % steps_per_block else 0)


def commit_count(policy_code: int, keys_sorted: torch.Tensor, k: int, param: float, union_schedule: bool,
                 factor_variant: int = K.FACTOR_PAPER) -> int:
    """How many of the candidates, sorted by descending key, to commit. `keys_sorted` [n] (any float dtype) is
    compared in fp64. For EntropyBound the key is -entropy, so the order is ascending entropy."""
    n = keys_sorted.numel()
    if n == 0:
        return 0
    if policy_code in (P.POLICY_LOW_CONFIDENCE, P.POLICY_RANDOM):
        return min(k, n)
    keys = keys_sorted.double()
    floor = 1 if (policy_code == P.POLICY_PRR and not union_schedule) else max(k, 1)
    if policy_code in (P.POLICY_THRESHOLD, P.POLICY_PRR):
        extra = int((keys >= param).sum())  # keys descending: the passing set is a prefix
    elif policy_code == P.POLICY_FACTOR and factor_variant == K.FACTOR_FAST_DLLM:
        # get_transfer_index_dynamic: thresholds -1, 1 - f/3, 1 - f/4, ... (0-based rank m: 1 - f/(m + 2)); the
        # first rank that fails ends the prefix; a failure at the last rank still commits everything
        m = torch.arange(n, dtype=torch.float64)
        ok = (m == 0) | (keys >= 1.0 - param / (m + 2.0))
        extra = int(torch.cumprod(ok.to(torch.int64), 0).sum())
        if extra == n - 1:
            extra = n
    elif policy_code == P.POLICY_FACTOR:
        m = torch.arange(1, n + 1, dtype=torch.float64)
        ok = (m + 1.0) * (1.0 - keys) < param
        extra = int(torch.cumprod(ok.to(torch.int64), 0).sum())  # longest prefix that satisfies the rule
    elif policy_code == P.POLICY_ENTROPY_BOUND:
        h = -keys  # ascending entropy
        before = torch.cat([h.new_zeros(1), torch.cumsum(h, 0)[:-1]])  # serial fp64 sum of the entropies ahead
        ok = before <= param  # = sum(H_U) - max(H_U) for the prefix U ending here
        extra = int(torch.cumprod(ok.to(torch.int64), 0).sum())
    else:
        raise ValueError(f"unknown policy code {policy_code}")
    return min(max(floor, extra), n)


def rank_key(keys: torch.Tensor) -> torch.Tensor:
    """Keys as the selection sees them: NaN (e.g. a NaN external PRR score) ranks last, never passes a threshold."""
    return torch.where(torch.isnan(keys), torch.full_like(keys, -math.inf), keys)


def sort_candidates(keys: torch.Tensor) -> torch.Tensor:
    """Indices of `keys` by descending key, lowest index first among equal keys."""
    return torch.sort(keys.double(), descending=True, stable=True).indices


# ---------------------------------------------------------------------------------------------------------------
# The newer rules: LocalLeap, SlowFast, KLASS and R²-dLLM's passes       (C++: rules.h)
# They act on one sequence's active block, indexed by block position j in [0, block_length):
#   masked[j]  the position was masked at the start of the step      usable[j]  its logits row is usable
#   conf[j]    fp64 confidence of its candidate (confidence dtype)   cand[j]    candidate token
#   argmax[j]  top-1 token                                           p1[j]      fp32 p(top-1)
#   order      the usable positions by descending key (= conf for these rules), lowest position first on ties
# A rule returns {j: token} of the positions it commits.
# ---------------------------------------------------------------------------------------------------------------
def local_leap_commit(order, conf, k, tau, relaxed_tau, radius):
    """LocalLeap: the first max(k, 1) in rank order, and every usable p with conf >= (relaxed_tau if p lies within
    `radius` of an anchor (conf >= tau) else tau)."""
    anchors = [j for j in order if conf[j] >= tau]
    chosen = set(order[:max(k, 1)])
    for j in order:
        near = any(abs(j - a) <= radius for a in anchors)
        if conf[j] >= (relaxed_tau if near else tau):
            chosen.add(j)
    return chosen


def klass_commit(order, conf, kl_count, k, conf_threshold, history):
    """KLASS: the ready positions (conf > c and kl_count >= H), else the first max(k, 1) in rank order."""
    ready = {j for j in order if conf[j] > conf_threshold and kl_count[j] >= history}
    return ready if ready else set(order[:max(k, 1)])


def slow_fast_fill(order, conf, lo, hi, fill_threshold):
    """SlowFast's commit within block positions [lo, hi): every usable masked position with conf >= the fill
    threshold if more than one qualifies, else the most confident one."""
    inside = [j for j in order if lo <= j < hi]
    high = [j for j in inside if conf[j] >= fill_threshold]
    return set(high) if len(high) > 1 else set(inside[:1])


def slow_fast_commit(rs_row, order, conf, block_length, pol):
    """SlowFast's step for one sequence: updates its sub-cycle columns of row_state (rs_row, a list of ints, in
    place) and returns the positions to commit. The sub-cycle's end-of-span check runs after the commit
    (slow_fast_after_commit)."""
    start, explored = rs_row[K.RS_SPAN_START], rs_row[K.RS_EXPLORED]
    if explored < pol.explore_steps:  # slow phase
        if not rs_row[K.RS_DETERMINED]:
            far = [j for j in order if j >= start and conf[j] >= pol.span_threshold]
            inc = (max(far) - start + 1 if far else 1) if start < block_length else 0
            est = min(max(start + inc, 1), block_length)
            n = rs_row[K.RS_NUM_ESTIMATES]
            hist = rs_row[K.RS_ESTIMATES:K.RS_ESTIMATES + n] + [est]
            hist = hist[-pol.stability_window:]
            rs_row[K.RS_ESTIMATES:K.RS_ESTIMATES + len(hist)] = hist
            rs_row[K.RS_NUM_ESTIMATES] = len(hist)
            if len(hist) >= pol.stability_window:
                mean = sum(hist) / len(hist)
                std = math.sqrt(sum((h - mean) ** 2 for h in hist) / len(hist))
                if std < pol.stability_std:
                    rs_row[K.RS_SPAN_END], rs_row[K.RS_DETERMINED] = hist[-1], 1
                else:
                    rs_row[K.RS_SPAN_END] = min(max(int(mean), 1), block_length)
                    rs_row[K.RS_DETERMINED] = int(explored == pol.explore_steps - 1)
        chosen = slow_fast_fill(order, conf, start, block_length, pol.fill_threshold)
        rs_row[K.RS_EXPLORED] = explored + 1
        if rs_row[K.RS_EXPLORED] == pol.explore_steps and not rs_row[K.RS_DETERMINED]:
            # the window never filled: the mean of what was gathered
            n = rs_row[K.RS_NUM_ESTIMATES]
            hist = rs_row[K.RS_ESTIMATES:K.RS_ESTIMATES + n]
            rs_row[K.RS_SPAN_END] = min(max(int(sum(hist) / n), 1), block_length) if n else block_length // 2
            rs_row[K.RS_DETERMINED] = 1
        return chosen
    return slow_fast_fill(order, conf, start, rs_row[K.RS_SPAN_END], pol.fill_threshold)  # fast phase


def slow_fast_after_commit(rs_row, masked_now, pol):
    """After the commit: once the slow phase is over and the span holds no mask, the next sub-cycle starts at its end.
    masked_now[j]: block position j is masked after this step's commits."""
    if rs_row[K.RS_EXPLORED] < pol.explore_steps:
        return
    start, end = rs_row[K.RS_SPAN_START], rs_row[K.RS_SPAN_END]
    if not any(masked_now[start:end]):
        rs_row[K.RS_SPAN_START] = end
        rs_row[K.RS_EXPLORED] = rs_row[K.RS_DETERMINED] = rs_row[K.RS_NUM_ESTIMATES] = 0


def r2_passes(pol, still_masked, usable, conf, cand, argmax, p1, seed, lo, nfe):
    """R²-dLLM's spatial passes (1. window, 2. token cluster) after the base commit. still_masked[j] is updated in
    place (True: masked after the commits so far); lo: the block's first canvas column; nfe: the row's step count
    (the random cluster choice's counter). Returns {j: token}."""
    BL = len(still_masked)
    out = {}
    if pol.window:  # 1. spatial window, judged on the canvas after the base commit, then unioned
        W, U = pol.window, pol.window_unmasked
        hits = set()
        for s0 in range(BL - W + 1):
            win = range(s0, s0 + W)
            masked = [j for j in win if still_masked[j]]
            if (U is not None and W - len(masked) > U) or not masked:
                continue
            if not all(usable[j] for j in masked):
                continue
            total = 0.0
            for j in masked:
                total += float(conf[j])
            if total / len(masked) >= pol.spatial_threshold:
                hits.update(masked)
        for j in sorted(hits):
            out[j] = int(cand[j])
            still_masked[j] = False
    if pol.token_cluster is not None:  # 2. token clusters on the canvas after pass 1
        j = 0
        while j < BL:
            if not (still_masked[j] and usable[j]):
                j += 1
                continue
            start = j
            while j + 1 < BL and still_masked[j + 1] and usable[j + 1] and int(argmax[j + 1]) == int(argmax[start]):
                j += 1
            end = j + 1
            j = end
            run = list(range(start, end))
            if len(run) < pol.token_cluster_size:
                continue
            best = max(run, key=lambda q: (float(p1[q]), -q))  # first position of the largest p1
            if not float(p1[best]) > pol.spatial_threshold:
                continue
            if pol.token_cluster == "confidence":
                pick = best
            elif pol.token_cluster == "mid":
                pick = start + len(run) // 2
            else:
                pick = start + philox_cluster_pick(seed, lo + start, nfe, len(run))
            out[pick] = int(argmax[pick])
            still_masked[pick] = False
    return out


def r2_temporal(pol, masked_at_start, still_masked, usable, argmax, p1, streak):
    """R²'s temporal pass (3.), after passes 1-2: tracks the top-1 streak of every position masked at the start of
    the step; positions committed by any earlier pass reset theirs. Returns {j: token}."""
    out = {}
    thr32 = float(torch.tensor(pol.temporal_threshold, dtype=torch.float32))
    for j in range(len(still_masked)):
        if not masked_at_start[j]:
            continue
        row = streak[j]
        if not still_masked[j] or not usable[j]:
            row[K.RULE_STREAK_TOKEN], row[K.RULE_STREAK_COUNT] = -1.0, 0.0
            row[K.RULE_STREAK_SUM] = row[K.RULE_STREAK_MAX] = 0.0
            continue
        p = float(p1[j])
        if int(row[K.RULE_STREAK_TOKEN]) == int(argmax[j]):
            row[K.RULE_STREAK_COUNT] += 1
            row[K.RULE_STREAK_SUM] = float(torch.tensor(float(row[K.RULE_STREAK_SUM]), dtype=torch.float32)
                                           + torch.tensor(p, dtype=torch.float32))
            row[K.RULE_STREAK_MAX] = max(float(row[K.RULE_STREAK_MAX]), p)
        else:
            row[K.RULE_STREAK_TOKEN], row[K.RULE_STREAK_COUNT] = float(argmax[j]), 1.0
            row[K.RULE_STREAK_SUM] = row[K.RULE_STREAK_MAX] = p
        count = int(row[K.RULE_STREAK_COUNT])
        if count < pol.temporal_steps:
            continue
        if pol.temporal_eval == "last":
            value = p
        elif pol.temporal_eval == "ave":
            value = float(torch.tensor(float(row[K.RULE_STREAK_SUM]), dtype=torch.float32)
                          / torch.tensor(float(count), dtype=torch.float32))
        else:
            value = float(row[K.RULE_STREAK_MAX])
        if value >= thr32:
            out[j] = int(argmax[j])
            row[K.RULE_STREAK_TOKEN], row[K.RULE_STREAK_COUNT] = -1.0, 0.0
            row[K.RULE_STREAK_SUM] = row[K.RULE_STREAK_MAX] = 0.0
    return out


def kl_divergence(rows: torch.Tensor, prev_logp: torch.Tensor):
    """KLASS's KL(p_t || p_{t-1}) per row (fp64) from the previous step's fp32 log-probabilities, and this step's
    fp32 log-probabilities to keep. p_t = softmax of the rows in fp64; terms with p_t == 0 add nothing."""
    lp = torch.log_softmax(rows.double(), -1)
    p = lp.exp()
    kl = torch.where(p > 0, p * (lp - prev_logp.double()), torch.zeros_like(p)).sum(-1)
    return kl, lp.float()


# ---------------------------------------------------------------------------------------------------------------
# PRR features                                          (C++: controller.h, token_features)
# ---------------------------------------------------------------------------------------------------------------
def controller_features(*, row_len, masks_in_row, nfe, steps, block_start_true, block_length, masks_in_block,
                        positions: torch.Tensor, step_in_block, steps_per_block, p1: torch.Tensor, p2: torch.Tensor,
                        entropy: torch.Tensor, vocab: int, last_change: torch.Tensor,
                        prev_p1: torch.Tensor) -> torch.Tensor:
    """The 13 base features [..., 13] (fp32) of candidates; order = controller.BASE_FEATURES.

    Per-token arguments (positions, p1, p2, entropy, last_change, prev_p1) are tensors of one shape; per-sequence
    ones (row_len, masks_in_row, nfe, steps, block_start_true, block_length, masks_in_block, step_in_block,
    steps_per_block) are numbers or tensors that broadcast against them (e.g. [B, 1] against [B, n]). All
    arithmetic is fp32 divisions of exactly-representable integers, as in the kernel.
    """
    shape = positions.shape
    f32 = lambda v: torch.as_tensor(v, dtype=torch.float32, device=positions.device).expand(shape)  # noqa: E731
    step_ratio = f32(step_in_block) / f32(steps_per_block)
    feats = [
        (f32(row_len) - f32(masks_in_row)) / f32(row_len),
        f32(nfe) / f32(steps),
        f32(block_start_true) / f32(row_len),
        f32(block_length) / f32(row_len),
        (f32(block_length) - f32(masks_in_block)) / f32(block_length),
        positions.float() / f32(block_length),
        step_ratio,
        step_ratio,
        p1.float(),
        (p1 - p2).float(),
        entropy.float() / f32(math.log(vocab)),
        (f32(step_in_block) - last_change.float()) / f32(steps_per_block),
        prev_p1.float(),
    ]
    out = torch.stack(feats, -1)
    assert out.shape[-1] == NUM_BASE_FEATURES
    return out


# ---------------------------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------------------------
def block_cap(state) -> int:
    """Most steps a sequence may spend in one block: the schedule's, or for the rules that may commit fewer than
    the schedule's k_i in a step (PRR without the union, SlowFast, KLASS) at least one step per position."""
    pol = state.policy.base_rule
    if state.uniform:  # nothing empties a uniform canvas: its blocks last exactly their steps
        return state.steps_per_block
    if (pol.code == P.POLICY_PRR and not pol.union_schedule) or pol.code in (P.POLICY_SLOW_FAST, P.POLICY_KLASS):
        return max(state.steps_per_block, state.block_length)
    return state.steps_per_block


def is_open(state, tokens: torch.Tensor) -> torch.Tensor:
    """Which canvas tokens are open (candidates of the step): the masked ones; on a uniform canvas (no mask
    token, mask_id < 0) all of them."""
    return torch.ones_like(tokens, dtype=torch.bool) if state.uniform else tokens == state.mask_id


def step_k(state, n: int, i: int) -> int:
    """The k_i the rules commit at least (LowConfidence: exactly) at step i of a block with n open positions; on a
    uniform canvas nothing stays committed, so the floor is the one best-ranked token."""
    return 1 if state.uniform else schedule_k(n, state.steps_per_block, i)


def _reset_rule_state(state, b: int) -> None:
    """Entering a block: no streak, no kept distribution (KL count -1), a fresh SlowFast sub-cycle."""
    state.rule_state[b] = 0.0
    state.rule_state[b, :, K.RULE_STREAK_TOKEN] = -1.0
    state.rule_state[b, :, K.RULE_KL_COUNT] = -1.0
    state.row_state[b, K.RS_SPAN_START:] = 0


def step(logits: torch.Tensor, state, *, scores: Optional[torch.Tensor] = None,
         extra_features: Optional[torch.Tensor] = None, candidates: Optional[torch.Tensor] = None,
         random_conf: Optional[torch.Tensor] = None):
    """Reference step: mutates state.x and the state counters exactly as `prr_ext.step` does.

    Returns (commit_mask [B, L] bool, tokens [B, Lr] int64, stats [B, Lr, NUM_STATS] fp32), Lr = logits.shape[1].
    `candidates` / `random_conf` [B, Lr] override the sampled token / RandomRemask key (rng="torch" mode).
    """
    x, outer = state.x, state.policy
    pol = outer.base_rule  # the rule that ranks; an R2 wrapper adds its passes after it
    r2 = outer if isinstance(outer, P.R2) else None
    B, L = x.shape
    Lr, V = logits.shape[1], logits.shape[2]
    BL, S = state.block_length, state.steps_per_block
    dev = x.device
    commit = torch.zeros(B, L, dtype=torch.bool, device=dev)
    tokens = torch.full((B, Lr), -1, dtype=torch.int64, device=dev)
    stats = torch.full((B, Lr, NUM_STATS), math.nan, dtype=torch.float32, device=dev)
    if B == 0:
        return commit, tokens, stats
    if state.needs_prev_logp and tuple(state.prev_logp.shape) != (B, BL, V):  # KLASS (as prr_ext.step does)
        state.prev_logp = torch.zeros(B, BL, V, dtype=torch.float32, device=dev)
    rs = state.row_state
    active = int(rs[:, RS_BLOCK].min())
    if active >= state.num_blocks:
        return commit, tokens, stats
    lo = state.gen_start + active * BL
    hi = lo + BL
    row_offset = 0 if Lr == L else lo  # logits row r <-> canvas column r + row_offset
    cap = block_cap(state)

    for b in range(B):
        if int(rs[b, RS_BLOCK]) != active:
            continue  # finished this block ahead of the others (or finished everything): idle
        i = int(rs[b, RS_STEP])
        if i == 0:  # entering the block: fix the schedule's n, reset the trajectory features
            rs[b, RS_SCHED_N] = int(is_open(state, x[b, lo:hi]).sum())
            state.traj[b, :, 0] = -1
            state.traj[b, :, 1] = 0
            state.prev_p1[b] = 0.0
            _reset_rule_state(state, b)
        t_row = int(rs[b, RS_NFE])
        masked_cols = is_open(state, x[b, lo:hi]).nonzero().squeeze(-1) + lo
        masks_in_block = masked_cols.numel()
        masks_in_row = int(is_open(state, x[b, state.gen_start:]).sum())
        r = masked_cols - row_offset
        rows = logits[b, r]
        gumbel = None
        if state.temperature > 0 and candidates is None:
            gumbel = philox_gumbel(state.seed[b].expand(r.numel()), masked_cols, torch.full_like(masked_cols, t_row),
                                   V)
        st = token_statistics(rows, state.mask_id, state.confidence_dtype, state.temperature, gumbel,
                              None if candidates is None else candidates[b, r])
        ok = st["usable"]
        cols, r = masked_cols[ok], r[ok]
        j = cols - lo  # block positions
        cand = st["candidate"][ok]

        # trajectory (argmax) tracking, all policies
        am = st["argmax"][ok]
        changed = am != state.traj[b, j, 0]
        state.traj[b, j[changed], 1] = i
        state.traj[b, j, 0] = am
        prev_p1 = state.prev_p1[b, j].clone()
        state.prev_p1[b, j] = st["p1"][ok]
        if pol.code == P.POLICY_KLASS:  # KL to the previous step's distribution (if kept: count >= 0); keep this one
            count = state.rule_state[b, :, K.RULE_KL_COUNT].clone()
            state.rule_state[b, masked_cols - lo, K.RULE_KL_COUNT] = -1.0  # unusable rows: no distribution kept
            kl, lp = kl_divergence(rows[ok], state.prev_logp[b, j])
            kl = torch.where(count[j] >= 0, kl, torch.full_like(kl, math.inf))
            state.prev_logp[b, j] = lp
            state.rule_state[b, j, K.RULE_KL_COUNT] = torch.where(kl < pol.kl_threshold, count[j].clamp_min(0) + 1,
                                                                  torch.zeros_like(kl))

        conf = st["conf"][ok]
        s = temp = torch.full_like(conf, math.nan, dtype=torch.float32)
        if pol.code == P.POLICY_PRR:
            if scores is not None:
                s = scores[b, r].float()
            else:
                feats = controller_features(
                    row_len=float(state.prompt_lens[b]) + state.gen_length, masks_in_row=masks_in_row, nfe=t_row,
                    steps=state.steps, block_start_true=float(state.prompt_lens[b]) + active * BL, block_length=BL,
                    masks_in_block=masks_in_block, positions=j, step_in_block=i, steps_per_block=S,
                    p1=st["p1"][ok], p2=st["p2"][ok], entropy=st["entropy"][ok], vocab=V,
                    last_change=state.traj[b, j, 1], prev_p1=prev_p1)
                if extra_features is not None:
                    feats = torch.cat([feats, extra_features[b, r].float()], -1)
                s = pol.controller.scores(feats)
            if pol.shaping_code == P.SHAPING_TEMPERATURE:
                temp = pol.controller.temperature(s)
            key = shape_confidence(pol.shaping_code, pol.alpha, st["p_cand"][ok], s, rows[ok], cand, temp)
        elif pol.code == P.POLICY_RANDOM:
            key = random_conf[b, r].float() if random_conf is not None else philox_random_conf(
                state.seed[b].expand(cols.numel()), cols, torch.full_like(cols, t_row))
        elif pol.code == P.POLICY_ENTROPY_BOUND:
            key = -st["entropy"][ok]
        else:
            key = conf

        key = rank_key(key)
        order = sort_candidates(key)
        k = step_k(state, int(rs[b, RS_SCHED_N]), i)
        picks = select_block(state, b, pol, r2, i, t_row, lo, masked_cols - lo, j, key, order, k, conf, cand, am,
                             st["p1"][ok])
        for q, token in sorted(picks.items()):
            x[b, lo + q] = token
            commit[b, lo + q] = True

        tokens[b, r] = cand
        stats[b, r, STAT_CONF] = conf.float()
        stats[b, r, STAT_P1] = st["p1"][ok]
        stats[b, r, STAT_P2] = st["p2"][ok]
        stats[b, r, STAT_ENTROPY] = st["entropy"][ok]
        stats[b, r, STAT_SCORE] = s
        stats[b, r, STAT_TEMPERATURE] = temp
        stats[b, r, STAT_KEY] = key.float()

        # bookkeeping: the step is consumed; leave the block after `cap` steps, or once it is empty (adaptive)
        rs[b, RS_STEP] = i + 1
        rs[b, RS_NFE] = t_row + 1
        if pol.code == P.POLICY_SLOW_FAST:
            rs_row = rs[b].tolist()
            slow_fast_after_commit(rs_row, (x[b, lo:hi] == state.mask_id).tolist(), pol)
            rs[b] = torch.tensor(rs_row, dtype=rs.dtype)
        empty = not bool(is_open(state, x[b, lo:hi]).any())
        if i + 1 >= cap or (outer.adaptive and empty):
            advance_block(state, b)
    return commit, tokens, stats


def select_block(state, b, pol, r2, i, nfe, lo, masked_pos, j, key, order, k, conf, cand, argmax, p1) -> dict:
    """The commits of sequence b at this step, {block position: token}: the base rule's (a prefix of the candidates
    in rank order, or the newer rules' sets), then R²'s passes. masked_pos: block positions masked at the start of
    the step; j, key, conf, cand, argmax, p1: the usable ones' positions and values; order: ranks of `key`."""
    BL = state.block_length
    if pol.code in (P.POLICY_LOCAL_LEAP, P.POLICY_SLOW_FAST, P.POLICY_KLASS):
        conf_at = {int(q): float(c) for q, c in zip(j, conf.double())}
        ranked = [int(j[o]) for o in order]
        if pol.code == P.POLICY_LOCAL_LEAP:
            chosen = local_leap_commit(ranked, conf_at, k, pol.tau, pol.relaxed_tau, pol.radius)
        elif pol.code == P.POLICY_KLASS:
            counts = state.rule_state[b, :, K.RULE_KL_COUNT].tolist()
            chosen = klass_commit(ranked, conf_at, counts, k, pol.conf_threshold, pol.history)
        else:
            rs_row = state.row_state[b].tolist()
            chosen = slow_fast_commit(rs_row, ranked, conf_at, BL, pol)
            state.row_state[b] = torch.tensor(rs_row, dtype=state.row_state.dtype)
        cand_at = {int(q): int(t) for q, t in zip(j, cand)}
        picks = {q: cand_at[q] for q in chosen}
    else:
        c = commit_count(pol.code, key[order], k, pol.param, getattr(pol, "union_schedule", True),
                         K.FACTOR_VARIANTS[pol.variant] if pol.code == P.POLICY_FACTOR else K.FACTOR_PAPER)
        picks = {int(j[o]): int(cand[o]) for o in order[:c]}
    if r2 is None:
        return picks
    masked_at_start = [False] * BL
    for q in masked_pos.tolist():
        masked_at_start[q] = True
    usable = [False] * BL
    conf_b, cand_b, argmax_b = [math.nan] * BL, [-1] * BL, [-1] * BL
    p1_b = [math.nan] * BL
    for n_, q in enumerate(j.tolist()):
        usable[q] = True
        conf_b[q], cand_b[q], argmax_b[q], p1_b[q] = float(conf[n_].double()), int(cand[n_]), int(argmax[n_]), \
            float(p1[n_])
    still_masked = [masked_at_start[q] and q not in picks for q in range(BL)]
    picks.update(r2_passes(r2, still_masked, usable, conf_b, cand_b, argmax_b, p1_b, int(state.seed[b]), lo, nfe))
    if r2.temporal_steps:
        streak = state.rule_state[b].tolist()
        picks.update(r2_temporal(r2, masked_at_start, still_masked, usable, argmax_b, p1_b, streak))
        state.rule_state[b] = torch.tensor(streak, dtype=state.rule_state.dtype)
    return picks


def advance_block(state, b: int) -> None:
    """Move row b to its next block; adaptive policies also skip blocks that hold no masks."""
    rs = state.row_state
    rs[b, RS_STEP] = 0
    nxt = int(rs[b, RS_BLOCK]) + 1
    if state.policy.adaptive and not state.uniform:  # (an R2 wrapper is adaptive whatever its base)
        while nxt < state.num_blocks:
            lo = state.gen_start + nxt * state.block_length
            if bool((state.x[b, lo:lo + state.block_length] == state.mask_id).any()):
                break
            nxt += 1
    rs[b, RS_BLOCK] = nxt
