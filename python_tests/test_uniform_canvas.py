"""The uniform-canvas mode of `prr_ext.step` (mask_id=None: DiffusionGemma's canvas, which has no mask token).

Every position of the active block is a candidate at every step; the step accepts a set (written into x and
returned as the commit mask) and the caller renoises the rest. Checked here: op == reference over whole decode
loops with renoising between steps (every logits dtype, full and block-only logits, greedy, Philox-sampled and
caller-drawn candidates), the invariants of an accept step, EntropyBound's accept set against transformers'
EntropyBoundSampler on the same logits and draws, and the errors for rules that need a masked canvas.
"""
from __future__ import annotations

import pytest
import torch

import prr_ext
from prr_ext import reference as R

from helpers import (DTYPE_NAMES, LOGITS_DTYPES, LogitsMaker, active_block_bounds, clone_for_reference, make_policy,
                     random_shape, run_decode_loop)

UNIFORM_POLICY_NAMES = ("threshold", "factor", "factor_paper", "entropy_bound", "local_leap", "prr_temperature",
                        "prr_power_nounion", "prr_weighted", "prr_scores", "prr_extra")


def _uniform_pair(rnd, s, policy, *, temperature=0.0):
    """(op state, reference state) over a canvas of random tokens: a prompt, then G positions of uniform noise."""
    x = rnd.randint(0, s.V, (s.B, s.L))
    st = prr_ext.State(x, None, s.P, s.BL, s.steps, policy, temperature=temperature, seed=rnd.seed_tensor(s.B))
    return st, clone_for_reference(st)


def _renoiser(rnd, op_state, ref_state, V):
    """on_step callback of run_decode_loop: renoise the positions of the block that the step did not accept, in
    both states alike (what DiffusionGemma's sampler does between steps)."""
    def on_step(it, x_before, logits, commit, lo):
        bl = op_state.block_length
        rejected = ~commit[:, lo:lo + bl]
        noise = rnd.randint(0, V, rejected.shape)
        for st in (op_state, ref_state):
            blk = st.x[:, lo:lo + bl]
            blk[rejected] = noise[rejected]
    return on_step


@pytest.mark.parametrize("dtype", LOGITS_DTYPES, ids=[DTYPE_NAMES[d] for d in LOGITS_DTYPES])
@pytest.mark.parametrize("policy_name", UNIFORM_POLICY_NAMES)
def test_uniform_decode_loop_matches_reference(rnd, policy_name, dtype):
    ip, idt = UNIFORM_POLICY_NAMES.index(policy_name), LOGITS_DTYPES.index(dtype)
    s = random_shape(rnd)
    policy, step_inputs = make_policy(policy_name, rnd)
    temperature = 0.0 if (ip + idt) % 2 == 0 else rnd.uniform(0.3, 1.5)
    op_state, ref_state = _uniform_pair(rnd, s, policy, temperature=temperature)
    maker = LogitsMaker(rnd, s.V, 0, dtype, block_only=(ip + idt) % 3 == 0)
    accepted = []

    def on_step(it, x_before, logits, commit, lo):
        accepted.append(commit.sum(1))
        renoise(it, x_before, logits, commit, lo)
    renoise = _renoiser(rnd, op_state, ref_state, s.V)
    n = run_decode_loop(op_state, ref_state, maker, step_inputs=step_inputs, on_step=on_step)
    # a uniform canvas never empties: every block lasts exactly its steps, and every row accepts >= 1 per step
    assert n == s.steps and bool((op_state.nfe == s.steps).all()), (n, op_state.nfe)
    assert all(bool((a >= 1).all()) for a in accepted), accepted


@pytest.mark.parametrize("policy_name", ("threshold", "entropy_bound", "prr_temperature"))
def test_uniform_caller_candidates(rnd, policy_name):
    """The caller's own draws (DiffusionGemma's multinomial denoiser canvas) are what an accepted position gets."""
    s = random_shape(rnd, vocabs=(33, 1000))
    policy, _ = make_policy(policy_name, rnd)
    op_state, ref_state = _uniform_pair(rnd, s, policy)
    maker = LogitsMaker(rnd, s.V, 0, torch.float32, block_only=True)
    while not op_state.done:
        _, lo, hi = active_block_bounds(op_state)
        logits = maker(op_state)
        draws = torch.multinomial(torch.softmax(logits.double(), -1).view(-1, s.V), 1,
                                  generator=rnd.generator()).view(s.B, s.BL)
        x_before = op_state.x.clone()
        commit = prr_ext.step(logits, op_state, candidates=draws)
        c_ref, _, _ = R.step(logits, ref_state, candidates=draws)
        assert torch.equal(commit, c_ref) and torch.equal(op_state.x, ref_state.x)
        blk = commit[:, lo:hi]
        assert bool((blk.sum(1) >= 1).all())
        assert torch.equal(op_state.x[:, lo:hi][blk], draws[blk])
        assert torch.equal(op_state.x[:, lo:hi][~blk], x_before[:, lo:hi][~blk])
        assert not commit[:, :lo].any() and not commit[:, hi:].any()


def _entropy_bound_draw(rnd, B, C, V, bound):
    """Logits whose sorted-entropy prefix sums stay away from `bound` (relative 1e-5), so that transformers' fp32
    cumulative sum and the op's fp64 one cannot disagree on the boundary."""
    for _ in range(100):
        logits = (torch.randn(B, C, V, generator=rnd.generator()) * rnd.uniform(1.0, 6.0)).float()
        h = torch.distributions.Categorical(logits=logits).entropy().double()
        before = torch.sort(h, -1).values.cumsum(-1) - torch.sort(h, -1).values
        if bool(((before - bound).abs() > 1e-5 * max(bound, 1e-3)).all()):
            return logits
    raise RuntimeError("could not draw logits away from the entropy bound")


@pytest.mark.parametrize("bound", [0.05, 0.1, 1.0, 8.0])
def test_entropy_bound_accept_set_equals_transformers(rnd, bound):
    generation = pytest.importorskip("transformers.models.diffusion_gemma.generation_diffusion_gemma")
    B, C, V = rnd.int(1, 4), rnd.choice([8, 16, 32]), rnd.choice([50, 300])
    cfg = generation.EntropyBoundSamplerConfig(entropy_bound=float(bound))
    sampler = generation.EntropyBoundSampler(cfg, canvas_length=C, vocab_size=V, max_denoising_steps=8)
    x = sampler.initialize_canvas(B, torch.device("cpu"))
    state = prr_ext.State(x.clone(), None, 0, C, 8, prr_ext.EntropyBound(gamma=bound))
    for _ in range(3):
        logits = _entropy_bound_draw(rnd, B, C, V, bound)
        denoiser = torch.multinomial(torch.softmax(logits, -1).view(-1, V), 1,
                                     generator=rnd.generator()).view(B, C)
        accepted = sampler.accept_canvas(x, denoiser, logits, cur_step=1)
        commit = prr_ext.step(logits, state, candidates=denoiser)
        assert torch.equal(commit, sampler.accepted_token_mask), (commit.int(), sampler.accepted_token_mask.int())
        assert torch.equal(state.x, accepted)
        x = sampler.renoise_canvas(accepted, cur_step=1)
        state.x.copy_(x)


@pytest.mark.parametrize("policy", [prr_ext.LowConfidence(), prr_ext.RandomRemask(), prr_ext.SlowFast(),
                                    prr_ext.KLASS(), prr_ext.R2(base=prr_ext.Threshold(0.9))],
                         ids=lambda p: type(p).__name__)
def test_uniform_rejects_masked_canvas_rules(rnd, policy):
    x = rnd.randint(0, 50, (2, 12))
    with pytest.raises(ValueError, match="uniform canvas"):
        prr_ext.State(x, None, 4, 4, 4, policy)


def test_uniform_op_rejects_masked_rule_codes(rnd):
    """The op itself refuses mask_id -1 with a rule that needs a masked canvas (a hand-built argument list)."""
    from prr_ext.ops import op_arguments
    x = rnd.randint(0, 50, (1, 8))
    state = prr_ext.State(x, None, 0, 8, 4, prr_ext.Threshold(0.5))
    args = op_arguments(torch.randn(1, 8, 50), state)
    args["policy"] = prr_ext.LowConfidence().code
    with pytest.raises(RuntimeError, match="uniform canvas"):
        torch.ops.prr_ext.step(**args)


def test_state_ignores_the_default_device(rnd):
    """transformers builds models under `with torch.device("meta")`; a State over CPU tensors made there (e.g. when a
    sampler checks its policy at model construction) must not put its own tensors on that default device."""
    x = rnd.randint(0, 50, (2, 8))
    with torch.device("meta"):
        st = prr_ext.State(x, None, 0, 4, 2, prr_ext.Threshold(0.5))
        masked = prr_ext.State(x.clone().fill_(49), 49, 0, 4, 2, prr_ext.LowConfidence())
    for s in (st, masked):
        assert s.seed.device.type == "cpu" and s.prompt_lens.device.type == "cpu"
