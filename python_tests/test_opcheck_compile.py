"""torch.library.opcheck on torch.ops.prr_ext.step (schema incl. the declared in-place mutations, autograd
registration, fake/meta implementation, AOT dispatch), and torch.compile(fullgraph=True) of functions calling
prr_ext.step (same results as eager, no recompilation from step to step). CPU, tiny shapes: compile time on 2 cores
is what this file costs.

The op's stats output holds NaN by design (statistics of positions that are not candidates, PRR columns of other
policies), and opcheck's AOT-dispatch comparison uses assert_close without equal_nan; so opcheck runs its AOT test
only on a NaN-free sample, and the other samples go through the same AOT check with equal_nan=True.
"""
from __future__ import annotations

import functools

import pytest
import torch

import prr_ext
from prr_ext.ops import op_arguments

from helpers import Shape, clone_for_reference, make_canvas, make_policy, make_state, normal_logits

# torch's own optests import functorch, which triggers a torch.jit deprecation warning
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

OPCHECK_BASIC = ("test_schema", "test_autograd_registration", "test_faketensor")


def _op_args(state, logits, **inputs):
    """The op's positional arguments (opcheck takes a tuple)."""
    return tuple(op_arguments(logits, state, **inputs).values())


SAMPLES = ["low_confidence", "random", "threshold", "factor", "entropy_bound", "prr_temperature",
           "prr_power_nounion", "prr_weighted", "prr_scores", "prr_extra", "rng_torch_candidates", "block_only_bf16"]


def _sample(rnd, name):
    s = Shape(B=2, P=3, G=8, BL=4, steps=4, V=13, mask_id=rnd.int(0, 12))
    policy_name = {"rng_torch_candidates": "random", "block_only_bf16": "prr_temperature"}.get(name, name)
    policy, inputs = make_policy(policy_name, rnd)
    x, plen = make_canvas(rnd, s, prefill=0.2)
    st = make_state(rnd, x, s, plen, policy, temperature=0.7, confidence_dtype=torch.bfloat16)
    prr_ext.step(normal_logits(rnd, s.B, s.L, s.V, s.mask_id).float(), st,  # mid-block state, trajectories set
                 **(inputs(st, s.L) if inputs else {}))
    Lr = s.BL if name == "block_only_bf16" else s.L
    lg = normal_logits(rnd, s.B, Lr, s.V, s.mask_id).to(torch.bfloat16 if name == "block_only_bf16" else torch.float32)
    kw = {k: v.float().contiguous() for k, v in (inputs(st, Lr) if inputs else {}).items()}
    if name == "rng_torch_candidates":
        kw["candidates"] = rnd.randint(0, s.V, (s.B, Lr))
        kw["random_conf"] = rnd.rand(s.B, Lr).float()
    return _op_args(st, lg, **kw)


@pytest.mark.parametrize("name", SAMPLES)
def test_opcheck(rnd, name):
    args = _sample(rnd, name)
    torch.library.opcheck(torch.ops.prr_ext.step.default, args, test_utils=OPCHECK_BASIC)
    # == opcheck's test_aot_dispatch_{static,dynamic}, with NaN == NaN in the output comparison
    nan_equal = functools.partial(torch.testing.assert_close, equal_nan=True)
    for dynamic in (False, True):
        _aot_check(args, dynamic, nan_equal)


def _aot_check(args, dynamic, assert_equals_fn):
    from torch.testing._internal.optests.aot_autograd import aot_autograd_check

    op = torch.ops.prr_ext.step.default

    def func(*a):  # the op mutates its state arguments: run every invocation on fresh copies, as opcheck does
        a = [t.clone() if isinstance(t, torch.Tensor) else t for t in a]
        return op(*a)

    aot_autograd_check(func, args, {}, dynamic, assert_equals_fn=assert_equals_fn, check_gradients=False)


def test_opcheck_full_on_nan_free_sample(rnd):
    """The complete default opcheck (incl. test_aot_dispatch_dynamic) on a sample whose outputs hold no NaN: PRR
    with temperature shaping, block-only logits, every position of the active block masked in every row."""
    s = Shape(B=2, P=3, G=8, BL=4, steps=4, V=13, mask_id=rnd.int(0, 12))
    x, _ = make_canvas(rnd, s, prefill=0.0, ragged=False)
    st = make_state(rnd, x, s, s.P, prr_ext.PRR(prr_ext.Controller.init(rnd.int(0, 99)), tau=0.6), temperature=0.5)
    args = _op_args(st, normal_logits(rnd, s.B, s.BL, s.V, s.mask_id).float())
    out = torch.ops.prr_ext.step(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args])
    assert not out[2].isnan().any()
    torch.library.opcheck(torch.ops.prr_ext.step.default, args)


def test_fake_outputs_match_real(rnd):
    """The fake (meta) implementation reports the real outputs' shapes and dtypes, for full and block logits."""
    for name in ("threshold", "block_only_bf16"):
        args = _sample(rnd, name)
        real = torch.ops.prr_ext.step(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args])
        meta = torch.ops.prr_ext.step(*[a.to("meta") if isinstance(a, torch.Tensor) else a for a in args])
        for r, m in zip(real, meta):
            assert r.shape == m.shape and r.dtype == m.dtype and m.device.type == "meta"


# ---------------------------------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------------------------------
def _compare_loop(rnd, fn, policy_name, *, steps_limit=None, make_logits=None):
    """Run fn(logits, state) (compiled) and prr_ext.step (eager) side by side until done."""
    s = Shape(B=2, P=3, G=8, BL=4, steps=4, V=13, mask_id=rnd.int(0, 12))
    policy, inputs = make_policy(policy_name, rnd)
    x, plen = make_canvas(rnd, s)
    st = make_state(rnd, x, s, plen, policy, temperature=rnd.choice([0.0, 0.6]))
    eager = clone_for_reference(st)
    n = 0
    while not st.done:
        lg = normal_logits(rnd, s.B, s.L, s.V, s.mask_id).float()
        kw = inputs(st, s.L) if inputs else {}
        c1 = fn(lg, st, **kw)
        c2 = prr_ext.step(lg, eager, **kw)
        assert torch.equal(c1, c2) and torch.equal(st.x, eager.x) and torch.equal(st.row_state, eager.row_state)
        assert torch.equal(st.traj, eager.traj) and torch.equal(st.prev_p1, eager.prev_p1)
        assert torch.equal(st.last_tokens, eager.last_tokens)
        assert torch.equal(st.last_stats.nan_to_num(-7.0), eager.last_stats.nan_to_num(-7.0))
        n += 1
    assert eager.done and n > 0


@pytest.mark.parametrize("policy_name", ["low_confidence", "entropy_bound", "prr_temperature", "prr_extra"])
def test_compile_fullgraph_traces_the_wrapper(rnd, policy_name):
    """torch.compile(fullgraph=True) captures prr_ext.step (the Python wrapper included) in one graph: the state
    is mutated exactly as in eager mode, and later steps reuse the graph (no recompilation)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()

    @torch.compile(fullgraph=True, backend="eager")
    def fn(logits, state, **kw):
        return prr_ext.step(logits, state, **kw)

    _compare_loop(rnd, fn, policy_name)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


def test_compile_fullgraph_functionalized(rnd):
    """aot_eager: the in-place mutations of the state go through functionalization (AOTAutograd) and are written
    back correctly."""
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def fn(logits, state, **kw):
        return prr_ext.step(logits, state, **kw)

    _compare_loop(rnd, fn, "threshold")


def test_compile_fullgraph_inductor(rnd):
    """Inductor (the default backend): a toy LM head (matmul) feeding prr_ext.step in one compiled graph."""
    torch._dynamo.reset()
    V = 13
    W = rnd.randn(16, V).float()

    def head_and_step(h, state):
        logits = h @ W
        return prr_ext.step(logits, state)

    compiled = torch.compile(head_and_step, fullgraph=True)
    s = Shape(B=2, P=3, G=8, BL=4, steps=4, V=V, mask_id=rnd.int(0, V - 1))
    x, plen = make_canvas(rnd, s)
    st = make_state(rnd, x, s, plen, prr_ext.Threshold(tau=0.3), temperature=0.5)
    eager = clone_for_reference(st)
    while not st.done:
        h = rnd.randn(s.B, s.L, 16).float()
        c1 = compiled(h, st)
        c2 = head_and_step(h, eager)
        assert torch.equal(c1, c2) and torch.equal(st.x, eager.x) and torch.equal(st.row_state, eager.row_state)
    assert eager.done
