"""prr_ext.HiddenFeatures (a PCA map of the model's last hidden state to r controller features) and its plumbing:
rollouts record 13 + r features, generate(hidden_features=) equals a hand-written loop that feeds the same features
to prr_ext.step, the unsupported combinations are ValueErrors, and `prr_ext.train --hidden-features` then
`prr_ext.eval --controller` run end to end on the shipped testbed model."""
import json
import os
import shutil

import pytest
import torch

import prr_ext
import prr_testbed
from prr_ext import user_eval, user_train
from prr_ext.prr_training import rollout
from prr_testbed import tasks as T

MODEL = prr_testbed.MODEL_DIR
CANVAS = ["--gen-length", "24", "--block-length", "12", "--device", "cpu", "--no-progress"]
R = 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threads only cost
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def dec():
    return prr_ext.load(MODEL)


@pytest.fixture(scope="module")
def batch(dec):
    """(prompt_ids [B, P] left-padded, attention_mask [B, P]) of 4 arith prompts of different lengths."""
    ids = [dec.encode_prompt(e.prompt) for e in T.heldout_set("arith", "valid", 4)]
    assert len({len(i) for i in ids}) > 1  # really padded
    x, am = dec._left_pad(ids)
    return x, am


@pytest.fixture(scope="module")
def hf(dec, batch):
    x, am = batch
    canvas = torch.cat([x, torch.full((x.shape[0], 24), dec.ids.mask)], 1)
    full_am = torch.cat([am, torch.ones(x.shape[0], 24, dtype=am.dtype)], 1)
    h = dec.model(canvas, attention_mask=full_am, output_hidden_states=True).hidden_states
    return prr_ext.HiddenFeatures.fit(h[:, x.shape[1]:].reshape(-1, h.shape[-1]), R)


def _prr(r=R, seed=0, tau=0.8):
    return prr_ext.PRR(prr_ext.Controller.init(seed, hidden=(8,), extra_features=r), tau=tau)


# ---------------------------------------------------------------------------------------------------------------
# the map
# ---------------------------------------------------------------------------------------------------------------
def test_fit_is_pca_deterministic_and_sign_fixed():
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))[0]
    scales = torch.tensor([10.0, 5.0, 2.0] + [0.01] * 13, dtype=torch.float64)
    h = (torch.randn(500, 16, generator=g, dtype=torch.float64) * scales) @ basis.T + 3.0
    a = prr_ext.HiddenFeatures.fit(h.float(), 3)
    b = prr_ext.HiddenFeatures.fit(h.float().clone(), 3)
    assert torch.equal(a.components, b.components) and torch.equal(a.mean, b.mean)
    assert (a.dim, a.r) == (16, 3)
    # the top directions are the planted ones, up to sign; columns orthonormal
    assert torch.allclose(a.components.double().abs(), basis[:, :3].abs(), atol=0.03)  # sampling noise of 500 rows
    assert torch.allclose(a.components.T @ a.components, torch.eye(3), atol=1e-5)
    # sign rule: each column's largest-magnitude entry is positive (flipping the data's sign keeps the map)
    top = a.components[a.components.abs().argmax(0), torch.arange(3)]
    assert bool((top > 0).all())
    c = prr_ext.HiddenFeatures.fit(-h.float(), 3)
    assert torch.allclose(c.components, a.components, atol=1e-5)
    # features: (h - mean) @ components, variance ordered
    f = a(h.float())
    assert f.shape == (500, 3) and f.dtype == torch.float32
    assert torch.allclose(f, (h.float() - a.mean) @ a.components, atol=1e-4)
    var = f.var(0)
    assert bool(var[0] > var[1] > var[2]) and abs(float(f.mean(0).abs().max())) < 1e-3
    assert a(h.float().reshape(5, 100, 16)).shape == (5, 100, 3)


def test_fit_subsamples_evenly_and_checks_arguments():
    h = torch.randn(300, 8, generator=torch.Generator().manual_seed(1))
    sub = prr_ext.HiddenFeatures.fit(h, 2, max_rows=100)
    assert sub.meta == {"rows": 100, "rows_given": 300}
    ref = prr_ext.HiddenFeatures.fit(h[torch.linspace(0, 299, 100).round().long()], 2)
    assert torch.allclose(sub.components, ref.components) and torch.allclose(sub.mean, ref.mean)
    for bad, match in ((lambda: prr_ext.HiddenFeatures.fit(h, 0), "r must be a positive int"),
                       (lambda: prr_ext.HiddenFeatures.fit(h, 9), r"r=9 principal directions need r <= D"),
                       (lambda: prr_ext.HiddenFeatures.fit(h[0], 1), r"hidden must be a \[N, D\]"),
                       (lambda: prr_ext.HiddenFeatures.fit(h.long(), 1), r"hidden must be a \[N, D\]"),
                       (lambda: sub(torch.zeros(3, 7)), r"end in D=8")):
        with pytest.raises(ValueError, match=match):
            bad()


def test_fit_checks_max_rows_and_the_rows_it_decomposes(rnd):
    """max_rows is an int that keeps r + 1 rows (r directions about the rows' mean); one row, or r >= N rows, is
    refused with a message that says what is needed."""
    h = rnd.randn(51, 8)
    for max_rows in (0, 1, 2, True, "10", 10.0, None):
        with pytest.raises(ValueError, match=rf"max_rows must be an int >= r \+ 1 = 3 .*got {max_rows!r}"):
            prr_ext.HiddenFeatures.fit(h, 2, max_rows=max_rows)
    smallest = prr_ext.HiddenFeatures.fit(h, 2, max_rows=3)  # rows 0, 25, 50 span 2 directions
    assert smallest.meta == {"rows": 3, "rows_given": 51}
    assert torch.allclose(smallest.components, prr_ext.HiddenFeatures.fit(h[[0, 25, 50]], 2).components)
    with pytest.raises(ValueError, match=r"hidden must have at least 2 rows .*hidden is \[1, 8\]"):
        prr_ext.HiddenFeatures.fit(h[:1], 1)
    with pytest.raises(ValueError, match=r"r=4 principal directions need r <= D and r <= N - 1 .*\[4, 8\]"):
        prr_ext.HiddenFeatures.fit(h[:4], 4)  # 4 centered rows span 3 directions: a 4th would be arbitrary
    assert prr_ext.HiddenFeatures.fit(h[:4], 3).r == 3


def test_fit_refuses_directions_without_variance(rnd):
    """Constant rows, or rows that vary along fewer than r directions, have no (or too few) principal directions:
    the SVD would return arbitrary ones."""
    for constant in (torch.ones(10, 8), torch.full((40, 8), 0.1), rnd.randn(1, 8).expand(30, 8).contiguous()):
        with pytest.raises(ValueError, match=r"hidden has no variance \(its \d+ rows decomposed are all equal\)"):
            prr_ext.HiddenFeatures.fit(constant, 1)
    basis = torch.linalg.qr(rnd.randn(8, 2))[0]  # [8, 2] orthonormal: rows along two directions, plus an offset
    h = rnd.randn(60, 2) @ basis.T + rnd.randn(1, 8)
    with pytest.raises(ValueError, match=r"r=3: the 60 rows decomposed span only 2 directions .*use r <= 2"):
        prr_ext.HiddenFeatures.fit(h, 3)
    comp = prr_ext.HiddenFeatures.fit(h, 2).components.double()  # the two that exist: the planted plane
    assert torch.allclose(basis @ (basis.T @ comp), comp, atol=1e-6)


def test_save_load_round_trip_and_format_errors(tmp_path):
    h = torch.randn(64, 12, generator=torch.Generator().manual_seed(2))
    a = prr_ext.HiddenFeatures.fit(h, 3)
    assert prr_ext.HiddenFeatures.load(tmp_path) is None  # no map: None, not an error
    a.save(tmp_path)
    b = prr_ext.HiddenFeatures.load(tmp_path)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.components, b.components) and b.meta == a.meta
    assert torch.equal(a(h), b(h))
    w = tmp_path / "hidden_features.safetensors"
    w.write_bytes(b"not safetensors")
    with pytest.raises(prr_ext.ControllerFormatError, match="hidden_features.safetensors"):
        prr_ext.HiddenFeatures.load(tmp_path)
    a.save(tmp_path)
    cfg = tmp_path / "hidden_features.json"
    doc = json.loads(cfg.read_text())
    cfg.write_text(json.dumps(dict(doc, r=5)))
    with pytest.raises(prr_ext.ControllerFormatError, match=r"do not match .*hidden_features.json"):
        prr_ext.HiddenFeatures.load(tmp_path)
    cfg.write_text("{")
    with pytest.raises(prr_ext.ControllerFormatError, match="hidden_features.json: not valid JSON"):
        prr_ext.HiddenFeatures.load(tmp_path)
    os.remove(cfg)
    with pytest.raises(prr_ext.ControllerFormatError, match="hidden_features.json not found"):
        prr_ext.HiddenFeatures.load(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# rollouts
# ---------------------------------------------------------------------------------------------------------------
class _Call:
    """The testbed model with a fixed attention mask, as prr_ext.train's rollouts call it."""

    def __init__(self, model, am):
        self.model, self.am = model, am

    def __call__(self, x, **kw):
        return self.model(x, attention_mask=self.am, **kw)


def test_rollout_records_base_then_hidden_features(dec, batch, hf):
    x, am = batch
    B, P = x.shape
    canvas = torch.cat([x, torch.full((B, 24), dec.ids.mask)], 1)
    full_am = torch.cat([am, torch.ones(B, 24, dtype=am.dtype)], 1)
    call = _Call(dec.model, full_am)
    plens = am.sum(1)
    base = rollout(call, canvas, plens, policy=prr_ext.LowConfidence(), block_length=12, steps=24,
                   mask_id=dec.ids.mask)
    ro = rollout(call, canvas, plens, policy=prr_ext.LowConfidence(), block_length=12, steps=24,
                 mask_id=dec.ids.mask, hidden_features=hf)
    assert base.feats.shape[1] == 13 and ro.feats.shape == (base.feats.shape[0], 13 + R)
    assert torch.equal(ro.feats[:, :13], base.feats) and torch.equal(ro.final, base.final)
    # the first step's records: the hidden features of the all-masked canvas at the record's column
    h = dec.model(canvas, attention_mask=full_am, output_hidden_states=True).hidden_states
    first = ro.t == 0
    want = hf(h)[ro.row[first], ro.col[first]]
    assert torch.allclose(ro.feats[first, 13:], want, atol=1e-5)
    # a PRR policy over a 13 + R controller (rounds > 0) gets the features through step
    pr = rollout(call, canvas, plens, policy=_prr(), block_length=12, steps=24, mask_id=dec.ids.mask,
                 hidden_features=hf, block_continuation=True)
    assert pr.feats.shape[1] == 13 + R and bool((pr.final[:, P:] != dec.ids.mask).all())
    with pytest.raises(ValueError, match="pass hidden_features="):
        rollout(call, canvas, plens, policy=_prr(), block_length=12, steps=24, mask_id=dec.ids.mask)
    with pytest.raises(ValueError, match="takes 3 extra features but hidden_features gives 4"):
        rollout(call, canvas, plens, policy=_prr(3), block_length=12, steps=24, mask_id=dec.ids.mask,
                hidden_features=hf)


# ---------------------------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------------------------
class _Spy(prr_ext.HiddenFeatures):
    calls = 0

    def __call__(self, hidden):
        type(self).calls += 1
        return super().__call__(hidden)


def test_generate_equals_manual_loop(dec, batch, hf):
    x, am = batch
    B, P = x.shape
    spy = _Spy(hf.mean, hf.components)
    for seed, tau in ((0, 0.8), (3, 0.95)):
        policy = _prr(seed=seed, tau=tau)
        _Spy.calls = 0
        out = prr_ext.generate(dec.model, x, attention_mask=am, gen_length=24, block_length=12, steps=24,
                               policy=policy, mask_id=dec.ids.mask, hidden_features=spy)
        assert _Spy.calls == out.forwards  # every forward's hidden states became the step's features
        canvas = torch.cat([x, torch.full((B, 24), dec.ids.mask)], 1)
        full_am = torch.cat([am, torch.ones(B, 24, dtype=am.dtype)], 1)
        state = prr_ext.State(canvas, mask_id=dec.ids.mask, prompt_length=am.sum(1), gen_start=P, block_length=12,
                              steps=24, policy=policy)
        while not state.done:
            o = dec.model(state.x, attention_mask=full_am, output_hidden_states=True)
            prr_ext.step(o.logits, state, extra_features=hf(o.hidden_states))
        assert torch.equal(out.tokens, state.x) and torch.equal(out.nfe, state.nfe)
    # the Decoder passes it through too
    res = dec.generate([T.heldout_set("arith", "valid", 1)[0].prompt], policy=_prr(), gen_length=24,
                       block_length=12, hidden_features=hf)
    assert res[0].nfe >= 2


def test_generate_errors(dec, batch, hf):
    x, am = batch
    kw = dict(gen_length=24, block_length=12, steps=24, mask_id=dec.ids.mask, attention_mask=am)
    for extra, match in ((dict(cuda_graph=True), "not with cuda_graph=True"),
                         (dict(block_info=True), "not with block_info=True"),
                         (dict(cfg_scale=1.0), r"not with cfg_scale > 0"),
                         (dict(slow_fast_prefix=True), "not with slow_fast_prefix=True")):
        with pytest.raises(ValueError, match=match):
            prr_ext.generate(dec.model, x, policy=_prr(), hidden_features=hf, **kw, **extra)
    with pytest.raises(ValueError, match="not with style='dream'"):
        prr_ext.generate(dec.model, x, gen_length=24, steps=24, style="dream", hidden_features=hf)
    with pytest.raises(ValueError, match="not with gen_length='auto'"):
        prr_ext.generate(dec.model, x, gen_length="auto", block_length=12, steps=24, policy=_prr(),
                         hidden_features=hf)
    with pytest.raises(ValueError, match="gives 4 features but the PRR policy's controller takes 2"):
        prr_ext.generate(dec.model, x, policy=_prr(2), hidden_features=hf, **kw)
    with pytest.raises(ValueError, match="gives 4 features but the PRR policy's controller takes 0"):
        prr_ext.generate(dec.model, x, policy=_prr(0), hidden_features=hf, **kw)
    with pytest.raises(ValueError, match="feeds a PRR controller's extra features"):
        prr_ext.generate(dec.model, x, policy=prr_ext.Threshold(0.9), hidden_features=hf, **kw)
    with pytest.raises(ValueError, match="takes 4 extra features: pass hidden_features="):
        prr_ext.generate(dec.model, x, policy=_prr(), **kw)
    with pytest.raises(TypeError, match="hidden_features must be a prr_ext.HiddenFeatures"):
        prr_ext.generate(dec.model, x, policy=_prr(), hidden_features=torch.zeros(3), **kw)
    # a model call that returns logits only (no hidden states)
    with pytest.raises(ValueError, match="hidden_features reads the model's hidden states"):
        prr_ext.generate(lambda inp, **k: dec.model(inp, attention_mask=k.get("attention_mask")).logits, x,
                         policy=_prr(), hidden_features=hf, **kw)


# ---------------------------------------------------------------------------------------------------------------
# the CLIs
# ---------------------------------------------------------------------------------------------------------------
def _write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def test_train_then_eval_with_hidden_features(tmp_path, capsys):
    ex = T.heldout_set("arith", "valid", 20)
    val = _write(tmp_path / "val.jsonl", [{"prompt": e.prompt, "answer": e.response} for e in ex[:6]])
    train = _write(tmp_path / "train.jsonl", [{"prompt": e.prompt} for e in ex[6:]])
    out = str(tmp_path / "run")
    argv = ["--model", MODEL, "--data", train, "--val", val, "--checker", "exact", "--out", out, "--rounds", "1",
            "--epochs", "1", "--t-max-grid", "1.0", "--tau-grid", "0.9", "--hidden", "8"] + CANVAS
    report = user_train.main(argv + ["--hidden-features", str(R)])
    ctrl_dir = os.path.join(out, "controller")
    ctrl = prr_ext.Controller.load(ctrl_dir)
    hf = prr_ext.HiddenFeatures.load(ctrl_dir)
    width = prr_ext.load(MODEL).model(torch.zeros(1, 2, dtype=torch.long), output_hidden_states=True).hidden_states
    assert ctrl.extra_features == R and hf.r == R and hf.dim == width.shape[-1]
    saved = prr_ext.HiddenFeatures.load(os.path.join(out, "hidden_features"))
    assert torch.equal(saved.components, hf.components)
    with open(os.path.join(ctrl_dir, "model.json")) as f:
        rec = json.load(f)
    assert rec["in_features"] == 13 + R and rec["hidden_features"] == R
    assert report["settings"]["hidden_features"] == R and len(report["rounds"]) == 2
    from safetensors.torch import load_file
    shard = load_file(os.path.join(out, "round1", "rollouts_rank0.safetensors"))
    assert all(v.shape[1] == 13 + R for k, v in shard.items() if k.endswith(".feats"))

    # resuming with another --hidden-features is refused
    with pytest.raises(SystemExit) as e:
        user_train.main(argv)
    assert e.value.code == 2 and "hidden_features 4 there, 0 now" in capsys.readouterr().err

    data = _write(tmp_path / "test.jsonl", [{"prompt": e.prompt, "answer": e.response}
                                            for e in T.heldout_set("arith", "test", 6)])
    doc = user_eval.main(["--model", MODEL, "--data", data, "--checker", "exact", "--policies", "lowconf,prr",
                          "--controller", ctrl_dir] + CANVAS)
    prr_pt = doc["points"][1]
    assert prr_pt["label"] == f"prr:{report['tau']:g}" and prr_pt["accuracy"] > 50.0
    assert prr_pt["mean_nfe"] < doc["points"][0]["mean_nfe"] == 24

    # the same controller without its map: the clear usage error
    bare = str(tmp_path / "bare")
    shutil.copytree(ctrl_dir, bare)
    for name in ("hidden_features.safetensors", "hidden_features.json"):
        os.remove(os.path.join(bare, name))
    with pytest.raises(SystemExit) as e:
        user_eval.main(["--model", MODEL, "--data", data, "--policies", "prr", "--controller", bare] + CANVAS)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --controller" in err and "holds no hidden_features map" in err
    # ... and with a map of another width
    prr_ext.HiddenFeatures(hf.mean, hf.components[:, :2]).save(bare)
    with pytest.raises(SystemExit) as e:
        user_eval.main(["--model", MODEL, "--data", data, "--policies", "prr", "--controller", bare] + CANVAS)
    assert e.value.code == 2 and "map computes 2" in capsys.readouterr().err


def test_train_hidden_features_argument_errors(tmp_path, capsys):
    ex = T.heldout_set("arith", "valid", 4)
    val = _write(tmp_path / "val.jsonl", [{"prompt": e.prompt, "answer": e.response} for e in ex[:2]])
    train = _write(tmp_path / "train.jsonl", [{"prompt": e.prompt} for e in ex[2:]])
    base = ["--model", MODEL, "--data", train, "--val", val, "--out", str(tmp_path / "o")] + CANVAS
    with pytest.raises(SystemExit) as e:
        user_train.main(base + ["--hidden-features", "60"])
    assert e.value.code == 2 and "argument --hidden-features: must lie in [0, 51]" in capsys.readouterr().err
