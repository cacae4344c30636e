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
CONTROLLER_DIR = os.path.join(ASSETS_DIR, "controller")  # config.json + model.safetensors + policy.json (its tau)

__all__ = ["ASSETS_DIR", "MODEL_DIR", "CONTROLLER_DIR", "load_model", "load_controller", "tuned_tau"]


def load_model(device="cpu", dtype=None):
    """The shipped masked-diffusion LM (prr_testbed.model.MaskedDiffusionLM) on `device`, weights in `dtype`
    (default torch.float32), in eval mode. Needs torch and safetensors, not prr_ext."""
    from .model import load_default

    if dtype is None:
        import torch

        dtype = torch.float32
    return load_default(device=device, dtype=dtype)


def load_controller(path: Optional[str] = None):
    """The PRR controller (a `prr_ext.Controller`) saved at `path`; default: the shipped one.

    Raises FileNotFoundError naming the directory when it holds no controller."""
    path = CONTROLLER_DIR if path is None else path
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"no PRR controller in {path} (no config.json there); a controller directory is what "
                                "`python -m prr_testbed.train_controller` writes (runs/prr/round<r>/controller)")
    from prr_ext import Controller

    return Controller.load(path)


def tuned_tau(path: Optional[str] = None) -> Optional[float]:
    """The PRR threshold tau the controller at `path` (default: the shipped one) was tuned with on the validation
    split (its policy.json, written by train_controller), or None when the directory has no policy.json."""
    from prr_ext.controller import tuned_tau as read_tuned_tau
    return read_tuned_tau(CONTROLLER_DIR if path is None else path)
