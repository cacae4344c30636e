"""prr_testbed: a small masked-diffusion LM, its tasks and the tools that measure prr_ext's commit rules on it.

    import prr_ext, prr_testbed
    from prr_testbed.model import make_canvas, decode_responses

    model = prr_testbed.load_model()                  # the shipped 4.8M-parameter model (fp32, CPU)
    policy = prr_ext.PRR(prr_testbed.load_controller(), tau=prr_testbed.tuned_tau())
    x, _ = make_canvas(model.tokenizer, ["4821+7395="], gen_length=24)   # prompt, then 24 mask tokens
    out = prr_ext.generate(model, x[:, :-24], gen_length=24, block_length=12, steps=24, policy=policy)
    decode_responses(model.tokenizer, out.tokens, x.shape[1] - 24)     # ['c:1110 s:12216'], out.nfe == [2]

Modules: `model`, `tokenizer` and `tasks` need neither prr_ext nor its compiled op; `harness` evaluates commit policies
through `prr_ext.generate`. Commands (each with --help): `python -m prr_testbed.demo`, `python -m prr_testbed.sweep`,
`python -m prr_testbed.train_controller`, `python -m prr_testbed.train_model`.

Importing this package loads nothing else (not torch, not prr_ext); the functions below import what they need.
"""
import os
from typing import Optional

ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
MODEL_DIR = os.path.join(ASSETS_DIR, "model")            # config.json + model.safetensors
LONG_MODEL_DIR = os.path.join(ASSETS_DIR, "long_model")  # the long-family model (docs/long_families.md: its stage)
STEP_MODEL_DIR = os.path.join(ASSETS_DIR, "step_model")  # the step-family model, on which issue 21's bar holds
CONTROLLER_DIR = os.path.join(ASSETS_DIR, "controller")  # config.json + model.safetensors + policy.json (its tau)
STEP_CONTROLLER_DIR = os.path.join(ASSETS_DIR, "step_controller")  # the same, trained on the step model's decodes

# The testbed's models by name: what `load_model(name=...)` and every command's --model accept besides a folder.
MODELS = {
    "demo": (MODEL_DIR, "the 4.8M demo model of arith, words and sudoku"),
    "long": (LONG_MODEL_DIR, "the long-family model of mul, cumsum, sort, trace and chain (issue 21)"),
    "steps": (STEP_MODEL_DIR, "the step-family model of cups, balls, ring and dial (issue 21's bar; it also decodes "
                              "the long families)"),
}

# The PRR controller that ships beside a model, by the model's folder: a controller learns from one model's decodes
# (its confidences, its convergence), so it is only used with that model. `long` has none.
SHIPPED_CONTROLLERS = {MODEL_DIR: CONTROLLER_DIR, STEP_MODEL_DIR: STEP_CONTROLLER_DIR}

__all__ = ["ASSETS_DIR", "MODEL_DIR", "LONG_MODEL_DIR", "STEP_MODEL_DIR", "CONTROLLER_DIR", "STEP_CONTROLLER_DIR",
           "MODELS", "SHIPPED_CONTROLLERS", "model_dir", "controller_dir", "load_model", "load_controller",
           "tuned_tau"]


def model_dir(name: str) -> str:
    """The folder of the model called `name` (a key of MODELS).

    Raises ValueError naming the known models for another name, and FileNotFoundError when that model's files are
    not in this installation."""
    if name not in MODELS:
        raise ValueError(f"no testbed model called {name!r}; known: {', '.join(MODELS)} (or pass a model folder)")
    path, what = MODELS[name]
    missing = [f for f in ("config.json", "model.safetensors") if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise FileNotFoundError(f"model {name!r} ({what}) is not in this installation: {path} lacks "
                                f"{', '.join(missing)}; train one with `python -m prr_testbed.train_model` and pass "
                                "its folder")
    return path


def load_model(device="cpu", dtype=None, name: str = "demo"):
    """A testbed model (prr_testbed.model.MaskedDiffusionLM) by name (MODELS: "demo", the shipped 4.8M model, "long"
    or "steps") on `device`, weights in `dtype` (default torch.float32), in eval mode. Needs torch and safetensors,
    not prr_ext. Errors as model_dir."""
    import torch

    from .model import MaskedDiffusionLM

    return MaskedDiffusionLM.from_pretrained(model_dir(name), device=device,
                                             dtype=torch.float32 if dtype is None else dtype)


def controller_dir(name: str = "demo") -> str:
    """The folder of the PRR controller that ships beside the model called `name` (a key of MODELS).

    Raises ValueError for an unknown name or a model that ships without one (`long`)."""
    if name not in MODELS:
        raise ValueError(f"no testbed model called {name!r}; known: {', '.join(MODELS)}")
    path = SHIPPED_CONTROLLERS.get(MODELS[name][0])
    if path is None:
        raise ValueError(f"no PRR controller ships for the {name!r} model; train one with `python -m "
                         f"prr_testbed.train_controller --model {name}` and pass its folder")
    return path


def load_controller(path: Optional[str] = None, name: str = "demo"):
    """The PRR controller (a `prr_ext.Controller`) saved at `path`; default: the one that ships beside the model
    called `name` (controller_dir: "demo" or "steps").

    Raises FileNotFoundError naming the directory when it holds no controller, ValueError as controller_dir."""
    path = controller_dir(name) if path is None else path
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"no PRR controller in {path} (no config.json there); a controller directory is what "
                                "`python -m prr_testbed.train_controller` writes (runs/prr/round<r>/controller)")
    from prr_ext import Controller

    return Controller.load(path)


def tuned_tau(path: Optional[str] = None, name: str = "demo") -> Optional[float]:
    """The PRR threshold tau the controller at `path` (default: the one that ships beside the model called `name`)
    was tuned with on the validation split (its policy.json, written by train_controller), or None when the
    directory has no policy.json."""
    from prr_ext.controller import tuned_tau as read_tuned_tau
    return read_tuned_tau(controller_dir(name) if path is None else path)
