"""The shipped masked-diffusion LM, its tokenizer, the task families, AUP and a smoke test of the evaluation harness.

Fast CPU tests (the whole file runs in well under a minute on 2 cores); the harness smoke test decodes a few test
prompts with the shipped model through prr_ext.step.
"""
import json
import math
import os
import random

import pytest
import torch

import prr_testbed
from prr_testbed import tasks as T
from prr_testbed import train_model as TM
from prr_testbed.harness import RunSpec, evaluate, steps_for, summarize
from prr_testbed.stats import aup, aup_weight
from prr_testbed.sweep import main as eval_main
from prr_testbed.model import (MaskedDiffusionLM, ModelConfig, decode_responses, default_model_available,
                               load_default, make_canvas)
from prr_testbed.tokenizer import CharTokenizer

needs_model = pytest.mark.skipif(not default_model_available(), reason="the shipped model is missing")


def tiny_model(seed=0, **kw):
    tok = CharTokenizer()
    cfg = ModelConfig.for_tokenizer(tok, **{"d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64, **kw})
    m = MaskedDiffusionLM(cfg)
    m.reset_parameters(torch.Generator().manual_seed(seed))
    return m.eval()


@pytest.fixture(scope="module")
def shipped():
    if not default_model_available():
        pytest.skip("the shipped model is missing")
    torch.manual_seed(0)
    return load_default()


# ---------------------------------------------------------------------------------------------------------------
# tokenizer and model
# ---------------------------------------------------------------------------------------------------------------
def test_tokenizer_round_trip():
    tok = CharTokenizer()
    s = "Mia has 12 pens. 5*3=15. #### 20 1.3./...2/2.../.3.1="
    ids = tok.encode(s)
    assert tok.decode(ids) == s
    assert (tok.pad_id, tok.eos_id, tok.mask_id) == (0, 1, 2)
    assert tok.decode(ids + [tok.eos_id] + tok.encode("junk")) == s  # stops at <eos>
    assert tok.decode([tok.pad_id] + ids) == s
    assert CharTokenizer.from_config(tok.to_config()).itos == tok.itos
    with pytest.raises(ValueError, match="not in the tokenizer"):
        tok.encode("é")


def test_forward_shapes_and_output_object():
    m = tiny_model()
    x = torch.randint(3, m.config.vocab_size, (3, 17))
    out = m(x)
    assert out.logits.shape == (3, 17, m.config.vocab_size) and out.logits.dtype == torch.float32
    assert out.hidden_states is None
    out = m(x, output_hidden_states=True)
    assert out.hidden_states.shape == (3, 17, m.config.d_model)
    assert torch.isfinite(out.logits).all()
    with pytest.raises(ValueError):
        m(x[0])


def test_attention_is_bidirectional():
    m = tiny_model()
    x = torch.randint(3, m.config.vocab_size, (1, 12))
    base = m(x).logits
    y = x.clone()
    y[0, -1] = m.config.mask_id if x[0, -1] != m.config.mask_id else 3
    changed = m(y).logits
    assert not torch.allclose(base[0, 0], changed[0, 0])  # the first position sees the last one
    y = x.clone()
    y[0, 0] = m.config.mask_id if x[0, 0] != m.config.mask_id else 3
    assert not torch.allclose(base[0, -1], m(y).logits[0, -1])


def test_left_padding_does_not_change_logits():
    """<pad> keys are masked and RoPE is relative: a left-padded row gets its unpadded logits."""
    m = tiny_model(1)
    tok = CharTokenizer()
    x, plens = make_canvas(tok, ["12+345=", "9*7="], 8)
    assert plens.tolist() == [7, 4]
    assert x[1, :3].tolist() == [tok.pad_id] * 3 and (x[:, 7:] == tok.mask_id).all()
    full = m(x).logits
    alone = m(x[1:, 3:]).logits
    torch.testing.assert_close(full[1:, 3:], alone, atol=1e-5, rtol=1e-5)


def test_save_load_round_trip(tmp_path):
    m = tiny_model(2)
    x = torch.randint(3, m.config.vocab_size, (2, 9))
    m.save_pretrained(str(tmp_path / "fp32"), dtype=torch.float32, metadata={"note": "test"})
    m2 = MaskedDiffusionLM.from_pretrained(str(tmp_path / "fp32"))
    assert m2.config == m.config and m2.metadata == {"note": "test"}
    for (k, v), (k2, v2) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    torch.testing.assert_close(m(x).logits, m2(x).logits, atol=0, rtol=0)
    m.save_pretrained(str(tmp_path / "fp16"))  # the shipped format: fp16 weights
    m3 = MaskedDiffusionLM.from_pretrained(str(tmp_path / "fp16"))
    torch.testing.assert_close(m(x).logits, m3(x).logits, atol=2e-3, rtol=2e-3)
    cfg = json.loads((tmp_path / "fp16" / "config.json").read_text())
    assert cfg["format"] == "prr_ext.mdlm" and cfg["weights_dtype"] == "float16"
    assert cfg["model"]["tokenizer"]["chars"] == CharTokenizer().chars
    cfg["format"] = "something else"
    (tmp_path / "fp16" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not a prr_ext model"):
        MaskedDiffusionLM.from_pretrained(str(tmp_path / "fp16"))
    with pytest.raises(FileNotFoundError):
        MaskedDiffusionLM.from_pretrained(str(tmp_path / "missing"))


@needs_model
def test_shipped_checkpoint_size_and_config(shipped):
    import os
    from prr_testbed import MODEL_DIR as DEFAULT_DIR
    assert os.path.getsize(os.path.join(DEFAULT_DIR, "model.safetensors")) <= 20 * 2 ** 20
    assert shipped.config.mask_id == shipped.tokenizer.mask_id == 2
    longest = max(len(e.prompt) + T.get_family(f).gen_length for f in T.FAMILY_NAMES for e in T.heldout_set(f))
    assert longest <= shipped.config.max_seq_len == 128


# ---------------------------------------------------------------------------------------------------------------
# tasks
# ---------------------------------------------------------------------------------------------------------------
def test_arith_written_algorithm():
    assert T.arith_solution(4821, "+", 7395) == ("1110", "12216")
    assert T.arith_solution(999, "+", 1) == ("111", "1000")
    assert T.arith_solution(4821, "*", 7) == ("3510", "33747")
    assert T.arith_solution(100, "*", 3) == ("000", "300")
    fam = T.get_family("arith")
    ex = T.Example("arith", "4821+7395=", "c:1110 s:12216", "12216")
    assert fam.check(ex, "c:1110 s:12216")
    assert not fam.check(ex, "c:0110 s:12216")  # a wrong carry fails although the sum is right
    assert not fam.check(ex, "c:1110 s:12215")


def test_sudoku_generator_and_checker():
    assert len(T.sudoku_solutions()) == 288
    assert all(T.sudoku_valid(g) for g in T.sudoku_solutions())
    fam = T.get_family("sudoku")
    rng = random.Random(3)
    for _ in range(50):
        ex = fam.sample(rng)
        cells = [0 if c == "." else int(c) for c in ex.prompt[:-1].replace("/", "")]
        sol = T.solve_singles(cells)
        assert sol is not None and "".join(map(str, sol)) == ex.answer.replace("/", "")
        assert 4 <= sum(c > 0 for c in cells) <= 10
    ex = T.Example("sudoku", "1.3./...2/2.../.3.1=", "", "")
    good = "1234/3412/2143/4321"
    assert fam.check(ex, good)
    assert not fam.check(ex, "1234/3412/2143/4312")   # last row breaks the columns
    assert not fam.check(ex, "2134/3412/1243/4321")   # valid grid but changes the given 1 in the corner
    assert not fam.check(ex, "1234/3412/2143/432")    # malformed


def _corrupt(ex: T.Example, rng: random.Random) -> str:
    """Change one answer-bearing digit of the canonical response."""
    r = ex.response
    if ex.family == "words":
        pos = [i for i in range(r.index("####"), len(r)) if r[i].isdigit()]
    elif ex.family == "sudoku":
        pos = [i for i, c in enumerate(r) if c.isdigit()]
    else:
        pos = [i for i, c in enumerate(r) if c.isdigit()]
    i = rng.choice(pos)
    new = str((int(r[i]) + rng.randint(1, 9)) % 10)
    if ex.family == "sudoku":
        new = str(int(r[i]) % 4 + 1)
    return r[:i] + new + r[i + 1:]


@pytest.mark.parametrize("family", T.FAMILY_NAMES + T.LONG_FAMILY_NAMES)
def test_generators_and_checkers(family):
    fam = T.get_family(family)
    tok = CharTokenizer()
    rng = random.Random(11)
    for _ in range(300):
        ex = fam.sample(rng)
        assert ex.family == family
        assert fam.check(ex, ex.response), ex
        assert fam.check(ex, ex.response + "  ")
        assert not fam.check(ex, _corrupt(ex, rng)), ex
        assert not fam.check(ex, "")
        ids, plen = TM.encode_example(tok, ex, fam.gen_length)
        assert len(ids) == plen + fam.gen_length and ids[-1] == tok.eos_id  # always terminated by <eos>
    assert fam.gen_length % fam.block_length == 0


def test_response_lengths_differ_between_families():
    lengths = {f: {len(e.response) for e in T.heldout_set(f, n=200)} for f in T.FAMILY_NAMES}
    assert len({max(v) for v in lengths.values()}) == 3
    assert len({T.get_family(f).gen_length for f in T.FAMILY_NAMES}) == 3
    assert len(lengths["arith"]) > 3 and len(lengths["words"]) > 3  # and they vary within a family


@pytest.mark.parametrize("family", T.FAMILY_NAMES + T.LONG_FAMILY_NAMES)
def test_heldout_sets_are_fixed_and_disjoint_from_training(family):
    test = T.heldout_set(family)
    assert len(test) == 500 == len({e.prompt for e in test})
    assert all(T.split_of(family, e.prompt) == "test" for e in test)
    assert T.heldout_set(family, n=20) == test[:20]
    valid = T.heldout_set(family, "valid", 200)
    assert not {e.prompt for e in valid} & {e.prompt for e in test}
    fam = T.get_family(family)
    rng = random.Random(5)
    train = {fam.sample_split(rng, "train").prompt for _ in range(2000)}
    assert not train & {e.prompt for e in test + valid}
    with pytest.raises(ValueError):
        T.heldout_set(family, "train")


def test_training_batches_come_from_the_train_split_and_are_reproducible():
    tok = CharTokenizer()
    b1 = TM.make_batch(7, 3, 48, list(T.FAMILY_NAMES), [1, 1, 1], tok)
    b2 = TM.make_batch(7, 3, 48, list(T.FAMILY_NAMES), [1, 1, 1], tok)
    assert all(torch.equal(b1[k], b2[k]) for k in b1)
    assert not torch.equal(b1["ids"], TM.make_batch(7, 4, 48, list(T.FAMILY_NAMES), [1, 1, 1], tok)["ids"])
    for row, resp, fi in zip(b1["ids"], b1["resp"], b1["family"]):
        fam = T.FAMILY_NAMES[int(fi)]
        prompt = tok.decode(row[~resp].tolist())
        assert T.split_of(fam, prompt) == "train"
        assert int(resp.sum()) == T.get_family(fam).gen_length


def test_canvas_jitter_cuts_canvases_between_the_answer_and_the_family_canvas():
    """--canvas-jitter: a share of the examples get a shorter canvas, never shorter than the answer and its <eos>;
    0 leaves the batch exactly as without the option."""
    tok = CharTokenizer()
    fams = list(T.LONG_FAMILY_NAMES)
    plain = TM.make_batch(3, 2, 64, fams, [1] * len(fams), tok)
    assert all(torch.equal(plain[k], TM.make_batch(3, 2, 64, fams, [1] * len(fams), tok, canvas_jitter=0.0)[k])
               for k in plain)
    cut = TM.make_batch(3, 2, 64, fams, [1] * len(fams), tok, canvas_jitter=1.0)
    G = T.LONG_GEN_LENGTH
    assert bool((cut["gen_len"] <= G).all()) and bool((cut["gen_len"] < G).sum() > 32)
    for row, resp, glen in zip(cut["ids"], cut["resp"], cut["gen_len"]):
        canvas = row[resp].tolist()
        assert len(canvas) == int(glen) and canvas[-1] == tok.eos_id
        answer = canvas[:canvas.index(tok.eos_id)]
        assert len(answer) + 1 <= int(glen) and all(t == tok.eos_id for t in canvas[len(answer):])


def test_padded_batches_hold_the_same_sequences():
    """--compile pads every batch to one length: the same sequences, left-padded further, and the same logits at
    their positions (pads are never attended to, and RoPE sees only relative positions)."""
    tok = CharTokenizer()
    b = TM.make_batch(5, 1, 12, list(T.FAMILY_NAMES), [1, 1, 1], tok)
    p = TM.make_batch(5, 1, 12, list(T.FAMILY_NAMES), [1, 1, 1], tok, pad_to=b["ids"].shape[1] + 9)
    assert p["ids"].shape[1] == b["ids"].shape[1] + 9
    assert torch.equal(p["ids"][:, 9:], b["ids"]) and (p["ids"][:, :9] == tok.pad_id).all()
    assert torch.equal(p["resp"][:, 9:], b["resp"]) and not p["resp"][:, :9].any()
    assert torch.equal(p["gen_len"], b["gen_len"])
    m = tiny_model()
    with torch.no_grad():
        lb, lp = m(b["ids"]).logits, m(p["ids"]).logits[:, 9:]
    real = b["ids"] != tok.pad_id
    torch.testing.assert_close(lp[real], lb[real], atol=2e-5, rtol=2e-5)


def test_diffusion_loss_never_masks_the_prompt():
    tok = CharTokenizer()
    m = tiny_model()
    batch = TM.make_batch(0, 0, 16, list(T.FAMILY_NAMES), [1, 1, 1], tok)
    seen = {}
    orig = m.forward

    def spy(x, *a, **k):
        seen["x"] = x
        return orig(x, *a, **k)

    m.forward = spy
    loss = TM.diffusion_loss(m, batch, torch.Generator().manual_seed(0), None)
    x = seen["x"]
    assert torch.equal(x[~batch["resp"]], batch["ids"][~batch["resp"]])  # prompt and pads untouched
    assert (x[batch["resp"]] == tok.mask_id).any()
    assert torch.isfinite(loss) and loss > 0
    loss.backward()


def test_train_model_runs(tmp_path):
    out = tmp_path / "m"
    meta = TM.main(["--tiny", "--steps", "3", "--batch-size", "8", "--workers", "0", "--eval-every", "0",
                    "--final-eval-n", "2", "--out", str(out), "--device", "cpu", "--no-progress"])
    assert meta["steps_done"] == 3 and set(meta["final_valid_acc"]) == set(T.FAMILY_NAMES)
    m = MaskedDiffusionLM.from_pretrained(str(out))
    assert m.config.d_model == 64 and m.metadata["steps"] == 3


# ---------------------------------------------------------------------------------------------------------------
# AUP
# ---------------------------------------------------------------------------------------------------------------
def test_aup_hand_computed():
    # one point: rho_1 * y_1, unweighted
    assert aup([2.0], [80.0], 80.0) == pytest.approx(160.0)
    assert aup([2.0], [60.0], 90.0) == pytest.approx(120.0)
    # W(y) = min(exp(-3 (1 - y / y_max)), 1)
    assert aup_weight(90, 90) == 1.0 and aup_weight(95, 90) == 1.0
    assert aup_weight(88, 90) == pytest.approx(math.exp(-3 * (1 - 88 / 90)))
    # (1, 90), (2, 88) kept; (4, 80) dropped (80 < 90 - 5):
    # 1*90 + 0.5*(2-1)*(88*W(88) + 90*W(90)) = 90 + 0.5*(88*0.935507 + 90) = 176.1623
    assert aup([1, 2, 4], [90, 88, 80], 90) == pytest.approx(176.1623, abs=1e-3)
    # unsorted input; y_max from another method: (1, 72), (3, 70)
    # 72 + 0.5*2*(70*exp(-0.375) + 72*exp(-0.3)) = 72 + 48.1102 + 53.3389 = 173.4491
    assert aup([3, 1], [70, 72], 80) == pytest.approx(173.4491, abs=1e-3)
    # the filter keys on the lowest-rho point: a later, better point is kept, a > 5-point drop is not
    assert aup([1, 2, 3], [50, 60, 40], 60) == pytest.approx(
        50 + 0.5 * (60 + 50 * math.exp(-3 * (1 - 50 / 60))))
    with pytest.raises(ValueError):
        aup([], [], 1.0)


def test_summarize_uses_best_accuracy_of_any_method():
    rows = [{"task": "a", "policy": "p", "tokens_per_forward": 1.0, "accuracy": 90.0},
            {"task": "a", "policy": "q", "tokens_per_forward": 2.0, "accuracy": 80.0}]
    s = summarize(rows)
    assert s["y_max"]["a"] == 90.0
    assert s["aup"]["a"]["p"] == pytest.approx(90.0)
    assert s["aup"]["a"]["q"] == pytest.approx(160.0)


def test_steps_for_respects_blocks():
    fam = T.get_family("words")
    for frac in (1.0, 0.5, 0.25, 0.1):
        s = steps_for(fam, frac, 48, 16)
        assert s % 3 == 0 and s >= 3


# ---------------------------------------------------------------------------------------------------------------
# the harness on the shipped model (what CI runs)
# ---------------------------------------------------------------------------------------------------------------
@needs_model
def test_prr_ext_loop_equals_the_training_monitor(shipped):
    """LowConfidence with steps == gen_length through prr_ext.step == train_model.greedy_decode."""
    for family in ("arith", "sudoku"):
        fam = T.get_family(family)
        exs = T.heldout_set(family, n=6)
        x, plens = make_canvas(shipped.tokenizer, [e.prompt for e in exs], fam.gen_length)
        with torch.inference_mode():
            ref = TM.greedy_decode(shipped, x, x.shape[1] - fam.gen_length, fam.block_length)
            r = evaluate(shipped, family, exs, RunSpec("lowconf"), batch_size=6, keep_responses=True)
        assert r["responses"] == decode_responses(shipped.tokenizer, ref, x.shape[1] - fam.gen_length)
        assert r["mean_nfe"] == fam.gen_length and r["tokens_per_forward"] == 1.0


@needs_model
def test_readme_example():
    """The README's testbed example prints what the README says, with the token ids taken from the model."""
    import prr_ext

    model = prr_testbed.load_model()
    policy = prr_ext.PRR(prr_testbed.load_controller(), tau=prr_testbed.tuned_tau())
    x, _ = make_canvas(model.tokenizer, ["4821+7395="], gen_length=24)
    out = prr_ext.generate(model, x[:, :-24], gen_length=24, block_length=12, steps=24, policy=policy)
    assert decode_responses(model.tokenizer, out.tokens, x.shape[1] - 24) == ["c:1110 s:12216"]
    assert out.nfe.tolist() == [2]


@pytest.mark.skipif(not os.path.isfile(os.path.join(prr_testbed.STEP_MODEL_DIR, "model.safetensors")),
                    reason="the step-family model is not in this installation")
def test_readme_step_model_example():
    """The README's second example: the step model with the controller that ships beside it settles a 14-digit
    dial answer in 4 forwards; a model that ships without a controller is an error that says how to train one."""
    import prr_ext

    model = prr_testbed.load_model(name="steps")
    policy = prr_ext.PRR(prr_testbed.load_controller(name="steps"), tau=prr_testbed.tuned_tau(name="steps"))
    x, _ = make_canvas(model.tokenizer, ["dial 88:40 87 74 69 81 24 02="], gen_length=160)
    out = prr_ext.generate(model, x[:, :-160], gen_length=160, block_length=32, steps=160, policy=policy,
                           eos_fill=True)
    assert decode_responses(model.tokenizer, out.tokens, x.shape[1] - 160) == ["28158958396365"]
    assert out.nfe.tolist() == [4]
    ref = next(e for e in T.heldout_set("dial", n=40) if e.prompt == "dial 88:40 87 74 69 81 24 02=")
    assert ref.response == "28158958396365"  # a held-out test prompt, answered right
    assert prr_testbed.controller_dir("steps") == prr_testbed.STEP_CONTROLLER_DIR
    for name, err in (("long", "no PRR controller ships for the 'long' model"), ("nope", "no testbed model")):
        with pytest.raises(ValueError, match=err):
            prr_testbed.load_controller(name=name)


@needs_model
def test_shipped_model_solves_held_out_prompts(shipped):
    for family in ("arith", "sudoku"):
        r = evaluate(shipped, family, T.heldout_set(family, n=16), RunSpec("lowconf"), batch_size=16)
        assert r["accuracy"] >= 80.0, r


@needs_model
def test_eval_harness_smoke(tmp_path):
    out = tmp_path / "eval.json"
    doc = eval_main(["--n", "3", "--policies", "lowconf,threshold,eb", "--taus", "0.9", "--gammas", "0.1",
                     "--steps-fracs", "1", "--batch-size", "3", "--device", "cpu", "--out", str(out),
                     "--no-progress"])
    assert out.exists() and (tmp_path / "eval.png").stat().st_size > 1000
    assert json.loads(out.read_text())["meta"]["n"] == 3
    res = doc["results"]
    assert len(res) == 3 * 3
    for r in res:
        fam = T.get_family(r["task"])
        assert 0.0 <= r["accuracy"] <= 100.0 and r["n"] == 3 and r["tokens_per_s"] > 0
        assert 1 <= r["mean_nfe"] <= fam.gen_length
        assert r["tokens_per_forward"] == pytest.approx(fam.gen_length / r["mean_nfe"])
        if r["policy"] == "lowconf":
            assert r["mean_nfe"] == fam.gen_length
    assert set(doc["aup"]) == set(T.FAMILY_NAMES) and set(doc["aup"]["arith"]) == {"lowconf", "threshold", "eb"}


@needs_model
def test_demo_smoke(tmp_path, capsys):
    from prr_testbed import demo
    threads = torch.get_num_threads()
    try:
        doc = demo.main(["--n", "2", "--tasks", "sudoku", "--device", "cpu", "--threads", "1",
                         "--plot", str(tmp_path / "demo.png")])
    finally:
        torch.set_num_threads(threads)
    text = capsys.readouterr().out
    assert "LowConfidence" in text and "EntropyBound" in text and "tokens/s" in text
    assert (tmp_path / "demo.png").exists() and len(doc["results"]) >= 4


def test_eos_exit_stops_each_row_with_its_answer(shipped):
    """evaluate(eos_exit=True): vanilla decoding takes fewer forwards on answers shorter than the canvas and gives the
    same responses (a row retires only once its answer and EOS are committed, and the response ends at that EOS)."""
    exs = T.heldout_set("words", n=6)
    full = evaluate(shipped, "words", exs, RunSpec("lowconf"), batch_size=6, keep_responses=True)
    short = evaluate(shipped, "words", exs, RunSpec("lowconf"), batch_size=6, keep_responses=True, eos_exit=True)
    assert full["nfe_per_prompt"] == [full["gen_length"]] * 6 and not full["eos_exit"] and short["eos_exit"]
    assert all(s <= f for s, f in zip(short["nfe_per_prompt"], full["nfe_per_prompt"]))
    assert sum(short["nfe_per_prompt"]) < sum(full["nfe_per_prompt"])
    assert short["responses"] == full["responses"] and short["correct"] == full["correct"]
