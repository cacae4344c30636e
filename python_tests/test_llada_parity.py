"""prr_ext (the op and prr_ext.reference) with LowConfidence / RandomRemask against a faithful re-implementation
of LLaDA's reference step and generate() (llada_reference.py), token for token.

Setup: State(..., rng="torch", generator=g) makes prr_ext draw LLaDA's random numbers (the fp64 rand_like(logits)
Gumbel noise at T > 0, then rand([B, L]) for 'random' remasking) in LLaDA's order, so the two are fed generators
with the same seed and full-canvas logits.

Two documented differences are handled explicitly:
  * Ties. prr_ext commits the lowest positions among equal confidences (CUDA's torch.topk does the same); CPU
    torch.topk does not (in a measurement 914 of 2000 random tie cases picked other indices). So the comparison is
    per step, both fed the same canvas: exact equality when no tie straddles the top-k boundary; otherwise equal
    counts, the same multiset of committed confidences, and prr_ext's choice = the lowest indices among the tied.
  * The mask token. LLaDA proposes mask_id when the mask logit is the largest (a no-op commit); prr_ext excludes it
    from the candidates (keeping it in the softmax normaliser). The parity inputs keep the mask logit low;
    test_prr_never_writes_mask_id covers the other case.
bf16/fp16 confidence: rows whose candidate probability lies within 1e-5 of a 16-bit rounding midpoint are re-drawn
(LLaDA's torch softmax and the op sum in different orders; see helpers.draw_step_logits).
"""
from __future__ import annotations

import math

import pytest
import torch

import prr_ext
from prr_ext import reference as R

import llada_reference as LL
from helpers import (LogitsMaker, Shape, ToyModel, assert_step_matches, canonical_topk, clone_for_reference,
                     draw_step_logits, first_argmax, non_mask_tokens, normal_logits)

STEP_CASES = [("2025-10", torch.bfloat16, 0.0), ("2025-10", torch.bfloat16, 0.8), ("2025-10", torch.float32, 0.8),
              ("2025-10", torch.float16, 0.0), ("2025-03", torch.bfloat16, 0.0), ("2025-03", torch.bfloat16, 0.8),
              ("2025-03", torch.float32, 0.0), ("2025-02", torch.bfloat16, 0.0)]


def _conf_dtype(version, dtype):
    return torch.float64 if LL.VERSIONS[version].fp64_confidence else dtype


def _compare_with_llada(op_state, commit, trace, x_before, lo, hi, remasking, conf_dtype, stats, logits):
    """prr_ext's step (commit mask, candidate tokens, confidences) against LLaDA's trace on the same canvas.
    Returns the number of rows where a tie straddled the top-k boundary."""
    mask_id = op_state.mask_id
    B, L = x_before.shape
    masked = x_before == mask_id
    in_block = torch.zeros(L, dtype=torch.bool)
    in_block[lo:hi] = True
    cand = masked & in_block[None, :]
    assert not (trace.x0[cand] == mask_id).any(), "test input error: LLaDA proposed the mask token"
    # candidate tokens (LLaDA: argmax of the logits / of the fp64 Gumbel scores, first index on ties)
    assert torch.equal(op_state.last_tokens[cand], trace.x0[cand]), "candidate tokens differ from LLaDA's"
    if remasking == "low_confidence":  # confidence: p(candidate) in the confidence dtype
        mine = stats[..., R.STAT_CONF][cand].double()
        theirs = trace.x0_p[cand].double()
        if conf_dtype == torch.float64:  # the op reports its fp64 confidence rounded to fp32
            torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-12)
        elif conf_dtype == torch.float32:  # fp32 exp(l - max): the error of l - max is about ulp(|l|)
            lmax = float(logits.float().abs().max())
            torch.testing.assert_close(mine, theirs, rtol=8 * torch.finfo(torch.float32).eps * max(1.0, lmax),
                                       atol=1e-12)
        else:  # 16-bit: exact (inputs avoid rounding midpoints)
            assert torch.equal(mine, theirs), "confidences differ from LLaDA's"
    straddled = 0
    for b in range(B):
        k = int(trace.k[b])
        assert int(commit[b].sum()) == k, f"row {b}: committed {int(commit[b].sum())}, LLaDA's schedule says {k}"
        conf = trace.confidence[b].double()
        canon = canonical_topk(conf, k)
        assert torch.equal(commit[b], canon), f"row {b}: prr_ext did not commit the lowest indices among ties"
        theirs = trace.transfer_index[b]
        assert torch.equal(torch.sort(conf[theirs]).values, torch.sort(conf[canon]).values), (
            f"row {b}: committed confidences differ from LLaDA's")
        vals = torch.sort(conf, descending=True).values
        tie_at_boundary = 0 < k < conf.numel() and bool(vals[k - 1] == vals[k]) and vals[k] > -math.inf
        if tie_at_boundary:
            straddled += 1
            _compare_with_llada.topk_differs += int(not torch.equal(theirs, canon))
        else:
            assert torch.equal(theirs, canon), f"row {b}: commit differs from LLaDA's (no tie at the boundary)"
    return straddled


_compare_with_llada.topk_differs = 0  # how often CPU torch.topk chose other tied indices (informational)


# (LLaDA 2025-02 draws unused Gumbel noise at T = 0 before the 'random' keys; prr_ext's rng="torch" follows the
# versions with the T == 0 shortcut, so 'random' is compared with those only.)
# "ties": rows drawn from a pool of 2-3 distinct small-integer rows (exact confidence ties between positions).
PARITY_CASES = ([c + (r, "normal") for c in STEP_CASES for r in ("low_confidence", "random")
                 if not (c[0] == "2025-02" and r == "random")]
                + [("2025-10", torch.bfloat16, 0.0, "low_confidence", "ties"),
                   ("2025-10", torch.bfloat16, 0.8, "low_confidence", "ties"),
                   ("2025-03", torch.bfloat16, 0.0, "low_confidence", "ties")])


@pytest.mark.parametrize("version,dtype,temperature,remasking,kind", PARITY_CASES,
                         ids=[f"{v}-{str(d)[6:]}-T{t}-{r}-{k}" for v, d, t, r, k in PARITY_CASES])
def test_step_parity(rnd, version, dtype, temperature, remasking, kind):
    """Per step, on the same canvas: the op == prr_ext.reference (exactly) == LLaDA's step (up to CPU topk's tie
    choice, see the module docstring), over whole decode loops with several blocks and left-padded batches."""
    V = rnd.choice([7, 33] if kind == "ties" else [33, 1000])
    BL = rnd.choice([8, 16] if kind == "ties" else [4, 8, 16])
    ties = kind == "ties"
    nb = rnd.int(2 if ties else 1, 3)
    S = rnd.choice([3] if ties else [1, BL // 2 + 1, BL, BL + 1])  # ties: boundaries inside groups of equal conf.
    s = Shape(B=rnd.int(2 if ties else 1, 4), P=rnd.choice([1, 3, 6]), G=BL * nb, BL=BL, steps=S * nb, V=V,
              mask_id=rnd.int(0, V - 1))
    policy = prr_ext.LowConfidence() if remasking == "low_confidence" else prr_ext.RandomRemask()
    cdt = _conf_dtype(version, dtype)
    x = torch.full((s.B, s.L), s.mask_id)
    x[:, :s.P] = non_mask_tokens(rnd, (s.B, s.P), V, s.mask_id)
    plen = torch.full((s.B,), s.P)
    plen[: s.B // 2] = rnd.int(0, s.P)  # left padding (pads are ordinary tokens to LLaDA's step)
    seed = rnd.int(0, 2 ** 62)
    op_state = prr_ext.State(x, s.mask_id, plen, BL, s.steps, policy, temperature=temperature,
                             generator=torch.Generator().manual_seed(seed), confidence_dtype=cdt, rng="torch")
    ref_state = clone_for_reference(op_state)
    g_llada = torch.Generator().manual_seed(seed)
    maker = LogitsMaker(rnd, V, s.mask_id, dtype, mask_mode="low", kind=kind, conf_dtype=cdt, pool_size=rnd.int(2, 3))
    straddled = 0
    for it in range(s.steps):
        assert not op_state.done
        blk, i = divmod(it, S)
        lo = s.P + blk * BL
        if i == 0:
            k_sched = LL.get_num_transfer_tokens(op_state.x[:, lo:lo + BL] == s.mask_id, S)
        lg = draw_step_logits(maker, op_state)
        x_before = op_state.x.clone()
        x_llada = x_before.clone()
        trace = LL.llada_step(x_llada, lg.clone(), block_end=lo + BL, k=k_sched[:, i], mask_id=s.mask_id,
                              temperature=temperature, remasking=remasking, version=version, generator=g_llada)
        commit = assert_step_matches(op_state, ref_state, lg, context=f"(step {it})")
        straddled += _compare_with_llada(op_state, commit, trace, x_before, lo, lo + BL, remasking, cdt,
                                         op_state.last_stats, lg)
    assert op_state.done and bool((op_state.nfe == s.steps).all())
    assert not (op_state.x == s.mask_id).any()
    print(f"rows with a tie at the top-k boundary: {straddled}; CPU torch.topk chose other tied indices in "
          f"{_compare_with_llada.topk_differs} (cumulative)")
    if ties:
        assert straddled > 0, "the tie-heavy input produced no tie at a top-k boundary"


GENERATE_CASES = [("2025-03", torch.bfloat16, 0.0, "low_confidence"), ("2025-03", torch.bfloat16, 0.9,
                                                                       "low_confidence"),
                  ("2025-10", torch.float32, 0.0, "low_confidence"), ("2025-10", torch.float32, 0.7,
                                                                      "low_confidence"),
                  ("2025-10", torch.float32, 0.7, "random")]


@pytest.mark.parametrize("version,dtype,temperature,remasking", GENERATE_CASES,
                         ids=[f"{v}-{str(d)[6:]}-T{t}-{r}" for v, d, t, r in GENERATE_CASES])
def test_generate_token_for_token(rnd, version, dtype, temperature, remasking):
    """Whole generations with a deterministic toy model: LLaDA's generate() and a prr_ext decode loop produce the
    same canvas token for token (fp64 / fp32 confidences of distinct rows have no ties). The current version runs a
    left-padded batch with attention_mask."""
    V, P, BL, nb = 61, 5, 8, 3
    mask_id = rnd.int(0, V - 1)
    B = rnd.int(1, 3)
    S = rnd.choice([4, 5, 8])
    model = ToyModel(rnd, V, P + BL * nb, mask_id, dtype=dtype)
    prompt = non_mask_tokens(rnd, (B, P), V, mask_id)
    batch = LL.VERSIONS[version].batch
    am = None
    if batch:
        am = torch.ones(B, P, dtype=torch.int64)
        for b in range(B):
            am[b, : rnd.int(0, P - 1)] = 0  # left padding
    seed = rnd.int(0, 2 ** 62)
    ties = []

    def on_step(num_block, i, x_before, logits, trace):
        for b in range(B):
            k = int(trace.k[b])
            vals = torch.sort(trace.confidence[b].double(), descending=True).values
            if 0 < k < vals.numel() and vals[k - 1] == vals[k] and vals[k] > -math.inf:
                ties.append((num_block, i, b))

    want = LL.generate(model, prompt, am, steps=S * nb, gen_length=BL * nb, block_length=BL, temperature=temperature,
                       remasking=remasking, mask_id=mask_id, version=version,
                       generator=torch.Generator().manual_seed(seed), on_step=on_step)
    assert not ties, f"test input error: ties at the top-k boundary {ties}"

    x = torch.full((B, P + BL * nb), mask_id)
    x[:, :P] = prompt
    policy = prr_ext.LowConfidence() if remasking == "low_confidence" else prr_ext.RandomRemask()
    st = prr_ext.State(x, mask_id, P, BL, S * nb, policy, temperature=temperature,
                       generator=torch.Generator().manual_seed(seed), confidence_dtype=_conf_dtype(version, dtype),
                       rng="torch")
    full_am = None if am is None else torch.cat([am, torch.ones(B, BL * nb, dtype=am.dtype)], 1)
    while not st.done:
        prr_ext.step(model(st.x, attention_mask=full_am).logits, st)
    assert torch.equal(st.x, want), f"prr_ext\n{st.x}\nLLaDA\n{want}"
    assert bool((st.nfe == S * nb).all())


# ---------------------------------------------------------------------------------------------------------------
# The mask token
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_prr_never_writes_mask_id(rnd, temperature):
    """With the mask logit the largest of every row, LLaDA proposes mask_id (a no-op commit that uses up a slot),
    while prr_ext (op and reference) commits the best non-mask token, whose probability is still normalised over
    the whole vocabulary (mask token included)."""
    V, BL, P = 33, 8, 3
    mask_id = rnd.int(0, V - 1)
    B = 3
    x = torch.full((B, P + 2 * BL), mask_id)
    x[:, :P] = non_mask_tokens(rnd, (B, P), V, mask_id)
    st = prr_ext.State(x, mask_id, P, BL, 2 * BL // 2, prr_ext.LowConfidence(), temperature=temperature,
                       seed=torch.arange(B) + 1)
    ref = clone_for_reference(st)
    while not st.done:
        lg = normal_logits(rnd, B, P + 2 * BL, V, mask_id, mask_mode="max").float()
        x_before = st.x.clone()
        lo = st.block_start
        if temperature == 0:
            trace = LL.llada_step(x_before.clone(), lg.clone(), block_end=lo + BL, k=torch.full((B,), 2),
                                  mask_id=mask_id, version="2025-10")
            assert (trace.x0[:, lo:lo + BL][x_before[:, lo:lo + BL] == mask_id] == mask_id).all(), (
                "LLaDA is expected to propose the mask token here")
        commit = assert_step_matches(st, ref, lg)
        assert commit.any()
        assert not (st.x[commit] == mask_id).any()
        rows = st.last_tokens >= 0
        if temperature == 0:
            assert torch.equal(st.last_tokens[rows], first_argmax(lg, exclude=mask_id)[rows])
        p = torch.softmax(lg.double(), -1).gather(-1, st.last_tokens.clamp_min(0)[..., None]).squeeze(-1)
        rtol = 8 * torch.finfo(torch.float32).eps * max(1.0, float(lg.abs().max()))  # fp32 exp(l - max)
        torch.testing.assert_close(st.last_stats[..., R.STAT_CONF][rows].double(), p[rows], rtol=rtol, atol=1e-9)
    assert not (st.x == mask_id).any()


# ---------------------------------------------------------------------------------------------------------------
# The re-implementation itself (semantics the decode-loop tests rely on)
# ---------------------------------------------------------------------------------------------------------------
def test_llada_schedule_matches_prr_ext():
    """get_num_transfer_tokens (remainder front-loaded) == prr_ext.reference.schedule_k for every n, S."""
    for n in range(0, 40):
        for S in range(1, 12):
            got = LL.get_num_transfer_tokens(torch.ones(1, n, dtype=torch.bool), S)[0].tolist()
            assert got == [R.schedule_k(n, S, i) for i in range(S)], (n, S)
            assert sum(got) == n


@pytest.mark.parametrize("temperature", [0.0, 1e-3])
def test_llada_eos_flags_aliasing(rnd, temperature):
    """confidence_eos_eot_inf: at T == 0 the noisy logits ARE the logits, so EOS and EoT both get probability 0;
    at T > 0 only EoT does. logits_eos_inf: EOS is never proposed."""
    V, eos, eot, mask_id, L = 17, 3, 5, 16, 12
    lg = rnd.randn(1, L, V).float()
    lg[0, 0::2, eos] = 20.0  # EOS is the argmax at even positions
    lg[0, 1::2, eot] = 20.0  # EoT at odd ones
    lg[..., mask_id] = -30.0
    x = torch.full((1, L), mask_id)
    g = torch.Generator().manual_seed(rnd.int(0, 10 ** 6))
    tr = LL.llada_step(x.clone(), lg.clone(), block_end=L, k=torch.tensor([L]), mask_id=mask_id,
                       temperature=temperature, confidence_eos_eot_inf=True, eos_id=eos, eot_id=eot, generator=g)
    assert (tr.x0[0, 0::2] == eos).all() and (tr.x0[0, 1::2] == eot).all()
    assert (tr.x0_p[0, 1::2] == 0).all(), "EoT's confidence must be 0"
    if temperature == 0:
        assert (tr.x0_p[0, 0::2] == 0).all(), "at T == 0 EOS's confidence is 0 too (aliasing)"
    else:
        assert (tr.x0_p[0, 0::2] > 0.5).all(), "at T > 0 EOS keeps its confidence"
    tr = LL.llada_step(x.clone(), lg.clone(), block_end=L, k=torch.tensor([L]), mask_id=mask_id,
                       temperature=temperature, logits_eos_inf=True, eos_id=eos, eot_id=eot, generator=g)
    assert not (tr.x0 == eos).any()


def test_llada_fp64_version_draws_noise_at_t0(rnd):
    """The 2025-02 version draws the fp64 noise even at T = 0 (consuming the generator) while later versions
    return the logits themselves; the proposals agree."""
    lg = rnd.randn(2, 6, 9).to(torch.bfloat16)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a = LL.add_gumbel_noise(lg, 0.0, t0_shortcut=False, generator=g1)
    b = LL.add_gumbel_noise(lg, 0.0, t0_shortcut=True, generator=g2)
    assert b is lg and a.dtype == torch.float64
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert not torch.equal(g1.get_state(), g2.get_state())
