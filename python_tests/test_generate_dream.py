"""prr_ext.generate(style="dream") against a faithful re-implementation of Dream's `_sample`
(python_tests/dream_reference.py), on tiny random-weight bidirectional transformers (CPU)."""
from __future__ import annotations

import collections
import os
import sys
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import prr_ext  # noqa: E402
from prr_ext.generate import generate  # noqa: E402
from dream_reference import dream_sample, dream_schedule  # noqa: E402
from tiny_models import DeclaredIdsLM, LMOutput, tiny_lm  # noqa: E402

V, MASK = 96, 95
ALGS = ["origin", "maskgit_plus", "topk_margin", "entropy"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: threads only add overhead (and make CPU timing noisy)
    yield
    torch.set_num_threads(n)


_MODELS = {}


def model(dtype=torch.float32, seed=0):
    key = (dtype, seed)
    if key not in _MODELS:
        _MODELS[key] = tiny_lm(vocab_size=V, mask_id=MASK, dtype=dtype, seed=seed, logit_scale=4.0)
    return _MODELS[key]


def prompts(B=2, P=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, MASK - 1, (B, P), generator=g)


def run_both(m, p, G, steps, rng_seed=0, attention_mask=None, **kw):
    torch.manual_seed(rng_seed)
    ref = dream_sample(m, p, attention_mask, max_length=p.shape[1] + G, mask_token_id=MASK, steps=steps, **kw)
    torch.manual_seed(rng_seed)  # generator=None: the global generator, as Dream uses it
    out = generate(m, p, gen_length=G, steps=steps, style="dream", mask_id=MASK, attention_mask=attention_mask,
                   **kw)
    return ref, out


# --------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("alg", ALGS)
def test_greedy_parity(alg, dtype):
    m, p = model(dtype), prompts(B=3)
    for G, steps in ((16, 16), (16, 8), (12, 5)):
        ref, out = run_both(m, p, G, steps, alg=alg)
        assert torch.equal(out.tokens, ref), (alg, dtype, G, steps)
        assert out.nfe.tolist() == [steps] * 3
        assert not (out.generated == MASK).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("alg", ALGS)
def test_sampling_parity_global_rng(alg, dtype):
    m, p = model(dtype, seed=1), prompts(B=2, seed=1)
    for kw in (dict(temperature=0.7), dict(temperature=1.0, top_p=0.9), dict(temperature=0.5, top_k=5)):
        ref, out = run_both(m, p, 16, 8, rng_seed=3, alg=alg, **kw)
        assert torch.equal(out.tokens, ref), (alg, dtype, kw)


@pytest.mark.parametrize("alg", ALGS)
def test_sampling_parity_with_generator(alg):
    """With generator=, the same draws come from the generator instead of the global one."""
    m, p = model(torch.bfloat16, seed=2), prompts(B=2, seed=2)
    torch.manual_seed(11)
    ref = dream_sample(m, p, max_length=22, mask_token_id=MASK, steps=8, alg=alg, temperature=0.8, top_p=0.95)
    torch.manual_seed(12345)  # the global stream must not matter
    out = generate(m, p, gen_length=16, steps=8, style="dream", mask_id=MASK, alg=alg, temperature=0.8, top_p=0.95,
                   generator=torch.Generator().manual_seed(11))
    assert torch.equal(out.tokens, ref)


@pytest.mark.parametrize("alg", ["maskgit_plus", "entropy"])
def test_alg_temp_parity(alg):
    m, p = model(), prompts(B=2, seed=4)
    ref, out = run_both(m, p, 16, 8, rng_seed=5, alg=alg, alg_temp=0.5)
    assert torch.equal(out.tokens, ref)
    ref, out = run_both(m, p, 16, 8, rng_seed=5, alg=alg, alg_temp=0.3, temperature=0.6)
    assert torch.equal(out.tokens, ref)


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy", "origin"])
def test_left_padding_parity(alg):
    """Dream's padded path: [B, 1, N, N] boolean mask and cumulative position ids (pads -> 1)."""
    m = model(torch.bfloat16, seed=3)
    p = prompts(B=3, P=7, seed=3)
    am = torch.ones_like(p)
    am[0, :3] = 0
    am[2, :1] = 0
    p[am == 0] = 90  # pad id
    for T in (0.0, 0.9):
        ref, out = run_both(m, p, 12, 6, rng_seed=7, attention_mask=am, alg=alg, temperature=T)
        assert torch.equal(out.tokens, ref), (alg, T)


def test_hooks_parity():
    """Dream's logits / tokens hooks (here: forbid token 7, pin the first generated token)."""
    m, p = model(), prompts(B=2, seed=5)

    def lh(i, x, logits):
        logits = logits.clone()
        logits[..., 7] = -1e4
        return logits

    def th(i, x, logits):
        x = x.clone()
        x[:, 6] = 3
        return x

    torch.manual_seed(0)
    ref = dream_sample(m, p, max_length=22, mask_token_id=MASK, steps=8, alg="entropy",
                       generation_logits_hook_func=lh, generation_tokens_hook_func=th)
    out = generate(m, p, gen_length=16, steps=8, style="dream", mask_id=MASK, alg="entropy", logits_hook=lh,
                   tokens_hook=th)
    assert torch.equal(out.tokens, ref)
    assert (out.generated[:, 0] == 3).all() and not (out.generated == 7).any()


def test_tensor_returning_model():
    m = tiny_lm(vocab_size=V, mask_id=MASK, seed=0, logit_scale=4.0)
    mt = tiny_lm(vocab_size=V, mask_id=MASK, seed=0, logit_scale=4.0, hf_output=False)
    p = prompts()
    a = generate(m, p, gen_length=8, steps=4, style="dream", mask_id=MASK, alg="maskgit_plus")
    b = generate(mt, p, gen_length=8, steps=4, style="dream", mask_id=MASK, alg="maskgit_plus")
    assert torch.equal(a.tokens, b.tokens)


# --------------------------------------------------------------------------------------------- traps
def test_schedule_quirks():
    """Dream's float32 count k = int(n (1 - s / t)), per step: e.g. with steps == n one step commits none and one
    commits two."""
    cases = {(256, 256): {0: 1, 1: 254, 2: 1}, (256, 128): {1: 1, 2: 126, 3: 1}, (256, 64): {3: 1, 4: 62, 5: 1}}
    for (n, steps), hist in cases.items():
        ks = dream_schedule(n, steps)
        assert dict(collections.Counter(ks)) == hist, (n, steps)
        assert sum(ks) == n


def test_loop_follows_schedule():
    """Per-step commit counts of the loop: 0 at step 0 and 2 at the end with steps == gen_length."""
    m, p = model(), prompts(B=2)
    G = 32
    counts = []

    def th(i, x, logits):
        counts.append(int((x[:, p.shape[1]:] != MASK).sum()) // 2)
        return x

    generate(m, p, gen_length=G, steps=G, style="dream", mask_id=MASK, alg="maskgit_plus", tokens_hook=th)
    per_step = [b - a for a, b in zip(counts, counts[1:])]
    assert counts[0] == 0 and per_step == dream_schedule(G, G)
    assert per_step[0] == 0 and per_step[-1] == 2


class FixedLogits(torch.nn.Module):
    """A 'model' returning fixed logits rows (independent of the input)."""

    def __init__(self, rows):
        super().__init__()
        self.rows = rows  # [L, V]

    def forward(self, x, attention_mask=None, position_ids=None):
        return self.rows[None].expand(x.shape[0], -1, -1).clone()


def test_logit_right_shift():
    """Position j is decoded from the logits of position j - 1."""
    L, P = 14, 4
    rows = torch.full((L, V), -5.0)
    rows[torch.arange(L), torch.arange(L) + 10] = 5.0  # position j predicts token j + 10
    out = generate(FixedLogits(rows), torch.zeros(1, P, dtype=torch.int64), gen_length=L - P, steps=5,
                   style="dream", mask_id=MASK, alg="maskgit_plus")
    assert out.generated[0].tolist() == [j - 1 + 10 for j in range(P, L)]


def test_argmax_over_bf16_probabilities():
    """Dream takes the argmax of the bf16 probabilities: when two tokens' distinct bf16 logits round to the same
    bf16 probability, the lower index wins even though its logit is smaller (trap 1)."""
    base = torch.full((V,), -8.0, dtype=torch.bfloat16)  # two tokens hold ~49% each
    found = None
    for a in torch.arange(0.25, 0.5, 2 ** -9):
        lo = torch.tensor(float(a), dtype=torch.bfloat16)
        hi = (lo.float() + 2 ** -9).to(torch.bfloat16)  # the next bf16 value
        row = base.clone()
        row[3], row[8] = lo, hi  # higher logit at the higher index
        pr = torch.softmax(row, -1)
        if pr[3] == pr[8]:
            found = row
            break
    assert found is not None, "no bf16 probability tie found"
    assert int(found.argmax()) == 8 and int(torch.softmax(found, -1).argmax()) == 3
    P, G = 2, 2
    rows = found[None].repeat(P + G, 1)
    out = generate(FixedLogits(rows), torch.zeros(1, P, dtype=torch.int64), gen_length=G, steps=2, style="dream",
                   mask_id=MASK, alg="maskgit_plus")
    assert out.generated[0].tolist() == [3, 3]
    # LLaDA-style decoding of the same logits takes the logits' argmax
    out = generate(FixedLogits(rows), torch.zeros(1, P, dtype=torch.int64), gen_length=G, steps=2, mask_id=MASK)
    assert out.generated[0].tolist() == [8, 8]


def test_batch_average_count_overwrites_committed_tokens():
    """Trap 4: k comes from the batch-average mask count; a row with fewer masks than k has -inf slots selected
    and mask_id written over committed tokens. The loop reproduces it (here via a tokens hook that pre-fills one
    row)."""
    m, p = model(), prompts(B=2, seed=8)

    def th(i, x, logits):
        if i is None:
            x = x.clone()
            x[0, p.shape[1]:p.shape[1] + 6] = 5
        return x

    torch.manual_seed(0)
    ref = dream_sample(m, p, max_length=p.shape[1] + 8, mask_token_id=MASK, steps=2, alg="maskgit_plus",
                       generation_tokens_hook_func=th)
    out = generate(m, p, gen_length=8, steps=2, style="dream", mask_id=MASK, alg="maskgit_plus", tokens_hook=th)
    assert torch.equal(out.tokens, ref)
    assert (out.generated == MASK).any()  # the quirk did happen: masks written back / left over


# --------------------------------------------------------------------------------------------- token ids
def _initial_canvas(m, p, **kw):
    """(the canvas the loop starts from, the result): a tokens hook sees x before the first step (i = None)."""
    seen = []

    def th(i, x, logits):
        if i is None:
            seen.append(x.clone())
        return x

    out = generate(m, p, gen_length=8, steps=4, style="dream", alg="maskgit_plus", tokens_hook=th, **kw)
    return seen[0], out


def test_mask_id_from_model():
    """mask_id=None: model.config.mask_token_id, else model.tokenizer.mask_token_id; an explicit id wins."""
    m, p = model(), prompts(B=2)
    x0, want = _initial_canvas(m, p, mask_id=MASK)
    for kw in (dict(config=SimpleNamespace(mask_token_id=MASK, vocab_size=V)),
               dict(tokenizer=SimpleNamespace(mask_token_id=MASK)),
               dict(config=SimpleNamespace(mask_token_id=MASK), tokenizer=SimpleNamespace(mask_token_id=3)),
               dict(config=SimpleNamespace(mask_token_id=None), tokenizer=SimpleNamespace(mask_token_id=MASK))):
        x, got = _initial_canvas(DeclaredIdsLM(m, **kw), p)
        assert torch.equal(x, x0) and torch.equal(got.tokens, want.tokens), kw
    dm = DeclaredIdsLM(m, config=SimpleNamespace(mask_token_id=3), tokenizer=SimpleNamespace(mask_token_id=4))
    x, got = _initial_canvas(dm, p, mask_id=MASK)
    assert torch.equal(x, x0) and torch.equal(got.tokens, want.tokens)
    x, _ = _initial_canvas(dm, p)
    assert (x[:, p.shape[1]:] == 3).all()  # without it, the config's


def test_mask_id_outside_vocabulary():
    m, p = model(), prompts()
    m.calls = 0
    with pytest.raises(ValueError, match=r"mask_id=151666 \(Dream's mask id.*model.config.vocab_size = 96"):
        generate(DeclaredIdsLM(m, config=SimpleNamespace(vocab_size=V)), p, gen_length=8, steps=4, style="dream")
    assert m.calls == 0  # checked before the model sees the id
    with pytest.raises(ValueError, match="mask_id=151666") as info:  # no declared vocabulary: the IndexError
        generate(m, p, gen_length=8, steps=4, style="dream")
    assert isinstance(info.value.__cause__, IndexError)
    with pytest.raises(ValueError, match=r"mask_id=96 \(passed as mask_id=\).*logits' last dimension V = 96"):
        generate(FixedLogits(torch.zeros(p.shape[1] + 8, V)), p, gen_length=8, steps=4, style="dream", mask_id=V)
    with pytest.raises(ValueError, match="mask_id"):
        generate(m, p, gen_length=8, steps=4, style="dream", mask_id=-3)


def test_argument_errors():
    m, p = model(), prompts()
    with pytest.raises(ValueError, match="alg"):
        generate(m, p, gen_length=8, steps=4, style="dream", mask_id=MASK, alg="nope")
    with pytest.raises(ValueError, match="policy"):
        generate(m, p, gen_length=8, steps=4, style="dream", mask_id=MASK, policy=prr_ext.LowConfidence())
    with pytest.raises(ValueError, match="blocks"):
        generate(m, p, gen_length=8, block_length=4, steps=4, style="dream", mask_id=MASK)
    with pytest.raises(ValueError, match="style"):
        generate(m, p, gen_length=8, steps=4, style="mdlm", mask_id=MASK)
    with pytest.raises(ValueError, match="steps must be a positive int, got True"):  # not a step count of 1
        generate(m, p, gen_length=8, steps=True, style="dream", mask_id=MASK)


# --------------------------------------------------------------------------------------------- input checks
class EditedLogits(torch.nn.Module):
    """The tiny model with its logits edited by `edit(call, logits)` (call: 0 for the first forward); returns
    `.logits` (HF style) when the edit keeps a tensor, for the reference's `model(...).logits`."""

    def __init__(self, inner, edit):
        super().__init__()
        self.inner, self.edit, self.calls = inner, edit, 0

    def forward(self, x, attention_mask=None, position_ids=None):
        out = self.edit(self.calls, self.inner(x, attention_mask, position_ids).logits.clone())
        self.calls += 1
        return LMOutput(out) if isinstance(out, torch.Tensor) else out


@pytest.mark.parametrize("bad", ["rank2", "batch+1", "batch-1", "length+5", "length-1", "rank4"])
def test_logits_shape_is_checked(bad):
    """The model's logits must be [B, P + G, V]: anything else is a ValueError naming the shape (misaligned logits
    used to be committed silently)."""
    m, p = model(), prompts(B=2)
    N = p.shape[1] + 8
    edits = {"rank2": lambda lg: lg[:, 0], "batch+1": lambda lg: torch.cat([lg, lg[:1]]),
             "batch-1": lambda lg: lg[:1], "length+5": lambda lg: torch.cat([lg, lg[:, :5]], 1),
             "length-1": lambda lg: lg[:, 1:], "rank4": lambda lg: lg[None]}
    wrapped = EditedLogits(m, lambda call, lg: edits[bad](lg))
    with pytest.raises(ValueError, match=rf"the model returned logits of shape .*; expected \[2, {N}, V\]"):
        generate(wrapped, p, gen_length=8, steps=4, style="dream", mask_id=MASK, alg="maskgit_plus")
    assert wrapped.calls == 1  # at the first forward, before anything is committed


def test_logits_shape_checked_at_every_step():
    """A later forward with another shape (here: another vocabulary size) is refused too."""
    m, p = model(), prompts(B=2)
    wrapped = EditedLogits(m, lambda call, lg: lg if call < 2 else lg[..., :-1])
    with pytest.raises(ValueError, match=rf"shape \(2, 14, {V - 1}\); expected \[2, 14, {V}\]"):
        generate(wrapped, p, gen_length=8, steps=4, style="dream", mask_id=MASK - 1, alg="entropy")
    assert wrapped.calls == 3


def test_logits_hook_output_is_checked():
    m, p = model(), prompts(B=2)
    with pytest.raises(ValueError, match=r"logits_hook returned logits of shape \(2, 13, 96\); expected \[2, 14, 96\]"):
        generate(m, p, gen_length=8, steps=4, style="dream", mask_id=MASK, logits_hook=lambda i, x, lg: lg[:, 1:])
    with pytest.raises(TypeError, match="logits_hook returned int64 logits"):
        generate(m, p, gen_length=8, steps=4, style="dream", mask_id=MASK,
                 logits_hook=lambda i, x, lg: lg.argmax(-1, keepdim=True).expand_as(lg).contiguous())
    with pytest.raises(TypeError, match="logits_hook must return the logits as a tensor"):
        generate(m, p, gen_length=8, steps=4, style="dream", mask_id=MASK, logits_hook=lambda i, x, lg: None)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_non_float_logits_are_refused(dtype):
    """Integer (or bool, complex) logits: a TypeError naming the dtype, not torch's softmax error."""
    p = prompts(B=2)
    calls = []

    def int_model(x, **kw):
        calls.append(1)
        return torch.randint(0, 5, (x.shape[0], x.shape[1], V)).to(dtype)

    name = str(dtype).replace("torch.", "")
    # the dtype check may come from decode_common.logits_of (shared with style="llada") or from dream.check_logits
    with pytest.raises(TypeError, match=rf"the model returned (torch\.)?{name} logits; .* floating-point logits"):
        generate(int_model, p, gen_length=8, steps=4, style="dream", mask_id=MASK)
    assert len(calls) == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_other_float_logits_keep_parity(dtype):
    """Every floating-point dtype is accepted, and decoded exactly as Dream's `_sample` decodes it."""
    m, p = model(), prompts(B=2, seed=6)
    wrapped = EditedLogits(m, lambda call, lg: lg.to(dtype))
    for alg in ALGS:
        ref, out = run_both(wrapped, p, 12, 6, rng_seed=2, alg=alg, temperature=0.7)
        assert torch.equal(out.tokens, ref), (alg, dtype)


def test_upstream_commits_token_zero_on_nan_logits():
    """What Dream's own `_sample` does with NaN logits (the reference copy): every position becomes token 0. This is
    the behaviour style='dream' refuses to reproduce (next test)."""
    p = prompts(B=2)
    nan_model = EditedLogits(model(), lambda call, lg: torch.full_like(lg, float("nan")))
    for alg in ALGS:
        ref = dream_sample(nan_model, p, max_length=p.shape[1] + 8, mask_token_id=MASK, steps=8, alg=alg)
        assert (ref[:, p.shape[1]:] == 0).all(), alg


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize("kind", ["nan", "plus_inf", "all_minus_inf"])
def test_non_finite_logits_raise(kind, temperature, alg):
    """A masked position whose logits row holds NaN or +Inf, or only -Inf, is a ValueError naming the step and the
    position (Dream would commit token 0 there); the error comes at the step where such a row first appears."""
    m, p = model(), prompts(B=2)
    P = p.shape[1]

    def edit(call, lg):
        if call == 1:  # second forward; row P + 2 predicts canvas position P + 3 (right shift)
            lg[1, P + 2] = {"nan": lg[1, P + 2].masked_fill(torch.arange(V) == 17, float("nan")),
                            "plus_inf": lg[1, P + 2].masked_fill(torch.arange(V) == 17, float("inf")),
                            "all_minus_inf": torch.full((V,), -float("inf"))}[kind]
        return lg

    wrapped = EditedLogits(m, edit)
    # gen_length 8, steps 8: step 0 commits nothing (Dream's schedule; "origin" commits ~1/8 of the positions at
    # random: with this seed not P + 3), so position P + 3 is still masked at step 1
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=rf"the model's logits hold NaN or \+Inf \(or only -Inf\) for 1 of the "
                                         rf"1[0-6] masked positions at step 1 \(first: batch row 1, canvas position "
                                         rf"{P + 3}\)"):
        generate(wrapped, p, gen_length=8, steps=8, style="dream", mask_id=MASK, alg=alg, temperature=temperature)
    assert wrapped.calls == 2


def test_non_finite_logits_after_hook_raise():
    m, p = model(), prompts(B=2)

    def force(i, x, lg):
        lg = lg.clone()
        lg[..., 5] = float("inf")  # "force token 5": Dream would commit token 0
        return lg

    with pytest.raises(ValueError, match=r"logits \(after logits_hook\) hold NaN.*at step 0.*and the logits_hook"):
        generate(m, p, gen_length=8, steps=4, style="dream", mask_id=MASK, logits_hook=force)


def test_unused_or_minus_inf_logits_keep_parity():
    """Only the rows Dream reads are checked: NaN in rows no masked position reads (the prompt's, but its last;
    the canvas' last row, which the right shift drops) changes nothing, and -Inf entries (a hook forbidding
    tokens) are ordinary zero-probability tokens: parity with `_sample` as before."""
    p = prompts(B=2, seed=9)
    P = p.shape[1]

    def edit(call, lg):
        lg[:, :P - 1] = float("nan")
        lg[:, -1] = float("inf")
        return lg

    wrapped = EditedLogits(model(), edit)

    def forbid(i, x, lg):
        lg = lg.clone()
        lg[..., 7] = -float("inf")
        lg[..., :3] = -float("inf")
        return lg

    for alg in ALGS:
        for T in (0.0, 0.9):
            ref, out = run_both(wrapped, p, 10, 5, rng_seed=4, alg=alg, temperature=T)
            assert torch.equal(out.tokens, ref), (alg, T)
            torch.manual_seed(4)
            ref = dream_sample(model(), p, max_length=P + 10, mask_token_id=MASK, steps=5, alg=alg, temperature=T,
                               generation_logits_hook_func=forbid)
            torch.manual_seed(4)
            out = generate(model(), p, gen_length=10, steps=5, style="dream", mask_id=MASK, alg=alg, temperature=T,
                           logits_hook=forbid)
            assert torch.equal(out.tokens, ref), (alg, T)
            assert not ((out.generated == 7) | (out.generated < 3)).any()


def test_temperature_overflow_raises():
    """Finite logits that `logits / temperature` turns infinite: Dream would commit token 0 too; a ValueError names
    temperature."""
    P, G = 2, 4
    rows = torch.zeros(P + G, V)
    rows[:, 10] = 100.0
    with pytest.raises(ValueError, match=r"temperature=1e-37 overflows the model's logits \(float32\)"):
        generate(FixedLogits(rows), torch.zeros(1, P, dtype=torch.int64), gen_length=G, steps=2, style="dream",
                 mask_id=MASK, alg="maskgit_plus", temperature=1e-37)
    out = generate(FixedLogits(rows), torch.zeros(1, P, dtype=torch.int64), gen_length=G, steps=2, style="dream",
                   mask_id=MASK, alg="maskgit_plus", temperature=1e-30)  # 1e32: finite
    assert out.generated[0].tolist() == [10] * G


@pytest.mark.parametrize("kw, name", [
    (dict(top_k=0), "top_k"), (dict(top_k=-3), "top_k"), (dict(top_k=2.5), "top_k"), (dict(top_k=True), "top_k"),
    (dict(top_k="5"), "top_k"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=-1.0), "top_p"), (dict(top_p=2.0), "top_p"),
    (dict(top_p=float("nan")), "top_p"), (dict(top_p="0.9"), "top_p"), (dict(top_p=True), "top_p"),
    (dict(eps=0.0), "eps"), (dict(eps=1.0), "eps"), (dict(eps=-1.0), "eps"), (dict(eps=2.0), "eps"),
    (dict(eps=float("nan")), "eps"), (dict(eps=None), "eps"),
    (dict(alg_temp=-1.0), "alg_temp"), (dict(alg_temp=float("inf")), "alg_temp"),
    (dict(alg_temp=float("nan")), "alg_temp"), (dict(alg_temp="0.5"), "alg_temp"),
    (dict(temperature=None), "temperature"), (dict(temperature="hot"), "temperature"),
])
def test_sampling_argument_errors(kw, name):
    """Dream's sampling options are checked before the model runs; the error names the argument."""
    m, p = model(), prompts()
    m.calls = 0
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        generate(m, p, gen_length=8, steps=4, style="dream", mask_id=MASK, alg="maskgit_plus", **kw)
    assert m.calls == 0


def test_sampling_argument_edge_values_keep_parity():
    """The limits of the accepted ranges (and integer types besides int) decode exactly as Dream does."""
    np = pytest.importorskip("numpy")
    m, p = model(seed=1), prompts(B=2, seed=7)
    for alg, kw in (("maskgit_plus", dict(temperature=0.8, top_p=1.0)),
                    ("entropy", dict(temperature=0.8, top_k=V + 10)),
                    ("topk_margin", dict(temperature=0.8, top_k=1)),
                    ("maskgit_plus", dict(alg_temp=0.0, eps=0.5)),
                    ("origin", dict(temperature=0.6, top_k=np.int64(4), top_p=np.float32(0.8), eps=0.999))):
        ref_kw = {k: (int(v) if k == "top_k" else v) for k, v in kw.items()}
        torch.manual_seed(1)
        ref = dream_sample(m, p, max_length=p.shape[1] + 12, mask_token_id=MASK, steps=6, alg=alg, **ref_kw)
        torch.manual_seed(1)
        out = generate(m, p, gen_length=12, steps=6, style="dream", mask_id=MASK, alg=alg, **kw)
        assert torch.equal(out.tokens, ref), (alg, kw)
