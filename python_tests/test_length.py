"""prr_ext.LengthPredictor: log-length regression, split-conformal margin for a target truncation rate, budgets
rounded to a block multiple, storage as safetensors + JSON, and its errors."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

import prr_ext
from prr_ext.length import MAX_BUDGET, LengthPredictorFormatError, pooled_features


def synthetic(n, seed, F=6):
    """Heavy-tailed lengths (about 8 to 400, median 37) whose log is linear in the features plus noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, F, generator=g, dtype=torch.float64)
    w = torch.linspace(-0.3, 0.4, F, dtype=torch.float64)
    log_len = 3.6 + x @ w + 0.25 * torch.randn(n, generator=g, dtype=torch.float64)
    return x, torch.exp(log_len).clamp(8, 400).round()


def test_fit_recovers_the_relation_and_the_margin_holds_its_rate():
    x, y = synthetic(4000, 0)
    lp = prr_ext.LengthPredictor.fit(x, y, ridge=1e-3)
    xt, yt = synthetic(20000, 1)
    resid = yt.log() - lp.predict_log(xt)
    assert resid.std() < 0.27  # the noise is 0.25
    for target in (0.02, 0.1):
        budget = lp.budget(xt, target)
        rate = float((yt > budget).double().mean())
        slack = 4 * math.sqrt(target * (1 - target) / yt.numel())  # binomial noise of the test rate
        assert rate <= target + slack, (target, rate)
        assert rate >= target / 3, (target, rate)  # and the margin is not absurdly wide
    assert lp.margin(0.02) > lp.margin(0.1) > 0


def test_budget_rounds_to_the_block_and_caps():
    x, y = synthetic(400, 2)
    lp = prr_ext.LengthPredictor.fit(x, y)
    b = lp.budget(x[:50], 0.05, multiple=32, maximum=256)
    assert b.dtype == torch.int64 and bool((b % 32 == 0).all()) and int(b.max()) <= 256 and int(b.min()) >= 32
    raw = torch.exp(lp.predict_log(x[:50]) + lp.margin(0.05))
    assert bool((b >= torch.minimum(raw, torch.tensor(256.0))).all())


def test_small_calibration_split_needs_a_maximum():
    x, y = synthetic(40, 3)
    lp = prr_ext.LengthPredictor.fit(x, y, calibration_fraction=0.25)  # 10 residuals cannot promise 2%
    assert math.isinf(lp.margin(0.02))
    with pytest.raises(ValueError, match="cannot promise a truncation rate of 0.02; pass maximum="):
        lp.budget(x, 0.02)
    assert bool((lp.budget(x, 0.02, multiple=16, maximum=100) == 96).all())


def test_save_load_round_trip_and_fingerprint(tmp_path):
    x, y = synthetic(300, 4)
    lp = prr_ext.LengthPredictor.fit(x, y, fingerprint="tiny@1")
    lp.save(str(tmp_path / "lp"))
    back = prr_ext.LengthPredictor.load(str(tmp_path / "lp"), fingerprint="tiny@1")
    assert torch.equal(back.budget(x, 0.05, multiple=8), lp.budget(x, 0.05, multiple=8))
    assert back.meta == lp.meta and back.bias == lp.bias and torch.equal(back.residuals, lp.residuals)
    with pytest.raises(LengthPredictorFormatError, match="fitted for 'tiny@1', not for 'other@2'"):
        prr_ext.LengthPredictor.load(str(tmp_path / "lp"), fingerprint="other@2")
    cfg = json.loads((tmp_path / "lp" / "config.json").read_text())
    (tmp_path / "lp" / "config.json").write_text(json.dumps(dict(cfg, version=99)))
    with pytest.raises(LengthPredictorFormatError, match="version 99"):
        prr_ext.LengthPredictor.load(str(tmp_path / "lp"))
    (tmp_path / "lp" / "config.json").write_text("{not json")
    with pytest.raises(LengthPredictorFormatError, match="unreadable"):
        prr_ext.LengthPredictor.load(str(tmp_path / "lp"))
    with pytest.raises(LengthPredictorFormatError, match="is not a length-predictor folder"):
        prr_ext.LengthPredictor.load(str(tmp_path / "missing"))


@pytest.mark.parametrize("kw,match", [
    (dict(lengths=torch.zeros(50)), "lengths must be finite and >= 1"),
    (dict(lengths=torch.full((50,), float("inf"))), "lengths must be finite and >= 1"),
    (dict(lengths=torch.full((50,), float("nan"))), "lengths must be finite and >= 1"),
    (dict(ridge=-1.0), "ridge must be finite and >= 0"),
    (dict(ridge=float("inf")), "ridge must be finite and >= 0"),
    (dict(seed=2**64), "seed must lie in"),
    (dict(lengths=torch.ones(49)), "lengths has 49 values for 50"),
    (dict(features=torch.ones(50, 3, dtype=torch.int64)), "features must be a float"),
    (dict(features=torch.full((50, 3), float("nan"))), "NaN or Inf"),
    (dict(calibration_fraction=1.0), "calibration_fraction must lie in"),
])
def test_fit_rejects_bad_input(kw, match):
    args = dict(features=torch.randn(50, 3, dtype=torch.float64), lengths=torch.full((50,), 10.0))
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        prr_ext.LengthPredictor.fit(args.pop("features"), args.pop("lengths"), **args)


@pytest.mark.parametrize("kw,match", [
    (dict(ridge="1"), "ridge must be a real number, got str"),
    (dict(ridge=None), "ridge must be a real number"),
    (dict(calibration_fraction="0.2"), "calibration_fraction must be a real number, got str"),
    (dict(seed="a"), "seed must be an int, got str"),
    (dict(seed=1.5), "seed must be an int, got float"),
])
def test_fit_rejects_parameters_of_the_wrong_type(kw, match):
    x, y = synthetic(50, 6)
    with pytest.raises(TypeError, match=match):
        prr_ext.LengthPredictor.fit(x, y, **kw)


def test_fit_that_cannot_be_solved_says_what_to_do():
    x, y = synthetic(80, 7, F=3)
    dup = x.clone()
    dup[:, 2] = dup[:, 0]  # the Gram matrix of the standardised features is singular
    for bad in (dup, x[:3]):  # and with fewer pairs (2 fitted on) than features
        with pytest.raises(ValueError, match=r"ridge=0 fit is singular .*use ridge > 0"):
            prr_ext.LengthPredictor.fit(bad, y[: bad.shape[0]], ridge=0, calibration_fraction=0.3)
    lp = prr_ext.LengthPredictor.fit(dup, y, ridge=1e-3)  # and the advice works
    assert bool(torch.isfinite(lp.weight).all()) and float(lp.weight.abs().sum()) > 0.1
    assert bool(torch.isfinite(prr_ext.LengthPredictor.fit(x, y, ridge=0).weight).all())  # full rank needs none
    with pytest.raises(ValueError, match="the fit overflows float64.*scale the features"):
        prr_ext.LengthPredictor.fit(x * 1e200, y)


def test_overflowing_prediction_gives_the_maximum_not_the_minimum():
    x, y = synthetic(400, 8)
    lp = prr_ext.LengthPredictor.fit(x, y)
    g = torch.Generator().manual_seed(9)
    normal = x[:1]
    up = lp.mean + lp.std * lp.weight.sign() * (1e4 + torch.rand(lp.n_features, generator=g, dtype=torch.float64))
    down = lp.mean - lp.std * lp.weight.sign() * (1e4 + torch.rand(lp.n_features, generator=g, dtype=torch.float64))
    q = torch.cat([normal, up[None], down[None]])
    log = lp.predict_log(q)
    assert float(log[1]) > 1000 and float(log[2]) < -1000  # exp overflows to inf for row 1, underflows for row 2
    first = math.ceil(math.exp(float(log[0]) + lp.margin(0.05)) / 32) * 32
    assert lp.budget(q, 0.05, multiple=32, maximum=500).tolist() == [min(first, 480), 480, 32]
    # Without a maximum, a length beyond MAX_BUDGET is an error, finite (exp(25)) or not.
    big = lp.mean + lp.std * lp.weight.sign() * (25 - lp.bias) / lp.weight.abs().sum()
    assert math.exp(float(lp.predict_log(big[None]))) > MAX_BUDGET
    for rows, which in ((q, r"\[1\]"), (torch.cat([big[None], normal]), r"\[0\]")):
        with pytest.raises(ValueError, match=which + r" of features predict lengths above MAX_BUDGET.*pass maximum="):
            lp.budget(rows, 0.05, multiple=32)
    assert lp.budget(q[[0, 2]], 0.05, multiple=32).tolist() == [first, 32]


def test_nan_prediction_is_an_error():
    g = torch.Generator().manual_seed(10)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    lp = prr_ext.LengthPredictor(rand(2) + 0.5, 3.0, rand(2), 1e-10 * (rand(2) + 1), rand(50) - 0.5)
    q = rand(3, 2) + 1.0
    q[1] *= torch.tensor([1e300, -1e300], dtype=torch.float64)  # +inf + -inf once standardised
    with pytest.raises(ValueError, match=r"rows \[1\] of features overflow the prediction to NaN"):
        lp.budget(q, 0.1, multiple=4, maximum=64)
    assert lp.budget(q[[0, 2]], 0.1, multiple=4, maximum=64).shape == (2,)


def test_constructor_rejects_bad_parts():
    g = torch.Generator().manual_seed(11)
    w, mu, res = (torch.randn(n, generator=g, dtype=torch.float64) for n in (3, 3, 20))
    sd = torch.rand(3, generator=g, dtype=torch.float64) + 0.1
    assert prr_ext.LengthPredictor(w, 1.0, mu, sd, res).n_features == 3  # the good parts pass
    with pytest.raises(ValueError, match="std must be > 0"):
        prr_ext.LengthPredictor(w, 1.0, mu, -sd, res)
    with pytest.raises(ValueError, match="weight, mean and std must have one shape"):
        prr_ext.LengthPredictor(w, 1.0, mu[:2], sd, res)
    with pytest.raises(ValueError, match="bias must be finite"):
        prr_ext.LengthPredictor(w, float("nan"), mu, sd, res)
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        prr_ext.LengthPredictor(w.tolist(), 1.0, mu, sd, res)


def _corrupt(path, cfg=None, tensors=None):
    """Rewrite a saved predictor's config (cfg(dict) -> JSON-able) and tensors (tensors(dict) -> None, in place)."""
    from safetensors.torch import load_file, save_file

    cfg_path, st_path = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
    if cfg is not None:
        with open(cfg_path) as f:
            c = json.load(f)
        with open(cfg_path, "w") as f:
            json.dump(cfg(c), f)
    if tensors is not None:
        t = load_file(st_path)
        tensors(t)
        save_file(t, st_path)


def _set(t, name, value):
    t[name] = value


@pytest.mark.parametrize("cfg,tensors,file,match", [
    (lambda c: [1, 2], None, "/config.json", "holds a JSON list, not an object"),
    (lambda c: {k: v for k, v in c.items() if k != "bias"}, None, "/config.json", "missing key 'bias'"),
    (lambda c: {k: v for k, v in c.items() if k != "n_features"}, None, "/config.json", "missing key 'n_features'"),
    (lambda c: dict(c, bias="x"), None, ": ", "bias must be a real number"),
    (lambda c: dict(c, bias=None), None, ": ", "bias must be a real number"),
    (lambda c: dict(c, meta=[1, 2]), None, "/config.json", "meta an object"),
    (lambda c: dict(c, fingerprint=5), None, "/config.json", "fingerprint must be a string"),
    (lambda c: dict(c, n_features=5), None, ": ", r"weight has shape \(6,\), config.json says n_features=5"),
    (None, lambda t: _set(t, "weight", t["weight"][None]), ": ", r"weight has shape \(1, 6\)"),
    (None, lambda t: t.pop("residuals"), "/model.safetensors", r"tensors missing: \['residuals'\]"),
    (None, lambda t: _set(t, "mean", t["mean"][:4]), ": ", "weight, mean and std must have one shape"),
    (None, lambda t: _set(t, "residuals", t["residuals"][:0]), ": ", "at least one calibration residual"),
    (None, lambda t: _set(t, "residuals", t["residuals"].reshape(5, -1)), ": ", "residuals must be a 1-D float"),
    (None, lambda t: _set(t, "std", t["std"].to(torch.int64)), ": ", "std must be a 1-D float tensor"),
    (None, lambda t: t["weight"].__setitem__(2, float("nan")), ": ", "weight holds NaN or Inf"),
    (None, lambda t: t["mean"].__setitem__(0, float("inf")), ": ", "mean holds NaN or Inf"),
    (None, lambda t: t["residuals"].__setitem__(-1, float("-inf")), ": ", "residuals holds NaN or Inf"),
    (None, lambda t: t["std"].__setitem__(1, -t["std"][1]), ": ", "std must be > 0 everywhere"),
])
def test_load_rejects_malformed_folders(tmp_path, cfg, tensors, file, match):
    x, y = synthetic(100, 12)
    lp = prr_ext.LengthPredictor.fit(x, y, fingerprint="tiny@1")
    path = str(tmp_path / "lp")
    lp.save(path)
    _corrupt(path, cfg, tensors)
    with pytest.raises(LengthPredictorFormatError, match=match) as e:
        prr_ext.LengthPredictor.load(path)
    assert str(e.value).startswith(path + file)  # names the file, or the folder and the part


def test_predict_and_budget_reject_bad_input():
    x, y = synthetic(200, 5)
    lp = prr_ext.LengthPredictor.fit(x, y)
    with pytest.raises(ValueError, match="fitted on 6"):
        lp.predict_log(torch.randn(3, 5, dtype=torch.float64))
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="target_truncation"):
            lp.margin(bad)
    for bad in ("0.02", None, True, torch.tensor([0.02, 0.05])):
        with pytest.raises(TypeError, match=r"target_truncation must be a real number, got"):
            lp.margin(bad)
        with pytest.raises(TypeError, match=r"target_truncation must be a real number, got"):
            lp.budget(x, bad, maximum=1024)
    with pytest.raises(ValueError, match="multiple must be a positive int"):
        lp.budget(x, 0.1, multiple=0)
    with pytest.raises(TypeError, match="multiple must be an int, got float"):
        lp.budget(x, 0.1, multiple=4.0)
    with pytest.raises(ValueError, match=r"maximum must be an int in \[multiple \(8\), MAX_BUDGET"):
        lp.budget(x, 0.1, multiple=8, maximum=2**70)


def test_margin_takes_numbers_and_one_element_tensors(rnd):
    """A number, a NumPy scalar or a one-element tensor (e.g. a swept hyper-parameter) gives the margin of its
    value."""
    import numpy as np

    x, y = synthetic(300, 7)
    lp = prr_ext.LengthPredictor.fit(x, y)
    a = rnd.uniform(0.05, 0.5)  # 75 calibration residuals: a finite margin from 0.05 on
    want = lp.margin(a)
    assert math.isfinite(want) and want > lp.margin(0.9)  # it depends on the rate: the comparisons below can fail
    for same in (np.float64(a), torch.tensor(a, dtype=torch.float64), torch.tensor([a], dtype=torch.float64)):
        assert lp.margin(same) == want, same
    a32 = torch.tensor(a)  # float32: the margin of the float32 value
    assert lp.margin(a32) == lp.margin(float(a32)) == lp.margin(np.float32(a32.item()))


def test_pooled_features_ignore_padding():
    h = torch.randn(2, 4, 3)
    am = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    f = pooled_features(h, am)
    assert torch.allclose(f[0], h[0, 2:].mean(0)) and torch.allclose(f[1], h[1].mean(0))
    with pytest.raises(ValueError, match="attention_mask must be"):
        pooled_features(h, am[:, :3])
