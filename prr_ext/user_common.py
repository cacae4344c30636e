"""What `python -m prr_ext.eval` and `python -m prr_ext.train` share when they run on a user's model (--model,
--data): loading the model, prompts, checker and controller with usage errors that name the argument, decoding a
set of records with one policy and grading it, the controller's model sidecar (model.json) and the forwarding of
the old testbed commands.

A controller trained by `python -m prr_ext.train` is saved as a prr_ext.Controller folder (config.json,
model.safetensors; the file format is unchanged) with two sidecars: policy.json (the tuned tau) and model.json
(the fingerprint of the model it was trained for, `prr_ext.model_fingerprint`, its path and kind, and the feature
count). A controller trained with `--hidden-features R` takes 13 + R features and carries the map of the model's
last hidden state to its R extra features (`prr_ext.HiddenFeatures`, hidden_features.safetensors / .json) in the
same folder. `--controller` refuses a controller whose model.json names another model, or whose feature count is not
the 13 base features plus those of its own hidden_features file.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from .auto_length import model_fingerprint
from .constants import NUM_BASE_FEATURES
from .controller import TUNED_TAU_FILE, Controller, ControllerFormatError, tuned_tau
from .data import CHECKERS, Record, load_jsonl, make_checker
from .hidden_features import HiddenFeatures
from .policies import PRR, EntropyBound, Factor, LowConfidence, Policy, Threshold
from .prr_rounds import read_json, write_json  # noqa: F401  (the CLIs' JSON files: U.read_json / U.write_json)

MODEL_SIDECAR = "model.json"
POLICY_SIDECAR = TUNED_TAU_FILE
DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
USER_FLAGS = ("--model", "--data")


# ---------------------------------------------------------------------------------------------------------------
# the old testbed commands: `python -m prr_ext.eval` without --model / --data
# ---------------------------------------------------------------------------------------------------------------
def wants_user_command(argv: Sequence[str]) -> bool:
    """True when argv names --model or --data (as `--model X` or `--model=X`): the user-model command."""
    return any(a == f or a.startswith(f + "=") for a in argv for f in USER_FLAGS)


def dispatch(argv: Optional[Sequence[str]], user_parser: Callable[[], argparse.ArgumentParser],
             user_main: Callable, testbed_main: Callable, testbed_prog: str):
    """Run the user-model command when argv has --model or --data, else the testbed command (same arguments).
    A bare --help prints this command's help, then the testbed command's."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_user_command(argv):
        return user_main(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(user_parser().format_help())
        print(f"Without --model and --data this command runs `{testbed_prog}` (same arguments); its help "
              "follows.\n", flush=True)
    return testbed_main(argv)


# ---------------------------------------------------------------------------------------------------------------
# argument helpers
# ---------------------------------------------------------------------------------------------------------------
def _comma_list(s: str, cast: Callable, what: str) -> list:
    try:
        out = [cast(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of {what}") from None
    if not out:
        raise argparse.ArgumentTypeError("give at least one value")
    return out


def floats(s: str) -> List[float]:
    return _comma_list(s, float, "numbers")


def ints(s: str) -> List[int]:
    return _comma_list(s, int, "integers")


def check_controller_grids(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The controller trainers' --hidden, --t-max-grid, --t-min-grid and --tau-grid (prr_ext.train and
    prr_testbed.train_controller), checked before any rollout: a bad value would otherwise fail after them."""
    from .constants import MAX_HIDDEN

    if not 1 <= len(args.hidden) <= 2 or any(h < 1 or h > MAX_HIDDEN for h in args.hidden):
        p.error(f"argument --hidden: one or two sizes in [1, {MAX_HIDDEN}]")
    if any(not 1.0 <= t < math.inf for t in args.t_max_grid):
        p.error("argument --t-max-grid: t_max must be a finite number >= 1")
    if any(not 0.0 < t < 1.0 for t in args.t_min_grid):
        p.error("argument --t-min-grid: t_min must lie in (0, 1)")
    if any(not 0.0 <= t <= 1.0 for t in args.tau_grid):
        p.error("argument --tau-grid: tau must lie in [0, 1]")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--model, --trust-remote-code, --dtype, --device, decoding canvas options, --chat, --batch-size."""
    from prr_testbed.cli import device_arg

    p.add_argument("--model", required=True, help="a local model directory (prr_ext.load: LLaDA- / Dream-style, "
                   "transformers masked LMs, prr_testbed checkpoints)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run the modeling code shipped in the model directory (LLaDA, Dream)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="auto", help="the weights' dtype")
    p.add_argument("--device", type=device_arg, default="auto",
                   help="auto (the GPU when there is one), cpu, cuda, cuda:<index>")
    p.add_argument("--gen-length", type=int, default=256, help="generated tokens per prompt")
    p.add_argument("--block-length", type=int, default=32, help="semi-autoregressive block length")
    p.add_argument("--steps", type=int, default=None,
                   help="the step budget (default: --gen-length, one token per step for lowconf)")
    p.add_argument("--chat", action="store_true", help="apply the tokenizer's chat template to string prompts")
    p.add_argument("--batch-size", type=int, default=16, help="prompts decoded together")
    p.add_argument("--checker", default=None,
                   help="how responses are graded: exact, gsm8k, regex:PATTERN or MODULE:FUNCTION (prr_ext.data)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def check_canvas(p: argparse.ArgumentParser, args) -> None:
    for name in ("gen_length", "block_length", "batch_size") + (("steps",) if args.steps is not None else ()):
        if getattr(args, name) < 1:
            p.error(f"argument --{name.replace('_', '-')}: must be >= 1")
    if args.gen_length % args.block_length:
        p.error(f"argument --block-length: {args.block_length} does not divide --gen-length {args.gen_length}")
    args.steps = args.gen_length if args.steps is None else args.steps
    blocks = args.gen_length // args.block_length
    if args.steps % blocks:
        p.error(f"argument --steps: {args.steps} is not a multiple of the block count {blocks} "
                f"(--gen-length / --block-length)")


def load_records(p: argparse.ArgumentParser, option: str, path: str, require_answer: bool,
                 n: Optional[int] = None) -> List[Record]:
    """The records of a JSONL file, or a usage error naming `option` (and the file's line)."""
    try:
        records = load_jsonl(path, require_answer=require_answer)
    except (ValueError, FileNotFoundError) as e:
        p.error(f"argument {option}: {e}")
    return records[:n] if n else records


def check_answers(p: argparse.ArgumentParser, option: str, records: Sequence[Record], spec: Optional[str]) -> None:
    """Grade an empty response against every record with a built-in checker (`spec`: exact, gsm8k), before any
    decoding: a reference answer the checker cannot read (gsm8k: no number after ####) is a usage error naming the
    file's line, not a traceback after the first batch. Checkers of the user's own (regex:, module:function) are not
    called ahead."""
    if spec not in CHECKERS:
        return
    for rec in records:
        try:
            CHECKERS[spec]("", rec)
        except ValueError as e:
            p.error(f"argument {option}: {e}")


def check_prompts(p: argparse.ArgumentParser, dec, option: str, records: Sequence[Record], chat: bool) -> None:
    """Encode every prompt of `records` (the chat template with `chat`) before any decoding: an empty prompt, or a
    chat prompt for a tokenizer without a template, is a usage error naming the file's line."""
    for rec in records:
        try:
            if not dec.encode_prompt(rec.prompt, chat=chat):
                raise ValueError("the prompt encodes to no tokens")
        except (ValueError, TypeError) as e:
            p.error(f"argument {option}: line {rec.line}: {e}")


def checker_arg(p: argparse.ArgumentParser, spec: Optional[str]):
    if spec is None:
        return None
    try:
        return make_checker(spec)
    except ValueError as e:
        p.error(f"argument --checker: {e}")


def resolve_device_arg(p: argparse.ArgumentParser, requested: str) -> torch.device:
    from prr_testbed.cli import resolve_device

    try:
        return resolve_device(requested)
    except ValueError as e:
        p.error(f"argument --device: {e}")


def load_decoder(p: argparse.ArgumentParser, args, device: torch.device):
    """prr_ext.load(--model) or a usage error naming --model."""
    from .hub import load

    try:
        return load(args.model, device=device, dtype=DTYPES[args.dtype], trust_remote_code=args.trust_remote_code)
    except (FileNotFoundError, ValueError, ImportError, OSError) as e:
        p.error(f"argument --model: {e}")


# ---------------------------------------------------------------------------------------------------------------
# controllers and their model sidecar
# ---------------------------------------------------------------------------------------------------------------
def model_record(dec, in_features: int = NUM_BASE_FEATURES, hidden_features: int = 0) -> Dict[str, Any]:
    """What model.json records about the model a controller is trained for (and the controller's feature count:
    13 base + `hidden_features`)."""
    return {"fingerprint": model_fingerprint(dec.model), "model": os.path.abspath(dec.path) if dec.path else None,
            "kind": dec.kind, "in_features": int(in_features), "hidden_features": int(hidden_features)}


def save_controller(ctrl: Controller, path: str, dec, tau: float, extra: Optional[Dict] = None,
                    hidden_features: Optional[HiddenFeatures] = None) -> None:
    """The controller folder (prr_ext.Controller.save) plus policy.json (tau), model.json (fingerprint) and, for a
    controller over hidden-state features, its HiddenFeatures map."""
    if ctrl.extra_features != (hidden_features.r if hidden_features is not None else 0):
        raise ValueError(f"the controller takes {ctrl.extra_features} extra features but hidden_features gives "
                         f"{0 if hidden_features is None else hidden_features.r}")
    ctrl.save(path)
    if hidden_features is not None:
        hidden_features.save(path)
    write_json(os.path.join(path, POLICY_SIDECAR), {"tau": float(tau), "trained_by": "python -m prr_ext.train",
                                                    **(extra or {})})
    write_json(os.path.join(path, MODEL_SIDECAR), model_record(dec, ctrl.in_features, ctrl.extra_features))


def controller_problem(path: str, ctrl: Controller, dec) -> Optional[str]:
    """None when the controller at `path` may drive `dec`'s model; else why not. Extra features are accepted only
    when they are the ones the folder's own HiddenFeatures map computes."""
    try:
        hf = HiddenFeatures.load(path)
    except ControllerFormatError as e:
        return str(e)
    have = hf.r if hf is not None else 0
    if ctrl.extra_features != have:
        where = (f"its {hf!r} map computes {have}" if hf is not None else
                 "the folder holds no hidden_features map to compute them")
        return (f"the controller at {path} takes {ctrl.in_features} features ({ctrl.extra_features} extra), but these "
                f"commands compute the {NUM_BASE_FEATURES} base features plus those of the controller's own hidden-"
                f"state map, and {where}: it was trained for another setup")
    side = os.path.join(path, MODEL_SIDECAR)
    if not os.path.isfile(side):
        return None  # a controller from elsewhere (e.g. the testbed's): nothing recorded to compare
    try:
        with open(side) as f:
            rec = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        return f"{side} is not valid JSON ({e})"
    if not isinstance(rec, dict):
        return f"{side} does not hold a JSON object"
    if rec.get("in_features", ctrl.in_features) != ctrl.in_features:
        return (f"{side} records {rec.get('in_features')} features but the controller's weights take "
                f"{ctrl.in_features}")
    want, have = rec.get("fingerprint"), model_fingerprint(dec.model)
    if want is not None and want != have:
        return (f"the controller at {path} was trained for another model ({rec.get('model')}, fingerprint {want}); "
                f"{dec.path} has fingerprint {have}. Train one for this model with `python -m prr_ext.train`")
    return None


def load_controller_arg(p: argparse.ArgumentParser, path: str, dec) -> tuple:
    """(Controller, its tuned tau or None, its HiddenFeatures or None) from --controller, checked against the model;
    else a usage error."""
    try:
        ctrl = Controller.load(path)
    except ControllerFormatError as e:
        p.error(f"argument --controller: {e}")
    problem = controller_problem(path, ctrl, dec)
    if problem:
        p.error(f"argument --controller: {problem}")
    try:
        tau = tuned_tau(path)
        hf = HiddenFeatures.load(path)
    except ControllerFormatError as e:
        p.error(f"argument --controller: {e}")
    return ctrl, tau, hf


# ---------------------------------------------------------------------------------------------------------------
# decoding and grading one policy point
# ---------------------------------------------------------------------------------------------------------------
POLICY_NAMES = ("lowconf", "threshold", "factor", "entropy", "prr")


def make_policy(name: str, param: Optional[float], controller: Optional[Controller]) -> Policy:
    if name == "lowconf":
        return LowConfidence()
    if name == "threshold":
        return Threshold(tau=0.9 if param is None else param)
    if name == "factor":
        return Factor(f=1.0 if param is None else param)
    if name == "entropy":
        return EntropyBound(gamma=0.1 if param is None else param)
    if name == "prr":
        return PRR(controller, tau=0.9 if param is None else param)
    raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")


def evaluate(dec, records: Sequence[Record], policy: Policy, *, checker=None, gen_length: int, block_length: int,
             steps: int, chat: bool, batch_size: int, on_batch: Optional[Callable[[], None]] = None,
             keep_responses: bool = False, hidden_features: Optional[HiddenFeatures] = None) -> Dict[str, Any]:
    """Decode every record's prompt with `policy`; accuracy (percent; None without a checker), mean NFE, tokens per
    forward (generated tokens / forwards), tokens/s (generated tokens / decode seconds), finished rate.
    `hidden_features` goes to generate() for a PRR policy whose controller takes extra features (others ignore it:
    they have no controller to feed)."""
    kw = {}
    if hidden_features is not None and isinstance(policy.base_rule, PRR) and policy.base_rule.controller.extra_features:
        kw["hidden_features"] = hidden_features
    correct, nfe, finished, responses, seconds = [], [], 0, [], 0.0
    for lo in range(0, len(records), batch_size):
        chunk = records[lo:lo + batch_size]
        t0 = time.perf_counter()
        res = dec.generate([r.prompt for r in chunk], policy=policy, gen_length=gen_length,
                           block_length=block_length, steps=steps, chat=chat, batch_size=len(chunk), **kw)
        seconds += time.perf_counter() - t0
        for rec, r in zip(chunk, res):
            nfe.append(r.nfe)
            finished += int(r.finished)
            if checker is not None:
                correct.append(int(bool(checker(r.text, rec))))
            if keep_responses:
                responses.append(r.text)
        if on_batch is not None:
            on_batch()
    n = len(records)
    mean_nfe = sum(nfe) / n
    out = {"n": n, "accuracy": 100.0 * sum(correct) / n if checker is not None else None,
           "mean_nfe": mean_nfe, "tokens_per_forward": gen_length / mean_nfe,
           "tokens_per_s": n * gen_length / seconds if seconds > 0 else None, "seconds": seconds,
           "finished_rate": finished / n, "nfe_per_prompt": nfe}
    if checker is not None:
        out["correct"] = correct
    if keep_responses:
        out["responses"] = responses
    return out


def progress(total: int, desc: str, disable: bool):
    from prr_testbed.cli import progress as bar

    return bar(total, desc, disable=disable)
