"""Bad input gets a clear Python exception naming the argument -- never a crash, never a silent wrong commit -- and
the documented edge cases behave as documented: non-contiguous logits work, NaN/+Inf rows are never committed
(-Inf entries are fine) and a loop with them still finishes, steps without masks are no-ops, B = 0 works, k larger
than the number of masked positions commits what is masked, corrupt or mismatched controller files raise
prr_ext.ControllerFormatError. Direct calls of torch.ops.prr_ext.step with bad arguments raise RuntimeError.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

import prr_ext
from prr_ext import constants
from prr_ext import reference as R
from prr_ext.ops import op_arguments

from helpers import (POLICY_NAMES, Shape, assert_step_matches, check_commit_invariants,
                     clone_for_reference, make_canvas, make_policy, make_state, non_mask_tokens, normal_logits,
                     random_shape)

B, P, G, BL, V, MASK = 2, 3, 8, 4, 11, 5


def _state(policy=None, **kw):
    x = torch.full((B, P + G), MASK)
    x[:, :P] = 1
    args = dict(mask_id=MASK, prompt_length=P, block_length=BL, steps=4, policy=policy or prr_ext.LowConfidence())
    args.update(kw)
    return prr_ext.State(x, **args)


def _logits(rnd, b=B, lr=P + G, v=V):
    return rnd.randn(b, lr, v).float()


# ---------------------------------------------------------------------------------------------------------------
# State and policy construction
# ---------------------------------------------------------------------------------------------------------------
def _x(*shape, dtype=torch.int64):
    return torch.full(shape or (B, P + G), MASK, dtype=dtype)


STATE_ERRORS = [
    ("x-not-tensor", dict(x=[[1, 2]]), TypeError, r"x must be a torch\.Tensor"),
    ("x-rank1", dict(x=_x(P + G)), ValueError, r"x must be a \[B, L\] tensor"),
    ("x-rank3", dict(x=_x(B, P + G, 1)), ValueError, r"x must be a \[B, L\] tensor"),
    ("x-int32", dict(x=_x(dtype=torch.int32)), TypeError, r"x must be int64"),
    ("x-float", dict(x=_x(dtype=torch.float32)), TypeError, r"x must be int64"),
    ("x-noncontiguous", dict(x=_x(P + G, B).t()), ValueError, r"x must be contiguous"),
    ("mask_id-negative", dict(mask_id=-1), ValueError, r"mask_id"),
    ("mask_id-float", dict(mask_id=5.0), ValueError, r"mask_id"),
    ("prompt_length-too-long", dict(prompt_length=P + G), ValueError, r"prompt_length"),
    ("prompt_length-negative", dict(prompt_length=torch.tensor([-1, P])), ValueError, r"prompt_length"),
    ("prompt_length-wrong-shape", dict(prompt_length=torch.tensor([P])), ValueError, r"prompt_length"),
    ("prompt_length-float", dict(prompt_length=3.0), TypeError, r"prompt_length"),
    ("block_length-not-dividing", dict(block_length=3), ValueError, r"block_length=3 must divide .*G=8"),
    ("block_length-zero", dict(block_length=0), ValueError, r"block_length must be a positive int"),
    ("steps-not-divisible", dict(steps=3), ValueError, r"steps=3 must be divisible by the number of blocks 2"),
    ("steps-zero", dict(steps=0), ValueError, r"steps must be a positive int"),
    ("temperature-negative", dict(temperature=-0.1), ValueError, r"temperature must be .*>= 0"),
    ("temperature-nan", dict(temperature=math.nan), ValueError, r"temperature"),
    ("temperature-inf", dict(temperature=math.inf), ValueError, r"temperature"),
    ("confidence_dtype", dict(confidence_dtype=torch.int32), ValueError, r"confidence_dtype"),
    ("rng", dict(rng="numpy"), ValueError, r"rng must be one of"),
    ("policy", dict(policy="low_confidence"), TypeError, r"policy must be a prr_ext policy"),
    ("generator", dict(generator=0), TypeError, r"generator must be a torch\.Generator"),
    ("seed", dict(seed=torch.zeros(B + 1, dtype=torch.int64)), ValueError, r"seed must be a \[B\]"),
    ("steps-beyond-int32", dict(steps=2 ** 40), ValueError, r"steps must be a positive int \(at most 2147483647\)"),
    ("temperature-none", dict(temperature=None), TypeError, r"temperature must be a number, got None"),
    ("temperature-str", dict(temperature="0.5"), TypeError, r"temperature must be a number"),
    ("gen_start-past-canvas", dict(gen_start=P + G), ValueError, r"gen_start must be < the canvas length L=11"),
]


@pytest.mark.parametrize("name,kw,exc,match", STATE_ERRORS, ids=[e[0] for e in STATE_ERRORS])
def test_state_rejects(name, kw, exc, match):
    args = dict(x=_x(), mask_id=MASK, prompt_length=P, block_length=BL, steps=4, policy=prr_ext.LowConfidence())
    args.update(kw)
    with pytest.raises(exc, match=match):
        prr_ext.State(**args)


POLICY_ERRORS = [
    ("threshold-tau-negative", lambda: prr_ext.Threshold(tau=-0.01), r"tau must lie in \[0, 1\]"),
    ("threshold-tau-above-1", lambda: prr_ext.Threshold(tau=1.01), r"tau must lie in \[0, 1\]"),
    ("threshold-tau-nan", lambda: prr_ext.Threshold(tau=math.nan), r"tau must lie in \[0, 1\]"),
    ("prr-tau", lambda: prr_ext.PRR(prr_ext.Controller.init(0), tau=1.5), r"tau must lie in \[0, 1\]"),
    ("gamma-negative", lambda: prr_ext.EntropyBound(gamma=-0.1), r"gamma must be a finite number >= 0"),
    ("gamma-nan", lambda: prr_ext.EntropyBound(gamma=math.nan), r"gamma"),
    ("gamma-inf", lambda: prr_ext.EntropyBound(gamma=math.inf), r"gamma"),
    ("f-zero", lambda: prr_ext.Factor(f=0.0), r"f must be a finite number > 0"),
    ("f-negative", lambda: prr_ext.Factor(f=-1.0), r"f must be a finite number > 0"),
    ("f-inf", lambda: prr_ext.Factor(f=math.inf), r"f must be"),
    ("prr-shaping", lambda: prr_ext.PRR(prr_ext.Controller.init(0), shaping="cubic"), r"shaping must be one of"),
    ("prr-alpha", lambda: prr_ext.PRR(prr_ext.Controller.init(0), alpha=2.0), r"alpha must lie in \[0, 1\]"),
    ("prr-controller", lambda: prr_ext.PRR("ckpt/"), r"controller must be a prr_ext\.Controller"),
    # integer parameters travel to the op as doubles: past 2**31 - 1 they are refused, not cast out of range
    ("localleap-radius-huge", lambda: prr_ext.LocalLeap(radius=2 ** 63), r"radius must be an int in \[0, 2147483647\]"),
    ("slowfast-explore-huge", lambda: prr_ext.SlowFast(explore_steps=2 ** 63), r"explore_steps must be an int in"),
    ("klass-history-huge", lambda: prr_ext.KLASS(history=2 ** 31), r"history must be an int in \[1, 2147483647\]"),
    ("r2-cluster-size-huge", lambda: prr_ext.R2(token_cluster_size=10 ** 30), r"token_cluster_size must be an int in"),
    ("klass-history-zero", lambda: prr_ext.KLASS(history=0), r"history must be an int >= 1, got 0"),
    # a string from a config file: bool("False") would be True
    ("prr-union-str", lambda: prr_ext.PRR(prr_ext.Controller.init(0), union_schedule="False"),
     r"union_schedule must be True or False, got 'False'"),
    ("prr-alpha-str", lambda: prr_ext.PRR(prr_ext.Controller.init(0), alpha="0.5"), r"alpha must be a number"),
    ("prr-shaping-list", lambda: prr_ext.PRR(prr_ext.Controller.init(0), shaping=["power"]), r"shaping must be one of"),
    ("gamma-str", lambda: prr_ext.EntropyBound(gamma="0.5"), r"gamma must be a number, got str"),
    ("gamma-none", lambda: prr_ext.EntropyBound(gamma=None), r"gamma must be a number"),
    ("r2-cluster-list", lambda: prr_ext.R2(token_cluster=["mid"]), r"token_cluster must be one of"),
]


@pytest.mark.parametrize("name,make,match", POLICY_ERRORS, ids=[e[0] for e in POLICY_ERRORS])
def test_policy_rejects(name, make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


# ---------------------------------------------------------------------------------------------------------------
# prr_ext.step arguments
# ---------------------------------------------------------------------------------------------------------------
def _prr_state(extra=0):
    return _state(prr_ext.PRR(prr_ext.Controller.init(0, extra_features=extra)))


def _random_state():
    return _state(prr_ext.RandomRemask())


def _state_with_x(x):
    """A State whose canvas was replaced after construction (reused for another request, by mistake)."""
    st = _state()
    st.x = x
    return st


STEP_ERRORS = [
    ("state", lambda r: (_logits(r), "state", {}), TypeError, r"state must be a prr_ext\.State"),
    ("logits-not-tensor", lambda r: ([[0.0]], _state(), {}), TypeError, r"logits must be a tensor"),
    ("logits-rank2", lambda r: (_logits(r)[0], _state(), {}), ValueError, r"logits must be \[B, L, V\]"),
    ("logits-rank4", lambda r: (_logits(r)[None], _state(), {}), ValueError, r"logits must be \[B, L, V\]"),
    ("logits-int", lambda r: (_logits(r).long(), _state(), {}), TypeError, r"logits must be one of"),
    ("logits-complex", lambda r: (_logits(r).to(torch.complex64), _state(), {}), TypeError, r"logits must be one of"),
    ("logits-device", lambda r: (_logits(r).to("meta"), _state(), {}), ValueError,
     r"logits are on meta but the state \(x\) is on cpu"),
    ("logits-batch", lambda r: (_logits(r, b=B + 1), _state(), {}), ValueError,
     r"logits batch size 3 does not match the state's B=2"),
    ("logits-length", lambda r: (_logits(r, lr=P + G - 1), _state(), {}), ValueError,
     r"logits must cover the whole canvas \(L=11\) or one block \(block_length=4\), got 10"),
    ("vocab-equal-mask_id", lambda r: (_logits(r, v=MASK), _state(), {}), ValueError,
     r"vocabulary size V=5 must be larger than mask_id=5"),
    ("vocab-below-mask_id", lambda r: (_logits(r, v=2), _state(), {}), ValueError,
     r"vocabulary size V=2 must be larger than mask_id=5"),
    ("scores-non-prr", lambda r: (_logits(r), _state(), dict(scores=torch.rand(B, P + G))), ValueError,
     r"scores / extra_features are only used by the PRR policy"),
    ("scores-shape", lambda r: (_logits(r), _prr_state(), dict(scores=torch.rand(B, BL))), ValueError,
     r"scores must have shape \(2, 11\)"),
    ("scores-device", lambda r: (_logits(r), _prr_state(), dict(scores=torch.rand(B, P + G, device="meta"))),
     ValueError, r"scores is on meta"),
    ("scores-int", lambda r: (_logits(r), _prr_state(), dict(scores=torch.ones(B, P + G, dtype=torch.int64))),
     TypeError, r"scores must be a floating-point tensor"),
    ("scores-not-tensor", lambda r: (_logits(r), _prr_state(), dict(scores=0.5)), TypeError,
     r"scores must be a tensor"),
    ("candidates-shape", lambda r: (_logits(r), _state(), dict(candidates=torch.zeros(B, BL, dtype=torch.int64))),
     ValueError, r"candidates must be a \[B, Lr\]=\(2, 11\) tensor"),
    ("candidates-float", lambda r: (_logits(r), _state(), dict(candidates=torch.zeros(B, P + G))), TypeError,
     r"candidates must be int64 \(or int32\) token ids, got torch\.float32"),
    ("candidates-bool", lambda r: (_logits(r), _state(), dict(candidates=_logits(r).argmax(-1) > 2)), TypeError,
     r"candidates must be int64 \(or int32\) token ids, got torch\.bool"),  # a commit mask passed by mistake
    ("candidates-device", lambda r: (_logits(r), _state(),
                                     dict(candidates=torch.zeros(B, P + G, dtype=torch.int64, device="meta"))),
     ValueError, r"candidates are on meta but the state \(x\) is on cpu"),
    ("random_conf-shape", lambda r: (_logits(r), _random_state(), dict(random_conf=torch.rand(B, 1))), ValueError,
     r"random_conf must have shape \(2, 11\)"),
    ("random_conf-not-random", lambda r: (_logits(r), _state(), dict(random_conf=torch.rand(B, P + G))), ValueError,
     r"random_conf is only used by RandomRemask, not LowConfidence"),
    ("extra-no-slot", lambda r: (_logits(r), _prr_state(), dict(extra_features=torch.rand(B, P + G, 3))),
     ValueError, r"extra_features: this controller takes none"),
    ("x-longer", lambda r: (_logits(r, lr=P + G + 4), _state_with_x(torch.full((B, P + G + 4), MASK)), {}),
     ValueError, r"state\.x is a \(2, 15\) torch\.int64 tensor on cpu, but this State was built for a contiguous "
     r"\(2, 11\) int64 canvas on cpu; build a new prr_ext\.State"),
    ("x-batch", lambda r: (_logits(r, b=B + 1), _state_with_x(torch.full((B + 1, P + G), MASK)), {}), ValueError,
     r"state\.x is a \(3, 11\)"),
    ("x-float", lambda r: (_logits(r), _state_with_x(torch.full((B, P + G), float(MASK))), {}), ValueError,
     r"state\.x is a \(2, 11\) torch\.float32 tensor"),
    ("extra-missing", lambda r: (_logits(r), _prr_state(2), {}), ValueError,
     r"the controller expects 2 extra_features"),
    ("extra-width", lambda r: (_logits(r), _prr_state(2), dict(extra_features=torch.rand(B, P + G, 3))), ValueError,
     r"extra_features must have shape \(2, 11, 2\)"),
]


@pytest.mark.parametrize("name,make,exc,match", STEP_ERRORS, ids=[e[0] for e in STEP_ERRORS])
def test_step_rejects(rnd, name, make, exc, match):
    logits, state, kw = make(rnd)
    before = None if not isinstance(state, prr_ext.State) else (state.x.clone(), state.row_state.clone())
    with pytest.raises(exc, match=match):
        prr_ext.step(logits, state, **kw)
    if before is not None:  # a rejected call leaves the state untouched
        assert torch.equal(state.x, before[0]) and torch.equal(state.row_state, before[1])


# ---------------------------------------------------------------------------------------------------------------
# Non-contiguous logits
# ---------------------------------------------------------------------------------------------------------------
def _views(lg: torch.Tensor):
    """Non-contiguous tensors holding the values of lg [B, Lr, V]."""
    Bn, Lr, Vn = lg.shape
    yield "transposed", lg.transpose(1, 2).contiguous().transpose(1, 2)
    yield "permuted", lg.permute(1, 0, 2).contiguous().permute(1, 0, 2)
    big = torch.full((Bn + 1, 3 * Lr, Vn + 7), math.nan, dtype=lg.dtype)
    big[1:, ::3, 3:Vn + 3] = lg
    yield "strided-with-offset", big[1:, ::3, 3:Vn + 3]
    wide = torch.full((Bn, Lr, 2 * Vn), math.nan, dtype=lg.dtype)
    wide[..., ::2] = lg
    yield "vocab-stride-2", wide[..., ::2]
    if Bn > 1:
        same = lg[:1].expand(Bn, Lr, Vn)  # batch stride 0 (the caller's rows must then be equal)
        yield "expanded-batch", same


@pytest.mark.parametrize("policy_name", ["low_confidence", "threshold", "prr_temperature"])
@pytest.mark.parametrize("span", ["full", "block"])
def test_noncontiguous_logits_work(rnd, policy_name, span):
    """Non-contiguous logits are accepted and give bitwise the same results as their contiguous copy."""
    s = Shape(B=3, P=5, G=16, BL=8, steps=8, V=37, mask_id=rnd.int(0, 36))
    policy, _ = make_policy(policy_name, rnd)
    x, plen = make_canvas(rnd, s, prefill=0.2)
    base = make_state(rnd, x, s, plen, policy, temperature=rnd.choice([0.0, 0.8]), confidence_dtype=torch.bfloat16)
    for _ in range(2):  # two steps: the second reads whatever block is active then
        Lr = s.L if span == "full" else s.BL
        lg = normal_logits(rnd, s.B, Lr, s.V, s.mask_id).to(rnd.choice([torch.float32, torch.bfloat16]))
        for name, view in _views(lg):
            assert not view.is_contiguous(), name
            want = base.clone()
            got = base.clone()
            src = view.contiguous()
            c_want = prr_ext.step(src, want)
            c_got = prr_ext.step(view, got)
            assert torch.equal(c_got, c_want), name
            assert torch.equal(got.x, want.x) and torch.equal(got.row_state, want.row_state), name
            assert torch.equal(got.last_tokens, want.last_tokens), name
            assert torch.equal(got.last_stats.nan_to_num(-7.0), want.last_stats.nan_to_num(-7.0)), name
        prr_ext.step(lg, base)


def test_block_view_of_full_logits(rnd):
    """The active block's rows sliced out of full-canvas logits (a strided view) == the full logits."""
    s = random_shape(rnd, block_lengths=(3, 8), vocabs=(33,))
    x, plen = make_canvas(rnd, s)
    st = make_state(rnd, x, s, plen, prr_ext.Threshold(0.5), temperature=0.5)
    other = st.clone()
    while not st.done:
        lg = normal_logits(rnd, s.B, s.L, s.V, s.mask_id).float()
        lo = st.block_start
        c1 = prr_ext.step(lg, st)
        c2 = prr_ext.step(lg[:, lo:lo + s.BL], other)
        assert torch.equal(c1, c2) and torch.equal(st.x, other.x)


# ---------------------------------------------------------------------------------------------------------------
# NaN and infinities
# ---------------------------------------------------------------------------------------------------------------
def _poison(rnd, lg: torch.Tensor, frac: float = 0.3):
    """Put NaN / +Inf somewhere in a fraction of the rows and -Inf entries into others (in place); returns the
    [B, Lr] bool mask of the rows that must never be committed."""
    Bn, Lr, Vn = lg.shape
    bad = rnd.rand(Bn, Lr) < frac
    which = rnd.randint(0, 2, (Bn, Lr))
    col = rnd.randint(0, Vn, (Bn, Lr))
    for b, r in bad.nonzero().tolist():
        lg[b, r, col[b, r]] = math.nan if which[b, r] == 0 else math.inf
    neg = (rnd.rand(Bn, Lr, Vn) < 0.3) & ~bad[..., None]
    lg[neg] = -math.inf
    return bad


@pytest.mark.parametrize("policy_name", POLICY_NAMES)
def test_nan_and_inf_rows_are_never_committed(rnd, policy_name):
    """Rows holding a NaN or +Inf are never candidates (token -1, NaN statistics); -Inf entries are just
    probability 0 (such a row commits a finite-logit token). Op == reference at every step, the loop finishes in
    bounded steps, and no committed token is outside [0, V) or mask_id."""
    s = random_shape(rnd, vocabs=(7, 33))
    policy, inputs = make_policy(policy_name, rnd)
    x, plen = make_canvas(rnd, s)
    st = make_state(rnd, x, s, plen, policy, temperature=rnd.choice([0.0, 0.7]))
    ref = clone_for_reference(st)
    bound = R.block_cap(st) * s.num_blocks
    it = 0
    while not st.done:
        assert it < bound, "a loop with NaN/Inf rows did not finish"
        block_only = rnd.coin()
        Lr = s.BL if block_only else s.L
        lg = normal_logits(rnd, s.B, Lr, s.V, s.mask_id).float()
        bad = _poison(rnd, lg)
        lo = st.block_start
        kw = inputs(st, Lr) if inputs else {}
        commit = assert_step_matches(st, ref, lg, **kw)
        off = lo if block_only else 0
        assert not commit[:, off:off + Lr][bad].any(), "a NaN/+Inf row was committed"
        assert (st.last_tokens[bad] == -1).all() and st.last_stats[bad].isnan().all()
        chosen = st.x[:, off:off + Lr][commit[:, off:off + Lr]]
        rows = lg[commit[:, off:off + Lr]]
        assert (rows.gather(-1, chosen[:, None]) > -math.inf).all(), "committed a token whose logit is -inf"
        it += 1
    if not policy.adaptive:
        assert bool((st.nfe == s.steps).all())


@pytest.mark.parametrize("policy_name", ["low_confidence", "threshold", "prr_temperature_nounion", "entropy_bound"])
def test_all_nan_logits_loop_finishes(rnd, policy_name):
    """Logits that are entirely NaN (or all non-mask logits -Inf) commit nothing, and the loop still ends: after
    `steps` NFE for vanilla policies, after at most block_cap steps per block for adaptive ones; the canvas keeps
    its masks rather than receiving garbage."""
    s = random_shape(rnd, vocabs=(7, 33), max_B=3)
    policy, _ = make_policy(policy_name, rnd)
    x, plen = make_canvas(rnd, s, prefill=0.0)
    st = make_state(rnd, x, s, plen, policy, temperature=rnd.choice([0.0, 1.0]))
    x0 = st.x.clone()
    it = 0
    while not st.done:
        assert it < R.block_cap(st) * s.num_blocks
        if rnd.coin():
            lg = torch.full((s.B, s.L, s.V), math.nan)
        else:
            lg = torch.full((s.B, s.L, s.V), -math.inf)
            lg[..., s.mask_id] = 1.0
        commit = prr_ext.step(lg, st)
        assert not commit.any() and (st.last_tokens == -1).all()
        it += 1
    assert torch.equal(st.x, x0)
    assert it == R.block_cap(st) * s.num_blocks


def test_single_finite_logit_row(rnd):
    """A row that is -Inf everywhere except one token commits that token with confidence 1."""
    x = torch.full((1, 6), 4)
    x[0, :2] = 0
    st = prr_ext.State(x, 4, 2, 4, 1, prr_ext.LowConfidence())
    lg = torch.full((1, 6, 9), -math.inf)
    toks = torch.tensor([0, 0, 8, 1, 3, 7])
    lg[0, torch.arange(6), toks] = rnd.randn(6).float()
    lg[0, :, 4] = -math.inf
    commit = prr_ext.step(lg, st)
    assert commit[0, 2:].all() and torch.equal(st.x[0, 2:], toks[2:])
    assert torch.equal(st.last_stats[0, 2:, R.STAT_CONF], torch.ones(4))


# ---------------------------------------------------------------------------------------------------------------
# Degenerate canvases
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy_name", ["low_confidence", "random", "threshold", "prr_power"])
def test_no_masked_positions(rnd, policy_name):
    """A canvas without masks: every step is a no-op. Vanilla rows still spend `steps` NFE (LLaDA semantics);
    adaptive rows skip the empty blocks, so the state starts done."""
    s = random_shape(rnd, vocabs=(33,))
    policy, inputs = make_policy(policy_name, rnd)
    x = non_mask_tokens(rnd, (s.B, s.L), s.V, s.mask_id)
    with pytest.warns(UserWarning, match="holds no mask token"):
        st = make_state(rnd, x.clone(), s, s.P, policy)
    ref = clone_for_reference(st)
    if policy.adaptive:
        assert st.done and bool((st.nfe == 0).all())
        return
    n = 0
    while not st.done:
        lg = normal_logits(rnd, s.B, s.L, s.V, s.mask_id).float()
        commit = assert_step_matches(st, ref, lg, **(inputs(st, s.L) if inputs else {}))
        assert not commit.any() and torch.equal(st.x, x) and (st.last_tokens == -1).all()
        n += 1
    assert n == s.steps and bool((st.nfe == s.steps).all())


def test_adaptive_skips_empty_blocks(rnd):
    """Blocks that hold no mask are skipped by adaptive policies (no NFE), entered by vanilla ones."""
    x = torch.full((2, 2 + 12), 9)
    x[:, :2] = 1
    x[0, 2 + 4:2 + 8] = 3   # row 0: block 1 already filled
    x[1, 2:2 + 8] = 3       # row 1: blocks 0 and 1 filled
    st = prr_ext.State(x.clone(), 9, 2, 4, 6, prr_ext.Threshold(tau=0.0))
    assert st.row_state[:, R.RS_BLOCK].tolist() == [0, 2]
    while not st.done:
        prr_ext.step(rnd.randn(2, 14, 11).float(), st)
    assert st.nfe.tolist() == [2, 1]
    van = prr_ext.State(x.clone(), 9, 2, 4, 6, prr_ext.LowConfidence())
    while not van.done:
        prr_ext.step(rnd.randn(2, 14, 11).float(), van)
    assert van.nfe.tolist() == [6, 6]


@pytest.mark.parametrize("policy_name", ["low_confidence", "threshold", "prr_temperature", "random"])
def test_empty_batch(rnd, policy_name):
    """B = 0: the state is done at once and a step returns an empty [0, L] mask."""
    policy, _ = make_policy(policy_name, rnd)
    st = prr_ext.State(torch.zeros(0, P + G, dtype=torch.int64), MASK, P, BL, 4, policy)
    assert st.done and st.nfe.shape == (0,)
    for Lr in (P + G, BL):
        commit = prr_ext.step(torch.randn(0, Lr, V), st)
        assert commit.shape == (0, P + G) and commit.dtype == torch.bool
        assert st.last_tokens.shape == (0, Lr) and st.last_stats.shape == (0, Lr, R.NUM_STATS)
        c_ref, _, _ = R.step(torch.randn(0, Lr, V), st.clone())
        assert c_ref.shape == (0, P + G)


@pytest.mark.parametrize("policy_name", ["low_confidence", "random", "threshold", "factor"])
def test_k_larger_than_masked_count(rnd, policy_name):
    """When the caller fills masked positions mid-block, the schedule's k_i can exceed the positions still masked:
    the step commits what is masked (op == reference)."""
    policy, _ = make_policy(policy_name, rnd)
    s = Shape(B=2, P=3, G=8, BL=8, steps=2, V=33, mask_id=rnd.int(0, 32))
    x = torch.full((2, 11), s.mask_id)
    x[:, :3] = non_mask_tokens(rnd, (2, 3), 33, s.mask_id)
    st = make_state(rnd, x, s, 3, policy)
    ref = clone_for_reference(st)
    assert_step_matches(st, ref, normal_logits(rnd, 2, 11, 33, s.mask_id).float())
    assert int(st.row_state[0, R.RS_STEP]) == 1 or policy.adaptive
    if st.done:
        return
    for state in (st, ref):  # the caller fills all but one (row 0) / two (row 1) of the remaining masks
        for b, keep in ((0, 1), (1, 2)):
            cols = (state.x[b] == s.mask_id).nonzero().flatten()
            state.x[b, cols[keep:]] = 0 if s.mask_id else 1
    left = (st.x == s.mask_id).sum(1)
    active = st.row_state[:, R.RS_BLOCK] == 0
    if not policy.adaptive:
        assert R.schedule_k(8, 2, 1) == 4 and left.tolist() == [1, 2]
    commit = assert_step_matches(st, ref, normal_logits(rnd, 2, 11, 33, s.mask_id).float())
    assert torch.equal(commit.sum(1), torch.where(active, left, 0))
    assert st.done and not (st.x == s.mask_id).any()


# ---------------------------------------------------------------------------------------------------------------
# Controller files
# ---------------------------------------------------------------------------------------------------------------
def _saved(tmp_path, **init):
    path = str(tmp_path / "ctrl")
    prr_ext.Controller.init(3, **init).save(path)
    return path


def _edit_config(path, **changes):
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)


def _rewrite_weights(path, fn):
    from safetensors.torch import load_file, save_file
    w_path = os.path.join(path, "model.safetensors")
    t = load_file(w_path)
    fn(t)
    save_file(t, w_path)


def _write(path, name, data: bytes):
    with open(os.path.join(path, name), "wb") as f:
        f.write(data)


def _truncate(path, name, keep: float):
    p = os.path.join(path, name)
    data = open(p, "rb").read()
    _write(path, name, data[: int(len(data) * keep)])


CONTROLLER_FILE_ERRORS = [
    ("missing-dir", lambda p: os.path.join(p, "nowhere"), r"controller file not found: .*config\.json"),
    ("missing-config", lambda p: os.remove(os.path.join(p, "config.json")), r"controller file not found: .*config"),
    ("missing-weights", lambda p: os.remove(os.path.join(p, "model.safetensors")),
     r"controller file not found: .*model\.safetensors"),
    ("bad-json", lambda p: _write(p, "config.json", b'{"format": "prr_ext.controller", '), r"not valid JSON"),
    ("binary-json", lambda p: _write(p, "config.json", b"\xff\xfe\x00garbage"), r"not valid JSON"),
    ("json-list", lambda p: _write(p, "config.json", b"[1, 2]"), r"config\.json: holds a JSON list, not an object"),
    ("wrong-format", lambda p: _edit_config(p, format="other.model"), r"not a prr_ext controller config"),
    ("wrong-version", lambda p: _edit_config(p, version=2), r"controller version 2 is not supported"),
    ("no-version", lambda p: _edit_config(p, version=None), r"controller version None is not supported"),
    ("activation", lambda p: _edit_config(p, activation="relu"), r"unsupported activation 'relu'"),
    ("missing-key", lambda p: _edit_config(p, t_max=None), r"missing key 't_max'"),
    ("bad-temperature-map", lambda p: _edit_config(p, t_min=1.5),
     r"temperature map needs t_max >= 1 and 0 < t_min < 1"),
    ("truncated-weights", lambda p: _truncate(p, "model.safetensors", 0.6), r"cannot read safetensors"),
    ("truncated-header", lambda p: _truncate(p, "model.safetensors", 0.02), r"cannot read safetensors"),
    ("garbage-weights", lambda p: _write(p, "model.safetensors", os.urandom(64)), r"cannot read safetensors"),
    ("pickle-weights", lambda p: torch.save({"w0": torch.zeros(2)}, os.path.join(p, "model.safetensors")),
     r"cannot read safetensors"),
    ("extra-features-mismatch", lambda p: _edit_config(p, extra_features=2, in_features=15),
     r"in_mean: expected shape \(15,\), got \(13,\)"),
    ("hidden-mismatch", lambda p: _edit_config(p, hidden=[32, 16]), r"does not match the weights"),
    ("in-features-mismatch", lambda p: _edit_config(p, in_features=14), r"does not match the weights"),
    ("wrong-shape", lambda p: _rewrite_weights(p, lambda t: t.update(b0=torch.zeros(31))),
     r"b0: expected shape \(32,\), got \(31,\)"),
    ("missing-tensor", lambda p: _rewrite_weights(p, lambda t: t.pop("b_out")),
     r"controller tensors missing: \['b_out'\]"),
    ("unexpected-tensor", lambda p: _rewrite_weights(p, lambda t: t.update(w9=torch.zeros(1))),
     r"unexpected controller tensors: \['w9'\]"),
    ("too-wide", lambda p: _rewrite_weights(p, lambda t: t.update(w0=torch.zeros(65, 13))),
     r"w0: hidden width must be in \[1, 64\]"),
    ("nan-weight", lambda p: _rewrite_weights(p, lambda t: t["w1"].__setitem__((0, 0), math.nan)),
     r"w1: contains NaN or Inf"),
    ("zero-std", lambda p: _rewrite_weights(p, lambda t: t["in_std"].__setitem__(3, 0.0)), r"in_std must be > 0"),
]


@pytest.mark.parametrize("name,corrupt,match", CONTROLLER_FILE_ERRORS, ids=[e[0] for e in CONTROLLER_FILE_ERRORS])
def test_controller_file_errors(tmp_path, name, corrupt, match):
    path = _saved(tmp_path)
    prr_ext.Controller.load(path)  # intact
    new = corrupt(path)
    with pytest.raises(prr_ext.ControllerFormatError, match=match):
        prr_ext.Controller.load(new if isinstance(new, str) else path)


def test_unreadable_config_names_the_file(tmp_path, monkeypatch):
    """A config that exists but cannot be opened (permissions, I/O) is a ControllerFormatError naming it, for the
    controller and for the hidden-feature map alike (root reads any file, so open() is made to fail)."""
    import builtins
    from prr_ext.hidden_features import CONFIG_FILE, WEIGHTS_FILE
    path = _saved(tmp_path)
    _write(path, WEIGHTS_FILE, b"")
    _write(path, CONFIG_FILE, b"{}")
    real_open = builtins.open

    def failing_open(file, *args, **kwargs):
        if str(file).endswith(".json"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", failing_open)
    with pytest.raises(prr_ext.ControllerFormatError, match=r"config\.json: cannot read \(Permission denied\)"):
        prr_ext.Controller.load(path)
    with pytest.raises(prr_ext.ControllerFormatError, match=rf"{CONFIG_FILE}: cannot read \(Permission denied\)"):
        prr_ext.HiddenFeatures.load(path)


def test_controller_format_error_is_value_error():
    assert issubclass(prr_ext.ControllerFormatError, ValueError)


def test_controller_too_many_features_rejected_early(rnd):
    with pytest.raises(prr_ext.ControllerFormatError, match="extra_features"):
        prr_ext.Controller.init(0, extra_features=60)


# ---------------------------------------------------------------------------------------------------------------
# Direct calls of the C++ op
# ---------------------------------------------------------------------------------------------------------------
def _op_args(policy=None, *, n_extra=0, with_state=False):
    st = _state(policy or prr_ext.LowConfidence())
    a = op_arguments(torch.randn(B, P + G, V), st)
    if n_extra:
        a["extra_features"] = torch.randn(B, P + G, n_extra)
    return (a, st) if with_state else a


def _call(a):
    return torch.ops.prr_ext.step(**a)


PRR_ = lambda: prr_ext.PRR(prr_ext.Controller.init(0))  # noqa: E731
def _with_rule_param(policy, index, value):
    params = policy.rule_params()
    params[index] = value
    return params


DIRECT_ERRORS = [
    ("logits-rank2", {}, dict(logits=torch.randn(B, V)), r"logits must be \[B, L, V\]"),
    ("x-int32", {}, dict(x=torch.full((B, P + G), MASK, dtype=torch.int32)), r"x must be a contiguous \[B, L\] int64"),
    ("x-noncontiguous", {}, dict(x=torch.full((P + G, B), MASK).t()), r"x must be a contiguous"),
    ("logits-batch", {}, dict(logits=torch.randn(B + 1, P + G, V)), r"logits batch 3 != x batch 2"),
    ("logits-vocab-stride", {}, dict(logits=torch.randn(B, P + G, 2 * V)[..., ::2]), r"unit stride"),
    ("logits-length", {}, dict(logits=torch.randn(B, 5, V)), r"logits must cover the canvas"),
    ("mask_id-too-large", {}, dict(mask_id=V), r"mask_id 11 must be < vocabulary size 11"),
    ("mask_id-negative", {}, dict(mask_id=-2), r"mask_id -2 must be < vocabulary size 11 \(or -1"),
    ("mask_id-uniform-lowconf", {}, dict(mask_id=-1), r"a uniform canvas \(mask_id -1\) takes Threshold"),
    ("gen_start", {}, dict(gen_start=P + G), r"invalid gen_start/block_length"),
    ("gen_start-negative", {}, dict(gen_start=-1), r"invalid gen_start/block_length"),
    ("block_length-zero", {}, dict(block_length=0), r"invalid gen_start/block_length"),
    ("block_length-not-dividing", {}, dict(block_length=3), r"block_length must divide the generation length"),
    ("steps", {}, dict(steps=3), r"steps must be a positive multiple of the number of blocks"),
    ("steps-zero", {}, dict(steps=0), r"steps must be a positive multiple"),
    ("row_state", {}, dict(row_state=torch.zeros(B, 3, dtype=torch.int64)), r"row_state must be a contiguous \[B, 17\]"),
    ("row_state-dtype", {}, dict(row_state=torch.zeros(B, 4, dtype=torch.int32)), r"row_state must be"),
    ("traj", {}, dict(traj=torch.zeros(B, BL + 1, 2, dtype=torch.int64)), r"traj must be a contiguous"),
    ("prev_p1", {}, dict(prev_p1=torch.zeros(B, BL, dtype=torch.float64)), r"prev_p1 must be"),
    ("workspace", {}, dict(workspace=torch.zeros(3, dtype=torch.int64)), r"workspace must be a contiguous int64"),
    ("seed", {}, dict(seed=torch.zeros(B + 1, dtype=torch.int64)), r"seed must be \[B\] int64"),
    ("prompt_lens", {}, dict(prompt_lens=torch.zeros(B, dtype=torch.int32)), r"prompt_lens must be \[B\] int64"),
    ("policy-code", {}, dict(policy=99), r"unknown policy code 99"),
    ("confidence-dtype", {}, dict(confidence_dtype=7), r"unknown confidence dtype"),
    ("temperature-negative", {}, dict(temperature=-1.0), r"temperature must be finite and >= 0"),
    ("temperature-nan", {}, dict(temperature=math.nan), r"temperature must be finite"),
    ("mlp_dims", {}, dict(mlp_dims=[13, 32]), r"mlp_dims must be \[in, h1, h2\]"),
    ("candidates-dtype", {}, dict(candidates=torch.zeros(B, P + G, dtype=torch.int32)), r"candidates must be Long"),
    ("candidates-shape", {}, dict(candidates=torch.zeros(B, 4, dtype=torch.int64)), r"candidates has shape"),
    ("random_conf-dtype", {}, dict(random_conf=torch.zeros(B, P + G, dtype=torch.float64)), r"random_conf must be"),
    ("prr-no-controller", dict(policy=PRR_), dict(controller=None), r"PRR needs a controller buffer or scores"),
    ("prr-controller-size", dict(policy=PRR_), dict(controller=torch.zeros(10)), r"controller buffer has 10 values"),
    ("prr-controller-dtype", dict(policy=PRR_), dict(controller=torch.zeros(10, dtype=torch.float64)),
     r"controller buffer must be contiguous float32"),
    ("prr-dims", dict(policy=PRR_), dict(mlp_dims=[13, 65, 0]), r"controller dims out of range"),
    ("prr-dims-in", dict(policy=PRR_), dict(mlp_dims=[12, 32, 32]), r"controller dims out of range"),
    ("prr-shaping", dict(policy=PRR_), dict(shaping=5), r"unknown shaping code"),
    # external scores replace the MLP, but temperature shaping still reads the controller's temperature map
    ("prr-temperature-scores-no-controller", dict(policy=PRR_), dict(controller=None, scores=torch.rand(B, P + G)),
     r"PRR temperature shaping needs the controller buffer"),
    ("prr-temperature-scores-controller-size", dict(policy=PRR_),
     dict(controller=torch.zeros(10), scores=torch.rand(B, P + G)), r"controller buffer has 10 values"),
    ("prr-scores-dtype", dict(policy=PRR_), dict(scores=torch.rand(B, P + G, dtype=torch.float64)),
     r"scores must be Float"),
    ("prr-extra-missing", dict(policy=lambda: prr_ext.PRR(prr_ext.Controller.init(0, extra_features=2)), n_extra=2),
     dict(extra_features=None), r"controller expects extra_features"),
    ("prr-extra-shape", dict(policy=lambda: prr_ext.PRR(prr_ext.Controller.init(0, extra_features=2)), n_extra=2),
     dict(extra_features=torch.randn(B, P + G, 3)), r"extra_features has shape"),
    # a double past int64's range would be an undefined cast
    ("rule-int-huge", dict(policy=prr_ext.SlowFast),
     dict(rule_params=_with_rule_param(prr_ext.SlowFast(), constants.RP_EXPLORE_STEPS, 2.0 ** 63)),
     r"SlowFast explore_steps must be an int in \[1, 2147483647\]"),
    ("rule-int-inf", dict(policy=prr_ext.LocalLeap),
     dict(rule_params=_with_rule_param(prr_ext.LocalLeap(), constants.RP_RADIUS, math.inf)),
     r"LocalLeap radius must be an int in \[0, 2147483647\]"),
]


@pytest.mark.parametrize("name,setup,bad,match", DIRECT_ERRORS, ids=[e[0] for e in DIRECT_ERRORS])
def test_direct_op_rejects(name, setup, bad, match):
    a = _op_args(setup["policy"]() if "policy" in setup else None, n_extra=setup.get("n_extra", 0))
    _call(dict(a, x=a["x"].clone(), row_state=a["row_state"].clone()))  # the unmodified call works
    a.update(bad)
    x_before = a["x"].clone()
    with pytest.raises(RuntimeError, match=match):
        _call(a)
    assert torch.equal(a["x"], x_before)


# (A device mix cannot be emulated for the op itself on a CPU-only machine: with one 'meta' tensor among the
# arguments the dispatcher routes the call to the fake implementation. The wrapper's device checks are tested above.)


def test_direct_op_ignores_invalid_candidates(rnd):
    """Candidate tokens supplied to the op (rng="torch" path) that are out of range or the mask token are never
    committed."""
    a, st = _op_args(with_state=True)
    cand = rnd.randint(0, V, (B, P + G))
    cand[cand == MASK] = (MASK + 1) % V  # valid everywhere (the mask token is never committed) ...
    cand[0, P:P + BL] = torch.tensor([-3, V, V + 100, MASK])  # ... except row 0's block
    a["candidates"] = cand
    x_before = st.x.clone()
    commit, tokens, _ = _call(a)
    assert not commit[0, P:P + BL].any() and (tokens[0, P:P + BL] == -1).all()
    assert commit[1].sum() == BL // 2  # row 1's candidates are valid: the schedule's k commits
    check_commit_invariants(st, x_before, commit, V, P, P + BL)


def test_direct_op_rejects_corrupt_row_state():
    """A corrupt row_state (negative block index) passed to the op directly must raise, not crash. Run in a
    subprocess so that a crash cannot take the test session down."""
    code = (
        "import torch, prr_ext\n"
        "x = torch.full((2, 11), 5); x[:, :3] = 1\n"
        "st = prr_ext.State(x, 5, 3, 4, 4, prr_ext.LowConfidence())\n"
        "st.row_state[:, 0] = -10**12\n"
        "try:\n"
        "    torch.ops.prr_ext.step(**prr_ext.ops.op_arguments(torch.randn(2, 11, 11), st))\n"
        "except RuntimeError as e:\n"
        "    print('RAISED', e)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "RAISED" in res.stdout, (res.returncode, res.stdout[-500:], res.stderr[-500:])


@pytest.mark.parametrize("shaping", ["temperature", "power", "weighted"])
def test_nan_scores_agree_with_reference(rnd, shaping):
    s = Shape(B=2, P=3, G=8, BL=8, steps=4, V=11, mask_id=5)
    x, _ = make_canvas(rnd, s, prefill=0.0, ragged=False)
    st = make_state(rnd, x, s, 3, prr_ext.PRR(prr_ext.Controller.init(0), tau=0.5, shaping=shaping))
    ref = clone_for_reference(st)
    for _ in range(3):
        sc = rnd.rand(2, 11).float()
        sc[rnd.rand(2, 11) < 0.3] = math.nan
        assert_step_matches(st, ref, normal_logits(rnd, 2, 11, 11, 5).float(), scores=sc)


@pytest.mark.parametrize("col,value", [(R.RS_BLOCK, -1), (R.RS_BLOCK, 3), (R.RS_STEP, -1), (R.RS_STEP, 2),
                                       (R.RS_SCHED_N, -1), (R.RS_SCHED_N, BL + 1), (R.RS_NFE, -5)],
                         ids=["block-negative", "block-past-end", "step-negative", "step-past-cap", "n-negative",
                              "n-above-block", "nfe-negative"])
def test_direct_op_rejects_corrupt_row_state_values(col, value):
    """Every out-of-range row_state entry (the op indexes x and logits with them) is a RuntimeError."""
    a = _op_args()
    _call(dict(a, x=a["x"].clone(), row_state=a["row_state"].clone()))
    a["row_state"][1, col] = value  # block 0..2 (num_blocks = 2 is 'done'), step < 2 (steps per block)
    with pytest.raises(RuntimeError, match=r"row_state is corrupt at row 1"):
        _call(a)
