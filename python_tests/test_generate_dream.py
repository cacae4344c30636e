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
from tiny_models import DeclaredIdsLM, tiny_lm  # noqa: E402

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
