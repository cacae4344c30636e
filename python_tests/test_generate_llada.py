"""prr_ext.generate (style="llada") against a faithful re-implementation of LLaDA's `generate()`, on tiny
random-weight bidirectional transformers (CPU; the CUDA checks at the bottom skip without a GPU).

Tie caveat. LLaDA selects with `torch.topk`; on CPU, topk does not return the lowest-index set among tied values
(CUDA's does), while prr_ext always does. So whole-loop parity on CPU is asserted against the faithful reference
where ties cannot occur (fp32 / fp64 confidences of continuous logits), and where they can (bf16 confidences, the
zero confidences of confidence_eos_eot_inf) against the same reference with a lowest-index topk (= LLaDA on CUDA),
plus against the faithful reference whenever CPU topk's tie-break changed no selection in its run (instrumented:
TieCounter). The CUDA tests compare with the faithful reference directly.
"""
from __future__ import annotations

import importlib
import os
import sys
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import prr_ext  # noqa: E402
from prr_ext.generate import BACKENDS, generate  # noqa: E402
import llada_reference as LL  # noqa: E402
from tiny_models import BlockOnlyLM, DeclaredIdsLM, tiny_lm  # noqa: E402

V, MASK, EOS, EOT, PAD = 128, 127, 100, 101, 99


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: threads only add overhead
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------------------------
# The reference is llada_reference.generate (LLaDA generate.py, 2025-10: batches with attention_mask, EOS/EoT
# flags, logits-dtype confidence); fp64=True gives the pre-June-2025 / Fast-dLLM fp64 confidence. EOS/EoT ids are
# the tiny vocabulary's; `topk` can be swapped or instrumented (lowest_index_topk, TieCounter).
# ------------------------------------------------------------------------------------------------------------
def lowest_index_topk(v, k):
    """topk whose tie-break is the lowest index (what CUDA's torch.topk and prr_ext do)."""
    idx = torch.sort(v, descending=True, stable=True).indices[:int(k)]
    return v[idx], idx


class TieCounter:
    """The faithful torch.topk, instrumented: `ties` counts calls with a boundary tie (the k-th and (k+1)-th
    largest values equal, so the selected set depends on the tie-break); `diverged` counts calls where torch.topk
    actually selected a different set than the lowest-index rule. With diverged == 0 the faithful run must equal
    prr_ext token for token."""

    def __init__(self):
        self.ties = self.diverged = 0

    def __call__(self, v, k):
        k = int(k)
        out = torch.topk(v, k=k)
        if 0 < k < v.numel():
            s = torch.sort(v, descending=True).values
            if s[k - 1] == s[k]:
                self.ties += 1
                if set(out.indices.tolist()) != set(lowest_index_topk(v, k)[1].tolist()):
                    self.diverged += 1
        return out


# ------------------------------------------------------------------------------------------------------------
# models and helpers
# ------------------------------------------------------------------------------------------------------------
_MODELS = {}


def eos_tail(P, G):
    """EoT, then EOS, growing likelier over the second half of a P + G canvas (an answer, then padding)."""
    return {EOT: (P + G // 2 - 2, 2.0), EOS: (P + G // 2 + 1, 3.0)}


def model(dtype=torch.float32, seed=0, tail=None, hf=True):
    """A cached tiny LM; tail=(P, G) adds the EOS/EoT tail of `eos_tail`."""
    key = (dtype, seed, tail, hf)
    if key not in _MODELS:
        _MODELS[key] = tiny_lm(vocab_size=V, mask_id=MASK, dtype=dtype, seed=seed, logit_scale=6.0,
                               tail_bias=eos_tail(*tail) if tail else None, hf_output=hf)
    return _MODELS[key]


def prompts(B=2, P=6, seed=0, pad_left=()):
    """[B, P] prompts; pad_left[b] left pads (PAD) in row b, with the matching attention_mask (or None)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.randint(0, PAD, (B, P), generator=g)
    if not pad_left:
        return p, None
    am = torch.ones_like(p)
    for b, n in enumerate(pad_left):
        p[b, :n], am[b, :n] = PAD, 0
    return p, am


def ours(m, p, **kw):
    kw.setdefault("mask_id", MASK)
    kw.setdefault("eos_id", EOS)
    kw.setdefault("eot_id", EOT)
    return generate(m, p, **kw)


def ref(m, p, seed=None, fp64=False, **kw):
    """The faithful LLaDA loop (llada_reference.generate) on the global generator, seeded like upstream."""
    if seed is not None:
        torch.manual_seed(seed)
    kw.setdefault("mask_id", MASK)
    kw.setdefault("eos_id", EOS)
    kw.setdefault("eot_id", EOT)
    return LL.generate(m, p, fp64_confidence=fp64, **kw)


CONFIGS = [dict(gen_length=16, block_length=8, steps=8),    # 1 token per step
           dict(gen_length=16, block_length=8, steps=6),    # k = 3, 3, 2 per block (remainder front-loaded)
           dict(gen_length=12, block_length=12, steps=12),  # one block
           dict(gen_length=16, block_length=4, steps=16)]


# ------------------------------------------------------------------------------------------------------------
# greedy parity
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", CONFIGS)
def test_greedy_fp32_parity(cfg):
    """LLaDA >= 2025-06 with an fp32 model: confidence = softmax in the logits' dtype (fp32, continuous: no ties)."""
    m = model()
    p, _ = prompts(B=3, seed=1)
    want = ref(m, p, **cfg)
    got = ours(m, p, **cfg)
    assert torch.equal(got.tokens, want)
    assert got.nfe.tolist() == [cfg["steps"]] * 3
    assert got.state.confidence_dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_fp64_parity(dtype):
    """The older LLaDA / Fast-dLLM: fp64 confidence."""
    m = model(dtype, seed=2)
    p, _ = prompts(B=2, seed=2)
    for cfg in CONFIGS[:2]:
        want = ref(m, p, fp64=True, **cfg)
        got = ours(m, p, confidence_dtype=torch.float64, **cfg)
        assert torch.equal(got.tokens, want)


def test_greedy_bf16_parity_and_ties():
    """LLaDA >= 2025-06 on a bf16 model: bf16 logits, bf16 confidence. Against the lowest-index-topk reference
    always; against the faithful (CPU topk) reference whenever CPU topk's tie-break changed no selection."""
    faithful_checked = 0
    for seed in range(4):
        m = model(torch.bfloat16, seed=10 + seed)
        p, _ = prompts(B=2, seed=seed)
        for cfg in CONFIGS[:2]:
            got = ours(m, p, **cfg)
            assert got.state.confidence_dtype == torch.bfloat16
            assert torch.equal(got.tokens, ref(m, p, topk=lowest_index_topk, **cfg))
            counter = TieCounter()
            want = ref(m, p, topk=counter, **cfg)
            if counter.diverged == 0:
                faithful_checked += 1
                assert torch.equal(got.tokens, want)
    assert faithful_checked >= 4  # the model's logit spread keeps bf16 boundary ties rare


def test_tie_heavy_bf16_lowest_index():
    """A low-spread bf16 model: many tied bf16 confidences; parity with LLaDA's CUDA tie-break (lowest index)."""
    m = tiny_lm(vocab_size=V, mask_id=MASK, dtype=torch.bfloat16, seed=3, logit_scale=0.05)  # near-uniform
    p, _ = prompts(B=2, seed=3)
    cfg = dict(gen_length=16, block_length=16, steps=8)
    counter = TieCounter()
    faithful = ref(m, p, topk=counter, **cfg)
    assert counter.ties >= 5 and counter.diverged > 0  # tie-heavy, and CPU topk does break ties differently
    got = ours(m, p, **cfg)
    assert torch.equal(got.tokens, ref(m, p, topk=lowest_index_topk, **cfg))
    assert not torch.equal(got.tokens, faithful)  # the documented CPU-only divergence


def test_tensor_returning_model_and_block_only_logits():
    m, mt = model(), model(hf=False)
    p, _ = prompts(B=2, seed=4)
    cfg = CONFIGS[1]
    want = ref(m, p, **cfg)
    assert torch.equal(ours(mt, p, **cfg).tokens, want)
    bm = BlockOnlyLM(m)
    got = ours(bm, p, block_info=True, **cfg)
    assert torch.equal(got.tokens, want)
    P, BL, S = p.shape[1], cfg["block_length"], cfg["steps"] // 2
    assert bm.starts == [P] * S + [P + BL] * S
    assert {s[1] for s in bm.shapes} == {P + cfg["gen_length"], BL}


def test_block_only_adaptive_policy():
    """Block-only logits follow State.block_start when blocks end early."""
    m = model()
    p, _ = prompts(B=2, seed=5)
    cfg = dict(gen_length=24, block_length=8, steps=24, policy=prr_ext.Threshold(0.3))
    full = ours(m, p, **cfg)
    bm = BlockOnlyLM(m, prefill_full=False)
    got = ours(bm, p, block_info=True, **cfg)
    assert torch.equal(got.tokens, full.tokens) and torch.equal(got.nfe, full.nfe)
    assert all(s[1] == 8 for s in bm.shapes)
    assert bm.starts == sorted(bm.starts) and set(bm.starts) == {6, 14, 22}


# ------------------------------------------------------------------------------------------------------------
# sampling (T > 0): rng="torch" draws LLaDA's rand_like in LLaDA's order
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_sampling_parity(dtype, remasking):
    m = model(dtype, seed=6)
    p, _ = prompts(B=2, seed=6)
    policy = prr_ext.LowConfidence() if remasking == "low_confidence" else prr_ext.RandomRemask()
    for T in (0.5, 1.0):
        cfg = dict(gen_length=16, block_length=8, steps=8, temperature=T)
        counter = TieCounter()
        faithful = ref(m, p, seed=7, remasking=remasking, topk=counter, **cfg)
        want = ref(m, p, seed=7, remasking=remasking, topk=lowest_index_topk, **cfg)
        if counter.diverged == 0:
            assert torch.equal(faithful, want)
        if dtype == torch.float32:
            assert counter.ties == 0  # continuous confidences: the faithful reference itself is the oracle
        torch.manual_seed(999)  # the generator below, not the global stream, drives our draws
        got = ours(m, p, rng="torch", generator=torch.Generator().manual_seed(7), policy=policy, **cfg)
        assert torch.equal(got.tokens, want), (T, remasking)
        torch.manual_seed(7)  # generator=None: torch's default generator, as LLaDA's rand_like
        got = ours(m, p, rng="torch", policy=policy, **cfg)
        assert torch.equal(got.tokens, want)


def test_sampling_fp64_parity():
    m = model(torch.bfloat16, seed=8)
    p, _ = prompts(B=2, seed=8)
    cfg = dict(gen_length=16, block_length=8, steps=8, temperature=0.8)
    want = ref(m, p, seed=3, fp64=True, **cfg)
    got = ours(m, p, rng="torch", generator=torch.Generator().manual_seed(3), confidence_dtype=torch.float64, **cfg)
    assert torch.equal(got.tokens, want)


def test_random_remask_greedy_parity():
    """'random' remasking at T == 0: one fp32 rand([B, L]) per step."""
    m = model()
    p, _ = prompts(B=2, seed=9)
    cfg = dict(gen_length=16, block_length=8, steps=8)
    want = ref(m, p, seed=4, remasking="random", **cfg)
    got = ours(m, p, rng="torch", generator=torch.Generator().manual_seed(4), policy=prr_ext.RandomRemask(), **cfg)
    assert torch.equal(got.tokens, want)


# ------------------------------------------------------------------------------------------------------------
# batches with left padding, attention_mask, classifier-free guidance
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [0.0, 0.7])
def test_left_padding_parity(T):
    m = model(seed=11)
    p, am = prompts(B=3, P=7, seed=11, pad_left=(3, 0, 1))
    cfg = dict(gen_length=16, block_length=8, steps=8, temperature=T)
    want = ref(m, p, seed=5, attention_mask=am, **cfg)
    got = ours(m, p, attention_mask=am, rng="torch", generator=torch.Generator().manual_seed(5), **cfg)
    assert torch.equal(got.tokens, want)
    assert got.state.prompt_lens.tolist() == [4, 7, 6]


@pytest.mark.parametrize("T", [0.0, 0.6])
def test_cfg_parity(T):
    m = model(seed=12)
    p, am = prompts(B=2, P=6, seed=12, pad_left=(2, 0))
    cfg = dict(gen_length=16, block_length=8, steps=8, temperature=T, cfg_scale=1.5)
    want = ref(m, p, seed=6, attention_mask=am, **cfg)
    got = ours(m, p, attention_mask=am, rng="torch", generator=torch.Generator().manual_seed(6), **cfg)
    assert torch.equal(got.tokens, want)
    assert m.calls > 0 and got.nfe.tolist() == [8, 8]


def test_cfg_without_attention_mask():
    """LLaDA's reference raises (unbound local); prr_ext calls the model without a mask."""
    m = model(seed=12)
    p, _ = prompts(B=2, seed=12)
    with pytest.raises(UnboundLocalError):
        ref(m, p, gen_length=8, block_length=8, steps=4, cfg_scale=1.0)
    ones = torch.ones_like(p)
    want = ref(m, p, attention_mask=ones, gen_length=8, block_length=8, steps=4, cfg_scale=1.0)
    got = ours(m, p, gen_length=8, block_length=8, steps=4, cfg_scale=1.0)
    assert torch.equal(got.tokens, want)


# ------------------------------------------------------------------------------------------------------------
# EOS / EoT flags
# ------------------------------------------------------------------------------------------------------------
def test_logits_eos_inf_parity():
    m = model(seed=13, tail=(6, 16))
    p, am = prompts(B=2, seed=13, pad_left=(1, 0))
    cfg = dict(gen_length=16, block_length=8, steps=8)
    plain = ours(m, p, attention_mask=am, **cfg)
    assert (plain.generated == EOS).any()  # the bias makes EOS likely...
    for T in (0.0, 0.7):
        want = ref(m, p, seed=8, attention_mask=am, logits_eos_inf=True, temperature=T, **cfg)
        got = ours(m, p, attention_mask=am, logits_eos_inf=True, temperature=T, rng="torch",
                   generator=torch.Generator().manual_seed(8), **cfg)
        assert torch.equal(got.tokens, want)
        assert not (got.generated == EOS).any()  # ...and the flag removes it


@pytest.mark.parametrize("T", [0.0, 0.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_confidence_eos_eot_inf_parity(T, dtype):
    """LLaDA's chained assignment: at T == 0 EOS and EoT candidates get confidence 0 (and leave the softmax
    normaliser), at T > 0 only EoT. Zero confidences tie, so compare with the lowest-index tie-break, and with
    the faithful reference when it met no boundary tie."""
    m = model(dtype, seed=15, tail=(6, 16))
    p, am = prompts(B=2, seed=15, pad_left=(0, 2))
    cfg = dict(gen_length=16, block_length=8, steps=8, temperature=T)
    want = ref(m, p, seed=9, attention_mask=am, confidence_eos_eot_inf=True, topk=lowest_index_topk, **cfg)
    got = ours(m, p, attention_mask=am, confidence_eos_eot_inf=True, rng="torch",
               generator=torch.Generator().manual_seed(9), **cfg)
    assert torch.equal(got.tokens, want)
    assert ((got.generated == EOS) | (got.generated == EOT)).any()
    # the flag changes the result (it is not a no-op on this model)
    plain = ref(m, p, seed=9, attention_mask=am, topk=lowest_index_topk, **cfg)
    assert not torch.equal(plain, want)
    counter = TieCounter()
    faithful = ref(m, p, seed=9, attention_mask=am, confidence_eos_eot_inf=True, topk=counter, **cfg)
    assert counter.ties > 0  # zero confidences tie
    if counter.diverged == 0:
        assert torch.equal(got.tokens, faithful)


def test_confidence_eos_eot_inf_philox_paths():
    """rng="philox": at T == 0 the result equals rng="torch" (no noise); at T > 0 the probe step samples the
    same candidates as the real step, so the op and the pure-PyTorch reference agree."""
    m = model(seed=15, tail=(6, 16))
    p, _ = prompts(B=2, seed=15)
    cfg = dict(gen_length=16, block_length=8, steps=8, confidence_eos_eot_inf=True)
    a = ours(m, p, rng="philox", **cfg)
    b = ours(m, p, rng="torch", **cfg)
    assert torch.equal(a.tokens, b.tokens)
    seed = torch.tensor([5, 6])
    a = ours(m, p, temperature=0.8, seed=seed, **cfg)
    b = ours(m, p, temperature=0.8, seed=seed, backend="reference", **cfg)
    assert torch.equal(a.tokens, b.tokens)
    assert not torch.equal(a.tokens, ours(m, p, temperature=0.8, seed=seed, **dict(cfg, confidence_eos_eot_inf=False))
                           .tokens)


def test_eos_id_out_of_vocab():
    m = model()
    p, _ = prompts()
    with pytest.raises(ValueError, match="eos_id"):
        generate(m, p, gen_length=8, steps=8, mask_id=MASK, logits_eos_inf=True)  # LLaDA's 126081 >= V


# ------------------------------------------------------------------------------------------------------------
# token ids: explicit, else the model's config, else its tokenizer, else LLaDA's
# ------------------------------------------------------------------------------------------------------------
def _ids_case():
    """A model whose EOS/EoT tail makes the EOS options act, a padded batch, options that use every id."""
    m = model(seed=15, tail=(6, 16))
    p, am = prompts(B=2, seed=15, pad_left=(0, 2))
    cfg = dict(gen_length=16, block_length=8, steps=8, attention_mask=am, confidence_eos_eot_inf=True,
               eos_fill=True)
    return m, p, cfg, ours(m, p, **cfg)  # ours: the ids passed explicitly


def test_token_ids_from_model_config():
    m, p, cfg, want = _ids_case()
    dm = DeclaredIdsLM(m, config=SimpleNamespace(mask_token_id=MASK, eos_token_id=EOS, eot_token_id=EOT,
                                                 vocab_size=V))
    got = generate(dm, p, **cfg)
    assert torch.equal(got.tokens, want.tokens) and torch.equal(got.nfe, want.nfe)
    assert got.state.mask_id == MASK
    # the config's EOS / EoT ids are the ones used: swapping them changes the decode
    swapped = DeclaredIdsLM(m, config=SimpleNamespace(mask_token_id=MASK, eos_token_id=EOT, eot_token_id=EOS))
    assert not torch.equal(generate(swapped, p, **cfg).tokens, want.tokens)


def test_token_ids_from_tokenizer_and_precedence():
    m, p, cfg, want = _ids_case()
    tok = SimpleNamespace(mask_token_id=MASK, eos_token_id=EOS, eot_token_id=EOT)
    got = generate(DeclaredIdsLM(m, tokenizer=tok), p, **cfg)
    assert torch.equal(got.tokens, want.tokens) and got.state.mask_id == MASK
    # per id: the config first (an HF-style list of EOS ids gives its first), the tokenizer where the config has
    # none (eot_token_id=None)
    both = DeclaredIdsLM(m, config=SimpleNamespace(mask_token_id=MASK, eos_token_id=[EOS, EOT], eot_token_id=None),
                         tokenizer=SimpleNamespace(mask_token_id=3, eos_token_id=EOT, eot_token_id=EOT))
    got = generate(both, p, **cfg)
    assert torch.equal(got.tokens, want.tokens) and got.state.mask_id == MASK


def test_explicit_token_ids_win():
    m, p, cfg, want = _ids_case()
    dm = DeclaredIdsLM(m, config=SimpleNamespace(mask_token_id=3, eos_token_id=EOT, eot_token_id=EOS),
                       tokenizer=SimpleNamespace(mask_token_id=4, eos_token_id=EOT, eot_token_id=EOS))
    got = generate(dm, p, mask_id=MASK, eos_id=EOS, eot_id=EOT, **cfg)
    assert torch.equal(got.tokens, want.tokens) and got.state.mask_id == MASK
    assert generate(dm, p, **cfg).state.mask_id == 3  # without them, the config's


def test_llada_ids_when_the_model_declares_none():
    """A model with no config / tokenizer ids gets LLaDA's: mask 126336, and EOS 126081 for eos_fill."""
    Vl = LL.LLADA_EOT_ID + 1

    def eos_everywhere(x, **kw):  # LLaDA-sized vocabulary, EOS the likeliest token at every position
        logits = torch.zeros(*x.shape, Vl)
        logits[..., LL.LLADA_EOS_ID] = 5.0
        return logits

    out = generate(eos_everywhere, torch.zeros(1, 2, dtype=torch.int64), gen_length=4, steps=4, eos_fill=True)
    assert out.state.mask_id == LL.LLADA_MASK_ID
    assert out.generated.tolist() == [[LL.LLADA_EOS_ID] * 4] and out.nfe.tolist() == [1]


def test_mask_id_outside_vocabulary():
    m = model()
    p, _ = prompts()
    m.calls = 0
    declared = DeclaredIdsLM(m, config=SimpleNamespace(vocab_size=V))  # checked before the model sees the id
    with pytest.raises(ValueError, match=r"mask_id=126336 \(LLaDA's mask id.*model.config.vocab_size = 128"):
        generate(declared, p, gen_length=8, steps=8)
    with pytest.raises(ValueError, match=r"mask_id=128 \(passed as mask_id="):
        generate(declared, p, gen_length=8, steps=8, mask_id=V)
    assert m.calls == 0
    # no declared vocabulary: the embedding's IndexError at the first forward, explained (and kept as the cause)
    with pytest.raises(ValueError, match="mask_id=126336") as info:
        generate(m, p, gen_length=8, steps=8)
    assert isinstance(info.value.__cause__, IndexError)
    bad_prompt = p.clone()
    bad_prompt[0, 0] = 1000  # here a prompt id is the largest: the model's error is left as it is
    with pytest.raises(IndexError):
        generate(m, bad_prompt, gen_length=8, steps=8, mask_id=MASK)
    # a model that returns logits for any input: checked against the logits' V, with either backend
    for backend in BACKENDS:
        with pytest.raises(ValueError, match=r"mask_id=128 \(passed as mask_id=\).*logits' last dimension V = 128"):
            generate(lambda x, **kw: torch.zeros(*x.shape, V), p, gen_length=8, steps=8, mask_id=V, backend=backend)


def test_token_id_errors():
    m = model()
    p, _ = prompts()
    with pytest.raises(ValueError, match="mask_id"):
        generate(m, p, gen_length=8, steps=8, mask_id=-1)
    with pytest.raises(ValueError, match="eos_id"):
        ours(m, p, gen_length=8, steps=8, eos_id=1.5)
    with pytest.raises(TypeError, match="model.config.mask_token_id"):
        generate(DeclaredIdsLM(m, config=SimpleNamespace(mask_token_id="<mask>")), p, gen_length=8, steps=8)
    out = ours(m, p, gen_length=8, steps=8, mask_id=torch.tensor(MASK))  # a one-element integer tensor is an id
    assert out.state.mask_id == MASK and isinstance(out.state.mask_id, int)


# ------------------------------------------------------------------------------------------------------------
# NFE; adaptive policies; reference loop vs fused op
# ------------------------------------------------------------------------------------------------------------
ADAPTIVE = [prr_ext.Threshold(0.5), prr_ext.Factor(1.0), prr_ext.EntropyBound(0.5)]


def test_nfe_vanilla_and_adaptive():
    m = model(seed=16)
    p, am = prompts(B=3, seed=16, pad_left=(0, 2, 1))
    for cfg in (dict(gen_length=16, block_length=8, steps=16), dict(gen_length=16, block_length=8, steps=8),
                dict(gen_length=24, block_length=8, steps=12)):
        for pol in (prr_ext.LowConfidence(), prr_ext.RandomRemask()):
            m.calls = 0
            out = ours(m, p, attention_mask=am, policy=pol, **cfg)
            assert out.nfe.tolist() == [cfg["steps"]] * 3 and m.calls == out.forwards == cfg["steps"]
            assert torch.allclose(out.tokens_per_forward, torch.full((3,), cfg["gen_length"] / cfg["steps"],
                                                                     dtype=torch.float64))
        fewer = False
        for pol in ADAPTIVE:
            m.calls = 0
            out = ours(m, p, attention_mask=am, policy=pol, **cfg)
            assert (out.nfe <= cfg["steps"]).all() and m.calls == out.forwards <= cfg["steps"]
            assert not (out.generated == MASK).any()
            fewer |= bool((out.nfe < cfg["steps"]).any())
        assert fewer


def test_threshold_one_is_low_confidence():
    """Threshold(tau=1) with k_i >= 1 commits exactly the schedule's top-k_i: LowConfidence's tokens and NFE."""
    m = model(seed=17)
    p, _ = prompts(B=2, seed=17)
    cfg = dict(gen_length=16, block_length=8, steps=8)
    a = ours(m, p, **cfg)
    b = ours(m, p, policy=prr_ext.Threshold(1.0), **cfg)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.nfe, b.nfe)


@pytest.mark.parametrize("policy", [prr_ext.LowConfidence(), prr_ext.RandomRemask(), prr_ext.Threshold(0.5),
                                    prr_ext.Factor(1.0), prr_ext.EntropyBound(0.3), "prr"])
def test_reference_loop_matches_op(policy):
    """The pure-PyTorch loop (prr_ext.reference.step) and the fused op: same tokens, same NFE."""
    if policy == "prr":
        policy = prr_ext.PRR(prr_ext.Controller.init(seed=0), tau=0.6)
    m = model(seed=18)
    p, am = prompts(B=2, seed=18, pad_left=(2, 0))
    for T in (0.0, 0.7):
        cfg = dict(gen_length=16, block_length=8, steps=8, temperature=T, policy=policy, attention_mask=am,
                   seed=torch.tensor([1, 2]))
        a = ours(m, p, **cfg)
        b = ours(m, p, backend="reference", **cfg)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.nfe, b.nfe), T


def test_fully_padded_batch_prr_features(monkeypatch):
    """A batch whose every row is left-padded: the generation region starts at the padded width P, and PRR's length
    features see the true lengths, so each row gets the controller scores (and tokens) it gets next to an unpadded
    row."""
    gen = importlib.import_module("prr_ext.generate")
    commit, scores = gen.commit_step, []

    def spy(logits, state, backend, eos_eot, extra_features=None):  # record every position's score after each step
        out = commit(logits, state, backend, eos_eot, extra_features)
        scores.append(torch.nan_to_num(state.last_stats[..., prr_ext.reference.STAT_SCORE], nan=-1.0).clone())
        return out

    monkeypatch.setattr(gen, "commit_step", spy)
    pol = prr_ext.PRR(prr_ext.Controller.init(seed=3), tau=0.6)
    m = model(seed=21)
    p3, am3 = prompts(B=3, P=7, seed=21, pad_left=(2, 3, 0))
    cfg = dict(gen_length=16, block_length=8, steps=8, policy=pol)
    for T in (0.0, 0.8):
        scores.clear()
        both = ours(m, p3[:2], attention_mask=am3[:2], temperature=T, seed=torch.tensor([5, 6]), **cfg)
        n = len(scores)
        three = ours(m, p3, attention_mask=am3, temperature=T, seed=torch.tensor([5, 6, 7]), **cfg)
        assert torch.equal(both.tokens, three.tokens[:2]) and torch.equal(both.nfe, three.nfe[:2]), T
        assert n > 0 and all(torch.equal(a, b[:2]) for a, b in zip(scores[:n], scores[n:])), T


def test_state_gen_start():
    x = torch.full((2, 12), MASK)
    s = prr_ext.State(x, MASK, torch.tensor([3, 2]), 4, 8, prr_ext.LowConfidence(), gen_start=4)
    assert s.gen_start == 4 and s.gen_length == 8 and s.prompt_lens.tolist() == [3, 2]
    with pytest.raises(ValueError, match="gen_start"):
        prr_ext.State(x, MASK, torch.tensor([5, 2]), 4, 8, prr_ext.LowConfidence(), gen_start=4)


def test_reference_loop_matches_op_rng_torch():
    m = model(seed=19)
    p, _ = prompts(B=2, seed=19)
    for pol in (prr_ext.LowConfidence(), prr_ext.RandomRemask()):
        cfg = dict(gen_length=16, block_length=8, steps=8, temperature=0.9, policy=pol, rng="torch")
        a = ours(m, p, generator=torch.Generator().manual_seed(1), **cfg)
        b = ours(m, p, generator=torch.Generator().manual_seed(1), backend="reference", **cfg)
        assert torch.equal(a.tokens, b.tokens)


def test_philox_reproducible_and_batch_invariant():
    m = model(seed=20)
    p, _ = prompts(B=3, seed=20)
    cfg = dict(gen_length=16, block_length=8, steps=8, temperature=0.8)
    a = ours(m, p, generator=torch.Generator().manual_seed(3), **cfg)
    b = ours(m, p, generator=torch.Generator().manual_seed(3), **cfg)
    assert torch.equal(a.tokens, b.tokens)
    seeds = a.state.seed
    one = ours(m, p[1:2], seed=seeds[1:2], **cfg)  # row 1 alone, with its seed
    assert torch.equal(one.tokens[0], a.tokens[1])


# ------------------------------------------------------------------------------------------------------------
# EOS work saving
# ------------------------------------------------------------------------------------------------------------
def _check_eos_filled(gen):
    """Rows with an EOS hold no mask. (Only masked positions are filled: a token committed after the first EOS
    before the row's prefix was complete stays; on the model used below there are none.)"""
    for row in gen.tolist():
        if EOS in row:
            e = row.index(EOS)
            assert MASK not in row and all(t == EOS for t in row[e:]), row


@pytest.mark.parametrize("policy", [prr_ext.LowConfidence(), prr_ext.Threshold(0.5)])
def test_eos_fill(policy):
    m = model(seed=21, tail=(6, 20))  # EOS from about the middle of the 32 generated tokens
    p, am = prompts(B=3, seed=21, pad_left=(0, 1, 2))
    cfg = dict(gen_length=32, block_length=8, steps=32, policy=policy, attention_mask=am)
    m.calls = 0
    base = ours(m, p, **cfg)
    assert m.calls == base.forwards
    m.calls = 0
    out = ours(m, p, eos_fill=True, **cfg)
    assert m.calls == out.forwards < base.forwards  # fewer batch forwards...
    assert (out.nfe <= base.nfe).all() and (out.nfe < base.nfe).any()  # ...and fewer per row
    _check_eos_filled(out.generated)
    assert all(EOS in row for row in out.generated.tolist())
    # rows are decoded identically up to their first EOS (rows are independent; waiting changes nothing)
    for b in range(3):
        row = out.generated[b].tolist()
        e = row.index(EOS) if EOS in row else len(row) - 1
        assert row[:e + 1] == base.generated[b, :e + 1].tolist()
    # the reference backend does the same
    ref_out = ours(m, p, eos_fill=True, backend="reference", **cfg)
    assert torch.equal(ref_out.tokens, out.tokens) and torch.equal(ref_out.nfe, out.nfe)


def test_eos_fill_off_by_default_keeps_parity():
    m = model(seed=21, tail=(6, 16))
    p, _ = prompts(B=2, seed=22)
    cfg = dict(gen_length=16, block_length=8, steps=8)
    assert torch.equal(ours(m, p, **cfg).tokens, ref(m, p, **cfg))


# ------------------------------------------------------------------------------------------------------------
# the graph loop's logic, on CPU: eager stand-ins for the CUDA warm-up and capture
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", [prr_ext.LowConfidence(), prr_ext.Threshold(0.5), prr_ext.EntropyBound(0.3)])
def test_graph_loop_logic_on_cpu(policy, monkeypatch):
    """cuda_graph=True runs one eager step, a warm-up step, then blocks of steps_per_block steps until every row
    is done, with no host-side decisions inside a block: steps past a row's (or the batch's) end commit nothing and
    charge no NFE. With capture = "return the function" this is exactly what the replays execute."""
    gen = importlib.import_module("prr_ext.generate")
    monkeypatch.setattr(gen, "GRAPH_IMPL", gen.GraphImpl(warmup=lambda fn: fn(), capture=lambda fn: fn,
                                                         needs_cuda=False))
    m = model(seed=21, tail=(6, 20))
    p, am = prompts(B=3, seed=21, pad_left=(0, 1, 2))
    for extra in (dict(), dict(cfg_scale=1.0), dict(eos_fill=True), dict(confidence_eos_eot_inf=True),
                  dict(temperature=0.8)):
        cfg = dict(gen_length=32, block_length=8, steps=16, policy=policy, attention_mask=am,
                   seed=torch.tensor([1, 2, 3]), **extra)
        eager = ours(m, p, **cfg)
        m.calls = 0
        graph = ours(m, p, cuda_graph=True, **cfg)
        assert torch.equal(eager.tokens, graph.tokens) and torch.equal(eager.nfe, graph.nfe), extra
        S = 16 // 4
        assert m.calls == graph.forwards >= eager.forwards and (graph.forwards - 2) % S == 0
        assert graph.forwards - eager.forwards < S


# ------------------------------------------------------------------------------------------------------------
# argument checks
# ------------------------------------------------------------------------------------------------------------
def test_argument_errors():
    m = model()
    p, _ = prompts()
    with pytest.raises(ValueError, match="divisible"):
        ours(m, p, gen_length=16, block_length=8, steps=7)
    with pytest.raises(ValueError, match="cuda_graph"):
        ours(m, p, gen_length=8, steps=8, cuda_graph=True)
    with pytest.raises(ValueError, match="backend"):
        ours(m, p, gen_length=8, steps=8, backend="numpy")
    with pytest.raises(ValueError, match="dream"):
        ours(m, p, gen_length=8, steps=8, top_p=0.9)
    with pytest.raises(TypeError, match="logits"):
        ours(lambda x: "nope", p, gen_length=8, steps=8)
    with pytest.raises(TypeError, match=r"the model returned torch\.int64 logits; it must return floating-point"):
        ours(lambda x: torch.randint(0, 5, (*x.shape, V)), p, gen_length=8, steps=8)


class CountingModel:
    """The test model, counting its calls."""

    def __init__(self):
        self.model, self.calls = model(), 0

    def __call__(self, x, **kw):
        self.calls += 1
        return self.model(x, **kw)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(steps=0), ValueError, r"steps must be a positive int"),
    (dict(block_length=3), ValueError, r"block_length=3 must divide the generation length G=8"),
    (dict(block_length=0), ValueError, r"block_length must be a positive int, got 0"),  # not read as "no blocks"
    (dict(temperature=-1.0), ValueError, r"temperature must be a finite number >= 0"),
    (dict(rng="numpy"), ValueError, r"rng must be one of"),
    (dict(confidence_dtype=torch.int32), ValueError, r"confidence_dtype must be one of"),
    (dict(policy="threshold"), TypeError, r"policy must be a prr_ext policy \(e\.g\. prr_ext\.Threshold\(0\.9\)\), "
                                          r"got 'threshold'"),
    (dict(policy=prr_ext.Threshold), TypeError, r"policy must be a prr_ext policy"),  # the class, not an instance
    (dict(cfg_scale="x"), TypeError, r"cfg_scale must be a number, got 'x'"),
    (dict(attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])), ValueError,
     r"attention_mask must be a left-padded 0/1 mask .* tokenizer\.padding_side = 'left'"),  # right padding
    (dict(attention_mask=torch.full((2, 6), 2)), ValueError, r"attention_mask must be a left-padded 0/1 mask"),
])
def test_argument_errors_before_the_first_forward(kw, exc, match):
    """A bad option raises before the model runs (an 8B forward is not the price of a typo), naming the option."""
    m = CountingModel()
    p, _ = prompts()
    with pytest.raises(exc, match=match):
        ours(m, p, **dict(dict(gen_length=8, steps=8), **kw))
    assert m.calls == 0
    ours(m, p, gen_length=8, steps=8)  # the same call without the bad option runs
    assert m.calls > 0


# ------------------------------------------------------------------------------------------------------------
# CUDA (skip without a GPU / without the CUDA kernels)
# ------------------------------------------------------------------------------------------------------------
needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and prr_ext.has_cuda_kernels()),
                                reason="needs a CUDA GPU and prr_ext's CUDA kernels")


def _cuda_model(dtype, seed=30, tail=None):
    return tiny_lm(vocab_size=V, mask_id=MASK, dtype=dtype, seed=seed, logit_scale=6.0,
                   tail_bias=eos_tail(*tail) if tail else None).cuda()


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_llada_parity(dtype):
    """On CUDA torch.topk breaks ties by the lowest index: parity with the faithful reference even with bf16."""
    m = _cuda_model(dtype)
    p, am = prompts(B=3, seed=30, pad_left=(2, 0, 1))
    p, am = p.cuda(), am.cuda()
    for cfg in CONFIGS[:2]:
        want = ref(m, p, attention_mask=am, **cfg)
        assert torch.equal(ours(m, p, attention_mask=am, **cfg).tokens, want)
        want = ref(m, p, seed=4, attention_mask=am, temperature=0.7, **cfg)
        torch.manual_seed(4)  # generator=None: the default CUDA generator, as LLaDA's rand_like
        got = ours(m, p, attention_mask=am, temperature=0.7, rng="torch", **cfg)
        assert torch.equal(got.tokens, want)
        want = ref(m, p, attention_mask=am, fp64=True, cfg_scale=1.0, **cfg)
        got = ours(m, p, attention_mask=am, confidence_dtype=torch.float64, cfg_scale=1.0, **cfg)
        assert torch.equal(got.tokens, want)


@needs_cuda
@pytest.mark.parametrize("T", [0.0, 0.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_eos_flags_parity(T, dtype):
    """The EOS/EoT flags against the faithful reference (CUDA topk: lowest-index ties, so zero confidences too)."""
    m = _cuda_model(dtype, seed=15, tail=(6, 16))
    p, am = prompts(B=2, seed=15, pad_left=(0, 2))
    p, am = p.cuda(), am.cuda()
    cfg = dict(gen_length=16, block_length=8, steps=8, temperature=T)
    for flags in (dict(confidence_eos_eot_inf=True), dict(logits_eos_inf=True),
                  dict(confidence_eos_eot_inf=True, logits_eos_inf=True)):
        want = ref(m, p, seed=9, attention_mask=am, **flags, **cfg)
        torch.manual_seed(9)
        got = ours(m, p, attention_mask=am, rng="torch", **flags, **cfg)
        assert torch.equal(got.tokens, want), flags


@needs_cuda
@pytest.mark.parametrize("policy", [prr_ext.LowConfidence(), prr_ext.Threshold(0.5), prr_ext.EntropyBound(0.3)])
@pytest.mark.parametrize("T", [0.0, 0.8])
def test_cuda_graph_matches_eager(policy, T):
    m = _cuda_model(torch.bfloat16, seed=31, tail=(6, 32))
    p, am = prompts(B=4, seed=31, pad_left=(2, 0, 1, 3))
    p, am = p.cuda(), am.cuda()
    for extra in (dict(), dict(cfg_scale=1.0), dict(eos_fill=True), dict(confidence_eos_eot_inf=True)):
        cfg = dict(gen_length=32, block_length=8, steps=16, policy=policy, temperature=T, attention_mask=am,
                   seed=torch.tensor([1, 2, 3, 4], device="cuda"), **extra)
        eager = ours(m, p, **cfg)
        graph = ours(m, p, cuda_graph=True, **cfg)
        assert torch.equal(eager.tokens, graph.tokens), extra
        assert torch.equal(eager.nfe, graph.nfe), extra
        if isinstance(policy, prr_ext.LowConfidence) and not extra.get("eos_fill"):
            assert graph.nfe.tolist() == [16] * 4


@needs_cuda
def test_cuda_matches_reference_backend():
    """The CUDA op and the pure-PyTorch reference step on the same CUDA logits."""
    m = _cuda_model(torch.float32, seed=32)
    p, _ = prompts(B=2, seed=32)
    p = p.cuda()
    for pol in (prr_ext.LowConfidence(), prr_ext.Threshold(0.5)):
        cfg = dict(gen_length=16, block_length=8, steps=8, policy=pol, temperature=0.7,
                   seed=torch.tensor([1, 2], device="cuda"))
        assert torch.equal(ours(m, p, **cfg).tokens, ours(m, p, backend="reference", **cfg).tokens)
