"""PRR training pipeline: feature reconstruction, convergence labels, controller fit, and small end-to-end runs
(single process, and torchrun with 2 gloo ranks on CPU)."""
import json
import os
import subprocess
import sys

import pytest
import torch

import prr_ext
from prr_ext import prr_training as PT
from prr_ext import reference as R
from prr_testbed.model import MaskedDiffusionLM, ModelConfig, make_canvas
from prr_testbed.tokenizer import CharTokenizer


def tiny_model(seed: int) -> MaskedDiffusionLM:
    torch.manual_seed(seed)
    return MaskedDiffusionLM(ModelConfig.for_tokenizer(CharTokenizer(), d_model=32, n_layers=1, n_heads=2,
                                                       d_ff=64)).eval()


def tiny_batch(model, n=5, gen_length=16, seed=0):
    from prr_testbed import tasks as T
    import random
    rng = random.Random(seed)
    fam = T.get_family("arith")
    prompts = [fam.sample_split(rng, "train").prompt for _ in range(n)]
    return make_canvas(model.tokenizer, prompts, gen_length)


def test_reconstructed_features_reproduce_in_kernel_scores():
    seed = int(torch.randint(0, 2 ** 31, ()))
    model = tiny_model(seed)
    x, plens = tiny_batch(model, seed=seed)
    ctrl = prr_ext.Controller.init(seed % 1000)
    state = prr_ext.State(x, model.mask_id, plens, 8, 16, prr_ext.PRR(ctrl, tau=0.5))
    checked = 0
    while not state.done:
        snap = state.x.clone(), state.row_state.clone(), state.prev_p1.clone()
        lo = state.block_start
        logits = model(state.x).logits
        prr_ext.step(logits, state)
        feats, cand = PT._features_after_step(state, *snap, lo, logits.shape[-1])
        in_kernel = state.last_stats[:, lo:lo + 8][cand][:, R.STAT_SCORE]
        torch.testing.assert_close(ctrl.scores(feats[cand]), in_kernel, rtol=1e-5, atol=1e-5,
                                   msg=f"seed {seed}")
        checked += int(cand.sum())
    assert checked > 0


def test_convergence_labels_match_brute_force():
    seed = int(torch.randint(0, 2 ** 31, ()))
    model = tiny_model(seed)
    x, plens = tiny_batch(model, seed=seed)
    ro = PT.rollout(model, x, plens, policy=prr_ext.LowConfidence(), block_length=8, steps=16,
                    mask_id=model.mask_id)
    progress, binary = PT.convergence_labels(ro)
    assert progress.shape == binary.shape == ro.t.shape and ro.t.numel() > 0
    assert int(ro.committed.sum()) == int((x == model.mask_id).sum())  # full refinement commits every mask once
    for i in range(ro.t.numel()):
        same = (ro.row == ro.row[i]) & (ro.col == ro.col[i])
        later = same & (ro.t >= ro.t[i])
        y = ro.target[ro.row[i], ro.col[i]]
        assert abs(float(progress[i]) - (ro.cand[later] == y).double().mean().item()) < 1e-6
        assert float(binary[i]) == float(ro.cand[i] == y)
    # the step that commits a position is its last record, and with full refinement it commits the target token
    last = ro.committed
    assert torch.all(ro.cand[last] == ro.target[ro.row[last], ro.col[last]])
    assert torch.all(progress[last] == 1.0)


def test_block_continuation_targets_are_full_refinement_of_the_entered_block():
    model = tiny_model(1)
    x, plens = tiny_batch(model, seed=1)
    ro = PT.rollout(model, x, plens, policy=prr_ext.Threshold(0.0), block_length=8, steps=16,
                    mask_id=model.mask_id, block_continuation=True)
    # block 0 is entered from the initial canvas: its target is exactly a full-refinement decode of block 0
    vanilla = PT.rollout(model, x, plens, policy=prr_ext.LowConfidence(), block_length=8, steps=16,
                         mask_id=model.mask_id)
    g = x.shape[1] - 16
    assert torch.equal(ro.target[:, g:g + 8], vanilla.final[:, g:g + 8])
    assert bool((ro.target != model.mask_id).all())
    assert ro.nfe.tolist() == [2] * x.shape[0]  # tau = 0 commits a whole block per step


def test_eos_exit_rollout_records_what_the_early_exit_decode_decides():
    """rollout(eos_id=...): a row stops once its answer and EOS are committed (generate's eos_fill): its records are
    those of the full rollout up to that step, its canvas is filled with EOS after the first one, and it takes
    fewer forwards. The model's EOS grows likelier along the canvas, so rows end early."""
    from tiny_models import TinyLM
    eos, mask, P, G = 1, 2, 6, 24
    model = TinyLM(vocab_size=83, mask_id=mask, max_len=P + G, tail_bias={eos: (P + 8, 1.5)}, seed=3)
    g = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 31, ())))
    x = torch.cat([torch.randint(3, 83, (6, P), generator=g), torch.full((6, G), mask)], 1)
    kw = dict(policy=prr_ext.LowConfidence(), block_length=8, steps=G, mask_id=mask)
    full = PT.rollout(model, x, P, **kw)
    early = PT.rollout(model, x, P, eos_id=eos, **kw)
    assert bool((early.nfe <= full.nfe).all()) and bool((early.nfe < full.nfe).any())
    for b in range(x.shape[0]):
        def recs(ro, upto):
            keep = (ro.row == b) & (ro.t < upto)
            return sorted(zip(ro.col[keep].tolist(), ro.t[keep].tolist(), ro.cand[keep].tolist(),
                              ro.committed[keep].tolist()))
        assert recs(early, int(early.nfe[b])) == recs(full, int(early.nfe[b])) and recs(early, 10 ** 9) == recs(
            early, int(early.nfe[b]))
        gen = early.final[b, P:]
        assert not bool((gen == mask).any())
        first = int((gen == eos).nonzero()[0]) if bool((gen == eos).any()) else G
        if int(early.nfe[b]) < int(full.nfe[b]):  # retired: everything the fill wrote is EOS
            assert bool((gen[first:][full.final[b, P + first:] != gen[first:]] == eos).all())


def test_fit_controller_learns_a_feature_rule():
    g = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 31, ())))
    feats = torch.rand(4000, prr_ext.controller.NUM_BASE_FEATURES, generator=g)
    labels = (feats[:, 8] > 0.5).float()  # "top-1 prob above 1/2"
    ctrl = PT.fit_controller(feats, labels, hidden=(16,), epochs=30, batch_size=256, lr=1e-2)
    s = ctrl.scores(feats)
    acc = ((s > 0.5).float() == labels).float().mean().item()
    assert acc > 0.95, acc


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    tiny_model(0).save_pretrained(str(d))
    return str(d)


ARGS = ["--families", "arith", "--rounds", "1", "--train-prompts", "6", "--val-prompts", "3", "--test-prompts", "3",
        "--t-max-grid", "1.5", "--t-min-grid", "0.25", "--tau-grid", "0.9", "--epochs", "1", "--device", "cpu"]


def _check_run(out):
    summary = json.load(open(os.path.join(out, "rounds.json")))
    assert [e["round"] for e in summary["rounds"]] == [0, 1]
    r0, r1 = summary["rounds"]
    assert r1["records"] > r0["records"] > 0  # round 1 pools round 0's records with its own
    for r in (0, 1):
        ctrl = prr_ext.Controller.load(os.path.join(out, f"round{r}", "controller"))
        assert ctrl.in_features == prr_ext.controller.NUM_BASE_FEATURES
    return summary


def test_pipeline_two_rounds_single_process(tiny_model_dir, tmp_path):
    from prr_testbed import train_controller as train
    out = str(tmp_path / "run")
    train.main(["--model", tiny_model_dir, "--out", out] + ARGS)
    first = _check_run(out)
    # resumable: a second run loads both rounds instead of redoing them
    again = train.main(["--model", tiny_model_dir, "--out", out] + ARGS)
    assert [e["seconds"] for e in again["rounds"]] == [e["seconds"] for e in first["rounds"]]


def test_a_round_without_a_point_near_full_refinement_says_so(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """When no tuned point keeps every family within 1 point of full refinement, the most accurate one is taken and
    the log says so and what to try; a round that found one says nothing."""
    from prr_testbed import train_controller as train

    real = train.tune
    monkeypatch.setattr(train, "tune", lambda *a, **k: dict(real(*a, **k), within_1pt=False))
    train.main(["--model", tiny_model_dir, "--out", str(tmp_path / "far"), "--rounds", "0"] + ARGS[:2] + ARGS[4:])
    out = capsys.readouterr().out
    assert "NOTE: round 0: none of the chosen temperature map's (map, tau) points kept every family" in out
    assert "--tau-grid" in out and "--select nfe" in out
    monkeypatch.setattr(train, "tune", lambda *a, **k: dict(real(*a, **k), within_1pt=True))
    train.main(["--model", tiny_model_dir, "--out", str(tmp_path / "near"), "--rounds", "0"] + ARGS[:2] + ARGS[4:])
    assert "NOTE: round 0" not in capsys.readouterr().out


def test_pipeline_eos_exit_is_a_setting_of_the_run(tiny_model_dir, tmp_path, capsys):
    """--eos-exit runs the rounds with EOS early exit, is stored in run.json, and a resumed run must keep it; a
    run.json written before the setting existed reads as eos_exit False."""
    from prr_testbed import train_controller as train
    out = str(tmp_path / "run")
    args = ["--model", tiny_model_dir, "--out", out] + ARGS[:ARGS.index("--rounds")] + ["--rounds", "0"] + \
        ARGS[ARGS.index("--rounds") + 2:]
    train.main(args + ["--eos-exit"])
    assert json.load(open(os.path.join(out, "run.json")))["settings"]["eos_exit"] is True
    with pytest.raises(SystemExit):
        train.main(args)
    assert "eos_exit True there, False now" in capsys.readouterr().err
    run = json.load(open(os.path.join(out, "run.json")))
    del run["settings"]["eos_exit"]
    json.dump(run, open(os.path.join(out, "run.json"), "w"))
    train.main(args)  # an older run.json: eos_exit False, the same as now
    with pytest.raises(SystemExit):
        train.main(args + ["--eos-exit"])


def test_pipeline_torchrun_two_gloo_ranks(tiny_model_dir, tmp_path):
    out = str(tmp_path / "run")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29500 + int(torch.randint(0, 400, ()))), "-m", "prr_testbed.train_controller",
           "--model", tiny_model_dir, "--out", out] + ARGS
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    _check_run(out)
    for r in (0, 1):
        shards = sorted(f for f in os.listdir(os.path.join(out, f"round{r}")) if f.startswith("rollouts_rank"))
        assert shards == ["rollouts_rank0.safetensors", "rollouts_rank1.safetensors"]
