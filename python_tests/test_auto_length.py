"""generate(gen_length="auto"): per-row canvases from a length predictor, bucketing, truncation recovery (extend /
rerun) and its cost, and the errors. A toy model whose answer length is written in the prompt makes every expected
length known exactly."""
from __future__ import annotations

import json
import math
import types

import pytest
import torch

import prr_ext
from prr_ext.length import LengthPredictorFormatError

V, MASK, EOS, FILL = 12, 11, 1, 5


class LengthToy(torch.nn.Module):
    """Answers FILL * k then EOS, with k = the prompt's first token (2..9); every logit is confident. Hidden states
    are the tokens' one-hot rows, so the pooled prompt features carry k."""

    def __init__(self, prompt_width: int):
        super().__init__()
        self.P = prompt_width
        self.scale = torch.nn.Parameter(torch.tensor([8.0]))  # (a parameter, for the fingerprint)

    def forward(self, x, attention_mask=None, output_hidden_states=False):
        B, L = x.shape
        k = x[:, :1].clamp(2, 9)  # [B, 1]
        pos = torch.arange(L)[None, :] - self.P  # position in the generation region
        target = torch.where(pos < k, torch.full_like(pos, FILL), torch.full_like(pos, EOS))
        logits = torch.full((B, L, V), -4.0)
        logits.scatter_(2, target[..., None], float(self.scale))
        logits[..., MASK] = -30.0
        hidden = torch.nn.functional.one_hot(x.clamp(0, V - 1), V).float() if output_hidden_states else None
        return types.SimpleNamespace(logits=logits, hidden_states=hidden)


def prompts(ks):
    return torch.tensor([[k, 3] for k in ks])


def fitted(model, n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    ks = torch.randint(2, 10, (n,), generator=g)
    feats = prr_ext.query_features(model, prompts(ks.tolist()))
    return prr_ext.LengthPredictor.fit(feats, ks + 1, ridge=1e-3, fingerprint=prr_ext.model_fingerprint(model),
                                       meta={"max_length": 16})


def run(model, lp, ks, **kw):
    args = dict(gen_length="auto", length_predictor=lp, target_truncation=0.02, block_length=4, steps=16,
                mask_id=MASK, eos_id=EOS, policy=prr_ext.Threshold(0.9))
    args.update(kw)
    return prr_ext.generate(model, prompts(ks), **args)


def test_each_row_gets_its_own_block_multiple_canvas():
    model = LengthToy(2)
    lp = fitted(model)
    ks = [2, 9, 5, 3, 7]
    out = run(model, lp, ks)
    oracle = torch.tensor([4 * math.ceil((k + 1) / 4) for k in ks])
    # near-exact features: the oracle, or one block more where the margin pushes a length just past a block edge
    assert bool(((out.gen_lengths == oracle) | (out.gen_lengths == oracle + 4)).all()), (out.gen_lengths, oracle)
    assert bool((out.gen_lengths % 4 == 0).all()) and not out.truncated.any()
    for b, k in enumerate(ks):
        gen = out.generated[b]
        assert gen[:k].tolist() == [FILL] * k and int(gen[k]) == EOS  # the answer, then EOS
        assert (gen[int(out.gen_lengths[b]):] == EOS).all()  # past the row's canvas: EOS
    fixed = prr_ext.generate(model, prompts(ks), gen_length=16, block_length=4, steps=16, mask_id=MASK, eos_id=EOS,
                             policy=prr_ext.Threshold(0.9))
    assert torch.equal(fixed.token_forwards, fixed.nfe.double() * 18)  # (P + G) * NFE
    assert float(out.token_forwards.sum()) < float(fixed.token_forwards.sum())
    assert torch.equal(out.generated[:, :2], fixed.generated[:, :2])


def under(model):
    """A predictor that always says 2 (budget 4 with a block of 4): rows longer than that truncate."""
    feats = prr_ext.query_features(model, prompts([2, 3, 4]))
    return prr_ext.LengthPredictor(torch.zeros(feats.shape[1]), math.log(2.0), torch.zeros(feats.shape[1]),
                                   torch.ones(feats.shape[1]), torch.zeros(200),
                                   fingerprint=prr_ext.model_fingerprint(model), meta={"max_length": 16})


@pytest.mark.parametrize("mode", ["extend", "rerun"])
def test_truncated_rows_recover_and_pay_for_it(mode):
    model = LengthToy(2)
    ks = [2, 5, 9]
    out = run(model, under(model), ks, truncation=mode)
    assert out.truncated.tolist() == [False, True, True]
    assert out.gen_lengths.tolist() == [4, 8, 16]  # 4 -> 8 (k = 5 fits) and 4 -> 8 -> 16 (k = 9)
    for b, k in enumerate(ks):
        gen = out.generated[b]
        assert gen[:k].tolist() == [FILL] * k and int(gen[k]) == EOS
    assert (out.token_forwards[1:] > out.token_forwards[0]).all()  # the recovered rows paid for more forwards


def test_extend_is_cheaper_than_rerun_and_none_leaves_the_truncation():
    model = LengthToy(2)
    ext = run(model, under(model), [9], truncation="extend")
    rer = run(model, under(model), [9], truncation="rerun")
    assert float(ext.token_forwards) < float(rer.token_forwards)
    left = run(model, under(model), [9], truncation=None)
    assert left.gen_lengths.tolist() == [4] and left.truncated.tolist() == [True]
    assert not (left.generated[0] == EOS).any()


@pytest.mark.parametrize("kw,err,match", [
    (dict(length_predictor=None), TypeError, "length_predictor"),
    (dict(truncation="grow"), ValueError, "truncation"),
    (dict(block_length=None), ValueError, "block_length"),
    (dict(max_gen_length=18), ValueError, "multiple of block_length"),
    (dict(gen_length="long"), ValueError, "auto"),
    (dict(style="dream", policy=None, block_length=None), ValueError, "style='llada'"),
])
def test_bad_arguments(kw, err, match):
    model = LengthToy(2)
    with pytest.raises(err, match=match):
        run(model, fitted(model, n=40), [3], **kw)


def test_a_predictor_for_another_model_is_refused():
    model, other = LengthToy(2), LengthToy(2)
    with torch.no_grad():
        other.scale.fill_(7.0)
    lp = fitted(other, n=40)
    with pytest.raises(LengthPredictorFormatError, match="fitted for"):
        run(model, lp, [3])


def test_a_predictor_for_another_model_is_refused_through_an_adapter():
    """A call adapter that wraps the model in .model (prr_ext.hub's MaskedLMCall, DreamShiftedLogits) is checked
    like the model; a callable without a module says that the predictor's model is not checked."""
    model, other = LengthToy(2), LengthToy(2)
    with torch.no_grad():
        other.scale.fill_(7.0)

    class Adapter:
        def __init__(self, inner):
            self.model = inner

        def __call__(self, x, **kw):
            return self.model(x, **kw)

    with pytest.raises(LengthPredictorFormatError, match="fitted for"):
        run(Adapter(model), fitted(other, n=40), [3])
    with pytest.warns(UserWarning, match="not a torch.nn.Module .* so that is not checked"):
        run(lambda x, **kw: model(x, **kw), fitted(other, n=40), [3])


@pytest.mark.parametrize("kw", [dict(length_predictor="fitted"), dict(target_truncation=0.05),
                                dict(max_gen_length=64), dict(truncation="rerun")])
def test_auto_only_options_need_auto(kw):
    """Set with a fixed gen_length, an option of the length prediction is an error (a forgotten "auto"), not
    ignored."""
    model = LengthToy(2)
    if kw.get("length_predictor") == "fitted":
        kw = dict(length_predictor=fitted(model, n=40))
    name = next(iter(kw))
    with pytest.raises(ValueError, match=rf"{name} apply to gen_length='auto'; with gen_length=8 leave it out"):
        prr_ext.generate(model, prompts([3]), gen_length=8, block_length=4, steps=8, mask_id=MASK, **kw)


def test_query_features_need_hidden_states():
    def no_hidden(x, **kw):
        return types.SimpleNamespace(logits=torch.zeros(*x.shape, V))

    with pytest.raises(ValueError, match="hidden_states"):
        prr_ext.query_features(no_hidden, prompts([3]))


def test_train_length_command_writes_a_loadable_predictor(tmp_path, capsys):
    from prr_testbed import load_model, train_length

    rep = train_length.main(["--families", "sudoku", "--train", "8", "--test", "4", "--device", "cpu",
                             "--no-progress", "--out", str(tmp_path / "lp")])
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'lp'}/config.json" in out
    assert rep["n"] == 4 and 0.0 <= rep["truncation_rate"] <= 1.0 and rep["train_pairs"] == 8
    lp = prr_ext.LengthPredictor.load(str(tmp_path / "lp"), fingerprint=prr_ext.model_fingerprint(load_model()))
    assert lp.meta["max_length"] == 20 and lp.meta["families"] == ["sudoku"]


@pytest.mark.parametrize("argv,match", [(["--target-truncation", "1.5"], "--target-truncation"),
                                        (["--max-length", "20", "--block-length", "7"], "--block-length"),
                                        (["--families", "chess"], "--families")])
def test_train_length_usage_errors(argv, match, capsys, tmp_path):
    from prr_testbed import train_length

    with pytest.raises(SystemExit) as e:
        train_length.parse_args(argv + ["--out", str(tmp_path / "o")])
    assert e.value.code == 2 and match in capsys.readouterr().err


@pytest.mark.parametrize("eos_fill", [False, True])
@pytest.mark.parametrize("make", [lambda: prr_ext.LowConfidence(), lambda: prr_ext.Threshold(0.9),
                                  lambda: prr_ext.PRR(prr_ext.Controller.init(0), tau=0.9),
                                  lambda: prr_ext.R2(), lambda: prr_ext.SlowFast(explore_steps=2),
                                  lambda: prr_ext.KLASS()],
                         ids=["lowconf", "threshold", "prr", "r2", "slowfast", "klass"])
def test_every_policy_and_eos_fill(make, eos_fill):
    model = LengthToy(2)
    ks = [2, 9, 5]
    out = run(model, fitted(model), ks, policy=make(), eos_fill=eos_fill)
    for b, k in enumerate(ks):
        assert out.generated[b, :k + 1].tolist() == [FILL] * k + [EOS]
    assert not out.truncated.any() and bool((out.nfe >= 1).all())


def test_length_bench_measures_every_strategy(tmp_path, capsys):
    from prr_testbed import length_bench, train_length

    train_length.main(["--families", "sudoku", "--train", "8", "--test", "2", "--device", "cpu", "--no-progress",
                       "--out", str(tmp_path / "lp")])
    from prr_testbed import CONTROLLER_DIR
    doc = length_bench.main(["--predictor", str(tmp_path / "lp"), "--families", "sudoku", "--n", "2", "--device",
                             "cpu", "--out", str(tmp_path / "b.json"), "--controller", CONTROLLER_DIR])
    assert [r["strategy"] for r in doc["strategies"]] == list(length_bench.STRATEGIES)
    assert doc["meta"]["controller"] == "prr_testbed/assets/controller" and 0 < doc["meta"]["prr_tau"] < 1
    row = {r["strategy"]: r for r in doc["strategies"]}
    fixed, vanilla = row["fixed"], row["vanilla"]
    assert fixed["compute_vs_fixed"] == 1.0 and fixed["token_forwards_per_query"] > 0
    assert vanilla["compute_vs_vanilla"] == 1.0 and vanilla["forwards"] == 20  # one token per step: G forwards
    assert vanilla["token_forwards_per_query"] >= fixed["token_forwards_per_query"]
    m = doc["multiplicative"]
    assert m["predictor_and_prr"] == pytest.approx(row["predictor+prr"]["compute_vs_vanilla"])
    assert m["product_of_the_two"] == pytest.approx(row["predictor+vanilla"]["compute_vs_vanilla"]
                                                    * row["fixed+prr"]["compute_vs_vanilla"])
    assert all(len(r["correct"]) == 2 and 0 <= r["truncation_rate"] <= 100 for r in doc["strategies"])
    for name, base in length_bench.SAME_RULE_FIXED.items():  # paired with the same rule on the fixed canvas
        c = row[name]["vs_same_rule_fixed"]
        assert c["baseline"] == base and c["n"] == 2
        assert c["difference"] == pytest.approx(row[name]["accuracy"] - row[base]["accuracy"])
    assert "vs_same_rule_fixed" not in row["fixed"]
    older = json.loads((tmp_path / "b.json").read_text())  # a JSON from before the comparisons: --compare-only
    for r in older["strategies"]:
        r.pop("vs_same_rule_fixed", None)
    (tmp_path / "old.json").write_text(json.dumps(older))
    again = length_bench.main(["--compare-only", str(tmp_path / "old.json")])
    assert again["strategies"] == json.loads((tmp_path / "b.json").read_text())["strategies"]
    (tmp_path / "other.json").write_text(json.dumps({"points": []}))
    with pytest.raises(SystemExit, match="not a JSON this command wrote"):
        length_bench.main(["--compare-only", str(tmp_path / "other.json")])
    assert json.loads((tmp_path / "b.json").read_text())["meta"]["max_length"] == 20
    assert f"wrote {tmp_path / 'b.json'}" in capsys.readouterr().out


def test_length_bench_counts_draw_a_skewed_mix(tmp_path, capsys):
    from prr_testbed import length_bench, train_length

    train_length.main(["--families", "sudoku,arith", "--train", "8", "--test", "2", "--device", "cpu",
                       "--no-progress", "--out", str(tmp_path / "lp")])
    doc = length_bench.main(["--predictor", str(tmp_path / "lp"), "--counts", "arith=3,sudoku=1", "--device", "cpu",
                             "--out", str(tmp_path / "b.json")])
    assert doc["meta"]["counts"] == {"arith": 3, "sudoku": 1} and doc["meta"]["families"] == ["arith", "sudoku"]
    assert all(len(r["correct"]) == 4 for r in doc["strategies"])
    for bad in ("arith=0", "chess=3", "arith=2,arith=3", "arith"):
        with pytest.raises(SystemExit):
            length_bench.parse_args(["--predictor", str(tmp_path / "lp"), "--counts", bad, "--out",
                                     str(tmp_path / "c.json")])
        assert "argument --counts" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a folder that holds no controller
        length_bench.parse_args(["--predictor", str(tmp_path / "lp"), "--controller", str(tmp_path), "--out",
                                 str(tmp_path / "c.json")])
    assert "argument --controller" in capsys.readouterr().err


@pytest.mark.parametrize("share", [0.0, 0.8, 1.0])
def test_short_share_draws_mostly_short_answers_with_a_tail(share):
    from prr_testbed import tasks as T
    from prr_testbed.length_bench import skewed_draw

    n = 30
    pool = T.heldout_set("cumsum", "test", 3 * n)
    cut = sorted(len(e.response) for e in pool)[n - 1]  # the longest answer of the shortest third
    drawn = skewed_draw("cumsum", n, share)
    assert len(drawn) == n and len({e.prompt for e in drawn}) == n and set(drawn) <= set(pool)
    short = sum(len(e.response) <= cut for e in drawn)
    assert short >= round(share * n)  # ties at the cut may count a longer-third prompt as short
    if share < 1.0:
        assert max(len(e.response) for e in drawn) > cut  # the long tail stays
    else:
        assert short == n
    assert [pool.index(e) for e in drawn] == sorted(pool.index(e) for e in drawn)  # the set's order


def test_short_share_usage_errors(tmp_path, capsys):
    from prr_testbed import length_bench, train_length

    train_length.main(["--families", "sudoku", "--train", "8", "--test", "2", "--device", "cpu", "--no-progress",
                       "--out", str(tmp_path / "lp")])
    for extra in (["--short-share", "1.5"], ["--short-share", "-0.1"], ["--short-share", "0.5", "--counts", "arith=2"]):
        with pytest.raises(SystemExit):
            length_bench.parse_args(["--predictor", str(tmp_path / "lp"), "--out", str(tmp_path / "c.json"), *extra])
        assert "argument --short-share" in capsys.readouterr().err


def test_length_bench_runs_a_subset_of_strategies(tmp_path):
    from prr_testbed import length_bench, train_length

    train_length.main(["--families", "sudoku", "--train", "8", "--test", "2", "--device", "cpu", "--no-progress",
                       "--out", str(tmp_path / "lp")])
    doc = length_bench.main(["--predictor", str(tmp_path / "lp"), "--families", "sudoku", "--n", "2", "--device",
                             "cpu", "--strategies", "fixed,predictor", "--truncation", "rerun",
                             "--out", str(tmp_path / "b.json")])
    assert [r["strategy"] for r in doc["strategies"]] == ["fixed", "predictor"]
    assert doc["multiplicative"] is None and "oracle_mean_length" not in doc["meta"]  # no oracle run, no labels
    pred = doc["strategies"][1]
    assert "compute_vs_vanilla" not in pred and pred["vs_same_rule_fixed"]["baseline"] == "fixed"
    assert doc["meta"]["truncation"] == "rerun" and doc["meta"]["strategies"] == ["fixed", "predictor"]
    with pytest.raises(SystemExit):
        length_bench.parse_args(["--predictor", str(tmp_path / "lp"), "--strategies", "fixed,fastest",
                                 "--out", str(tmp_path / "c.json")])
