"""`python -m prr_ext.eval --model --data` and `python -m prr_ext.train --model --data --val` on the shipped testbed
model with tiny JSONL files: outputs, resumption, the controller's model check, and usage errors (exit 2, the
argument named)."""
import json
import os
import subprocess
import sys

import pytest
import torch

import prr_ext
import prr_testbed
from prr_ext import user_common as U
from prr_ext import user_eval, user_train
from prr_testbed import tasks as T

MODEL = prr_testbed.MODEL_DIR
CANVAS = ["--gen-length", "24", "--block-length", "12", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threads only cost (and spin when the machine is busy)
    yield
    torch.set_num_threads(n)


def _write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    ex = T.heldout_set("arith", "valid", 24)
    val = _write(d / "val.jsonl", [{"prompt": e.prompt, "answer": e.response} for e in ex[:8]])
    train = _write(d / "train.jsonl", [{"prompt": e.prompt} for e in ex[8:]])  # no answers: rollouts need none
    return {"dir": d, "val": val, "train": train}


@pytest.fixture(scope="module")
def trained(files):
    out = str(files["dir"] / "run")
    report = user_train.main(["--model", MODEL, "--data", files["train"], "--val", files["val"], "--checker",
                              "exact", "--out", out, "--rounds", "0", "--epochs", "1", "--t-max-grid", "1.0",
                              "--tau-grid", "0.9"] + CANVAS)
    return out, report


def _usage_error(fn, argv, capsys):
    with pytest.raises(SystemExit) as e:
        fn(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_eval_writes_json(files, tmp_path):
    out = str(tmp_path / "r.json")
    doc = user_eval.main(["--model", MODEL, "--data", files["val"], "--checker", "exact", "--policies",
                          "lowconf,threshold", "--taus", "0.7,0.9", "--out", out] + CANVAS)
    with open(out) as f:
        saved = json.load(f)
    assert saved["n"] == 8 and saved["checker"] == "exact" and saved["kind"] == "testbed"
    assert saved["fingerprint"] == prr_ext.model_fingerprint(prr_ext.load(MODEL).model)
    assert [p["label"] for p in saved["points"]] == ["lowconf", "threshold:0.7", "threshold:0.9"]
    for p in saved["points"]:
        for k in ("accuracy", "mean_nfe", "tokens_per_forward", "tokens_per_s", "seconds", "finished_rate",
                  "nfe_per_prompt", "correct"):
            assert k in p, k
        assert p["accuracy"] > 50.0  # the shipped model solves held-out arith
    low = saved["points"][0]
    assert low["mean_nfe"] == 24 and low["tokens_per_forward"] == 1.0
    assert saved["points"][2]["mean_nfe"] < 24
    assert doc["points"][0]["accuracy"] == low["accuracy"]


def test_eval_without_checker_has_no_accuracy(files):
    doc = user_eval.main(["--model", MODEL, "--data", files["train"], "--policies", "threshold:0.9", "--n", "4"]
                         + CANVAS)
    assert doc["n"] == 4 and doc["checker"] is None and doc["points"][0]["accuracy"] is None


def test_train_one_round_then_eval_with_its_controller(files, trained, tmp_path):
    out, report = trained
    cdir = os.path.join(out, "controller")
    ctrl = prr_ext.Controller.load(cdir)
    assert ctrl.in_features == 13
    with open(os.path.join(cdir, "model.json")) as f:
        side = json.load(f)
    assert side["fingerprint"] == prr_ext.model_fingerprint(prr_ext.load(MODEL).model)
    with open(os.path.join(cdir, "policy.json")) as f:
        assert json.load(f)["tau"] == 0.9
    with open(os.path.join(out, "report.json")) as f:
        rep = json.load(f)
    assert rep["rounds"][0]["round"] == 0 and rep["rounds"][0]["records"] > 0
    assert "vanilla_val" in rep and rep["rounds"][0]["grid"]
    assert os.path.isfile(os.path.join(out, "round0", "rollouts_rank0.safetensors"))

    doc = user_eval.main(["--model", MODEL, "--data", files["val"], "--checker", "exact", "--policies",
                          "lowconf,prr", "--controller", cdir] + CANVAS)
    prr = doc["points"][1]
    assert prr["label"] == "prr:0.9" and prr["mean_nfe"] < 24 and prr["accuracy"] is not None


def _shard_decisions(run_dir: str, rnd: int = 0):
    """The multiset of (step, candidate, committed) of every rollout record of a round, over all ranks' shards."""
    from safetensors.torch import load_file
    rows = []
    rd = os.path.join(run_dir, f"round{rnd}")
    for name in sorted(os.listdir(rd)):
        if name.startswith("rollouts_rank"):
            d = load_file(os.path.join(rd, name))
            for b in sorted({k.split(".")[0] for k in d}):
                rows += zip(d[f"{b}.t"].tolist(), d[f"{b}.cand"].tolist(), d[f"{b}.committed"].tolist())
    return sorted(rows)


def test_train_under_torchrun_shards_the_rollouts(files, trained, tmp_path):
    """`torchrun --nproc_per_node 2 -m prr_ext.train` on the CPU (gloo): each rank writes its shard of the rollouts,
    rank 0 fits on their union, which holds exactly the single-process run's decisions."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    if not os.path.isfile(torchrun):
        pytest.skip("torchrun is not installed beside this Python")
    out = str(tmp_path / "run")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "prr_ext.train",
                          "--model", MODEL, "--data", files["train"], "--val", files["val"], "--checker", "exact",
                          "--out", out, "--rounds", "0", "--epochs", "1", "--t-max-grid", "1.0", "--tau-grid", "0.9"]
                         + CANVAS, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "x 2 ranks" in res.stdout
    shards = sorted(n for n in os.listdir(os.path.join(out, "round0")) if n.startswith("rollouts_rank"))
    assert shards == ["rollouts_rank0.safetensors", "rollouts_rank1.safetensors"]
    with open(os.path.join(out, "report.json")) as f:
        rep = json.load(f)
    with open(os.path.join(trained[0], "report.json")) as f:
        single = json.load(f)
    assert rep["rounds"][0]["records"] == single["rounds"][0]["records"] > 0
    assert _shard_decisions(out) == _shard_decisions(trained[0])
    prr_ext.Controller.load(os.path.join(out, "controller"))


def test_train_resumes_finished_rounds(files, trained, capsys):
    out, _ = trained
    before = os.path.getmtime(os.path.join(out, "round0", "round.json"))
    user_train.main(["--model", MODEL, "--data", files["train"], "--val", files["val"], "--checker", "exact",
                     "--out", out, "--rounds", "0", "--epochs", "1", "--t-max-grid", "1.0", "--tau-grid", "0.9"]
                    + CANVAS)
    assert "round 0: loaded" in capsys.readouterr().out
    assert os.path.getmtime(os.path.join(out, "round0", "round.json")) == before
    # other settings in the same --out: refused, not silently reused
    err = _usage_error(user_train.main, ["--model", MODEL, "--data", files["train"], "--val", files["val"],
                                         "--checker", "exact", "--out", out, "--rounds", "0", "--epochs", "3"]
                       + CANVAS, capsys)
    assert "argument --out" in err and "epochs" in err


def test_controller_for_another_model_is_refused(files, trained, tmp_path, capsys):
    out, _ = trained
    other = str(tmp_path / "other")
    ctrl = prr_ext.Controller.load(os.path.join(out, "controller"))
    U.save_controller(ctrl, other, prr_ext.load(MODEL), 0.9)
    with open(os.path.join(other, "model.json")) as f:
        side = json.load(f)
    side.update(fingerprint="LLaDAModelLM@0123456789abcdef", model="/models/elsewhere")
    with open(os.path.join(other, "model.json"), "w") as f:
        json.dump(side, f)
    err = _usage_error(user_eval.main, ["--model", MODEL, "--data", files["val"], "--policies", "prr",
                                        "--controller", other] + CANVAS, capsys)
    assert "argument --controller" in err and "another model" in err and "LLaDAModelLM@0123456789abcdef" in err

    wide = str(tmp_path / "wide")
    prr_ext.Controller.init(extra_features=2).save(wide)
    err = _usage_error(user_eval.main, ["--model", MODEL, "--data", files["val"], "--policies", "prr",
                                        "--controller", wide] + CANVAS, capsys)
    assert "argument --controller" in err and "15 features" in err


def test_usage_errors(files, tmp_path, capsys):
    bad = _write(tmp_path / "bad.jsonl", [{"prompt": "1+2=", "answer": "3"}, {"question": "2+2=", "answer": "4"}])
    err = _usage_error(user_eval.main, ["--model", MODEL, "--data", bad] + CANVAS, capsys)
    assert "argument --data" in err and "bad.jsonl:2" in err and "'prompt'" in err

    err = _usage_error(user_eval.main, ["--model", MODEL, "--data", files["val"], "--checker",
                                        "no_such_module_xyz:check"] + CANVAS, capsys)
    assert "argument --checker" in err and "no_such_module_xyz" in err

    # grading needs answers: --val lines without one are named
    err = _usage_error(user_train.main, ["--model", MODEL, "--data", files["train"], "--val", files["train"],
                                         "--out", str(tmp_path / "run")] + CANVAS, capsys)
    assert "argument --val" in err and "train.jsonl:1" in err and "'answer'" in err
    assert not os.path.exists(tmp_path / "run")

    err = _usage_error(user_eval.main, ["--model", MODEL, "--data", files["val"], "--policies", "prr"] + CANVAS,
                       capsys)
    assert "argument --controller" in err

    err = _usage_error(user_eval.main, ["--model", MODEL, "--data", files["val"], "--out",
                                        str(tmp_path / "missing" / "r.json")] + CANVAS, capsys)
    assert "argument --out" in err

    err = _usage_error(user_eval.main, ["--model", str(tmp_path), "--data", files["val"]] + CANVAS, capsys)
    assert "argument --model" in err and "config.json" in err

    err = _usage_error(user_eval.main, ["--model", MODEL, "--data", files["val"], "--policies", "greedy"] + CANVAS,
                       capsys)
    assert "argument --policies" in err and "greedy" in err


def test_usage_errors_come_before_the_model_and_the_data_loss(files, tmp_path, capsys, monkeypatch):
    """What can be checked without the model is checked before loading it (minutes for an 8B one); nothing a run
    reads, nor a folder it did not write, is overwritten by its results."""
    def no_load(*a, **k):
        raise AssertionError("the command loaded the model before rejecting its arguments")

    monkeypatch.setattr(U, "load_decoder", no_load)
    err = _usage_error(user_eval.main, ["--model", MODEL, "--data", files["val"], "--out", files["val"]] + CANVAS,
                       capsys)
    assert f"argument --out: {files['val']} is also --data" in err
    err = _usage_error(user_eval.main, ["--model", MODEL, "--data", files["val"], "--policies", "threshold",
                                        "--taus", "1.5"] + CANVAS, capsys)
    assert "argument --policies: threshold:1.5: tau must lie in [0, 1], got 1.5" in err
    err = _usage_error(user_eval.main, ["--model", MODEL, "--data", files["val"], "--policies", "prr",
                                        "--controller", MODEL] + CANVAS, capsys)
    assert "argument --controller:" in err and "not a prr_ext controller config" in err
    no_number = _write(tmp_path / "no_number.jsonl", [{"prompt": "1+1=", "answer": "#### 2"},
                                                      {"prompt": "2+2=", "answer": "four"}])
    err = _usage_error(user_eval.main, ["--model", MODEL, "--data", no_number, "--checker", "gsm8k"] + CANVAS, capsys)
    assert "argument --data: line 2: the answer 'four' holds no number" in err
    not_utf8 = tmp_path / "latin1.jsonl"
    not_utf8.write_bytes(b'{"prompt": "caf\xe9"}\n')
    err = _usage_error(user_eval.main, ["--model", MODEL, "--data", str(not_utf8)] + CANVAS, capsys)
    assert f"argument --data: {not_utf8}:1: not UTF-8 text" in err
    # <out>/controller is replaced at the end of a run: a folder there that no run wrote is refused
    out = tmp_path / "project"
    (out / "controller").mkdir(parents=True)
    (out / "controller" / "NOTES.txt").write_text("mine")
    err = _usage_error(user_train.main, ["--model", MODEL, "--data", files["train"], "--val", files["val"],
                                         "--out", str(out)] + CANVAS, capsys)
    assert f"argument --out: {out / 'controller'} exists and is not a controller" in err
    assert (out / "controller" / "NOTES.txt").read_text() == "mine"


def test_an_empty_prompt_is_named_by_its_line_before_decoding(files, tmp_path, capsys):
    rows = [{"prompt": "1+1="}, {"prompt": "2+2="}, {"prompt": ""}]
    late_empty = _write(tmp_path / "late_empty.jsonl", rows)
    err = _usage_error(user_eval.main, ["--model", MODEL, "--data", late_empty, "--batch-size", "2"] + CANVAS, capsys)
    assert "argument --data: line 3: the prompt encodes to no tokens" in err


def test_help_says_when_the_testbed_command_runs(capsys):
    with pytest.raises(SystemExit) as e:
        user_eval.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--model" in out and "--data" in out and "usage: python -m prr_testbed.sweep" in out
    with pytest.raises(SystemExit) as e:
        user_train.main(["--model", MODEL, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python -m prr_ext.train" in out and "prr_testbed.train_controller" in out


def test_module_entry_point_runs_the_user_command(files, tmp_path):
    out = str(tmp_path / "r.json")
    # the prr_ext this session imports (the installed package in CI, never a source tree without its _C)
    here = os.path.dirname(os.path.dirname(os.path.abspath(prr_ext.__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=here + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-m", "prr_ext.eval", "--model", MODEL, "--data", files["val"], "--n", "2",
                          "--policies", "threshold:0.9", "--out", out] + CANVAS, capture_output=True, text=True,
                         env=env, cwd=str(tmp_path), timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    with open(out) as f:
        assert json.load(f)["points"][0]["label"] == "threshold:0.9"


def test_train_and_eval_on_a_transformers_masked_lm(tmp_path):
    """A tiny random BertForMaskedLM (test_load's): prompts of different lengths, so batches are left-padded and
    the rollouts call the model with the batch's attention mask."""
    pytest.importorskip("transformers")
    sys.path.insert(0, os.path.dirname(__file__))
    from test_load import PROMPTS, write_bert

    model = str(tmp_path / "bert")
    write_bert(model)
    rows = [{"prompt": p, "answer": "yes"} for p in PROMPTS * 2]
    data = _write(tmp_path / "d.jsonl", rows)
    canvas = ["--gen-length", "8", "--block-length", "4", "--batch-size", "4", "--device", "cpu", "--no-progress"]
    report = user_train.main(["--model", model, "--data", data, "--val", data, "--out", str(tmp_path / "run"),
                              "--rounds", "1", "--epochs", "1", "--t-max-grid", "1.0", "--tau-grid", "0.9"] + canvas)
    assert [r["round"] for r in report["rounds"]] == [0, 1] and report["rounds"][1]["records"] > 0
    doc = user_eval.main(["--model", model, "--data", data, "--checker", "exact", "--policies", "lowconf,prr",
                          "--controller", str(tmp_path / "run" / "controller")] + canvas)
    assert doc["kind"] == "masked_lm" and doc["points"][0]["mean_nfe"] == 8 and doc["points"][1]["accuracy"] is not None
