"""prr_ext.Controller: construction, files, the reference forward, the temperature map, and the packed buffer the op
consumes."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

import prr_ext
from prr_ext import reference as R
from prr_ext.controller import BASE_FEATURES, NUM_BASE_FEATURES

from helpers import (Shape, assert_step_matches, clone_for_reference, make_canvas, make_state, normal_logits,
                     random_controller)


@pytest.mark.parametrize("hidden,extra", [((16,), 0), ((32, 32), 0), ((8, 5), 3), ((64,), 2)])
def test_save_load_round_trip_is_bitwise(rnd, tmp_path, hidden, extra):
    c = random_controller(rnd, extra)
    if c.hidden != hidden:  # random_controller picks its own widths: rebuild with the requested ones
        base = prr_ext.Controller.init(rnd.int(0, 999), hidden=hidden, extra_features=extra)
        t = dict(base.tensors, in_mean=rnd.randn(13 + extra).float(), in_std=(rnd.rand(13 + extra) + 0.5).float())
        c = prr_ext.Controller(t, extra_features=extra, t_max=rnd.uniform(1, 3), t_min=rnd.uniform(0.05, 0.95))
    path = str(tmp_path / "c")
    c.save(path)
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors"]
    d = prr_ext.Controller.load(path)
    assert sorted(d.tensors) == sorted(c.tensors)
    for k in c.tensors:
        assert d.tensors[k].dtype == torch.float32 and torch.equal(d.tensors[k], c.tensors[k]), k
    assert (d.t_max, d.t_min, d.extra_features, d.hidden) == (c.t_max, c.t_min, c.extra_features, hidden)
    assert torch.equal(d.packed("cpu"), c.packed("cpu"))
    f = rnd.randn(50, c.in_features).float()
    # (not bitwise: the BLAS behind the fp32 matmul may take another path for differently aligned weights)
    torch.testing.assert_close(d.scores(f), c.scores(f), rtol=1e-6, atol=1e-7)
    with open(os.path.join(path, "config.json")) as fh:
        cfg = json.load(fh)
    assert cfg["format"] == "prr_ext.controller" and cfg["version"] == 1
    assert cfg["in_features"] == 13 + extra and cfg["hidden"] == list(hidden)
    assert cfg["feature_names"] == list(BASE_FEATURES) and len(BASE_FEATURES) == NUM_BASE_FEATURES == 13


def test_saved_and_loaded_controller_decode_identically(rnd, tmp_path):
    c = random_controller(rnd)
    c.save(str(tmp_path / "c"))
    d = prr_ext.Controller.load(str(tmp_path / "c"))
    s = Shape(B=2, P=3, G=16, BL=8, steps=8, V=29, mask_id=rnd.int(0, 28))
    x, plen = make_canvas(rnd, s)
    a = make_state(rnd, x, s, plen, prr_ext.PRR(c, tau=0.7), temperature=0.6)
    b = a.clone()
    b.policy = prr_ext.PRR(d, tau=0.7)
    b.controller_buf = d.packed("cpu")
    while not a.done:
        lg = normal_logits(rnd, s.B, s.L, s.V, s.mask_id).float()
        assert torch.equal(prr_ext.step(lg, a), prr_ext.step(lg, b))
        assert torch.equal(a.last_stats.nan_to_num(-1), b.last_stats.nan_to_num(-1))
    assert b.done and torch.equal(a.x, b.x)


def test_init_is_deterministic_and_private(rnd):
    seed = rnd.int(0, 10 ** 6)
    g_state = torch.get_rng_state()
    a, b = prr_ext.Controller.init(seed), prr_ext.Controller.init(seed)
    assert torch.equal(torch.get_rng_state(), g_state), "Controller.init touched the global RNG"
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    c = prr_ext.Controller.init(seed + 1)
    assert not torch.equal(a.tensors["w0"], c.tensors["w0"])
    assert a.hidden == (32, 32) and a.in_features == 13 and a.extra_features == 0
    assert torch.equal(a.tensors["in_mean"], torch.zeros(13)) and torch.equal(a.tensors["in_std"], torch.ones(13))
    one = prr_ext.Controller.init(seed, hidden=(7,), extra_features=4)
    assert one.hidden == (7,) and one.in_features == 17 and one.dims() == [17, 7, 0]
    assert set(one.tensors) == {"in_mean", "in_std", "w0", "b0", "w_out", "b_out"}
    for name, t in a.tensors.items():  # uniform init within +-1/sqrt(fan_in)
        if name.startswith(("w", "b")):
            fan_in = {"w0": 13, "b0": 13, "w1": 32, "b1": 32, "w_out": 32, "b_out": 32}[name]
            assert t.abs().max() <= 1 / math.sqrt(fan_in)


def test_scores_shape_and_range(rnd):
    c = random_controller(rnd, 2)
    for shape in [(0,), (1,), (37,), (3, 5), (2, 3, 4)]:
        f = (rnd.randn(*shape, c.in_features) * 3).float()
        s = c.scores(f)
        assert s.shape == shape and s.dtype == torch.float32
        # sigmoid maps into (0, 1) mathematically; in fp32 it rounds to exactly 1.0 once the pre-activation
        # exceeds ~17, so the stored score lies in the closed interval (and is never NaN)
        assert ((s >= 0) & (s <= 1)).all()
    f = rnd.randn(20, c.in_features).float()
    s = c.scores(f)
    logit = torch.log(s) - torch.log1p(-s)
    assert ((s > 0) & (s < 1))[logit.abs() < 15].all()  # unsaturated scores stay strictly inside (0, 1)
    assert torch.equal(c.scores(f.double()), c.scores(f))  # computed in fp32 whatever the input dtype
    torch.testing.assert_close(c.scores(f)[5:9], c.scores(f[5:9]), rtol=1e-6, atol=1e-7)  # row-wise
    with pytest.raises(ValueError, match=r"features: expected last dim 15, got 13"):
        c.scores(rnd.randn(4, 13).float())


def test_scores_formula(rnd):
    """scores = sigmoid(w_out silu(w1 silu(w0 (f - mean) / std + b0) + b1) + b_out), computed independently."""
    c = random_controller(rnd, 1)
    t = c.tensors
    f = rnd.randn(9, c.in_features)
    h = (f - t["in_mean"].double()) / t["in_std"].double()
    for w, b in [("w0", "b0"), ("w1", "b1")]:
        if w in t:
            z = h @ t[w].double().T + t[b].double()
            h = z * torch.sigmoid(z)
    want = torch.sigmoid(h @ t["w_out"].double().T + t["b_out"].double()).squeeze(-1)
    torch.testing.assert_close(c.scores(f.float()).double(), want, rtol=1e-5, atol=1e-6)


def test_temperature_map(rnd):
    c = random_controller(rnd)
    assert c.t_max >= 1.0 and 0.0 < c.t_min < 1.0
    T = c.temperature(torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(T, torch.tensor([c.t_max, math.sqrt(c.t_max * c.t_min), c.t_min]), rtol=1e-6,
                               atol=0)
    assert T[0] >= 1.0 and T[2] < 1.0, "T(0) must explore (>= 1), T(1) sharpen (< 1)"
    s = torch.sort(rnd.rand(200)).values.float()
    assert (c.temperature(s)[1:] <= c.temperature(s)[:-1]).all(), "T(s) must decrease with s"
    d = prr_ext.Controller.init(0)
    assert (d.t_max, d.t_min) == (1.5, 0.25)


@pytest.mark.parametrize("extra,hidden", [(0, (32, 32)), (3, (16,))])
def test_packed_layout(rnd, extra, hidden):
    """packed() = in_mean | in_std | w0^T | b0 | [w1^T | b1] | w_out | b_out | log t_max | log t_min (the weight
    matrices input-major), the size the op checks, cached per device."""
    base = prr_ext.Controller.init(rnd.int(0, 99), hidden=hidden, extra_features=extra)
    c = prr_ext.Controller(dict(base.tensors, in_mean=rnd.randn(13 + extra).float()), extra_features=extra,
                           t_max=rnd.uniform(1, 2), t_min=rnd.uniform(0.1, 0.9))
    t = c.tensors
    names = ["in_mean", "in_std", "w0", "b0"] + (["w1", "b1"] if len(hidden) == 2 else []) + ["w_out", "b_out"]
    parts = [t[n].t() if n in ("w0", "w1") else t[n] for n in names]
    want = torch.cat([p.reshape(-1) for p in parts] + [torch.tensor([math.log(c.t_max), math.log(c.t_min)])])
    buf = c.packed("cpu")
    assert buf.dtype == torch.float32 and buf.is_contiguous() and torch.equal(buf, want.float())
    n_in, h1, h2 = c.dims()
    assert buf.numel() == 2 * n_in + h1 * n_in + h1 + h2 * h1 + h2 + (h2 or h1) + 1 + 2
    assert c.packed("cpu") is buf and c.packed(torch.device("cpu")) is buf


@pytest.mark.parametrize("shaping", ["temperature", "power", "weighted"])
def test_op_consumes_packed_controller(rnd, shaping):
    """The op's in-kernel controller (reading packed()) == Controller.scores on the reference's features: the
    op's per-token scores and temperatures match the reference's, and the op fed those reference scores as
    external `scores` commits exactly what the op with the controller commits."""
    extra = rnd.int(0, 2)
    c = random_controller(rnd, extra)
    s = Shape(B=3, P=4, G=16, BL=8, steps=8, V=33, mask_id=rnd.int(0, 32))
    x, plen = make_canvas(rnd, s)
    pol = prr_ext.PRR(c, tau=rnd.uniform(0.3, 0.9), shaping=shaping, union_schedule=rnd.coin())
    with_ctrl = make_state(rnd, x, s, plen, pol, temperature=rnd.choice([0.0, 0.7]))
    ref = clone_for_reference(with_ctrl)
    with_scores = with_ctrl.clone()
    while not with_ctrl.done:
        lg = normal_logits(rnd, s.B, s.L, s.V, s.mask_id).float()
        kw = {"extra_features": rnd.randn(s.B, s.L, extra).float()} if extra else {}
        probe = clone_for_reference(ref)
        _, _, st_ref = R.step(lg, probe, **kw)
        ref_scores = st_ref[..., R.STAT_SCORE].nan_to_num(0.5)  # = Controller.scores(reference features)
        commit = assert_step_matches(with_ctrl, ref, lg, **kw)  # op (packed controller) == reference
        torch.testing.assert_close(with_ctrl.last_stats[..., R.STAT_SCORE], st_ref[..., R.STAT_SCORE], rtol=1e-5,
                                   atol=1e-6, equal_nan=True)
        c2 = prr_ext.step(lg, with_scores, scores=ref_scores)
        assert torch.equal(commit, c2) and torch.equal(with_ctrl.x, with_scores.x)
    assert with_scores.done


def test_reference_features_at_block_entry(rnd):
    """At a row's first step in a block, the reference's controller input is the 13 documented features
    (controller.BASE_FEATURES) computed here from their definitions; the op's score matches."""
    c = random_controller(rnd)
    s = Shape(B=2, P=5, G=16, BL=8, steps=4, V=41, mask_id=rnd.int(0, 40))
    x, plen = make_canvas(rnd, s, ragged=True, prefill=0.25)
    st = make_state(rnd, x, s, plen, prr_ext.PRR(c, tau=0.5))
    ref = clone_for_reference(st)
    lg = normal_logits(rnd, s.B, s.L, s.V, s.mask_id).float()
    x0 = st.x.clone()
    assert_step_matches(st, ref, lg)
    blk = 0
    lo = s.P
    for b in range(s.B):
        row_len = float(plen[b]) + s.G
        masked = (x0[b, lo:lo + s.BL] == s.mask_id).nonzero().flatten()
        if masked.numel() == 0:
            continue
        p = torch.softmax(lg[b, lo + masked].double(), -1)
        pn = p.clone()
        pn[:, s.mask_id] = -1
        top2 = pn.topk(2, -1).values
        H = -(p * p.log()).sum(-1)
        feats = torch.stack([
            torch.full_like(H, (row_len - float((x0[b, s.P:] == s.mask_id).sum())) / row_len),  # global commit rate
            torch.full_like(H, 0.0),                        # NFE so far / steps
            torch.full_like(H, (float(plen[b]) + blk * s.BL) / row_len),
            torch.full_like(H, s.BL / row_len),
            torch.full_like(H, (s.BL - masked.numel()) / s.BL),
            masked.double() / s.BL,                         # position in block
            torch.zeros_like(H), torch.zeros_like(H),       # step in block ratio, since last flip
            top2[:, 0], top2[:, 0] - top2[:, 1], H / math.log(s.V),
            torch.zeros_like(H),                            # steps since the argmax changed (first step)
            torch.zeros_like(H),                            # previous top-1 prob (none yet)
        ], -1)
        want = c.scores(feats.float())
        torch.testing.assert_close(st.last_stats[b, lo + masked, R.STAT_SCORE], want, rtol=1e-4, atol=1e-5)


CONTROLLER_ERRORS = [
    ("t_max-below-1", lambda: prr_ext.Controller(prr_ext.Controller.init(0).tensors, t_max=0.9),
     r"temperature map needs t_max >= 1"),
    ("t_min-1", lambda: prr_ext.Controller(prr_ext.Controller.init(0).tensors, t_min=1.0), r"0 < t_min < 1"),
    ("t_min-0", lambda: prr_ext.Controller(prr_ext.Controller.init(0).tensors, t_min=0.0), r"0 < t_min < 1"),
    ("t_max-inf", lambda: prr_ext.Controller(prr_ext.Controller.init(0).tensors, t_max=math.inf), r"temperature map"),
    ("three-layers", lambda: prr_ext.Controller.init(0, hidden=(8, 8, 8)),
     r"hidden must hold 1 or 2 widths in \[1, 64\], got \(8, 8, 8\)"),
    ("no-layers", lambda: prr_ext.Controller.init(0, hidden=()), r"hidden must hold 1 or 2 widths"),
    ("too-wide", lambda: prr_ext.Controller.init(0, hidden=(65,)), r"hidden must hold 1 or 2 widths in \[1, 64\]"),
    ("zero-wide", lambda: prr_ext.Controller.init(0, hidden=(0,)), r"hidden must hold 1 or 2 widths in \[1, 64\]"),
    # a string would be read digit by digit: "32" -> layers of widths 3 and 2
    ("hidden-str", lambda: prr_ext.Controller.init(0, hidden="32"), r"hidden must be a sequence of ints"),
    ("hidden-int", lambda: prr_ext.Controller.init(0, hidden=32), r"hidden must be a sequence of ints"),
    ("hidden-float", lambda: prr_ext.Controller.init(0, hidden=(32.0,)), r"hidden must be a sequence of ints"),
    ("init-extra-float", lambda: prr_ext.Controller.init(0, extra_features=2.7),
     r"extra_features must be an int >= 0, got 2\.7"),
    ("init-extra-negative", lambda: prr_ext.Controller.init(0, extra_features=-1), r"extra_features must be an int"),
    ("extra-str", lambda: prr_ext.Controller(prr_ext.Controller.init(0).tensors, extra_features="0"),
     r"extra_features must be an int, got '0'"),
    ("w1-without-w0", lambda: prr_ext.Controller({k: v for k, v in prr_ext.Controller.init(0).tensors.items()
                                                  if k != "w0"}), r"controller needs w0"),
    ("extra-mismatch", lambda: prr_ext.Controller(prr_ext.Controller.init(0).tensors, extra_features=1),
     r"expected shape \(14,\)"),
]


@pytest.mark.parametrize("name,make,match", CONTROLLER_ERRORS, ids=[e[0] for e in CONTROLLER_ERRORS])
def test_controller_rejects(name, make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_tuned_tau_sidecar(tmp_path):
    """policy.json: the tau a training run tuned; absent -> None; unreadable -> ControllerFormatError naming it."""
    from prr_ext.controller import TUNED_TAU_FILE, ControllerFormatError, tuned_tau
    assert tuned_tau(str(tmp_path)) is None
    (tmp_path / TUNED_TAU_FILE).write_text('{"tau": 0.75, "trained_by": "test"}')
    assert tuned_tau(str(tmp_path)) == 0.75
    for bad in ('{"t": 1}', "not json", '{"tau": "high"}'):
        (tmp_path / TUNED_TAU_FILE).write_text(bad)
        with pytest.raises(ControllerFormatError, match="policy.json holds no readable tau"):
            tuned_tau(str(tmp_path))
