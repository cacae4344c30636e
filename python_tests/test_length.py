"""prr_ext.LengthPredictor: log-length regression, split-conformal margin for a target truncation rate, budgets
rounded to a block multiple, storage as safetensors + JSON, and its errors."""
from __future__ import annotations

import json
import math

import pytest
import torch

import prr_ext
from prr_ext.length import LengthPredictorFormatError, pooled_features


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
    (dict(lengths=torch.zeros(50)), "lengths must be >= 1"),
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


def test_predict_and_budget_reject_bad_input():
    x, y = synthetic(200, 5)
    lp = prr_ext.LengthPredictor.fit(x, y)
    with pytest.raises(ValueError, match="fitted on 6"):
        lp.predict_log(torch.randn(3, 5, dtype=torch.float64))
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="target_truncation"):
            lp.margin(bad)
    with pytest.raises(ValueError, match="multiple must be a positive int"):
        lp.budget(x, 0.1, multiple=0)


def test_pooled_features_ignore_padding():
    h = torch.randn(2, 4, 3)
    am = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    f = pooled_features(h, am)
    assert torch.allclose(f[0], h[0, 2:].mean(0)) and torch.allclose(f[1], h[1].mean(0))
    with pytest.raises(ValueError, match="attention_mask must be"):
        pooled_features(h, am[:, :3])
