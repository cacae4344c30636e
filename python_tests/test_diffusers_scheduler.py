"""prr_ext.integrations.diffusers.PolicyScheduler inside diffusers' real LLaDA2Pipeline (CPU, tiny local model).

The model is a small random bidirectional transformer with LLaDA2's call signature (`model(x, attention_mask=,
position_ids=).logits`); the tokenizer a WordLevel `tokenizers` vocabulary wrapped in PreTrainedTokenizerFast. Nothing
is downloaded.

* parity: LowConfidence and Threshold(tau) give diffusers' own BlockRefinementScheduler's tokens (greedy, prompt
  on a block boundary), with no more forwards; every deterministic rule gives prr_ext.generate's tokens and NFE
  on the pipeline's windowed forwards (so each block's State starts and ends where prr_ext's does);
* sampling: the same generator draws the same candidates as BlockRefinementScheduler; top_k / temperature honoured;
* PRR (with and without the schedule union) and every other rule decode the whole canvas;
* per-call state: two calls, and a call after a different one, give a fresh scheduler's result and NFE;
* bad arguments: clear errors naming the argument.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import prr_ext
from prr_ext.constants import STAT_SCORE

diffusers = pytest.importorskip("diffusers", reason="pip install 'prr_ext[diffusers]'")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from diffusers import BlockRefinementScheduler, LLaDA2Pipeline  # noqa: E402

from helpers import Rand, clone_generator, random_controller  # noqa: E402
from prr_ext.integrations.diffusers import PolicyScheduler, sample_tokens  # noqa: E402
from tiny_models import LMOutput, TinyLM  # noqa: E402

PAD, EOS, MASK = 0, 1, 2
WORDS = 45
V = 3 + WORDS
P, G, BL, S = 8, 24, 8, 4          # prompt on a block boundary: 3 blocks of 8, 4 steps per block
OFF = dict(editing_threshold=None, output_type="seq", eos_early_stop=False)


class TinyLLaDA2(TinyLM):
    """TinyLM with what DiffusionPipeline reads off a transformers model (`device`)."""

    @property
    def device(self) -> torch.device:
        return self.head.weight.device


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": PAD, "[EOS]": EOS, "[MASK]": MASK, **{f"w{i}": 3 + i for i in range(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[PAD]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", eos_token="[EOS]", mask_token="[MASK]")
    assert (tok.mask_token_id, tok.eos_token_id, len(tok)) == (MASK, EOS, V)
    return tok


@pytest.fixture(scope="module")
def model():
    # EOS grows likelier towards the end of the canvas, so eos_early_stop has something to act on
    return TinyLLaDA2(vocab_size=V, mask_id=MASK, max_len=64, seed=1, tail_bias={EOS: (P + 6, 1.0)})


@pytest.fixture(scope="module")
def prompt_ids():
    return torch.randint(3, V, (2, P), generator=torch.Generator().manual_seed(0))


def decode(model, tokenizer, scheduler, prompt_ids, **kw):
    """(sequences [B, G], model forwards) of one LLaDA2Pipeline call."""
    pipe = LLaDA2Pipeline(model=model, scheduler=scheduler, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    args = dict(input_ids=prompt_ids, gen_length=G, block_length=BL, num_inference_steps=S, **OFF)
    args.update(kw)
    model.calls = 0
    out = pipe(**args)
    return out.sequences, model.calls


# ---------------------------------------------------------------------------------------------------------------
# parity with diffusers' BlockRefinementScheduler
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [3, 4, 8])
@pytest.mark.parametrize("eos_early_stop", [False, True])
def test_low_confidence_matches_block_refinement(model, tokenizer, prompt_ids, steps, eos_early_stop):
    # threshold > 1: BlockRefinementScheduler commits exactly the schedule's top-k (LLaDA's low_confidence)
    ref, ref_calls = decode(model, tokenizer, BlockRefinementScheduler(block_length=BL), prompt_ids,
                            threshold=1.0, num_inference_steps=steps, eos_early_stop=eos_early_stop)
    sched = PolicyScheduler(prr_ext.LowConfidence(), block_length=BL)
    got, calls = decode(model, tokenizer, sched, prompt_ids, threshold=1.0, num_inference_steps=steps,
                        eos_early_stop=eos_early_stop)
    assert torch.equal(got, ref)
    assert calls == ref_calls == sched.forwards
    if not eos_early_stop:
        assert calls == steps * (G // BL)
        assert sched.nfe.tolist() == [steps * (G // BL)] * 2
        assert not (got == MASK).any()
    else:  # rows that committed their EOS are frozen: later blocks keep masks (the early-stop path ran)
        assert (got == MASK).any()


@pytest.mark.parametrize("tau", [0.3, 0.5, 0.7, 0.9])
@pytest.mark.parametrize("eos_early_stop", [False, True])
def test_threshold_matches_block_refinement(model, tokenizer, prompt_ids, tau, eos_early_stop):
    ref, ref_calls = decode(model, tokenizer, BlockRefinementScheduler(block_length=BL), prompt_ids, threshold=tau,
                            eos_early_stop=eos_early_stop)
    sched = PolicyScheduler(prr_ext.Threshold(tau), block_length=BL)
    got, calls = decode(model, tokenizer, sched, prompt_ids, threshold=tau, eos_early_stop=eos_early_stop)
    assert torch.equal(got, ref)
    # BlockRefinementScheduler spends one more forward on a block the rule filled before its last step
    assert calls <= ref_calls
    if eos_early_stop:
        assert (got == MASK).any()
    if tau == 0.3 and not eos_early_stop:
        assert calls < S * (G // BL)  # the threshold did commit more than the schedule
        assert calls < ref_calls


@pytest.mark.parametrize("tau", [1.0, 0.3, 0.7])
def test_bf16_logits_match_block_refinement(prompt_ids, tau):
    """A bf16 model: both schedulers take the confidence from an fp32 softmax of the bf16 logits."""
    model = TinyLLaDA2(vocab_size=V, mask_id=MASK, max_len=64, seed=1, tail_bias={EOS: (P + 6, 1.0)},
                       dtype=torch.bfloat16)
    ref, ref_calls = decode(model, None, BlockRefinementScheduler(block_length=BL), prompt_ids, threshold=tau,
                            mask_token_id=MASK)
    policy = prr_ext.LowConfidence() if tau > 1 - 1e-9 else prr_ext.Threshold(tau)
    got, calls = decode(model, None, PolicyScheduler(policy, BL), prompt_ids, threshold=tau, mask_token_id=MASK)
    assert torch.equal(got, ref) and calls <= ref_calls


def window_model(model):
    """prr_ext.generate's view of LLaDA2Pipeline's forwards: the canvas up to the active block's end, whose last
    block_length logits are the block's (generate(block_info=True) accepts block-only logits)."""
    def forward(x, attention_mask=None, *, block_start, block_end):
        return LMOutput(model(x[:, :block_end]).logits[:, block_start:block_end])
    return forward


@pytest.mark.parametrize("policy", [
    prr_ext.LowConfidence(), prr_ext.Threshold(0.5), prr_ext.Factor(1.0), prr_ext.Factor(2.0, variant="paper"),
    prr_ext.EntropyBound(0.5), prr_ext.LocalLeap(0.7, 0.4, 2), prr_ext.SlowFast(explore_steps=2),
    prr_ext.KLASS(0.6, 0.05), prr_ext.R2(base=prr_ext.Threshold(0.6)),
    prr_ext.R2(base=prr_ext.LowConfidence(), window=2, token_cluster="mid", temporal_steps=2)],
    ids=lambda p: repr(p)[:40])
def test_policies_match_prr_ext_generate(model, tokenizer, prompt_ids, policy):
    """Each block's State behaves exactly as prr_ext.generate's State does in that block (schedule, KLASS's kept
    distributions, SlowFast's span, R2's streaks start afresh; idle rows wait), and nfe counts the same forwards."""
    sched = PolicyScheduler(policy, block_length=BL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pipeline's default threshold vs. the policy's tau
        got, calls = decode(model, tokenizer, sched, prompt_ids)
    ref = prr_ext.generate(window_model(model), prompt_ids, gen_length=G, block_length=BL, steps=S * (G // BL),
                           policy=policy, block_info=True, mask_id=MASK, confidence_dtype=torch.float32)
    assert torch.equal(got, ref.generated)
    assert torch.equal(sched.nfe, ref.nfe)
    assert calls == sched.forwards == ref.forwards
    assert sched.blocks == G // BL


# ---------------------------------------------------------------------------------------------------------------
# sampling arguments
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("top_k,top_p", [(None, None), (5, None), (None, 0.8), (6, 0.9), (0, 1.0)])
def test_sampled_candidates_match_block_refinement_draws(rnd, top_k, top_p):
    logits = (rnd.randn(3, BL, V) * 3).float()
    sample = torch.where(rnd.rand(3, BL) < 0.6, torch.full((3, BL), MASK), rnd.randint(3, V, (3, BL)))
    sample[:, 0] = MASK
    g = rnd.generator()
    ref_sched, sched = BlockRefinementScheduler(block_length=BL), PolicyScheduler(prr_ext.Threshold(0.8), BL)
    for s in (ref_sched, sched):
        s.set_timesteps(S)
    kw = dict(mask_token_id=MASK, temperature=0.8, top_k=top_k, top_p=top_p, sampling_method="multinomial",
              threshold=0.8, editing_threshold=None)
    ref = ref_sched.step(logits, 0, sample, generator=clone_generator(g), **kw)
    out = sched.step(logits, 0, sample, generator=clone_generator(g), **kw)
    assert torch.equal(out.sampled_tokens, ref.sampled_tokens)  # the same draws from the same generator state
    # sampled_probs: the untempered probability of the drawn token (the confidence the rule ranks by) where the block
    # was masked; NaN elsewhere, and where the draw is the mask token itself (never a candidate of the op)
    want = torch.softmax(logits, -1).gather(-1, out.sampled_tokens[..., None]).squeeze(-1)
    ranked = (sample == MASK) & (out.sampled_tokens != MASK)
    torch.testing.assert_close(out.sampled_probs[ranked], want[ranked])
    assert bool(out.sampled_probs[~ranked].isnan().all())
    # the op committed only drawn tokens, only at masked positions, and the output block is sample + commits
    commit = out.transfer_index
    assert not (commit & (sample != MASK)).any() and (commit.sum(-1) >= 1).all()
    assert torch.equal(out.prev_sample, torch.where(commit, out.sampled_tokens, sample))
    # and with the same generator a second time: the same draws (the scheduler consumed nothing else)
    again = PolicyScheduler(prr_ext.Threshold(0.8), BL)
    again.set_timesteps(S)
    assert torch.equal(again.step(logits, 0, sample, generator=clone_generator(g), **kw).sampled_tokens,
                       out.sampled_tokens)


def test_sample_tokens_top_k_one_is_greedy(rnd):
    logits = rnd.randn(2, 5, V).float()
    got = sample_tokens(logits, temperature=0.7, top_k=1, top_p=None, generator=rnd.generator())
    assert torch.equal(got, logits.argmax(-1))


def test_temperature_and_top_k_reach_the_commits(model, tokenizer, prompt_ids):
    greedy, _ = decode(model, tokenizer, PolicyScheduler(prr_ext.Threshold(0.5), BL), prompt_ids, threshold=0.5)
    # top_k=1 draws the argmax at any temperature: the greedy tokens
    top1, _ = decode(model, tokenizer, PolicyScheduler(prr_ext.Threshold(0.5), BL), prompt_ids, threshold=0.5,
                     temperature=1.5, top_k=1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(top1, greedy)
    # sampling_method="greedy" ignores the temperature, as BlockRefinementScheduler does
    forced, _ = decode(model, tokenizer, PolicyScheduler(prr_ext.Threshold(0.5), BL), prompt_ids, threshold=0.5,
                       temperature=1.5, sampling_method="greedy")
    assert torch.equal(forced, greedy)
    # a hot, unfiltered draw differs from greedy and is reproducible from the generator's seed
    runs = [decode(model, tokenizer, PolicyScheduler(prr_ext.Threshold(0.5), BL), prompt_ids, threshold=0.5,
                   temperature=2.0, generator=torch.Generator().manual_seed(7))[0] for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], greedy)
    assert not (runs[0] == MASK).any()


# ---------------------------------------------------------------------------------------------------------------
# PRR and the other rules
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("union_schedule", [True, False])
def test_prr_decodes(model, tokenizer, prompt_ids, union_schedule):
    controller = random_controller(Rand(3))
    policy = prr_ext.PRR(controller, tau=0.7, union_schedule=union_schedule)
    sched = PolicyScheduler(policy, block_length=BL)
    got, calls = decode(model, tokenizer, sched, prompt_ids, threshold=0.7)
    assert not (got == MASK).any()
    assert calls == sched.forwards and (sched.nfe <= calls).all() and (sched.nfe >= 1).all()
    scores = sched.state.last_stats[..., STAT_SCORE]  # the controller ran on the last step's masked positions
    assert torch.isfinite(scores).any() and ((scores > 0) & (scores < 1))[torch.isfinite(scores)].all()
    if not union_schedule:  # may take more steps than num_inference_steps: the block still ends filled
        assert sched.config.num_inference_steps == 32
    again, _ = decode(model, tokenizer, sched, prompt_ids, threshold=0.7)
    assert torch.equal(again, got)


def test_random_remask_draws_from_the_generator(model, tokenizer, prompt_ids):
    def run(seed):
        sched = PolicyScheduler(prr_ext.RandomRemask(), BL)
        return decode(model, tokenizer, sched, prompt_ids, generator=torch.Generator().manual_seed(seed))[0]
    a, b = run(3), run(3)
    assert torch.equal(a, b) and not (a == MASK).any()
    assert any(not torch.equal(run(s), a) for s in (4, 5, 6))


def test_rules_that_outlast_the_step_budget_fill_the_block(model, tokenizer, prompt_ids):
    """SlowFast ignores the schedule: with 1 step per block it still fills every block (the scheduler's
    check_block_should_continue lets it run up to block_length steps), where the pipeline's budget is 1."""
    sched = PolicyScheduler(prr_ext.SlowFast(explore_steps=2, fill_threshold=0.99), BL)
    got, calls = decode(model, tokenizer, sched, prompt_ids, num_inference_steps=1)
    assert not (got == MASK).any()
    assert calls > G // BL


# ---------------------------------------------------------------------------------------------------------------
# state lifetime
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", [prr_ext.KLASS(0.6, 0.05), prr_ext.R2(base=prr_ext.Threshold(0.6)),
                                    prr_ext.SlowFast(explore_steps=2)], ids=lambda p: type(p).__name__)
@pytest.mark.filterwarnings("ignore:threshold=0.7 is not used")
def test_state_resets_between_calls(model, tokenizer, prompt_ids, policy):
    fresh = PolicyScheduler(policy, BL)
    want, want_calls = decode(model, tokenizer, fresh, prompt_ids)
    sched = PolicyScheduler(policy, BL)
    # a different call first (other prompt, sampling, other step budget) leaves nothing behind
    other = torch.randint(3, V, (2, P), generator=torch.Generator().manual_seed(9))
    decode(model, tokenizer, sched, other, temperature=1.0, num_inference_steps=2,
           generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        got, calls = decode(model, tokenizer, sched, prompt_ids)
        assert torch.equal(got, want)
        assert calls == want_calls == sched.forwards
        assert torch.equal(sched.nfe, fresh.nfe)  # counted over this call only
        assert sched.blocks == G // BL


def test_text_prompt_unaligned_and_config_block_length(model, tokenizer):
    """A text prompt of 5 tokens: the first block also holds the prompt; block_length comes from the scheduler's
    config. LowConfidence spreads that block's 3 masks over the steps (1, 1, 1), the full blocks' 8 as 2 per step."""
    sched = PolicyScheduler(prr_ext.LowConfidence(), block_length=BL)
    pipe = LLaDA2Pipeline(model=model, scheduler=sched, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    model.calls = 0
    out = pipe(prompt="w1 w2 w3 w4 w5", gen_length=19, num_inference_steps=S, editing_threshold=None,
               eos_early_stop=False)
    assert out.sequences.shape == (1, 19) and not (out.sequences == MASK).any()
    assert isinstance(out.texts[0], str) and out.texts[0]
    assert model.calls == sched.forwards == 3 + S + S and sched.blocks == 3


def test_schedule_of_a_block_that_holds_prompt_tokens(rnd):
    """The documented difference from BlockRefinementScheduler: a block holding 3 prompt tokens and 5 masks, 4 steps.
    prr_ext (LLaDA's get_num_transfer_tokens) spreads the 5 masks: 2, 1, 1, 1; diffusers spreads block_length=8:
    2, 2, then what its top-k makes of the masks left (it may count a re-sampled committed position: only its
    first two steps are pinned here)."""
    sample = torch.full((1, BL), MASK)
    sample[0, :3] = torch.tensor([5, 6, 7])
    prompt_mask = torch.arange(BL) < 3
    counts = {}
    for name, sched in (("prr_ext", PolicyScheduler(prr_ext.LowConfidence(), BL)),
                        ("diffusers", BlockRefinementScheduler(block_length=BL))):
        sched.set_timesteps(S)
        x, counts[name] = sample.clone(), []
        for i in range(S):
            out = sched.step(rnd.randn(1, BL, V).float(), i, x, mask_token_id=MASK, threshold=1.0,
                             editing_threshold=None, prompt_mask=prompt_mask)
            counts[name].append(int(out.transfer_index.sum()))
            x = out.prev_sample
        assert not (x == MASK).any() and torch.equal(x[0, :3], sample[0, :3])
    assert counts["prr_ext"] == [2, 1, 1, 1] and counts["diffusers"][:2] == [2, 2], counts


def test_step_return_dict_false(rnd):
    sched = PolicyScheduler(prr_ext.Threshold(0.5), BL)
    sched.set_timesteps(S)
    logits, sample = rnd.randn(2, BL, V).float(), torch.full((2, BL), MASK)
    out = sched.step(logits, 0, sample, mask_token_id=MASK, threshold=0.5)
    sched.set_timesteps(S)
    tup = sched.step(logits, 0, sample, mask_token_id=MASK, threshold=0.5, return_dict=False)
    assert len(tup) == 6
    for a, b in zip(tup, (out.prev_sample, out.transfer_index, out.editing_transfer_index, out.sampled_tokens,
                          out.sampled_probs, out.pred_logits)):
        assert torch.equal(a, b)
    assert not out.editing_transfer_index.any()
    assert out.pred_logits is logits


def test_check_eos_finished_matches_block_refinement(rnd):
    L0 = 6
    for _ in range(50):
        x = rnd.randint(3, 10, (3, L0 + BL))
        x[:, L0:] = torch.where(rnd.rand(3, BL) < 0.3, torch.full((3, BL), MASK), x[:, L0:])
        x[:, L0:] = torch.where(rnd.rand(3, BL) < 0.2, torch.full((3, BL), EOS), x[:, L0:])
        sampled = torch.where(rnd.rand(3, BL) < 0.5, torch.full((3, BL), EOS), rnd.randint(3, 10, (3, BL)))
        transfer = rnd.rand(3, BL) < 0.5
        finished = rnd.rand(3) < 0.2
        args = dict(cur_x=x, sampled_tokens=sampled, final_transfer=transfer, eos_token_id=EOS, mask_token_id=MASK,
                    prompt_length=L0)
        want = BlockRefinementScheduler.check_eos_finished(finished=finished.clone(), **args)
        assert torch.equal(PolicyScheduler.check_eos_finished(finished=finished.clone(), **args), want)
    # the one difference: an EOS inside the prompt does not keep the row from finishing
    x = torch.tensor([[4, EOS, 5, 6, EOS, MASK]])
    args = dict(cur_x=x, sampled_tokens=torch.tensor([[EOS]]), final_transfer=torch.tensor([[True]]),
                eos_token_id=EOS, mask_token_id=MASK, prompt_length=3)
    assert PolicyScheduler.check_eos_finished(finished=torch.tensor([False]), **args).tolist() == [True]
    assert BlockRefinementScheduler.check_eos_finished(finished=torch.tensor([False]), **args).tolist() == [False]


# ---------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------
def test_pipeline_level_errors(model, tokenizer, prompt_ids):
    sched = PolicyScheduler(prr_ext.LowConfidence(), BL)
    with pytest.raises(ValueError, match=r"editing_threshold=0.5.*editing_threshold=None"):
        decode(model, tokenizer, sched, prompt_ids, editing_threshold=0.5)  # LLaDA2Pipeline's default
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        decode(model, tokenizer, sched, prompt_ids, temperature=-1.0)
    with pytest.raises(ValueError, match=r"top_p must be None or a number in \(0, 1\]"):
        decode(model, tokenizer, sched, prompt_ids, temperature=1.0, top_p=0.0)
    with pytest.warns(UserWarning, match=r"threshold=0.7 is not used.*tau=0.9"):
        decode(model, tokenizer, PolicyScheduler(prr_ext.Threshold(0.9), BL), prompt_ids)  # default threshold 0.7


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(mask_token_id=-1), ValueError, r"mask_token_id must be a non-negative int \(or None for a uniform"),
    (dict(mask_token_id=2.0), ValueError, "mask_token_id must be a non-negative int"),
    (dict(mask_token_id=V), ValueError, "vocabulary size .* must be larger than mask_token_id"),
    (dict(sampling_method="beam"), ValueError, "sampling_method must be one of"),
    (dict(temperature=float("nan")), ValueError, "temperature must be a finite number"),
    (dict(top_k=-2), ValueError, "top_k must be None or an int >= 0"),
    (dict(top_k=2.5), ValueError, "top_k must be None or an int >= 0"),
    (dict(top_p=1.5), ValueError, r"top_p must be None or a number in \(0, 1\]"),
    (dict(minimal_topk=0), ValueError, "minimal_topk must be None or a positive int"),
    (dict(editing_threshold=0.1), ValueError, "editing_threshold=0.1: PolicyScheduler does not edit"),
    (dict(editing_threshold="x"), TypeError, "editing_threshold must be a number or None"),
    (dict(threshold="x"), TypeError, "threshold must be a number or None"),
    (dict(prompt_mask=torch.zeros(BL + 1, dtype=torch.bool)), ValueError, r"prompt_mask must be None or a \[block"),
    (dict(prompt_mask=torch.zeros(BL)), ValueError, r"prompt_mask must be None or a \[block"),
    (dict(generator=3), TypeError, "generator must be a torch.Generator or None"),
    (dict(return_dict="no"), TypeError, "return_dict must be True or False, got str 'no'"),
    (dict(return_dict=1), TypeError, "return_dict must be True or False, got int 1"),
    (dict(timestep=-1), ValueError, "timestep must be an int >= 0"),
    (dict(timestep=torch.tensor([0, 1])), ValueError, "timestep must be an int or a one-element tensor"),
    (dict(sample=torch.full((2, BL + 1), MASK)), ValueError, r"sample has 9 positions but set_timesteps set"),
    (dict(sample=torch.full((2, BL), MASK, dtype=torch.int32)), ValueError, r"sample must be a \[B, block_length\]"),
    (dict(model_output=torch.zeros(3, BL, V)), ValueError, r"model_output must be the block's logits"),
])
def test_step_errors_name_the_argument(kwargs, exc, match):
    sched = PolicyScheduler(prr_ext.Threshold(0.5), BL)
    sched.set_timesteps(S)
    args = dict(model_output=torch.zeros(2, BL, V), timestep=0, sample=torch.full((2, BL), MASK),
                mask_token_id=MASK, threshold=0.5)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        sched.step(**args)


def test_constructor_and_set_timesteps_errors():
    with pytest.raises(TypeError, match="policy must be a prr_ext policy"):
        PolicyScheduler("threshold")
    with pytest.raises(ValueError, match="block_length must be a positive int"):
        PolicyScheduler(prr_ext.LowConfidence(), block_length=0)
    with pytest.raises(ValueError, match="num_inference_steps must be a positive int"):
        PolicyScheduler(prr_ext.LowConfidence(), num_inference_steps=1.5)
    with pytest.raises(ValueError, match="confidence_dtype must be one of"):
        PolicyScheduler(prr_ext.LowConfidence(), confidence_dtype=torch.int32)
    ctrl = prr_ext.Controller.init(seed=0, hidden=(8,), extra_features=2)
    with pytest.raises(ValueError, match="expects 2 extra_features per token"):
        PolicyScheduler(prr_ext.PRR(ctrl, tau=0.9))
    sched = PolicyScheduler(prr_ext.LowConfidence(), BL)
    with pytest.raises(RuntimeError, match=r"call set_timesteps\(.*\) before step"):
        sched.step(torch.zeros(1, BL, V), 0, torch.full((1, BL), MASK), mask_token_id=MASK)
    with pytest.raises(ValueError, match="num_inference_steps must be a positive int"):
        sched.set_timesteps(0)
    with pytest.raises(ValueError, match="block_length must be a positive int"):
        sched.set_timesteps(4, block_length=-8)


def test_docstring_examples():
    import doctest

    import prr_ext.integrations.diffusers as module

    result = doctest.testmod(module)
    assert result.attempted >= 10 and result.failed == 0
