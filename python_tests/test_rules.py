"""The newer rules (LocalLeap, SlowFast, KLASS, R²-dLLM's passes, Fast-dLLM's Factor) on hand-built blocks whose
answer is worked out by hand in each test: an oracle independent of prr_ext.reference, through the op (CPU) and the
reference alike. Also: their hyper-parameters' checks.

Each block position gets a logits row with a chosen top-1 token and probability; the mask token's logit is very
low (its probability ~1e-13 moves no decision here)."""
from __future__ import annotations

import math

import pytest
import torch

import prr_ext
from prr_ext import constants as K
from prr_ext import reference as R

V, MASK = 16, 15


def row(top: int, p: float) -> torch.Tensor:
    """Logits [V] whose softmax puts p on `top` and spreads the rest evenly over the other non-mask tokens."""
    probs = torch.full((V,), (1.0 - p) / (V - 2), dtype=torch.float64)
    probs[top] = p
    lg = probs.log()
    lg[MASK] = -30.0
    return lg.float()


def block_logits(spec) -> torch.Tensor:
    """[1, len(spec), V] logits from [(top token, p), ...] per block position."""
    return torch.stack([row(t, p) for t, p in spec])[None]


def new_state(policy, BL: int, steps=None):
    x = torch.full((1, 2 + BL), MASK, dtype=torch.int64)
    x[0, :2] = torch.tensor([3, 4])
    return prr_ext.State(x, MASK, 2, BL, steps or BL, policy)


def both(policy, BL, logits_per_step, steps=None):
    """Run the op and the reference side by side on block-only logits; return the op's commit masks (block part)."""
    st = new_state(policy, BL, steps)
    ref = st.clone()
    masks = []
    for lg in logits_per_step:
        c = prr_ext.step(lg, st)
        c_ref, _, _ = R.step(lg, ref)
        assert torch.equal(c, c_ref) and torch.equal(st.x, ref.x) and torch.equal(st.row_state, ref.row_state)
        masks.append(c[0, 2:].nonzero().flatten().tolist())
    return masks, st


def test_factor_variants_differ_only_where_the_last_rank_fails():
    # sorted confidences 0.99, 0.9, 0.1 with f = 1: Fast-dLLM's thresholds -1, 1 - 1/3, 1 - 1/4: the last rank (0.1)
    # is the first to fail, and upstream's scan then commits it too; the paper's rule stops at 2
    spec = [(5, 0.99), (6, 0.9), (7, 0.1)]
    fast, _ = both(prr_ext.Factor(1.0), 3, [block_logits(spec)])
    paper, _ = both(prr_ext.Factor(1.0, variant="paper"), 3, [block_logits(spec)])
    assert fast == [[0, 1, 2]] and paper == [[0, 1]]
    # one more rank after the failure: both commit the two before it
    spec = [(5, 0.99), (6, 0.9), (7, 0.1), (8, 0.05)]
    fast, _ = both(prr_ext.Factor(1.0), 4, [block_logits(spec)])
    paper, _ = both(prr_ext.Factor(1.0, variant="paper"), 4, [block_logits(spec)])
    assert fast == paper == [[0, 1]]


def test_local_leap_relaxes_tau_near_an_anchor_only():
    spec = [(1, 0.3), (1, 0.3), (2, 0.95), (1, 0.3), (3, 0.8), (1, 0.3), (1, 0.3), (4, 0.85)]
    near, _ = both(prr_ext.LocalLeap(tau=0.9, relaxed_tau=0.75, radius=2), 8, [block_logits(spec)])
    assert near == [[2, 4]]  # 4 is 2 from the anchor at 2; 7 (0.85) is not near it and stays below tau
    far, _ = both(prr_ext.LocalLeap(tau=0.9, relaxed_tau=0.75, radius=1), 8, [block_logits(spec)])
    assert far == [[2]]
    none = [(1, 0.3)] * 4 + [(3, 0.8)] + [(1, 0.3)] * 3
    floor, _ = both(prr_ext.LocalLeap(tau=0.9, relaxed_tau=0.75, radius=8), 8, [block_logits(none)])
    assert floor == [[4]]  # no anchor: Threshold(tau), at least the top-1


def test_klass_commits_positions_stable_for_history_steps():
    spec = [(5, 0.95), (6, 0.3), (7, 0.97), (8, 0.2)]
    lg = block_logits(spec)
    pol = prr_ext.KLASS(conf_threshold=0.9, kl_threshold=0.01, history=1)
    masks, st = both(pol, 4, [lg, lg])
    # step 0: no kept distribution -> nothing is ready -> the top-1 (position 2); step 1: the same logits, KL = 0:
    # position 0 (0.95 > 0.9, stable for 1 step) is ready; position 1 and 3 are below c
    assert masks == [[2], [0]]
    kl = st.rule_state[0, :, K.RULE_KL_COUNT].tolist()
    assert kl[1] == 1.0 and kl[3] == 1.0  # still masked: one stable transition (step 0 had no kept distribution)
    # history 2: a position whose distribution moves starts over, however confident
    lg = block_logits([(5, 0.95), (6, 0.3), (7, 0.97), (8, 0.93), (4, 0.2)])
    moved = block_logits([(5, 0.95), (9, 0.96), (7, 0.97), (8, 0.93), (4, 0.2)])
    pol2 = prr_ext.KLASS(conf_threshold=0.9, kl_threshold=0.01, history=2)
    masks, _ = both(pol2, 5, [lg, lg, moved])
    # step 0: top-1 (2); step 1: counts 1 < 2, top-1 (0); step 2: position 3 stable for 2 steps and 0.93 > 0.9 is
    # ready, position 1 (0.96) just moved
    assert masks == [[2], [0], [3]]


def test_r2_window_judges_windows_on_the_base_canvas():
    spec = [(5, 0.85), (6, 0.85), (7, 0.85), (8, 0.3), (9, 0.3), (10, 0.3), (11, 0.3), (12, 0.3)]
    pol = prr_ext.R2(base=prr_ext.Threshold(0.99), window=3, window_unmasked=1, spatial_threshold=0.8,
                     token_cluster=None, temporal_steps=None)
    masks, _ = both(pol, 8, [block_logits(spec)])
    # base: nothing >= 0.99, so the top-1 (position 0, lowest position among equal keys); window [0, 3) then holds
    # 1 unmasked (<= 1) and masked {1, 2} with mean 0.85 >= 0.8; window [1, 4) averages {1, 2, 3} to 0.67
    assert masks == [[0, 1, 2]]
    strict = prr_ext.R2(base=prr_ext.Threshold(0.99), window=3, window_unmasked=0, spatial_threshold=0.8,
                        token_cluster=None, temporal_steps=None)
    masks, _ = both(strict, 8, [block_logits(spec)])
    assert masks == [[0]]  # every window over {1, 2} also covers position 0, unmasked by the base commit


@pytest.mark.parametrize("choice,pick", [("confidence", 3), ("mid", 4)])
def test_r2_token_cluster_commits_one_position_per_run(choice, pick):
    spec = [(1, 0.97), (2, 0.3), (3, 0.3), (7, 0.85), (7, 0.7), (7, 0.6), (4, 0.3), (7, 0.9)]
    pol = prr_ext.R2(base=prr_ext.Threshold(0.99), window=None, spatial_threshold=0.8, token_cluster=choice,
                     token_cluster_size=2, temporal_steps=None)
    masks, st = both(pol, 8, [block_logits(spec)])
    # base: the top-1 (position 0); run [3, 6) of token 7 (max p 0.85 > 0.8) commits one; position 7 is a run of 1
    assert masks == [[0, pick]]
    assert int(st.x[0, 2 + pick]) == 7
    longer = prr_ext.R2(base=prr_ext.Threshold(0.99), window=None, spatial_threshold=0.8, token_cluster=choice,
                        token_cluster_size=4, temporal_steps=None)
    masks, _ = both(longer, 8, [block_logits(spec)])
    assert masks == [[0]]


def test_r2_random_cluster_pick_is_inside_the_run_and_reproducible():
    spec = [(1, 0.97)] + [(7, 0.85)] * 6 + [(2, 0.3)]
    pol = prr_ext.R2(base=prr_ext.Threshold(0.99), window=None, spatial_threshold=0.8, token_cluster="random",
                     temporal_steps=None)
    picks = set()
    for seed in range(12):
        st = new_state(pol, 8)
        st.seed.fill_(seed)
        ref = st.clone()
        c = prr_ext.step(block_logits(spec), st)
        assert torch.equal(c, R.step(block_logits(spec), ref)[0])
        got = c[0, 2:].nonzero().flatten().tolist()
        assert got[0] == 0 and len(got) == 2 and 1 <= got[1] <= 6
        picks.add(got[1])
    assert len(picks) > 2  # the seed moves the pick


@pytest.mark.parametrize("evaluation", ["last", "ave", "max"])
def test_r2_temporal_streak(evaluation):
    first = block_logits([(1, 0.97), (5, 0.7), (6, 0.3), (7, 0.4)])
    second = block_logits([(1, 0.97), (5, 0.6), (6, 0.3), (8, 0.9)])
    pol = prr_ext.R2(base=prr_ext.Threshold(0.99), window=None, token_cluster=None, temporal_steps=2,
                     temporal_threshold=0.65, temporal_eval=evaluation)
    masks, st = both(pol, 4, [first, second])
    # position 1 keeps token 5 for 2 steps: last = 0.6, ave = 0.65, max = 0.7 against 0.65; position 3 changed token
    assert masks[0] == [0]
    want = {"last": [3], "ave": [1, 3], "max": [1, 3]}[evaluation]  # the base's top-1 at step 1 is position 3
    assert masks[1] == want
    if evaluation == "last":
        assert st.rule_state[0, 1, K.RULE_STREAK_COUNT] == 2.0 and st.rule_state[0, 1, K.RULE_STREAK_TOKEN] == 5.0


def test_slow_fast_estimates_a_span_then_fills_it():
    spec = [(5, 0.5)] * 3 + [(6, 0.1)] * 5
    lg = block_logits(spec)
    pol = prr_ext.SlowFast(explore_steps=2, span_threshold=0.3, stability_window=2, stability_std=1.0,
                           fill_threshold=0.9)
    st = new_state(pol, 8)
    ref = st.clone()
    seen = []
    for _ in range(3):
        c = prr_ext.step(lg, st)
        assert torch.equal(c, R.step(lg, ref)[0])
        seen.append((c[0, 2:].nonzero().flatten().tolist(),
                     [int(st.row_state[0, k]) for k in (K.RS_SPAN_START, K.RS_SPAN_END, K.RS_EXPLORED,
                                                        K.RS_DETERMINED)]))
    # slow 1: estimate 0 + (2 + 1) = 3, window not full; top-1 = position 0 (equal confidences: lowest position)
    # slow 2: estimate 3 again, std 0 < 1: span [0, 3) determined; top-1 of the rest = 1
    # fast:   the span's last mask (2) commits; the span is then empty: the next sub-cycle starts at 3
    assert seen == [([0], [0, 0, 1, 0]), ([1], [0, 3, 2, 1]), ([2], [3, 3, 0, 0])]
    high = block_logits([(5, 0.95)] * 2 + [(6, 0.1)] * 6)
    masks, _ = both(pol, 8, [high])
    assert masks == [[0, 1]]  # more than one above the fill threshold: all of them


@pytest.mark.parametrize("make,match", [
    (lambda: prr_ext.LocalLeap(tau=0.8, relaxed_tau=0.9), "relaxed_tau"),
    (lambda: prr_ext.LocalLeap(radius=-1), "radius"),
    (lambda: prr_ext.LocalLeap(radius=1.5), "radius"),
    (lambda: prr_ext.LocalLeap(tau=1.5), "tau"),
    (lambda: prr_ext.SlowFast(explore_steps=0), "explore_steps"),
    (lambda: prr_ext.SlowFast(stability_window=9), "stability_window"),
    (lambda: prr_ext.SlowFast(stability_std=-1.0), "stability_std"),
    (lambda: prr_ext.SlowFast(span_threshold=float("nan")), "span_threshold"),
    (lambda: prr_ext.SlowFast(fill_threshold=2), "fill_threshold"),
    (lambda: prr_ext.KLASS(conf_threshold=-0.1), "conf_threshold"),
    (lambda: prr_ext.KLASS(kl_threshold=math.inf), "kl_threshold"),
    (lambda: prr_ext.KLASS(history=0), "history"),
    (lambda: prr_ext.Factor(1.0, variant="dllm"), "variant"),
    (lambda: prr_ext.R2(window=0), "window"),
    (lambda: prr_ext.R2(window=65), "window"),
    (lambda: prr_ext.R2(window_unmasked=-1), "window_unmasked"),
    (lambda: prr_ext.R2(spatial_threshold=1.2), "spatial_threshold"),
    (lambda: prr_ext.R2(token_cluster="max"), "token_cluster"),
    (lambda: prr_ext.R2(token_cluster_size=1), "token_cluster_size"),
    (lambda: prr_ext.R2(temporal_steps=0), "temporal_steps"),
    (lambda: prr_ext.R2(temporal_threshold=-0.5), "temporal_threshold"),
    (lambda: prr_ext.R2(temporal_eval="mean"), "temporal_eval"),
    (lambda: prr_ext.R2(base="threshold"), "base"),
    (lambda: prr_ext.R2(base=prr_ext.R2()), "base"),
])
def test_bad_hyper_parameters_name_the_argument(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_r2_defaults_are_the_pinned_api():
    pol = prr_ext.R2()
    assert (pol.base, pol.window, pol.window_unmasked, pol.spatial_threshold, pol.token_cluster,
            pol.token_cluster_size, pol.temporal_steps, pol.temporal_threshold, pol.temporal_eval) == (
        prr_ext.Threshold(0.9), 3, 1, 0.8, "confidence", 2, 3, 0.8, "last")
    assert pol.adaptive and pol.code == prr_ext.Threshold.code and pol.base_rule == prr_ext.Threshold(0.9)
    off = prr_ext.R2(window=None, token_cluster=None, temporal_steps=None)
    params = off.rule_params()
    assert params[K.RP_R2_WINDOW] == 0 and params[K.RP_R2_CLUSTER] == 0 and params[K.RP_R2_TEMPORAL_STEPS] == 0


def test_r2_with_every_pass_off_is_its_base_rule():
    g = torch.Generator().manual_seed(5)
    x = torch.full((2, 3 + 16), MASK, dtype=torch.int64)
    x[:, :3] = 4
    base = prr_ext.Threshold(0.6)
    a = prr_ext.State(x.clone(), MASK, 3, 8, 16, base)
    b = prr_ext.State(x.clone(), MASK, 3, 8, 16, prr_ext.R2(base=base, window=None, token_cluster=None,
                                                            temporal_steps=None))
    while not a.done:
        lg = torch.randn(2, 19, V, generator=g) * 3
        assert torch.equal(prr_ext.step(lg, a), prr_ext.step(lg, b))
    assert b.done and torch.equal(a.x, b.x)


# ---------------------------------------------------------------------------------------------------------------
# generate(slow_fast_prefix=True): SlowFast's forward saving
# ---------------------------------------------------------------------------------------------------------------
class _LengthRecorder:
    """A deterministic toy LM (logits from token and position embeddings and a context mean) that records the
    canvas length of every call."""

    def __init__(self, L: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.emb, self.pos = torch.randn(V, 8, generator=g), torch.randn(L, 8, generator=g)
        self.out = torch.randn(8, V, generator=g) * 2.0
        self.lengths = []

    def __call__(self, x, attention_mask=None):
        self.lengths.append(x.shape[1])
        h = self.emb[x] + self.pos[:x.shape[1]]
        lg = torch.tanh(h + h.mean(1, keepdim=True)) @ self.out
        lg[..., MASK] = -30.0
        return lg


def test_slow_fast_prefix_forwards_only_up_to_the_span_in_the_fast_phase():
    prompt = torch.tensor([[3, 4, 5], [6, 7, 8]])
    pol = prr_ext.SlowFast(explore_steps=2, span_threshold=0.1, fill_threshold=0.9)
    full_model, prefix_model = _LengthRecorder(3 + 32), _LengthRecorder(3 + 32)
    full = prr_ext.generate(full_model, prompt, gen_length=32, block_length=16, steps=32, policy=pol, mask_id=MASK)
    short = prr_ext.generate(prefix_model, prompt, gen_length=32, block_length=16, steps=32, policy=pol,
                             mask_id=MASK, slow_fast_prefix=True)
    assert set(full_model.lengths) == {35}
    assert min(prefix_model.lengths) < 35, prefix_model.lengths  # some fast-phase forward covered a prefix only
    assert not (short.generated == MASK).any() and not (full.generated == MASK).any()
    assert int(short.nfe.max()) == len(prefix_model.lengths) and int(full.nfe.max()) == len(full_model.lengths)
    # the first explore_steps forwards of a block always see the whole canvas
    assert prefix_model.lengths[:2] == [35, 35]


@pytest.mark.parametrize("kw,match", [
    (dict(policy=prr_ext.Threshold(0.9), slow_fast_prefix=True), "SlowFast"),
    (dict(policy=prr_ext.SlowFast(), slow_fast_prefix=True, block_info=True), "block_info"),
    (dict(style="dream", slow_fast_prefix=True), "slow_fast_prefix"),
])
def test_slow_fast_prefix_bad_combinations(kw, match):
    with pytest.raises(ValueError, match=match):
        prr_ext.generate(_LengthRecorder(3 + 16), torch.tensor([[3, 4, 5]]), gen_length=16, steps=16, mask_id=MASK,
                         **kw)
