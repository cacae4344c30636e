"""The harness's noise statistics: bootstrap intervals of accuracy and AUP, paired comparisons of two rules on the
same prompts (paired-bootstrap interval, exact McNemar test, verdict), the per-prompt values evaluate() keeps, and
the sweep's JSON and printed summary with them.

Fast (CPU, a few seconds on 2 cores): the statistics run on synthetic per-prompt vectors; evaluate() runs on a tiny
random model; the sweep runs 3 prompts of one family with the shipped model.
"""
import json
import math
import random
import re

import numpy as np
import pytest
import torch

from prr_testbed import sweep
from prr_testbed import tasks as T
from prr_testbed.harness import RunSpec, add_accuracy_intervals, best_point, evaluate, summarize, summarize_noise
from prr_testbed.stats import (BOOTSTRAP_RESAMPLES, aup, aup_interval, aup_weight, bootstrap_counts,
                               bootstrap_interval, mcnemar_p, paired_comparison, verdict)
from prr_testbed.model import MaskedDiffusionLM, ModelConfig, default_model_available
from prr_testbed.tokenizer import CharTokenizer

needs_model = pytest.mark.skipif(not default_model_available(), reason="the shipped model is missing")


def bernoulli(p: float, n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < p).astype(np.int64)


def with_discordant(n: int, both: int, a_only: int, b_only: int, seed: int = 0):
    """Two 0/1 vectors over n prompts: `both` solved by both, a_only / b_only by one only, shuffled together."""
    rows = [(1, 1)] * both + [(1, 0)] * a_only + [(0, 1)] * b_only
    rows += [(0, 0)] * (n - len(rows))
    random.Random(seed).shuffle(rows)
    return [r[0] for r in rows], [r[1] for r in rows]


# ---------------------------------------------------------------------------------------------------------------
# bootstrap intervals of a mean
# ---------------------------------------------------------------------------------------------------------------
def test_bootstrap_counts_are_resamples_of_the_prompts():
    chunks = list(bootstrap_counts(7, 50, seed=3))
    counts = np.concatenate(chunks)
    assert counts.shape == (50, 7) and (counts.sum(axis=1) == 7).all() and (counts >= 0).all()
    assert np.array_equal(counts, np.concatenate(list(bootstrap_counts(7, 50, seed=3))))   # seeded
    assert not np.array_equal(counts, np.concatenate(list(bootstrap_counts(7, 50, seed=4))))
    # many prompts: the resamples come in several chunks, n_boot rows in all
    big = list(bootstrap_counts(300_000, 20, seed=0))
    assert len(big) > 1 and sum(c.shape[0] for c in big) == 20


@pytest.mark.parametrize("p", [0.5, 0.7, 0.9])
def test_bernoulli_interval_contains_the_mean_and_has_the_normal_width(p):
    n = 400
    for seed in range(3):
        x = 100.0 * bernoulli(p, n, seed)
        lo, hi = bootstrap_interval(x, seed=seed)
        mean = x.mean()
        assert lo < mean < hi
        p_hat = mean / 100.0
        normal = 2 * 1.959964 * 100.0 * math.sqrt(p_hat * (1 - p_hat) / n)
        assert (hi - lo) == pytest.approx(normal, rel=0.12), (p, seed, lo, hi, normal)
        # about symmetric around the mean at this n
        assert abs((mean - lo) - (hi - mean)) < 0.25 * normal


def test_intervals_narrow_as_n_grows():
    widths = []
    for n in (50, 200, 800):
        lo, hi = bootstrap_interval(100.0 * bernoulli(0.7, n, seed=n), seed=1)
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    # 4x the prompts: half the width (1 / sqrt(4)), up to the sampling of p-hat and of the resamples
    for wide, narrow in zip(widths, widths[1:]):
        assert 0.35 < narrow / wide < 0.7, widths


def test_bootstrap_interval_is_seeded_and_in_the_units_of_the_values():
    x = 100.0 * bernoulli(0.6, 120, seed=5)
    assert bootstrap_interval(x, seed=9) == bootstrap_interval(x, seed=9)
    lo, hi = bootstrap_interval(x / 100.0, seed=9)
    assert (100 * lo, 100 * hi) == pytest.approx(bootstrap_interval(x, seed=9))
    # a constant sample has no spread; a wider level gives a wider interval
    assert bootstrap_interval([3.0] * 10) == (3.0, 3.0)
    lo90, hi90 = bootstrap_interval(x, level=0.9)
    lo99, hi99 = bootstrap_interval(x, level=0.99)
    assert lo99 < lo90 and hi90 < hi99


@pytest.mark.parametrize("values,kw,match", [
    ([], {}, "non-empty"),
    ([[1.0, 0.0]], {}, "1-D"),
    ([1.0, float("nan")], {}, "non-finite"),
    ([1.0, 0.0], {"n_boot": 0}, "n_boot"),
    ([1.0, 0.0], {"n_boot": 2.5}, "n_boot"),
    ([1.0, 0.0], {"level": 1.0}, "level"),
])
def test_bootstrap_interval_rejects_bad_input(values, kw, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_interval(values, **kw)


# ---------------------------------------------------------------------------------------------------------------
# AUP intervals
# ---------------------------------------------------------------------------------------------------------------
def curve(seed=0, n=300):
    """Three points of one policy on the same prompts: accuracy falls and forwards fall as the rule gets bolder."""
    rng = np.random.default_rng(seed)
    hard = rng.random(n)                                   # a per-prompt difficulty shared by the points
    # within 1 point of each other, far from aup()'s 5-point cut, which would make AUP jump between resamples
    correct = [(hard < a).astype(int) for a in (0.92, 0.915, 0.91)]
    nfe = [np.full(n, 24), rng.integers(6, 13, n), rng.integers(3, 7, n)]
    return correct, nfe


def point_aup(correct, nfe, G, y_max):
    return aup([G / np.mean(f) for f in nfe], [100.0 * np.mean(c) for c in correct], y_max)


def test_aup_interval_contains_the_point_aup():
    for seed in range(3):
        correct, nfe = curve(seed)
        y_max = max(100.0 * np.mean(c) for c in correct)
        point = point_aup(correct, nfe, 24, y_max)
        lo, hi = aup_interval(correct, nfe, 24, y_max, seed=seed)
        assert lo < point < hi, (lo, point, hi)
        assert hi - lo < 0.5 * point        # an interval, not the whole axis
        # more prompts, narrower interval
        c4, f4 = curve(seed, n=1200)
        lo4, hi4 = aup_interval(c4, f4, 24, max(100.0 * np.mean(c) for c in c4), seed=seed)
        assert hi4 - lo4 < 0.75 * (hi - lo)


def test_aup_interval_shows_the_jump_of_the_5_point_cut():
    # A last point 4.5 points below the first (on the same prompts): some resamples put it beyond aup()'s 5-point
    # cut and drop its area, so the interval reaches far below the point estimate -- the statistic's own noise.
    n = 400
    first = np.array([1] * 360 + [0] * 40)                  # 90 %
    last = np.array([1] * 342 + [0] * 58)                   # 85.5 %, a subset of the first's prompts
    correct, nfe = [first, last], [[24] * n, [4] * n]
    point = point_aup(correct, nfe, 24, 90.0)
    assert point == pytest.approx(90 + 0.5 * 5 * (85.5 * aup_weight(85.5, 90.0) + 90))
    lo, hi = aup_interval(correct, nfe, 24, 90.0)
    assert lo < point < hi and lo < 0.5 * point
    assert 85 < lo < 95                                     # the area of the first point alone


def test_aup_interval_without_noise_is_the_point():
    # every prompt solved at a fixed number of forwards: every resample gives the same curve
    correct = [[1] * 20, [1] * 20]
    nfe = [[24] * 20, [6] * 20]
    point = point_aup(correct, nfe, 24, 100.0)
    assert point == pytest.approx(1 * 100 + 0.5 * 3 * (100 + 100))
    assert aup_interval(correct, nfe, 24, 100.0) == pytest.approx((point, point))


def test_aup_interval_resamples_the_same_prompts_for_every_point():
    # Two points with the same per-prompt correctness and fixed forwards (TPF 1 and 2): on a common resample their
    # accuracies are equal, y, and AUP = y + y W(y), increasing in y; so the AUP interval is that function of the
    # accuracy interval. Independent resamples per point would give other numbers.
    c = bernoulli(0.8, 200, seed=2)
    y_max = 90.0
    lo, hi = aup_interval([c, c], [[24] * 200, [12] * 200], 24, y_max, n_boot=2001, seed=7)
    alo, ahi = bootstrap_interval(100.0 * c, n_boot=2001, seed=7)

    def f(y):
        return y + y * aup_weight(y, y_max)

    assert (lo, hi) == pytest.approx((f(alo), f(ahi)), rel=1e-6)


def test_aup_interval_takes_gen_length_per_point():
    correct, nfe = curve(1)
    y_max = 95.0
    same = aup_interval(correct, nfe, 24, y_max, n_boot=300)
    assert aup_interval(correct, nfe, [24, 24, 24], y_max, n_boot=300) == same
    assert aup_interval(correct, nfe, [48, 48, 48], y_max, n_boot=300) == pytest.approx(tuple(2 * v for v in same))


def test_aup_interval_rejects_bad_input():
    correct, nfe = curve(0, n=10)
    with pytest.raises(ValueError, match="same prompts"):
        aup_interval(correct, [f[:9] for f in nfe], 24, 90.0)
    with pytest.raises(ValueError, match="0/1"):
        aup_interval([[0.5] * 10], [[1] * 10], 24, 90.0)
    with pytest.raises(ValueError, match="> 0"):
        aup_interval([[1] * 10], [[0] * 10], 24, 90.0)
    with pytest.raises(ValueError, match="y_max"):
        aup_interval(correct, nfe, 24, 0.0)
    with pytest.raises(ValueError, match="points"):
        aup_interval([], [], 24, 90.0)


# ---------------------------------------------------------------------------------------------------------------
# paired comparisons
# ---------------------------------------------------------------------------------------------------------------
def test_mcnemar_p_equals_the_binomial_tail():
    # 1 vs 5 discordant: 2 * P(Bin(6, 1/2) <= 1) = 2 * (1 + 6) / 64
    assert mcnemar_p(1, 5) == pytest.approx(14 / 64, abs=1e-15)
    assert mcnemar_p(5, 1) == mcnemar_p(1, 5)
    assert mcnemar_p(0, 3) == pytest.approx(2 / 8)
    # 2 vs 7: 2 * (1 + 9 + 36) / 512
    assert mcnemar_p(2, 7) == pytest.approx(92 / 512, abs=1e-15)
    assert mcnemar_p(0, 30) == pytest.approx(2 / 2 ** 30, rel=1e-12)
    assert mcnemar_p(3, 3) == 1.0 and mcnemar_p(0, 0) == 1.0
    # a large count stays exact (no float overflow in 2^n)
    assert 0.0 < mcnemar_p(400, 600) < 1e-9
    with pytest.raises(ValueError):
        mcnemar_p(-1, 2)


def test_paired_comparison_detects_a_real_difference():
    # 60 prompts; A solves 20 that B does not, B none that A does not
    a, b = with_discordant(60, both=30, a_only=20, b_only=0)
    c = paired_comparison(a, b, seed=1)
    assert c["n"] == 60 and (c["a_only"], c["b_only"]) == (20, 0)
    assert c["accuracy_a"] == pytest.approx(50 * 100 / 60) and c["accuracy_b"] == pytest.approx(30 * 100 / 60)
    assert c["difference"] == pytest.approx(100 * 20 / 60)
    assert c["p_value"] < 0.01 and c["p_value"] == pytest.approx(2 / 2 ** 20)
    lo, hi = c["interval"]
    assert 0 < lo < c["difference"] < hi
    assert c["verdict"] == "A better"
    swapped = paired_comparison(b, a, seed=1)
    assert swapped["verdict"] == "B better" and swapped["difference"] == pytest.approx(-c["difference"])
    named = paired_comparison(a, b, names=("PRR(tau=0.9)", "LowConfidence(steps=1G)"))
    assert named["verdict"] == "PRR(tau=0.9) better"
    json.dumps(c)


def test_paired_comparison_finds_no_difference_in_identical_or_symmetric_vectors():
    a = list(bernoulli(0.7, 60, seed=3))
    same = paired_comparison(a, a)
    assert same["difference"] == 0.0 and same["interval"] == [0.0, 0.0] and same["p_value"] == 1.0
    assert same["verdict"] == "no difference beyond noise"
    a, b = with_discordant(60, both=25, a_only=10, b_only=10, seed=4)
    sym = paired_comparison(a, b)
    assert sym["difference"] == 0.0 and sym["p_value"] == 1.0
    lo, hi = sym["interval"]
    assert lo < 0 < hi and sym["verdict"] == "no difference beyond noise"


def test_pairing_sees_what_two_separate_intervals_miss():
    # A solves 8 prompts more than B and nothing less, out of 200 around 60 %: the separate accuracy intervals
    # overlap, the paired comparison is clear.
    a, b = with_discordant(200, both=112, a_only=8, b_only=0, seed=5)
    ia, ib = bootstrap_interval(100.0 * np.array(a)), bootstrap_interval(100.0 * np.array(b))
    assert ia[0] < ib[1]
    c = paired_comparison(a, b)
    assert c["interval"][0] > 0 and c["p_value"] < 0.01 and c["verdict"] == "A better"


def test_verdict_needs_the_exact_test_when_few_prompts_are_discordant():
    # 4 of 60 prompts only A solves: every resample without them is rarer than 2.5 %, so the percentile interval
    # lies above 0, but the exact test says p = 2 / 16
    a, b = with_discordant(60, both=30, a_only=4, b_only=0)
    c = paired_comparison(a, b)
    assert c["interval"][0] > 0 and c["p_value"] == pytest.approx(0.125)
    assert c["verdict"] == "no difference beyond noise"
    assert verdict(c["difference"], c["interval"]) == "A better"       # the interval alone would claim it


def test_verdict_rules():
    assert verdict(2.0, (0.5, 3.0)) == "A better"
    assert verdict(-2.0, (-3.0, -0.5)) == "B better"
    assert verdict(1.0, (-0.5, 3.0)) == "no difference beyond noise"
    assert verdict(1.0, (0.0, 3.0)) == "no difference beyond noise"        # 0 inside the closed interval
    assert verdict(2.0, (0.5, 3.0), 0.049) == "A better"
    assert verdict(2.0, (0.5, 3.0), 0.05) == "no difference beyond noise"
    assert verdict(-2.0, None, 0.001, names=("x", "y")) == "y better"
    assert verdict(2.0, None, 0.2) == "no difference beyond noise"
    with pytest.raises(ValueError, match="interval, a p-value"):
        verdict(1.0)
    with pytest.raises(ValueError, match="low <= high"):
        verdict(1.0, (2.0, 1.0))


def test_paired_comparison_rejects_bad_input():
    with pytest.raises(ValueError, match="same prompts: 3 vs 4"):
        paired_comparison([1, 0, 1], [1, 0, 1, 1])
    with pytest.raises(ValueError, match="0/1"):
        paired_comparison([1, 2, 0], [1, 0, 0])
    with pytest.raises(ValueError, match="non-empty"):
        paired_comparison([], [])
    with pytest.raises(ValueError, match="n_boot"):
        paired_comparison([1, 0], [0, 1], n_boot=-5)


def test_paired_comparison_without_resamples_keeps_the_exact_test():
    a, b = with_discordant(60, both=30, a_only=20, b_only=0)
    c = paired_comparison(a, b, n_boot=0)
    assert c["interval"] is None and c["verdict"] == "A better" and c["p_value"] < 0.01


# ---------------------------------------------------------------------------------------------------------------
# per-prompt values in evaluate(), the summary of a set of results
# ---------------------------------------------------------------------------------------------------------------
def tiny_model(seed=0):
    tok = CharTokenizer()
    cfg = ModelConfig.for_tokenizer(tok, d_model=32, n_layers=2, n_heads=4, d_ff=64)
    m = MaskedDiffusionLM(cfg)
    m.reset_parameters(torch.Generator().manual_seed(seed))
    return m.eval()


def test_evaluate_keeps_per_prompt_correctness_and_forwards():
    model = tiny_model()
    exs = T.heldout_set("arith", n=5)
    r = evaluate(model, "arith", exs, RunSpec("threshold", 0.5), batch_size=3)   # two batches, in prompt order
    assert len(r["correct"]) == len(r["nfe_per_prompt"]) == 5
    assert set(r["correct"]) <= {0, 1} and all(type(v) is int for v in r["correct"] + r["nfe_per_prompt"])
    assert r["accuracy"] == pytest.approx(100.0 * sum(r["correct"]) / 5)
    assert r["mean_nfe"] == pytest.approx(sum(r["nfe_per_prompt"]) / 5)
    assert all(1 <= v <= r["gen_length"] for v in r["nfe_per_prompt"])
    assert "responses" not in r
    json.dumps(r)
    # prompt order: decoding the prompts one at a time gives the same lists
    one = [evaluate(model, "arith", [e], RunSpec("threshold", 0.5), batch_size=1) for e in exs]
    assert r["correct"] == [o["correct"][0] for o in one]
    assert r["nfe_per_prompt"] == [o["nfe_per_prompt"][0] for o in one]
    kept = evaluate(model, "arith", exs, RunSpec("lowconf"), batch_size=5, keep_responses=True)
    assert len(kept["responses"]) == 5 and kept["nfe_per_prompt"] == [kept["gen_length"]] * 5


def fake_result(task, policy, param, correct, nfe, G=24, steps_frac=1.0):
    spec = RunSpec(policy, param, steps_frac)
    n = len(correct)
    return {"task": task, "policy": policy, "label": spec.label, "param": param, "steps_frac": steps_frac,
            "gen_length": G, "n": n, "accuracy": 100.0 * sum(correct) / n, "mean_nfe": sum(nfe) / n,
            "tokens_per_forward": G * n / sum(nfe), "correct": list(correct), "nfe_per_prompt": list(nfe)}


def test_summarize_noise_pairs_best_points_against_vanilla_and_each_other():
    n = 80
    vanilla_c, _ = with_discordant(n, both=70, a_only=0, b_only=0)
    strong = list(vanilla_c)                                          # threshold 0.9: as good as vanilla
    weak, _ = with_discordant(n, both=40, a_only=0, b_only=0)         # threshold 0.5: 30 fewer prompts
    eb = list(vanilla_c)
    for i in [i for i, v in enumerate(vanilla_c) if v][:5]:          # eb: 5 fewer
        eb[i] = 0
    results = [fake_result("arith", "lowconf", None, vanilla_c, [24] * n),
               fake_result("arith", "lowconf", None, weak, [12] * n, steps_frac=0.5),
               fake_result("arith", "threshold", 0.5, weak, [3] * n),
               fake_result("arith", "threshold", 0.9, strong, [8] * n),
               fake_result("arith", "eb", 0.1, eb, [6] * n)]
    assert best_point(results[2:4]) is results[3]
    noise = summarize_noise(results, n_boot=500, seed=0)
    comps = noise["paired"]["arith"]
    pairs = [(c["a"], c["b"]) for c in comps]
    assert pairs == [("Threshold(tau=0.9)", "LowConfidence(steps=1G)"), ("EntropyBound(gamma=0.1)",
                                                                         "LowConfidence(steps=1G)"),
                     ("Threshold(tau=0.9)", "EntropyBound(gamma=0.1)")]
    assert comps[0]["difference"] == 0.0 and comps[0]["verdict"] == "no difference beyond noise"
    assert comps[0]["mean_nfe_a"] == 8 and comps[0]["mean_nfe_b"] == 24
    assert (comps[1]["a_only"], comps[1]["b_only"]) == (0, 5)
    assert comps[2]["difference"] == pytest.approx(100 * 5 / n)
    assert set(noise["aup_interval"]["arith"]) == {"lowconf", "threshold", "eb"}
    summ = summarize(results)
    for pol, (lo, hi) in noise["aup_interval"]["arith"].items():
        assert lo <= summ["aup"]["arith"][pol] <= hi
    add_accuracy_intervals(results, n_boot=500)
    for r in results:
        lo, hi = r["accuracy_interval"]
        assert lo <= r["accuracy"] <= hi
    json.dumps(noise)
    # no resamples: no intervals, the exact tests stay
    off = summarize_noise(results, n_boot=0)
    assert "aup_interval" not in off and all(c["interval"] is None for c in off["paired"]["arith"])
    with pytest.raises(ValueError, match="per-prompt 'correct'"):
        summarize_noise([{k: v for k, v in results[0].items() if k != "correct"}])


def test_dumps_compact_puts_number_lists_on_one_line():
    doc = {"a": [1, 0, 1], "b": {"c": [1.5, -2e-05], "s": "[1,\\n 2] stays", "e": []}, "m": [[1, 2], ["x"]]}
    text = sweep.dumps_compact(doc)
    assert json.loads(text) == doc
    assert '"a": [1, 0, 1]' in text and '"c": [1.5, -2e-05]' in text and "[1, 2]" in text
    assert '"s": "[1,\\\\n 2] stays"' in text


# ---------------------------------------------------------------------------------------------------------------
# the sweep end to end (shipped model, 3 prompts)
# ---------------------------------------------------------------------------------------------------------------
@needs_model
def test_sweep_writes_intervals_and_paired_comparisons(tmp_path, capsys):
    out = tmp_path / "sweep.json"
    doc = sweep.main(["--n", "3", "--tasks", "arith", "--policies", "lowconf,threshold,eb", "--taus", "0.5,0.9",
                      "--gammas", "0.1", "--steps-fracs", "1", "--batch-size", "3", "--device", "cpu",
                      "--out", str(out), "--no-progress", "--bootstrap", "300", "--seed", "4"])
    text = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["meta"]["bootstrap"] == 300 and saved["meta"]["seed"] == 4 and saved["meta"]["level"] == 0.95
    assert len(saved["results"]) == 4
    for r in saved["results"]:
        assert len(r["correct"]) == len(r["nfe_per_prompt"]) == 3
        lo, hi = r["accuracy_interval"]
        assert 0.0 <= lo <= r["accuracy"] <= hi <= 100.0
    aup_iv = saved["aup_interval"]["arith"]
    assert set(aup_iv) == {"lowconf", "threshold", "eb"} and all(lo <= hi for lo, hi in aup_iv.values())
    # one LowConfidence point at TPF 1: its AUP is its accuracy, and so is its interval
    assert aup_iv["lowconf"] == pytest.approx(saved["results"][0]["accuracy_interval"])
    comps = saved["paired"]["arith"]
    assert [(c["policy_a"], c["policy_b"]) for c in comps] == [("threshold", "lowconf"), ("eb", "lowconf"),
                                                               ("threshold", "eb")]
    for c in comps:
        assert c["n"] == 3 and len(c["interval"]) == 2 and 0.0 <= c["p_value"] <= 1.0
        # 3 prompts can never show a difference beyond noise (the smallest exact p is 2 / 8)
        assert c["verdict"] == "no difference beyond noise"
    assert saved == json.loads(json.dumps(doc))
    # the existing lines stay, the intervals and comparisons are added before the last line
    assert "AUP per task" in text and "acc " in text
    assert "bootstrap interval over the prompts (300 resamples, seed 4)" in text
    assert "AUP 95% intervals" in text and "paired comparisons on the same prompts" in text and "NFE " in text
    assert "Threshold(tau=" in text.split("paired comparisons")[1]
    assert text.strip().splitlines()[-1].startswith("[sweep] wrote")
    # the per-prompt lists take one line each in the file
    assert re.search(r'"correct": \[[01], [01], [01]\]', out.read_text())


@needs_model
def test_sweep_bootstrap_zero_turns_the_intervals_off(tmp_path, capsys):
    out = tmp_path / "sweep.json"
    doc = sweep.main(["--n", "2", "--tasks", "arith", "--policies", "lowconf,threshold", "--taus", "0.9",
                      "--steps-fracs", "1", "--batch-size", "2", "--device", "cpu", "--out", str(out),
                      "--no-progress", "--bootstrap", "0"])
    text = capsys.readouterr().out
    assert "aup_interval" not in doc and all("accuracy_interval" not in r for r in doc["results"])
    assert [c["interval"] for c in doc["paired"]["arith"]] == [None]
    assert "resamples" not in text and "paired comparisons" in text
    # the model and controller as the renderer names them: shipped files relative to the package's folder
    assert doc["meta"]["model"] == "prr_testbed/assets/model" and doc["meta"]["controller"] is None


@needs_model
def test_sweep_records_the_controller_it_swept_prr_with(tmp_path, capsys):
    from prr_testbed.cli import shown_path

    doc = sweep.main(["--n", "2", "--tasks", "arith", "--policies", "lowconf,prr", "--prr-taus", "0.9",
                      "--steps-fracs", "1", "--batch-size", "2", "--device", "cpu", "--out",
                      str(tmp_path / "sweep.json"), "--no-progress", "--bootstrap", "0"])
    assert doc["meta"]["controller"] == "prr_testbed/assets/controller"
    assert shown_path(str(tmp_path / "c")) == str(tmp_path / "c")  # a folder elsewhere stays as given


def test_sweep_rejects_a_negative_bootstrap(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        sweep.main(["--bootstrap", "-1", "--out", str(tmp_path / "x.json")])
    assert e.value.code == 2 and "--bootstrap" in capsys.readouterr().err


def test_default_resamples(tmp_path):
    assert BOOTSTRAP_RESAMPLES == 2000
    args = sweep.parse_args(["--out", str(tmp_path / "x.json"), "--device", "cpu", "--policies", "lowconf"])[1]
    assert args.bootstrap == 2000 and args.seed == 0
