"""prr_ext inside transformers' DiffusionGemma generate (prr_ext.integrations.diffusion_gemma).

A tiny random DiffusionGemmaForBlockDiffusion (built from its config on CPU, no downloads) runs transformers' real
generate loop. Checked: with EntropyBound(gamma) the PolicySampler accepts, keeps and renoises exactly what
transformers' EntropyBoundSampler does at every step (same seed, same draws, same sequences); Threshold, Factor,
LocalLeap and PRR run and follow their rule; a fresh State per canvas with the context length PRR's features need;
unsupported policies fail where they are set; prr_policy=None is upstream's generate, unchanged.
"""
from __future__ import annotations

import pytest
import torch

import prr_ext

transformers = pytest.importorskip("transformers")
generation = pytest.importorskip("transformers.models.diffusion_gemma.generation_diffusion_gemma")
dg = pytest.importorskip("prr_ext.integrations.diffusion_gemma")

V, C, N = 64, 8, 5  # vocabulary, canvas length, denoising steps per canvas


def tiny_model(seed: int = 0, init: float = 1.0):
    """A random DiffusionGemma small enough for a CPU test (a 2-layer MoE text model, a 1-layer vision tower).
    init=1.0 (not the default 0.02) spreads the logits, so that the tokens' entropies differ and the rules accept
    varying numbers of positions."""
    text = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16, global_head_dim=16, sliding_window=16,
                layer_types=["sliding_attention", "full_attention"], max_position_embeddings=256,
                num_experts=2, top_k_experts=1, moe_intermediate_size=16, initializer_range=init)
    vision = dict(model_type="gemma4_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=1, num_key_value_heads=1, head_dim=16)
    cfg = transformers.DiffusionGemmaConfig(text_config=text, vision_config=vision, canvas_length=C,
                                            boi_token_id=V - 4, eoi_token_id=V - 3, image_token_id=V - 2,
                                            initializer_range=init)
    torch.manual_seed(seed)
    return transformers.DiffusionGemmaForBlockDiffusion(cfg).eval()


class Recorder:
    """A sampler that delegates to another and records every step: (cur_step, current canvas, denoiser canvas,
    processed logits, accepted mask, accepted canvas, renoised canvas, the inner sampler's State or None)."""

    def __init__(self, inner):
        self.inner, self.steps = inner, []

    @property
    def accepted_token_mask(self):
        return self.inner.accepted_token_mask

    def initialize_canvas(self, batch_size, device):
        return self.inner.initialize_canvas(batch_size=batch_size, device=device)

    def accept_canvas(self, current, denoiser, logits, cur_step):
        accepted = self.inner.accept_canvas(current, denoiser, logits, cur_step)
        self.steps.append(dict(cur_step=int(cur_step), current=current.clone(), denoiser=denoiser.clone(),
                               logits=logits.clone(), mask=self.inner.accepted_token_mask.clone(),
                               accepted=accepted.clone(), state=getattr(self.inner, "state", None)))
        return accepted

    def renoise_canvas(self, accepted, cur_step):
        out = self.inner.renoise_canvas(accepted, cur_step)
        self.steps[-1]["renoised"] = out.clone()
        return out


def generate_recorded(model, input_ids, seed, **kwargs):
    """model.generate from torch seed `seed`, with its sampler wrapped in a Recorder; returns (output, recorder)."""
    made = []
    plain = model._prepare_sampler

    def prepare(generation_config):
        made.append(Recorder(plain(generation_config)))
        return made[-1]
    model._prepare_sampler = prepare  # an instance attribute: shadows the class's method for this call
    try:
        torch.manual_seed(seed)
        out = model.generate(input_ids, **kwargs)
    finally:
        del model._prepare_sampler
    assert len(made) == 1
    return out, made[0]


def prompt(rnd, B: int, P: int, padded: bool):
    ids = rnd.randint(3, V - 4, (B, P))  # no pad (0), eos (1), bos (2) or image tokens
    mask = torch.ones(B, P, dtype=torch.int64)
    if padded:  # left-pad the last row by two tokens
        ids[-1, :2], mask[-1, :2] = 0, 0
    return ids, mask


# ------------------------------------------------------------------ (1) EntropyBound == transformers' sampler

@pytest.mark.parametrize("gamma", [0.5, 2.0, 6.0])
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left_padded"])
def test_entropy_bound_equals_transformers_in_generate(rnd, gamma, padded):
    B, P, seed = 2, rnd.int(3, 7), rnd.int(0, 2 ** 31)
    ids, mask = prompt(rnd, B, P, padded)
    kw = dict(attention_mask=mask, max_new_tokens=3 * C, max_denoising_steps=N, eos_token_id=None)
    model = tiny_model(rnd.int(0, 1000))
    up, up_rec = generate_recorded(model, ids, seed,
                                   sampler_config=generation.EntropyBoundSamplerConfig(entropy_bound=gamma), **kw)
    dg.with_policy(model, prr_ext.EntropyBound(gamma=gamma))
    ours, our_rec = generate_recorded(model, ids, seed, **kw)
    assert type(up_rec.inner) is generation.EntropyBoundSampler and type(our_rec.inner) is dg.PolicySampler

    assert len(up_rec.steps) == len(our_rec.steps) > N  # several canvases
    for i, (a, b) in enumerate(zip(up_rec.steps, our_rec.steps)):
        # the same inputs (the previous steps agreed and the global RNG was consumed alike) ...
        assert torch.equal(a["current"], b["current"]) and torch.equal(a["denoiser"], b["denoiser"]), i
        assert torch.equal(a["logits"], b["logits"]), i
        # ... the same accept set, accepted canvas and renoised canvas
        assert torch.equal(a["mask"], b["mask"]), (i, a["mask"].int(), b["mask"].int())
        assert torch.equal(a["accepted"], b["accepted"]) and torch.equal(a["renoised"], b["renoised"]), i
    assert torch.equal(up.sequences, ours.sequences)
    assert torch.equal(up.tokens_per_forward, ours.tokens_per_forward)
    if gamma <= 3.0:  # the comparison covered steps that accepted more than the floor and less than everything
        # (so on this tiny model at gamma <= 3 in 40 of 40 seeds tried; 6.0 often accepts every position)
        counts = torch.stack([s["mask"].sum(1) for s in our_rec.steps])
        assert bool((counts > 1).any()) and bool((counts < C).any()), counts


def test_entropy_bound_comparison_detects_a_different_bound(rnd):
    """The comparison above can fail: another gamma gives other accept sets on the same run."""
    ids, mask = prompt(rnd, 2, 5, False)
    kw = dict(attention_mask=mask, max_new_tokens=2 * C, max_denoising_steps=N, eos_token_id=None)
    seed, model = rnd.int(0, 2 ** 31), tiny_model(rnd.int(0, 1000))
    _, up_rec = generate_recorded(model, ids, seed,
                                  sampler_config=generation.EntropyBoundSamplerConfig(entropy_bound=2.0), **kw)
    _, our_rec = generate_recorded(dg.with_policy(model, prr_ext.EntropyBound(gamma=8.0)), ids, seed, **kw)
    assert any(not torch.equal(a["mask"], b["mask"]) for a, b in zip(up_rec.steps, our_rec.steps))


# ------------------------------------------------------------------ (2) the other rules in a real generate

def _check_accept_step(s, B):
    """Invariants of every PolicySampler step: at least one accepted per row; accepted positions hold the denoiser's
    token, the others the current canvas's; renoising keeps the accepted ones."""
    m = s["mask"]
    assert m.shape == (B, C) and m.dtype == torch.bool
    assert bool((m.sum(1) >= 1).all())
    assert torch.equal(s["accepted"], torch.where(m, s["denoiser"], s["current"]))
    assert torch.equal(s["renoised"][m], s["accepted"][m])
    assert bool((s["renoised"] >= 0).all()) and bool((s["renoised"] < V).all())


@pytest.mark.parametrize("tau", [0.3, 0.9])
def test_threshold_in_generate(rnd, tau):
    B = 3
    ids, mask = prompt(rnd, B, 6, True)
    model = dg.with_policy(tiny_model(rnd.int(0, 1000)), prr_ext.Threshold(tau=tau))
    out, rec = generate_recorded(model, ids, rnd.int(0, 2 ** 31), attention_mask=mask, max_new_tokens=2 * C,
                                 max_denoising_steps=N, eos_token_id=None)
    assert out.sequences.shape == (B, 6 + 2 * C) and torch.equal(out.sequences[:, :6], ids)
    assert len(rec.steps) == 2 * N
    for s in rec.steps:
        _check_accept_step(s, B)
        # the rule: the sampled token's probability under the processed logits >= tau, else the most probable one
        p = torch.softmax(s["logits"].float(), -1).gather(-1, s["denoiser"][..., None])[..., 0]
        want = p >= tau
        top = torch.zeros_like(want).scatter_(1, p.argmax(1, keepdim=True), True)
        want = torch.where(want.any(1, keepdim=True), want, top)
        assert torch.equal(s["mask"], want), (s["mask"].int(), p)


@pytest.mark.parametrize("policy_name", ["prr", "prr_power", "factor", "local_leap"])
def test_other_rules_in_generate(rnd, policy_name):
    policy = {"prr": lambda: prr_ext.PRR(prr_ext.Controller.init(rnd.int(0, 1000)), tau=0.5),
              "prr_power": lambda: prr_ext.PRR(prr_ext.Controller.init(rnd.int(0, 1000)), tau=0.5, shaping="power",
                                               union_schedule=False),
              "factor": lambda: prr_ext.Factor(f=1.0),
              "local_leap": lambda: prr_ext.LocalLeap(tau=0.6, relaxed_tau=0.3, radius=2)}[policy_name]()
    B, P = 2, 5
    ids, mask = prompt(rnd, B, P, True)
    model = dg.with_policy(tiny_model(rnd.int(0, 1000)), policy)
    canvases = 3
    out, rec = generate_recorded(model, ids, rnd.int(0, 2 ** 31), attention_mask=mask, max_new_tokens=canvases * C,
                                 max_denoising_steps=N, eos_token_id=None)
    assert out.sequences.shape == (B, P + canvases * C) and torch.equal(out.sequences[:, :P], ids)
    assert bool((out.sequences >= 0).all()) and bool((out.sequences < V).all())
    assert len(rec.steps) == canvases * N
    for i, s in enumerate(rec.steps):
        _check_accept_step(s, B)
        k, st = divmod(i, N)
        assert s["cur_step"] == N - st
        # one State per canvas, fresh at its first step; its row length counts the tokens before the canvas
        # (the true prompt, left padding excluded, then the canvases decoded so far), as PRR's features expect
        assert s["state"] is rec.steps[k * N]["state"]
        if st == 0 and k:
            assert s["state"] is not rec.steps[(k - 1) * N]["state"]
        assert s["state"].gen_start == P + k * C and s["state"].gen_length == C
        assert torch.equal(s["state"].prompt_lens, mask.sum(1) + k * C)
    assert int(rec.steps[-1]["state"].nfe.min()) == N


def test_policy_sampler_on_its_own(rnd):
    """The sampler outside transformers' loop: context 0, the canvas's first step at cur_step == N, errors for a loop
    that does not count down, and a generator that leaves torch's global stream alone."""
    g = torch.Generator().manual_seed(rnd.int(0, 2 ** 31))
    sampler = dg.PolicySampler(prr_ext.Threshold(0.5), canvas_length=C, vocab_size=V, max_denoising_steps=2,
                               generator=g)
    with pytest.raises(RuntimeError, match="accept_canvas"):
        sampler.renoise_canvas(torch.zeros(1, C, dtype=torch.int64), 2)
    before = torch.random.get_rng_state()
    canvas = sampler.initialize_canvas(2, torch.device("cpu"))
    for cur_step in (2, 1):
        logits = rnd.randn(2, C, V, dtype=torch.float32) * 3
        accepted = sampler.accept_canvas(canvas, logits.argmax(-1), logits, torch.tensor(cur_step))
        assert sampler.state.gen_start == 0 and sampler.accepted_token_mask.shape == (2, C)
        canvas = sampler.renoise_canvas(accepted, cur_step)
    assert torch.equal(torch.random.get_rng_state(), before)
    with pytest.raises(RuntimeError, match="more than max_denoising_steps=2"):
        sampler.accept_canvas(canvas, canvas, logits, 1)
    first = sampler.state
    sampler.accept_canvas(canvas, canvas, logits, 2)  # the next canvas
    assert sampler.state is not first


def test_policy_sampler_checks_the_vocabulary(rnd):
    """Used on its own, the sampler refuses logits of another vocabulary (its noise would hold ids the model does not
    have) and candidates outside its vocabulary, before it builds a State."""
    sampler = dg.PolicySampler(prr_ext.Threshold(0.5), canvas_length=C, vocab_size=V, max_denoising_steps=N)
    canvas = sampler.initialize_canvas(2, torch.device("cpu"))
    for width in (V - 7, V + 6):
        logits = rnd.randn(2, C, width, dtype=torch.float32)
        with pytest.raises(ValueError, match=rf"logits have {width} entries per position .*vocab_size={V} ids"):
            sampler.accept_canvas(canvas, logits.argmax(-1), logits, N)
    logits = rnd.randn(2, C, V, dtype=torch.float32)
    for bad in (V, V + 100, -1):
        candidates = logits.argmax(-1)
        candidates[rnd.int(0, 1), rnd.int(0, C - 1)] = bad
        with pytest.raises(ValueError, match=rf"denoiser_canvas holds token ids outside \[0, vocab_size={V}\), "
                                             rf"e.g. {bad}:"):
            sampler.accept_canvas(canvas, candidates, logits, N)
    assert sampler.state is None and sampler.accepted_token_mask is None
    accepted = sampler.accept_canvas(canvas, logits.argmax(-1), logits, N)  # in range: accepted as before
    assert sampler.state is not None and accepted.shape == (2, C)


def test_generator_and_confidence_dtype_are_checked_where_set():
    """Like the policy, the sampler's generator and confidence dtype fail where they are set, not after the prompt's
    forwards; the values set reach the call's PolicySampler."""
    kw = dict(canvas_length=C, vocab_size=V, max_denoising_steps=N)
    with pytest.raises(ValueError, match=r"^confidence_dtype must be one of \[torch.float32.*got 'float32'"):
        dg.PolicySampler(prr_ext.Threshold(0.5), confidence_dtype="float32", **kw)
    with pytest.raises(TypeError, match="^generator must be a torch.Generator or None, got int"):
        dg.PolicySampler(prr_ext.Threshold(0.5), generator=5, **kw)
    model = dg.with_policy(tiny_model(), prr_ext.Threshold(0.5))
    with pytest.raises(TypeError, match="^prr_generator must be a torch.Generator or None, got int"):
        model.prr_generator = 5
    for bad in ("float32", torch.int32, [torch.float32]):
        with pytest.raises(ValueError, match="^prr_confidence_dtype must be one of"):
            model.prr_confidence_dtype = bad
    assert model.prr_generator is None and model.prr_confidence_dtype == torch.float32  # the refused values not kept
    g = torch.Generator().manual_seed(0)
    model.prr_generator, model.prr_confidence_dtype = g, torch.float64
    sampler = model._prepare_sampler(model.generation_config.__class__(max_denoising_steps=N))
    assert sampler.generator is g and sampler.confidence_dtype == torch.float64


def test_generate_refuses_unknown_prr_keywords():
    """transformers' generate takes unknown keywords silently; the wrapped model's generate refuses any prr_*
    keyword but prr_policy, before any forward, so a misspelt policy does not run the model's own."""
    model = dg.with_policy(tiny_model(), prr_ext.Threshold(0.5))

    def no_forward(*args, **kwargs):
        raise AssertionError("generate reached the model")
    model.forward = no_forward
    ids = torch.full((1, 3), 5, dtype=torch.int64)
    with pytest.raises(TypeError, match=r"unknown prr_ext keyword\(s\) \['prr_polcy'\]: the only one it takes is "
                                        "prr_policy"):
        model.generate(ids, prr_polcy=prr_ext.Threshold(0.9), max_new_tokens=C)
    with pytest.raises(TypeError, match=r"\['prr_confidence_dtype', 'prr_generator'\].*model.prr_generator = "):
        model.generate(ids, prr_generator=torch.Generator(), prr_confidence_dtype=torch.float64, max_new_tokens=C)
    assert model.prr_policy == prr_ext.Threshold(0.5) and model.prr_generator is None


# ------------------------------------------------------------------ (3) unsupported policies: errors at setup

UNSUPPORTED = [prr_ext.LowConfidence(), prr_ext.RandomRemask(), prr_ext.SlowFast(), prr_ext.KLASS(),
               prr_ext.R2(base=prr_ext.Threshold(0.9))]


@pytest.mark.parametrize("policy", UNSUPPORTED, ids=lambda p: type(p).__name__)
def test_unsupported_policy_fails_where_it_is_set(policy):
    model = tiny_model()
    cls = type(model)
    with pytest.raises(ValueError, match=r"policy=.*cannot drive DiffusionGemma.*EntropyBound"):
        dg.with_policy(model, policy)
    assert type(model) is cls  # checked before the model was touched
    model = dg.with_policy(model, None)
    with pytest.raises(ValueError, match=r"prr_policy=.*cannot drive DiffusionGemma.*uniform canvas"):
        model.prr_policy = policy
    assert model.prr_policy is None

    def no_forward(*args, **kwargs):
        raise AssertionError("generate reached the model")
    model.forward = no_forward
    with pytest.raises(ValueError, match="prr_policy"):
        model.generate(torch.ones(1, 3, dtype=torch.int64) * 5, prr_policy=policy, max_new_tokens=C)
    assert model.prr_policy is None
    with pytest.raises(ValueError, match="cannot drive DiffusionGemma"):
        dg.PolicySampler(policy, canvas_length=C, vocab_size=V, max_denoising_steps=N)
    with pytest.raises(ValueError, match="prr_policy"):
        dg.PolicyDiffusionGemma(model.config, prr_policy=policy)


@pytest.mark.parametrize("bad", ["threshold", 0.9, generation.EntropyBoundSamplerConfig(entropy_bound=0.1)],
                         ids=["str", "float", "EntropyBoundSamplerConfig"])
def test_non_policy_is_a_type_error(bad):
    model = dg.with_policy(tiny_model(), None)
    with pytest.raises(TypeError, match=r"prr_policy must be a prr_ext policy .*Threshold.*or None"):
        model.prr_policy = bad
    with pytest.raises(TypeError, match="model must be a transformers DiffusionGemmaForBlockDiffusion"):
        dg.with_policy(torch.nn.Linear(2, 2), prr_ext.Threshold(0.9))


def test_prr_controller_with_extra_features_is_refused():
    policy = prr_ext.PRR(prr_ext.Controller.init(0, extra_features=2), tau=0.9)
    with pytest.raises(ValueError, match="expects 2 extra features"):
        dg.with_policy(tiny_model(), policy)


# ------------------------------------------------------------------ (4) None: upstream unchanged

def test_none_policy_is_upstream(rnd):
    ids, mask = prompt(rnd, 2, 5, True)
    kw = dict(attention_mask=mask, max_new_tokens=2 * C, max_denoising_steps=N)
    seed, model = rnd.int(0, 2 ** 31), tiny_model(rnd.int(0, 1000))
    up, up_rec = generate_recorded(model, ids, seed, **kw)
    assert type(model) is transformers.DiffusionGemmaForBlockDiffusion

    dg.with_policy(model, None)
    assert isinstance(model, dg.PolicyDiffusionGemma) and model.prr_policy is None
    again, again_rec = generate_recorded(model, ids, seed, **kw)
    model.prr_policy = prr_ext.Threshold(0.5)
    per_call, per_call_rec = generate_recorded(model, ids, seed, prr_policy=None, **kw)
    assert model.prr_policy == prr_ext.Threshold(0.5)  # the per-call override did not stick
    for out, rec in ((again, again_rec), (per_call, per_call_rec)):
        assert type(rec.inner) is generation.EntropyBoundSampler
        assert torch.equal(out.sequences, up.sequences)
        assert torch.equal(out.tokens_per_forward, up.tokens_per_forward)
        assert len(rec.steps) == len(up_rec.steps)
        assert all(torch.equal(a["mask"], b["mask"]) for a, b in zip(rec.steps, up_rec.steps))
    # and the policy set on the model does change the run
    changed, _ = generate_recorded(model, ids, seed, **kw)
    assert not torch.equal(changed.sequences, up.sequences)


def test_with_policy_keeps_a_subclass_and_from_pretrained(tmp_path):
    class MyDiffusionGemma(transformers.DiffusionGemmaForBlockDiffusion):
        def mine(self):
            return "mine"
    model = MyDiffusionGemma(tiny_model().config)
    dg.with_policy(model, prr_ext.Threshold(0.8))
    assert isinstance(model, MyDiffusionGemma) and isinstance(model, dg.PolicyDiffusionGemmaMixin)
    assert model.mine() == "mine" and model.prr_policy == prr_ext.Threshold(0.8)
    assert type(dg.with_policy(MyDiffusionGemma(model.config), None)) is type(model)  # one class per subclass

    tiny_model().save_pretrained(tmp_path)
    loaded = dg.PolicyDiffusionGemma.from_pretrained(tmp_path, prr_policy=prr_ext.Factor(f=0.5))
    assert loaded.prr_policy == prr_ext.Factor(f=0.5)
    assert isinstance(loaded._prepare_sampler(loaded.generation_config.__class__(max_denoising_steps=N)),
                      dg.PolicySampler)
    with pytest.raises(ValueError, match="prr_policy=LowConfidence"):
        dg.PolicyDiffusionGemma.from_pretrained(tmp_path / "never read", prr_policy=prr_ext.LowConfidence())


def test_compile_keeps_the_policy_sampler_eager():
    """With a static cache transformers compiles the sampler's methods and caches them on the model; a PolicySampler
    must stay eager and leave no compiled method of its own behind for a later upstream sampler."""
    model = dg.with_policy(tiny_model(), prr_ext.Threshold(0.9))
    sampler = dg.PolicySampler(prr_ext.Threshold(0.9), canvas_length=C, vocab_size=V, max_denoising_steps=N)
    accept = sampler.accept_canvas
    _, _, returned, _ = model._compile_functions(sampler, None)
    assert returned is sampler and sampler.accept_canvas == accept
    assert "accept_canvas" not in vars(sampler) and "renoise_canvas" not in vars(sampler)
    assert not hasattr(model, "_compiled_accept_canvas") and not hasattr(model, "_compiled_renoise_canvas")
    upstream = generation.EntropyBoundSampler(generation.EntropyBoundSamplerConfig(entropy_bound=0.1), C, V, N)
    _, _, returned, _ = model._compile_functions(upstream, None)
    assert returned is upstream and hasattr(model, "_compiled_accept_canvas")  # upstream's path, untouched
