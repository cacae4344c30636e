"""The CPU op `prr_ext.step` against the specification `prr_ext.reference.step`, for every policy.

Every comparison is exact on discrete outputs (commit masks, committed and candidate tokens, canvas, row counters,
trajectory state) and within fp32 tolerance on the per-token statistics (NaN exactly where the reference has NaN),
over whole decode loops on random odd shapes, every logits dtype, every confidence dtype, greedy and sampled
(Philox) decoding, full-canvas and block-only logits, non-contiguous logits and per-row prompt lengths.

About bf16/fp16 confidence: both implementations round an fp32 softmax, computed with different summation orders,
so a probability within ~1e-6 (relative) of a rounding midpoint of the 16-bit type may round to either neighbour.
The inputs avoid such rows (helpers.draw_step_logits re-draws rows whose candidate probability lies within 1e-5 of
a midpoint); the comparison itself is not loosened.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import prr_ext
from prr_ext import reference as R

from helpers import (CONF_DTYPES, DTYPE_NAMES, LOGITS_DTYPES, POLICY_NAMES, SET_RULE_NAMES, LogitsMaker, Shape,
                     ToyModel,
                     canonical_topk, check_commit_invariants, clone_for_reference, first_argmax,
                     make_canvas, make_policy, random_controller,
                     make_state, non_mask_tokens, normal_logits, random_shape, run_decode_loop)

LAYOUTS = [("full", "contiguous"), ("block", "contiguous"), ("full", "transposed"), ("block", "sliced"),
           ("full", "sliced"), ("block", "transposed")]


def _new_pair(rnd, s, policy, *, temperature=0.0, cdt=torch.float32, rng="philox", ragged=None, prefill=None):
    x, plen = make_canvas(rnd, s, ragged=ragged, prefill=prefill)
    st = make_state(rnd, x, s, plen, policy, temperature=temperature, confidence_dtype=cdt, rng=rng)
    return st, clone_for_reference(st)


# ---------------------------------------------------------------------------------------------------------------
# Whole decode loops: op == reference at every step
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", LOGITS_DTYPES, ids=[DTYPE_NAMES[d] for d in LOGITS_DTYPES])
@pytest.mark.parametrize("policy_name", POLICY_NAMES)
def test_decode_loop_matches_reference(rnd, policy_name, dtype):
    # Every policy meets every confidence dtype, greedy and sampled decoding and 4 of the 6 logits layouts over
    # its 4 logits-dtype cases (and the other layouts across policies); shapes are random.
    ip, idt = POLICY_NAMES.index(policy_name), LOGITS_DTYPES.index(dtype)
    cdt = CONF_DTYPES[(ip + idt) % 4]
    temperature = 0.0 if (idt // 2 + ip) % 2 == 0 else rnd.uniform(0.3, 1.5)
    span, layout = LAYOUTS[(3 * idt + ip) % len(LAYOUTS)]
    s = random_shape(rnd)
    policy, step_inputs = make_policy(policy_name, rnd)
    op_state, ref_state = _new_pair(rnd, s, policy, temperature=temperature, cdt=cdt, ragged=(ip + idt) % 2 == 1)
    maker = LogitsMaker(rnd, s.V, s.mask_id, dtype, layout=layout, block_only=span == "block")
    print(f"shape {s}, policy {policy}, conf {cdt}, T {temperature}, {span}/{layout}, plen {op_state.prompt_lens}")
    n = run_decode_loop(op_state, ref_state, maker, step_inputs=step_inputs)
    assert n >= 1
    nfe = op_state.nfe
    if not policy.adaptive:
        assert n == s.steps and bool((nfe == s.steps).all()), (n, nfe)
    else:
        assert bool((nfe <= R.block_cap(op_state) * s.num_blocks).all()), nfe
        if R.block_cap(op_state) == op_state.steps_per_block:  # (not PRR without the union, SlowFast, KLASS)
            assert bool((nfe <= s.steps).all()), f"an adaptive policy used more NFE than the schedule: {nfe}"


# R2 over PRR is left out here: its PRR keys of duplicated rows differ by an ulp in the reference (see the PRR note
# in the test), and R²'s passes then act on whichever duplicate the base rule left, so neither an exact comparison
# nor re-drawing near-ties (every tie-heavy draw has them) can work. PRR alone and R² over the other rules cover
# the two halves on these inputs; R2 over PRR runs in the random-input loops.
TIE_HEAVY_POLICY_NAMES = tuple(n for n in POLICY_NAMES if n != "r2_prr")


@pytest.mark.parametrize("conf_temp", [(torch.bfloat16, 0.0), (torch.bfloat16, 0.8), (torch.float32, 0.0)],
                         ids=["bf16conf-greedy", "bf16conf-T0.8", "fp32conf-greedy"])
@pytest.mark.parametrize("policy_name", TIE_HEAVY_POLICY_NAMES)
def test_tie_heavy_bf16_logits(rnd, policy_name, conf_temp):
    """bf16 logits whose rows come from a pool of 2-3 distinct small-integer rows: exact duplicates make exact
    confidence/entropy/key ties between positions, equal integers within a row make argmax ties. Besides op ==
    reference: the candidate is the first maximal non-mask token, and every step commits the prefix of the
    positions sorted by key with the LOWEST column first among equal keys.

    Near-ties that are not exact ties (keys from different inputs agreeing to a few ulps) may order either way
    between two correct implementations; helpers.draw_step_logits re-draws such steps (avoid_near_ties), the
    comparison stays exact. PRR: see below."""
    cdt, temperature = conf_temp
    s = random_shape(rnd, block_lengths=(8, 32), vocabs=(7, 33), max_steps=24)
    policy, step_inputs = make_policy(policy_name, rnd, tie_heavy=True)
    op_state, ref_state = _new_pair(rnd, s, policy, temperature=temperature, cdt=cdt, prefill=rnd.choice([0.0, 0.3]))
    block_only = rnd.coin()
    maker = LogitsMaker(rnd, s.V, s.mask_id, torch.bfloat16, kind="ties", block_only=block_only, conf_dtype=cdt,
                        pool_size=rnd.int(2, 3))
    ties_seen = {"argmax": 0, "key": 0}

    def on_step(it, x_before, lg, commit, lo):
        tokens, stats = op_state.last_tokens, op_state.last_stats
        rows = tokens >= 0  # logits rows that were candidates at this step
        if temperature == 0:
            want = first_argmax(lg.float(), exclude=s.mask_id)
            assert torch.equal(tokens[rows], want[rows]), "candidate is not the first maximal non-mask token"
            lgd = lg.double().clone()
            lgd[..., s.mask_id] = -math.inf
            ties_seen["argmax"] += int(((lgd == lgd.amax(-1, keepdim=True)).sum(-1) > 1)[rows].sum())
        keys = torch.where(rows, stats[..., R.STAT_KEY].double(), torch.tensor(-math.inf, dtype=torch.float64))
        off = lo if block_only else 0  # canvas column of logits row 0
        for b in range(s.B if policy_name not in SET_RULE_NAMES else 0):  # (those rules commit sets, not prefixes)
            if not rows[b].any():
                continue
            chosen = commit[b, off:off + keys.shape[1]]
            n = int(chosen.sum())
            assert torch.equal(chosen, canonical_topk(keys[b], n)), (
                f"row {b}: the committed set is not the top-{n} by key with lowest-column tie-breaking\n"
                f"keys {keys[b].tolist()}\ncommit {chosen.int().tolist()}")
            finite = keys[b][rows[b]]
            ties_seen["key"] += int(finite.numel() - finite.unique().numel())

    if isinstance(policy, prr_ext.PRR):
        # The op gives duplicated rows bitwise-identical PRR keys (exact ties, lowest column first: checked above
        # against the op's own keys). The reference's keys of duplicates may differ by an ulp: torch evaluates
        # pow/exp/sigmoid/silu with vectorised code for the bulk of a tensor and scalar code for its tail, and
        # small matmuls round differently per row. There, commit masks may differ only inside such a group.
        run_decode_loop(op_state, ref_state, maker, step_inputs=step_inputs, on_step=on_step, near_tie_rel=3e-6)
    else:  # (RandomRemask's keys are Philox uniforms, bit-identical in both: nothing to avoid)
        run_decode_loop(op_state, ref_state, maker, step_inputs=step_inputs, on_step=on_step,
                        avoid_near_ties=policy_name != "random")
    print("ties seen", ties_seen)
    if policy_name in ("low_confidence", "threshold", "factor", "entropy_bound"):  # keys = functions of the row
        assert ties_seen["key"] > 0, "the tie-heavy input produced no key ties"
    if temperature == 0 and s.V == 33:
        assert ties_seen["argmax"] > 0, "the tie-heavy input produced no argmax ties"


# ---------------------------------------------------------------------------------------------------------------
# NFE and commit counts: independent checks of the schedule
# ---------------------------------------------------------------------------------------------------------------
def _loop(state, maker, on_step=None, step_inputs=None, bound=None):
    """Op-only decode loop; on_step(it, x_before, commit, rs_before)."""
    bound = bound or R.block_cap(state) * state.num_blocks
    it = 0
    while not state.done:
        assert it < bound, "loop did not finish"
        x_before, rs_before = state.x.clone(), state.row_state.clone()
        kw = step_inputs(state, maker.rows(state)) if step_inputs else {}
        commit = prr_ext.step(maker(state), state, **kw)
        if on_step:
            on_step(it, x_before, commit, rs_before)
        it += 1
    return it


def _block_masks(x_before, state, blk):
    lo = state.gen_start + blk * state.block_length
    return (x_before[:, lo:lo + state.block_length] == state.mask_id).sum(1)


@pytest.mark.parametrize("policy_name", ["low_confidence", "random"])
def test_vanilla_nfe_and_schedule(rnd, policy_name):
    """LLaDA semantics: exactly `steps` NFE per row, and at step i of a block holding n masks exactly
    n // S + (i < n % S) commits (remainder front-loaded), also when S > n (k = 0 steps)."""
    for _ in range(4):
        s = random_shape(rnd)
        policy, _ = make_policy(policy_name, rnd)
        st, _ = _new_pair(rnd, s, policy, temperature=rnd.choice([0.0, 0.9]))
        maker = LogitsMaker(rnd, s.V, s.mask_id, rnd.choice(LOGITS_DTYPES), block_only=rnd.coin())
        S = st.steps_per_block
        n_at_entry = {}

        def on_step(it, x_before, commit, rs_before):
            blk, i = int(rs_before[0, R.RS_BLOCK]), int(rs_before[0, R.RS_STEP])
            assert bool((rs_before[:, R.RS_BLOCK] == blk).all()) and bool((rs_before[:, R.RS_STEP] == i).all())
            if i == 0:
                n_at_entry[blk] = _block_masks(x_before, st, blk)
            n = n_at_entry[blk]
            k = n // S + (i < n % S).to(torch.int64)
            assert torch.equal(commit.sum(1), k), (blk, i, commit.sum(1), k)

        n = _loop(st, maker, on_step)
        assert n == s.steps and bool((st.nfe == s.steps).all())
        assert not (st.x[:, st.gen_start:] == s.mask_id).any(), "vanilla decoding left masks"


@pytest.mark.parametrize("policy_name", ["threshold", "factor", "entropy_bound", "prr_temperature",
                                         "prr_power_nounion", "prr_weighted"])
def test_adaptive_nfe_and_floor(rnd, policy_name):
    """Adaptive rules commit at least the schedule's k_i (at least one; PRR without the union: at least one) per
    active row and step, never use more NFE than `steps` (PRR without the union: max(S, block_length) per block),
    and leave no mask behind."""
    for _ in range(3):
        s = random_shape(rnd)
        policy, inputs = make_policy(policy_name, rnd)
        st, _ = _new_pair(rnd, s, policy, temperature=rnd.choice([0.0, 0.9]))
        maker = LogitsMaker(rnd, s.V, s.mask_id, rnd.choice(LOGITS_DTYPES))
        S = st.steps_per_block
        union = not (isinstance(policy, prr_ext.PRR) and not policy.union_schedule)

        def on_step(it, x_before, commit, rs_before):
            for b in range(s.B):
                blk, i, n = (int(rs_before[b, c]) for c in (R.RS_BLOCK, R.RS_STEP, R.RS_SCHED_N))
                if blk != int(rs_before[:, R.RS_BLOCK].min()):
                    assert not commit[b].any(), "a row waiting for the batch committed"
                    continue
                masked = int(_block_masks(x_before[b:b + 1], st, blk))
                n = masked if i == 0 else n  # the schedule's n is fixed when the row enters the block
                k = R.schedule_k(n, S, i) if union else 0
                assert int(commit[b].sum()) >= min(max(k, 1), masked), (b, blk, i, k, commit[b].sum())

        _loop(st, maker, on_step, step_inputs=inputs)
        if union:
            assert bool((st.nfe <= s.steps).all()), st.nfe
        else:
            assert bool((st.nfe <= max(S, s.BL) * s.num_blocks).all()), st.nfe
        assert not (st.x[:, st.gen_start:] == s.mask_id).any(), "adaptive decoding left masks"


@pytest.mark.parametrize("policy", [prr_ext.Threshold(tau=0.0), prr_ext.Factor(f=1e9),
                                    prr_ext.EntropyBound(gamma=1e9)], ids=["threshold-tau0", "factor-huge",
                                                                            "entropy-bound-huge"])
def test_permissive_rules_commit_whole_block(rnd, policy):
    """tau = 0 / huge f / huge gamma: every masked position of the block commits at the block's first step, so a
    row spends exactly one NFE per block that holds masks (blocks without masks are skipped)."""
    s = random_shape(rnd)
    st, _ = _new_pair(rnd, s, policy, temperature=rnd.choice([0.0, 0.7]))
    x0 = st.x.clone()
    blocks_with_masks = torch.stack([_block_masks(x0, st, b) > 0 for b in range(s.num_blocks)], 1).sum(1)
    maker = LogitsMaker(rnd, s.V, s.mask_id, rnd.choice(LOGITS_DTYPES), block_only=rnd.coin())

    def on_step(it, x_before, commit, rs_before):
        for b in range(s.B):
            blk = int(rs_before[b, R.RS_BLOCK])
            if blk == int(rs_before[:, R.RS_BLOCK].min()):
                assert int(commit[b].sum()) == int(_block_masks(x_before[b:b + 1], st, blk))

    _loop(st, maker, on_step)
    assert torch.equal(st.nfe, blocks_with_masks), (st.nfe, blocks_with_masks)
    assert not (st.x[:, st.gen_start:] == s.mask_id).any()


@pytest.mark.parametrize("policy_name", ["threshold-tau1", "entropy-bound-gamma0", "prr-tau1-union",
                                         "prr-tau1-nounion"])
def test_strict_rules_commit_the_floor(rnd, policy_name):
    """tau = 1 (confidences < 1) / gamma = 0 (entropies > 0): only the floor commits -- max(k_i, 1) per step, or
    exactly 1 for PRR without the schedule union."""
    s = random_shape(rnd, vocabs=(33, 1000))
    union = policy_name != "prr-tau1-nounion"
    policy = {"threshold-tau1": lambda: prr_ext.Threshold(tau=1.0),
              "entropy-bound-gamma0": lambda: prr_ext.EntropyBound(gamma=0.0),
              "prr-tau1-union": lambda: prr_ext.PRR(prr_ext.Controller.init(rnd.int(0, 99)), tau=1.0),
              "prr-tau1-nounion": lambda: prr_ext.PRR(prr_ext.Controller.init(rnd.int(0, 99)), tau=1.0,
                                                      shaping="power", union_schedule=False)}[policy_name]()
    st, _ = _new_pair(rnd, s, policy, prefill=0.0)
    S = st.steps_per_block

    class Mild(LogitsMaker):  # moderate logits: no probability rounds to 1, no entropy to 0
        def values(self, B, Lr):
            return self.rnd.randn(B, Lr, self.V) * 1.5

    maker = Mild(rnd, s.V, s.mask_id, torch.float32)

    def on_step(it, x_before, commit, rs_before):
        for b in range(s.B):
            blk, i, n = (int(rs_before[b, c]) for c in (R.RS_BLOCK, R.RS_STEP, R.RS_SCHED_N))
            if blk != int(rs_before[:, R.RS_BLOCK].min()):
                continue
            masked = int(_block_masks(x_before[b:b + 1], st, blk))
            n = masked if i == 0 else n  # the schedule's n is fixed when the row enters the block
            want = min(max(R.schedule_k(n, S, i), 1) if union else 1, masked)
            assert int(commit[b].sum()) == want, (b, blk, i, n, want, commit[b].sum())

    _loop(st, maker, on_step)
    if not union:
        assert bool((st.nfe == s.G).all()), st.nfe  # one commit per step
    elif S <= s.BL:
        assert bool((st.nfe == s.steps).all()), st.nfe


def test_rows_waiting_for_the_batch_use_no_nfe(rnd):
    """Row 0's first block holds 1 mask, row 1's 8: with Threshold(tau=1) row 0 finishes block 0 after one step and
    waits (no NFE) while row 1 takes 8 steps; both then spend 8 steps on block 1."""
    V, mask_id = 33, 7
    x = torch.full((2, 3 + 16), mask_id)
    x[:, :3] = 1
    x[0, 3:3 + 7] = 2  # row 0: one mask left in block 0
    st = prr_ext.State(x, mask_id, 3, 8, 16, prr_ext.Threshold(tau=1.0))
    iters = 0
    while not st.done:
        lg = rnd.randn(2, 19, V).float() * 1.5
        prr_ext.step(lg, st)
        iters += 1
    assert iters == 16
    assert st.nfe.tolist() == [9, 16]


# ---------------------------------------------------------------------------------------------------------------
# RNG
# ---------------------------------------------------------------------------------------------------------------
def test_philox_known_answers():
    """The reference Philox4x32-10 (the op's noise is compared to it bit for bit through the T > 0 loops) against
    the Random123 known-answer vectors."""
    def run(ctr, key):
        return [int(w) for w in R.philox4x32(*(torch.tensor(c) for c in ctr), torch.tensor(key))]

    assert run((0, 0, 0, 0), 0) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert run((0xFFFFFFFF,) * 4, -1) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert run((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0x299F31D0 << 32) | 0xA4093822) == [
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


@pytest.mark.parametrize("policy_name", ["low_confidence", "random", "threshold"])
def test_rng_torch_matches_reference(rnd, policy_name):
    """rng="torch" (LLaDA's fp64 rand_like draws from the State's generator): op == reference fed the same draws.
    bf16 logits over 7 or 33 tokens often give two rows the same probabilities in another order, which the two
    implementations sum in different orders: such near-ties (not exact ties) are re-drawn, as in the tie test."""
    s = random_shape(rnd, vocabs=(7, 33))
    policy, inputs = make_policy(policy_name, rnd)
    st, ref = _new_pair(rnd, s, policy, temperature=rnd.uniform(0.3, 1.2), rng="torch",
                        cdt=rnd.choice([torch.float32, torch.float64]))
    run_decode_loop(st, ref, LogitsMaker(rnd, s.V, s.mask_id, torch.bfloat16), step_inputs=inputs,
                    avoid_near_ties=policy_name != "random")


def _decode(model, x, mask_id, P, BL, steps, policy, seed, temperature):
    st = prr_ext.State(x.clone(), mask_id, P, BL, steps, policy, temperature=temperature, seed=seed)
    while not st.done:
        prr_ext.step(model(st.x).logits, st)
    return st


@pytest.mark.parametrize("policy_name", ["low_confidence", "threshold", "prr_temperature"])
def test_philox_reproducible_and_batch_invariant(rnd, policy_name):
    """With Philox noise (T > 0) a row's decode depends only on its own seed and logits: the same seed reproduces
    it bitwise, decoding the row alone gives the same tokens and NFE as decoding it inside a batch (also for
    adaptive policies whose rows progress at different speeds), and another seed gives a different sample."""
    V, P, BL, nb = 33, 3, 8, 3
    mask_id = rnd.int(0, V - 1)
    model = ToyModel(rnd, V, P + BL * nb, mask_id, scale=1.0)
    policy, _ = make_policy(policy_name, rnd)
    B = 4
    x = torch.full((B, P + BL * nb), mask_id)
    x[:, :P] = non_mask_tokens(rnd, (B, P), V, mask_id)
    seed = rnd.seed_tensor(B)
    T = 1.0
    steps = 4 * nb
    full = _decode(model, x, mask_id, P, BL, steps, policy, seed, T)
    again = _decode(model, x, mask_id, P, BL, steps, policy, seed, T)
    assert torch.equal(full.x, again.x) and torch.equal(full.nfe, again.nfe)
    for b in range(B):
        alone = _decode(model, x[b:b + 1], mask_id, P, BL, steps, policy, seed[b:b + 1], T)
        assert torch.equal(alone.x[0], full.x[b]), f"row {b} differs when decoded alone"
        assert int(alone.nfe[0]) == int(full.nfe[b])
    other = _decode(model, x, mask_id, P, BL, steps, policy, seed + 1, T)
    assert not torch.equal(other.x, full.x), "a different seed gave the same samples"


def test_threads_do_not_change_results(rnd):
    """The op parallelises over tokens and rows: 1 and 3 intra-op threads give bitwise identical results."""
    s = Shape(B=6, P=5, G=64, BL=32, steps=8, V=1000, mask_id=rnd.int(0, 999))
    policy, inputs = make_policy(rnd.choice(["prr_temperature", "threshold", "low_confidence"]), rnd)
    st1, _ = _new_pair(rnd, s, policy, temperature=0.8, cdt=torch.bfloat16)
    st3 = st1.clone()
    old = torch.get_num_threads()
    try:
        for _ in range(3):
            lg = normal_logits(rnd, s.B, s.L, s.V, s.mask_id).to(torch.bfloat16)
            torch.set_num_threads(1)
            c1 = prr_ext.step(lg, st1)
            torch.set_num_threads(3)
            c3 = prr_ext.step(lg, st3)
            assert torch.equal(c1, c3) and torch.equal(st1.x, st3.x) and torch.equal(st1.row_state, st3.row_state)
            assert torch.equal(st1.last_tokens, st3.last_tokens)
            assert torch.equal(torch.nan_to_num(st1.last_stats, 7.0), torch.nan_to_num(st3.last_stats, 7.0))
    finally:
        torch.set_num_threads(old)


# ---------------------------------------------------------------------------------------------------------------
# Edge shapes
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy_name", ["low_confidence", "prr_temperature", "entropy_bound"])
def test_single_slot_and_tiny_vocab(rnd, policy_name):
    """G = block_length = 1, V = 2 (one real token besides the mask), and B = 1 with a single step."""
    for V, mask_id in [(2, 0), (2, 1), (3, 1)]:
        s = Shape(B=rnd.int(1, 3), P=rnd.int(0, 3), G=1, BL=1, steps=1, V=V, mask_id=mask_id)
        policy, inputs = make_policy(policy_name, rnd)
        st, ref = _new_pair(rnd, s, policy, temperature=rnd.choice([0.0, 0.5]), prefill=0.0)
        run_decode_loop(st, ref, LogitsMaker(rnd, V, mask_id, torch.float32), step_inputs=inputs)
        assert bool((st.x[:, -1] == 1 - mask_id if V == 2 else st.x[:, -1] != mask_id).all())


# ---------------------------------------------------------------------------------------------------------------
# Rule boundaries: parameters exactly at a key value
# ---------------------------------------------------------------------------------------------------------------
def _expected_count(policy, keys, k):
    """Independent statement of the commit rules on keys sorted descending (Python floats = fp64):
    Threshold/PRR: conf >= tau (inclusive); Factor: (m + 1)(1 - c_m) < f (strict, 1-indexed m, longest prefix);
    EntropyBound (keys = -H, ascending H): longest prefix U with sum(H_U) - max(H_U) <= gamma (inclusive)."""
    n = len(keys)
    floor = 1 if (isinstance(policy, prr_ext.PRR) and not policy.union_schedule) else max(k, 1)
    extra = 0
    if isinstance(policy, (prr_ext.Threshold, prr_ext.PRR)):
        while extra < n and keys[extra] >= policy.param:
            extra += 1
    elif isinstance(policy, prr_ext.Factor) and policy.variant == "fast-dllm":
        while extra < n and (extra == 0 or keys[extra] >= 1.0 - policy.f / (extra + 2)):
            extra += 1
        extra = n if extra == n - 1 else extra  # upstream's scan stops on its last index
    elif isinstance(policy, prr_ext.Factor):
        while extra < n and (extra + 2) * (1.0 - keys[extra]) < policy.f:
            extra += 1
    elif isinstance(policy, prr_ext.EntropyBound):
        before = 0.0
        while extra < n and before <= policy.gamma:
            before += -keys[extra]
            extra += 1
    return min(max(floor, extra), n)


@pytest.mark.parametrize("rule", ["threshold", "factor", "factor_fast_dllm", "entropy_bound", "prr"])
def test_rule_boundaries(rnd, rule):
    """tau / f / gamma set exactly to a value the rule compares against: Threshold and PRR commit keys equal to
    tau, EntropyBound commits the position whose preceding entropy sum equals gamma, Factor does not commit the
    position whose (m + 1)(1 - c_m) equals f. Checked on the op's own keys (stats column STAT_KEY)."""
    s = Shape(B=3, P=2, G=16, BL=16, steps=16, V=33, mask_id=rnd.int(0, 32))  # S = BL: k = 1 at the first step
    placeholder = {"threshold": prr_ext.Threshold(0.5), "factor": prr_ext.Factor(1.0),
                   "factor_fast_dllm": prr_ext.Factor(1.0),
                   "entropy_bound": prr_ext.EntropyBound(0.5),
                   "prr": prr_ext.PRR(random_controller(rnd), tau=0.5, shaping="power")}[rule]
    x, plen = make_canvas(rnd, s, prefill=0.0)
    cdt = torch.bfloat16 if rule == "threshold" else torch.float32
    base = make_state(rnd, x, s, plen, placeholder, confidence_dtype=cdt)
    kind = "ties" if rule == "threshold" else "normal"
    lg = LogitsMaker(rnd, s.V, s.mask_id, torch.float32, kind=kind, conf_dtype=cdt, pool_size=3)(base)
    probe = base.clone()
    prr_ext.step(lg, probe)
    checked = 0
    for b in range(s.B):
        keys = probe.last_stats[b, :, R.STAT_KEY]
        keys = sorted(float(v) for v in keys[~keys.isnan()])[::-1]
        n = len(keys)
        m = rnd.int(1, n - 3)  # a boundary inside the block
        if rule in ("threshold", "prr"):
            param = keys[m]
            policy = (prr_ext.Threshold(tau=param) if rule == "threshold"
                      else dataclasses.replace(placeholder, tau=param))
        elif rule == "factor":
            policy = prr_ext.Factor(f=(m + 2) * (1.0 - keys[m]), variant="paper")  # rank m + 1 must fail
        elif rule == "factor_fast_dllm":
            policy = prr_ext.Factor(f=(m + 2) * (1.0 - keys[m]))  # rank m passes at (near) equality
        else:
            before = 0.0
            for j in range(m):
                before += -keys[j]
            policy = prr_ext.EntropyBound(gamma=before)  # position m (0-indexed) must still commit
        st = base.clone()
        st.policy = policy
        commit = prr_ext.step(lg, st)
        want = _expected_count(policy, keys, 1)
        assert int(commit[b].sum()) == want, (rule, b, m, want, int(commit[b].sum()), keys)
        if rule == "entropy_bound" and keys[m] != keys[m - 1] or rule in ("threshold", "prr"):
            assert want >= m + 1
        checked += 1
    assert checked == s.B


# ---------------------------------------------------------------------------------------------------------------
# Caller-supplied candidates / random keys
# ---------------------------------------------------------------------------------------------------------------
def _explicit_loop(rnd, policy_name, invalid: bool, compare_reference: bool):
    s = random_shape(rnd, vocabs=(7, 33))
    policy, inputs = make_policy(policy_name, rnd)
    op_state, ref_state = _new_pair(rnd, s, policy, temperature=rnd.choice([0.0, 0.9]))
    maker = LogitsMaker(rnd, s.V, s.mask_id, torch.float32, block_only=rnd.coin())
    while not op_state.done:
        lg = maker(op_state)
        Lr = lg.shape[1]
        cand = non_mask_tokens(rnd, (s.B, Lr), s.V, s.mask_id)
        bad = (rnd.rand(s.B, Lr) < 0.25) if invalid else torch.zeros(s.B, Lr, dtype=torch.bool)
        cand[bad] = rnd.choice([-1, s.V, s.V + 7, s.mask_id])
        rconf = rnd.rand(s.B, Lr).float() if policy_name == "random" else None
        kw = inputs(op_state, Lr) if inputs else {}
        x_before = op_state.x.clone()
        lo = op_state.block_start
        commit = prr_ext.step(lg, op_state, candidates=cand, random_conf=rconf, **kw)
        if compare_reference:
            c_ref, t_ref, s_ref = R.step(lg, ref_state, candidates=cand, random_conf=rconf, **kw)
            assert torch.equal(commit, c_ref) and torch.equal(op_state.x, ref_state.x)
            assert torch.equal(op_state.last_tokens, t_ref)
        off = lo if Lr == s.BL else 0
        assert not commit[:, off:off + Lr][bad].any() and (op_state.last_tokens[bad] == -1).all()
        check_commit_invariants(op_state, x_before, commit, s.V, lo, lo + s.BL)
        committed = commit[:, off:off + Lr]
        assert torch.equal(op_state.x[:, off:off + Lr][committed], cand[committed])


@pytest.mark.parametrize("policy_name", ["low_confidence", "random", "threshold", "prr_weighted"])
def test_explicit_candidates_and_random_conf(rnd, policy_name):
    """prr_ext.step(candidates=, random_conf=) (a caller's own sampler): op == reference fed the same inputs, and
    the committed tokens are the given candidates."""
    _explicit_loop(rnd, policy_name, invalid=False, compare_reference=True)


@pytest.mark.parametrize("policy_name", ["low_confidence", "threshold"])
def test_invalid_explicit_candidates_never_commit(rnd, policy_name):
    """Candidates out of [0, V) or equal to mask_id are never committed (token -1), as documented."""
    _explicit_loop(rnd, policy_name, invalid=True, compare_reference=False)


def test_reference_drops_invalid_candidates(rnd):
    _explicit_loop(rnd, "low_confidence", invalid=True, compare_reference=True)
