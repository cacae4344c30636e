"""The testbed's layout and commands: what imports what, and the command-line errors a user meets first.

Fast (CPU, well under a minute on 2 cores): the commands are called in-process with arguments that fail before any
work (the model loader is replaced by one that fails the test if it is reached); the import checks and the
prr_ext.* forwarding shims run in subprocesses.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import prr_testbed
from prr_testbed import demo, sweep
from prr_testbed import tasks as T
from prr_testbed import train_controller as TC
from prr_testbed import train_model as TM

COMMANDS = {"demo": demo, "sweep": sweep, "train_controller": TC, "train_model": TM}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter that imports the same prr_ext / prr_testbed as this test session."""
    paths = {os.path.dirname(os.path.dirname(os.path.abspath(prr_testbed.__file__)))}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command gets as far as loading a model (its argument checks must come first)."""
    def reached(*a, **k):
        raise AssertionError("the command started its work before rejecting its arguments")

    for mod in (demo, sweep):
        monkeypatch.setattr(mod, "load_model_arg", reached)
    monkeypatch.setattr(prr_testbed.model.MaskedDiffusionLM, "from_pretrained", classmethod(reached))


def _usage_error(capsys, command: str, argv) -> str:
    with pytest.raises(SystemExit) as e:
        COMMANDS[command].main(argv)
    assert e.value.code == 2, f"expected a usage error (exit 2), got {e.value.code!r}"
    err = capsys.readouterr().err
    assert f"usage: python -m prr_testbed.{command}" in err
    return err


# ---------------------------------------------------------------------------------------------------------------
# layout: the library never imports the testbed; model, tokenizer and tasks need no compiled op
# ---------------------------------------------------------------------------------------------------------------
def test_prr_ext_loads_no_testbed_module():
    res = _python(
        "import importlib, pkgutil, sys\n"
        "import prr_ext\n"
        "for m in pkgutil.walk_packages(prr_ext.__path__, 'prr_ext.'):\n"
        "    try:\n"
        "        importlib.import_module(m.name)\n"
        "    except ImportError:\n"  # an engine adapter whose engine (sglang, ...) is not installed here
        "        if not m.name.startswith('prr_ext.integrations.'):\n"
        "            raise\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'prr_testbed')\n"
        "assert not loaded, loaded\n"
        "print('ok', len([m for m in sys.modules if m.startswith('prr_ext')]))\n")
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stderr[-3000:]


def test_model_tokenizer_tasks_work_without_the_compiled_op():
    res = _python(
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'prr_ext._C':\n"
        "            raise ImportError('blocked by the test: no compiled op')\n"
        "sys.meta_path.insert(0, Block())\n"
        "try:\n"
        "    import prr_ext\n"
        "    raise SystemExit('the blocker did not block prr_ext._C')\n"
        "except ImportError:\n"
        "    pass\n"
        "for m in [m for m in sys.modules if m.split('.')[0] == 'prr_ext']:\n"
        "    del sys.modules[m]\n"
        "import torch\n"
        "import prr_testbed, prr_testbed.model, prr_testbed.tasks, prr_testbed.tokenizer, prr_testbed.train_model\n"
        "from prr_testbed.model import MaskedDiffusionLM, ModelConfig, make_canvas\n"
        "from prr_testbed.tokenizer import CharTokenizer\n"
        "tok = CharTokenizer()\n"
        "m = MaskedDiffusionLM(ModelConfig.for_tokenizer(tok, d_model=32, n_layers=1, n_heads=2, d_ff=64))\n"
        "ex = prr_testbed.tasks.heldout_set('arith', n=2)\n"
        "x, _ = make_canvas(tok, [e.prompt for e in ex], 8)\n"
        "assert m(x).logits.shape[-1] == tok.vocab_size\n"
        "assert 'prr_ext' not in sys.modules and 'prr_ext._C' not in sys.modules, 'prr_ext was imported'\n"
        "print('ok')\n")
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stdout[-2000:] + res.stderr[-3000:]


def test_public_loaders_and_token_ids():
    model = prr_testbed.load_model()
    tok = model.tokenizer
    assert (model.config.mask_token_id, model.config.eos_token_id) == (tok.mask_token_id, tok.eos_token_id)
    assert (tok.mask_token_id, tok.eos_token_id, tok.pad_token_id) == (tok.mask_id, tok.eos_id, tok.pad_id)
    assert os.path.dirname(prr_testbed.MODEL_DIR) == os.path.dirname(prr_testbed.CONTROLLER_DIR)
    ctrl = prr_testbed.load_controller()
    assert ctrl.in_features > 0
    tau = prr_testbed.tuned_tau()
    assert tau is not None and 0.0 < tau < 1.0
    with pytest.raises(FileNotFoundError, match="no PRR controller"):
        prr_testbed.load_controller(os.path.join(prr_testbed.ASSETS_DIR, "missing"))


def test_models_load_by_name(tmp_path, monkeypatch, capsys):
    """load_model(name=) and every command's --model take a testbed model's name; a named model missing from the
    installation, or an unknown name, is an error that says which and what to do instead."""
    from prr_testbed.cli import model_arg
    from prr_testbed.model import MaskedDiffusionLM, ModelConfig
    from prr_testbed.tokenizer import CharTokenizer

    assert model_arg("demo") == prr_testbed.MODEL_DIR and model_arg(str(tmp_path)) == str(tmp_path)
    demo = prr_testbed.load_model(name="demo")
    assert demo.config.d_model == prr_testbed.load_model().config.d_model
    with pytest.raises(ValueError, match="no testbed model called 'nope'; known: demo, long, steps"):
        prr_testbed.load_model(name="nope")
    long_dir = tmp_path / "long_model"
    monkeypatch.setitem(prr_testbed.MODELS, "long", (str(long_dir), "the long-family model"))
    with pytest.raises(FileNotFoundError, match="model 'long' .* is not in this installation"):
        prr_testbed.load_model(name="long")
    with pytest.raises(SystemExit):  # a command's --model says the same
        sweep.parse_args(["--model", "long", "--out", str(tmp_path / "r.json")])
    assert "argument --model: model 'long'" in capsys.readouterr().err
    m = MaskedDiffusionLM(ModelConfig.for_tokenizer(CharTokenizer(), d_model=32, n_layers=1, n_heads=2, d_ff=64))
    m.save_pretrained(str(long_dir))
    assert prr_testbed.load_model(name="long").config.d_model == 32
    assert sweep.parse_args(["--model", "long", "--out", str(tmp_path / "r.json")])[1].model == str(long_dir)


def test_each_model_gets_its_own_shipped_controller(tmp_path, capsys):
    """A controller learns from one model's decodes: --model demo and --model steps take the controller that ships
    beside each; with another --model and no --controller, a sweep of the default policies drops PRR with a note,
    one that asks for prr by name is refused, and so is length_bench with its PRR strategies and train_controller
    --install; a --controller keeps PRR."""
    from prr_testbed import length_bench
    from prr_testbed.harness import NEEDS_CONTROLLER

    other = tmp_path / "other"
    prr_testbed.model.MaskedDiffusionLM(prr_testbed.model.ModelConfig.for_tokenizer(
        prr_testbed.tokenizer.CharTokenizer(), d_model=32, n_layers=1, n_heads=2, d_ff=64)).save_pretrained(str(other))
    out = ["--out", str(tmp_path / "r.json")]
    _, args = sweep.parse_args(["--model", str(other)] + out)
    assert not set(NEEDS_CONTROLLER) & set(args.policies) and "PRR skipped" in args.controller_note
    assert f"no PRR controller ships for {other}" in args.controller_note and args.controller_dir is None
    with pytest.raises(SystemExit):
        sweep.parse_args(["--model", str(other), "--policies", "threshold,prr"] + out)
    assert f"argument --controller: no PRR controller ships for {other}" in capsys.readouterr().err
    own = str(tmp_path / "controller")
    prr_testbed.load_controller().save(own)
    for argv, want in ((["--model", "demo"], prr_testbed.CONTROLLER_DIR), ([], prr_testbed.CONTROLLER_DIR),
                       (["--model", "steps"], prr_testbed.STEP_CONTROLLER_DIR),
                       (["--model", str(other), "--controller", own], own)):
        _, args = sweep.parse_args(argv + out)
        assert "prr" in args.policies and args.controller_note is None and args.controller_dir == want
    assert set(prr_testbed.SHIPPED_CONTROLLERS.values()) == {prr_testbed.CONTROLLER_DIR,
                                                             prr_testbed.STEP_CONTROLLER_DIR}
    lp = tmp_path / "lp"  # the argument checks look for the predictor's files and format only
    lp.mkdir()
    (lp / "config.json").write_text('{"format": "prr_ext.length_predictor"}')
    (lp / "model.safetensors").write_bytes(b"")
    with pytest.raises(SystemExit):
        length_bench.parse_args(["--model", str(other), "--predictor", str(lp)] + out)
    assert f"argument --controller: no PRR controller ships for {other}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        TC.parse_args(["--model", str(other), "--install", "--out", str(tmp_path / "prr"), "--device", "cpu"])
    assert "argument --install: " in capsys.readouterr().err
    args = TC.parse_args(["--model", "steps", "--install", "--out", str(tmp_path / "prr"), "--device", "cpu"])
    assert args.install_dir == prr_testbed.STEP_CONTROLLER_DIR


def test_forwarding_shims_run_the_testbed_commands():
    res = _python(
        "import runpy, sys\n"
        "for old, new in (('demo', 'demo'), ('eval', 'sweep'), ('train', 'train_controller')):\n"
        "    sys.argv = ['x', '--help']\n"
        "    try:\n"
        "        runpy.run_module('prr_ext.' + old, run_name='__main__')\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (old, e.code)\n"
        "    else:\n"
        "        raise AssertionError(old + ' did not run a command')\n")
    assert res.returncode == 0, res.stderr[-3000:]
    for new in ("demo", "sweep", "train_controller"):
        assert f"usage: python -m prr_testbed.{new}" in res.stdout


# ---------------------------------------------------------------------------------------------------------------
# --help, --device
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command,default", [("demo", "(default: prr_testbed_demo.png)"),
                                             ("sweep", "(default: runs/sweep/results.json)"),
                                             ("train_controller", "(default: runs/prr)"),
                                             ("train_model", "(default: runs/model)")])
def test_help_shows_prog_and_defaults(capsys, command, default):
    with pytest.raises(SystemExit) as e:
        COMMANDS[command].main(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    assert out.startswith(f"usage: python -m prr_testbed.{command}")
    assert default in out and "(default: auto)" in out
    assert "(default: None)" not in out and "(default: False)" not in out


@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_device_lists_the_choices(capsys, no_work, command):
    err = _usage_error(capsys, command, ["--device", "gpu"])
    assert "argument --device: 'gpu' is not a device; choose one of auto, cpu, cuda, cuda:<index>" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
@pytest.mark.parametrize("command", list(COMMANDS))
def test_cuda_without_a_gpu_says_what_is_missing(capsys, no_work, tmp_path, command):
    argv = ["--device", "cuda"] + (["--out", str(tmp_path / "o")] if command in ("train_controller", "train_model")
                                   else [])
    err = _usage_error(capsys, command, argv)
    assert "argument --device: cuda was asked for" in err
    if torch.version.cuda is None:
        assert f"the installed torch ({torch.__version__}) is a CPU-only build" in err
    else:
        assert "sees no CUDA GPU" in err
    assert "build of prr_ext" not in err  # the extension's build is not what is missing


# ---------------------------------------------------------------------------------------------------------------
# inputs and outputs are checked before any work
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command,argv", [("demo", []), ("sweep", ["--policies", "lowconf,prr"])])
def test_a_missing_controller_is_an_error(capsys, no_work, tmp_path, command, argv):
    err = _usage_error(capsys, command, argv + ["--controller", str(tmp_path / "missing")])
    assert f"argument --controller: {tmp_path / 'missing'} is not a folder" in err
    (tmp_path / "empty").mkdir()
    err = _usage_error(capsys, command, argv + ["--controller", str(tmp_path / "empty")])
    assert "argument --controller:" in err and "holds no PRR controller" in err


@pytest.mark.parametrize("command,option", [("demo", "--json"), ("demo", "--plot"), ("sweep", "--out"),
                                            ("sweep", "--plot"), ("train_controller", "--out"),
                                            ("train_model", "--out")])
def test_output_paths_fail_fast_naming_the_argument(capsys, no_work, tmp_path, command, option):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    under_file = str(a_file / "x.json")
    in_missing_folder = str(tmp_path / "missing" / "x.json")
    err = _usage_error(capsys, command, [option, under_file, "--device", "cpu"])
    assert f"argument {option}: {a_file} is a file, so nothing can be written under it" in err
    err = _usage_error(capsys, command, [option, in_missing_folder, "--device", "cpu"])
    assert f"argument {option}: the folder {tmp_path / 'missing'} does not exist" in err
    if command in ("demo", "sweep"):  # file outputs: a folder is not a file
        err = _usage_error(capsys, command, [option, str(tmp_path), "--device", "cpu"])
        assert f"argument {option}: {tmp_path} is a folder; give a file path" in err
    else:  # folder outputs: a file is not a folder
        err = _usage_error(capsys, command, [option, str(a_file), "--device", "cpu"])
        assert f"argument {option}: {a_file} is a file; give a folder path" in err


def test_train_model_does_not_write_the_shipped_model_unless_installing(capsys, no_work):
    err = _usage_error(capsys, "train_model", ["--out", prr_testbed.MODEL_DIR, "--device", "cpu"])
    assert "argument --out:" in err and "--install" in err


def test_train_controller_refuses_a_run_with_other_settings(capsys, no_work, tmp_path):
    out = str(tmp_path / "run")
    args = TC.parse_args(["--out", out, "--families", "arith", "--device", "cpu"])  # an empty --out is fine
    os.makedirs(out)
    with open(os.path.join(out, "run.json"), "w") as f:
        json.dump({"settings": TC.run_settings(args)}, f)
    assert TC.parse_args(["--out", out, "--families", "arith", "--device", "cpu"]).families == ["arith"]
    err = _usage_error(capsys, "train_controller", ["--out", out, "--families", "arith,words", "--device", "cpu"])
    assert "argument --out:" in err and "other settings" in err and "families" in err
    os.remove(os.path.join(out, "run.json"))
    os.makedirs(os.path.join(out, "round0"))
    err = _usage_error(capsys, "train_controller", ["--out", out, "--families", "arith", "--device", "cpu"])
    assert "argument --out:" in err and "no run.json" in err


def _refused(capsys, module: str, argv) -> str:
    """The usage error (exit 2) of `python -m prr_testbed.<module> argv`, which must come before any work."""
    import importlib

    with pytest.raises(SystemExit) as e:
        importlib.import_module(f"prr_testbed.{module}").main(argv)
    assert e.value.code == 2, f"expected a usage error (exit 2), got {e.value.code!r}"
    return capsys.readouterr().err


def test_no_output_overwrites_an_input_or_another_output(capsys, no_work, tmp_path):
    """A results path that is also an input or another output of the same run is refused, not overwritten."""
    sweep_json = tmp_path / "before.json"
    sweep_json.write_text("{}")
    err = _refused(capsys, "sweep", ["--out", str(tmp_path / "s.png"), "--device", "cpu"])  # the plot would be --out
    assert "argument --plot:" in err and "is also --out" in err
    err = _refused(capsys, "demo", ["--plot", str(tmp_path / "p.png"), "--json", str(tmp_path / "p.png")])
    assert f"argument --json: {tmp_path / 'p.png'} is also --plot" in err
    err = _refused(capsys, "compare_sweeps", [str(sweep_json), str(sweep_json), "--out", str(sweep_json)])
    assert f"argument --out: {sweep_json} is also before" in err
    assert sweep_json.read_text() == "{}"


def test_an_output_folder_holding_a_model_is_refused(capsys, no_work, tmp_path):
    """Models, controllers and predictors share their file names: a folder of another kind is not overwritten."""
    import shutil

    model_copy = tmp_path / "my_model"
    shutil.copytree(prr_testbed.MODEL_DIR, model_copy)
    before = (model_copy / "model.safetensors").read_bytes()
    err = _refused(capsys, "train_length", ["--model", str(model_copy), "--out", str(model_copy)])
    assert f"argument --out: {model_copy} is also --model" in err
    err = _refused(capsys, "train_length", ["--out", str(model_copy), "--device", "cpu"])
    assert f"argument --out: {model_copy} holds a prr_ext.mdlm (its config.json's format)" in err
    err = _refused(capsys, "train_controller", ["--out", str(model_copy), "--device", "cpu"])
    assert "holds a prr_ext.mdlm" in err
    err = _refused(capsys, "train_model", ["--out", prr_testbed.CONTROLLER_DIR, "--device", "cpu"])
    assert "holds a prr_ext.controller" in err
    assert (model_copy / "model.safetensors").read_bytes() == before


def test_an_input_folder_of_another_kind_is_named(capsys, no_work):
    err = _refused(capsys, "sweep", ["--policies", "prr", "--controller", prr_testbed.MODEL_DIR, "--device", "cpu"])
    assert f"argument --controller: {prr_testbed.MODEL_DIR} holds a prr_ext.mdlm (its config.json's format), not a PRR " \
           "controller" in err
    err = _refused(capsys, "sweep", ["--model", prr_testbed.CONTROLLER_DIR, "--device", "cpu"])
    assert "argument --model:" in err and "not a model" in err


@pytest.mark.parametrize("module,argv,message", [
    ("sweep", ["--taus", "1.5"], "argument --taus: tau must lie in [0, 1], got 1.5"),
    ("sweep", ["--klass-confs", "-1"], "argument --klass-confs:"),
    ("sweep", ["--steps-fracs", "0,1"], "argument --steps-fracs: step budgets are fractions of gen_length in (0, 1]"),
    ("sweep", ["--adaptive-steps-fracs", "5"], "argument --adaptive-steps-fracs:"),
    ("sweep", ["--taus", ","], "argument --taus: give at least one value"),
    ("sweep", ["--threads", "-1"], "argument --threads: must be >= 1"),
    ("sweep", ["--plot", "x.abc"], "argument --plot: x.abc: matplotlib writes"),
    ("demo", ["--plot", "x.abc"], "argument --plot: x.abc: matplotlib writes"),
    ("kv_bench", ["--tau", "1.5"], "argument --tau: tau must lie in [0, 1], got 1.5"),
    ("train_controller", ["--tau-grid", "2"], "argument --tau-grid: tau must lie in [0, 1]"),
    ("train_controller", ["--t-min-grid", "0"], "argument --t-min-grid: t_min must lie in (0, 1)"),
    ("train_controller", ["--t-max-grid", "0.5"], "argument --t-max-grid: t_max must be a finite number >= 1"),
    ("train_controller", ["--hidden", "0"], "argument --hidden: one or two sizes in [1, 64]"),
    ("train_controller", ["--hidden", "abc"], "argument --hidden: 'abc' is not a comma-separated list of integers"),
    ("train_length", ["--ridge", "-1"], "argument --ridge: must be a finite number >= 0"),
    ("train_length", ["--train", "4", "--families", "arith", "--calibration-fraction", "0.1"],
     "argument --calibration-fraction: 4 train pairs (4 per family) leave 0 to calibrate"),
    ("train_model", ["--steps", "0"], "argument --steps: must be >= 1"),
    ("train_model", ["--mix", "abc"], "argument --mix: 'abc' is not a comma-separated list of numbers"),
    ("train_model", ["--families", "nosuch", "--mix", "1"], "argument --families: unknown nosuch"),
    ("train_model", ["--d-model", "60"], "argument --n-heads: d_model 60 must split into 8 heads of even size"),
])
def test_settings_are_checked_before_any_work(capsys, no_work, tmp_path, module, argv, message):
    """A setting the run would reject later (a policy's range, a grid, a split size) fails at once, naming it."""
    out = ["--out", str(tmp_path / ("o.json" if module in ("sweep", "kv_bench") else "o"))]
    err = _refused(capsys, module, argv + (out if module != "demo" else []) + ["--device", "cpu"])
    assert message in err


# ---------------------------------------------------------------------------------------------------------------
# the demo without the optional matplotlib
# ---------------------------------------------------------------------------------------------------------------
def test_demo_without_matplotlib_skips_the_plot_with_a_note(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    threads = torch.get_num_threads()
    try:
        doc = demo.main(["--n", "1", "--tasks", "sudoku", "--device", "cpu", "--threads", "1", "--no-progress",
                         "--plot", str(tmp_path / "demo.png"), "--json", str(tmp_path / "demo.json")])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "matplotlib is not installed" in out and "EntropyBound" in out
    assert not (tmp_path / "demo.png").exists()
    assert json.loads((tmp_path / "demo.json").read_text())["n"] == 1 and len(doc["results"]) == len(demo.DEMO_SPECS)
    assert f"wrote json {tmp_path / 'demo.json'}" in out


# ---------------------------------------------------------------------------------------------------------------
# the demo on another model's families
# ---------------------------------------------------------------------------------------------------------------
def test_tasks_follow_the_model_it_loads(tmp_path):
    """Without --tasks the demo decodes the set of families the model was trained on (its record's validation
    accuracies): the demo families, else the step families, else the long ones; --tasks outside the record is an
    error that names them. A model without a record gets the demo families, and any --tasks."""
    from prr_testbed.cli import trained_tasks

    def model(*families):
        folder = tmp_path / "_".join(families or ("none",))
        folder.mkdir(exist_ok=True)
        record = {"training": {"final_valid_acc": {f: 1.0 for f in families}}} if families else {}
        (folder / "config.json").write_text(json.dumps({"format": "prr_ext.mdlm", **record}))
        return str(folder)

    assert trained_tasks(model("arith", "words", "sudoku"), None) == list(T.FAMILY_NAMES)
    assert trained_tasks(None, None) == list(T.FAMILY_NAMES)  # the shipped model
    assert trained_tasks(model(*T.LONG_FAMILY_NAMES, *T.STEP_FAMILY_NAMES), None) == list(T.STEP_FAMILY_NAMES)
    long_model = model(*T.LONG_FAMILY_NAMES)
    assert trained_tasks(long_model, None) == list(T.LONG_FAMILY_NAMES)
    assert trained_tasks(model(), None) == list(T.FAMILY_NAMES)
    assert trained_tasks(model(), ["dial"]) == ["dial"]
    assert trained_tasks(long_model, ["trace"]) == ["trace"]
    with pytest.raises(ValueError, match="not trained on cups,dial"):
        trained_tasks(long_model, ["cups", "trace", "dial"])


@pytest.mark.parametrize("argv,option", [
    (["prr_testbed.sweep", "--tasks", "trace"], "--tasks"),
    (["prr_testbed.failures", "--tasks", "trace"], "--tasks"),
    (["prr_testbed.kv_bench", "--families", "trace"], "--families"),
    (["prr_testbed.train_length", "--families", "trace"], "--families"),
    (["prr_testbed.train_controller", "--families", "trace"], "--families"),
])
def test_commands_refuse_families_the_model_was_not_trained_on(argv, option, tmp_path, capsys):
    """Decoding families the model never saw gives 0 % for every rule: each command refuses before any work
    (here the shipped demo model, trained on arith, words and sudoku)."""
    import importlib

    main = importlib.import_module(argv[0]).main
    with pytest.raises(SystemExit):
        main(argv[1:] + ["--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert f"argument {option}: the model was not trained on trace (its record: arith,sudoku,words)" in err


@pytest.mark.skipif(not os.path.isfile(os.path.join(prr_testbed.STEP_MODEL_DIR, "model.safetensors")),
                    reason="the step-family model is not in this installation")
def test_demo_on_the_step_model(capsys, tmp_path):
    """`demo --model steps` decodes a step family with every rule, PRR with the controller that ships beside the
    step model at its tuned tau, each row stopping at its answer: vanilla's NFE is the answer's block, not the
    160-slot canvas."""
    threads = torch.get_num_threads()
    try:
        doc = demo.main(["--model", "steps", "--tasks", "cups", "--n", "2", "--device", "cpu", "--threads", "1",
                         "--no-progress", "--plot", str(tmp_path / "demo.png")])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "PRR skipped" not in out and "each row stops once its answer and <eos> are committed" in out
    assert len(doc["results"]) == len(demo.DEMO_SPECS) and {r["task"] for r in doc["results"]} == {"cups"}
    prr = next(r for r in doc["results"] if r["policy"] == "prr")
    assert prr["param"] == prr_testbed.tuned_tau(prr_testbed.STEP_CONTROLLER_DIR) and prr["accuracy"] == 100.0
    vanilla = next(r for r in doc["results"] if r["policy"] == "lowconf")
    assert vanilla["accuracy"] == 100.0 and vanilla["mean_nfe"] == 32.0  # one block of one-token steps
    with pytest.raises(SystemExit):
        demo.main(["--model", "long", "--tasks", "cups", "--n", "1", "--device", "cpu", "--no-progress"])
    assert "argument --tasks: the model was not trained on cups" in capsys.readouterr().err
