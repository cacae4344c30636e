"""What the testbed's commands share: the help layout, --device parsing and checks, output-path checks before any
work, progress bars. Imports torch and tqdm only (not prr_ext), so train_model can use it without the compiled op."""
from __future__ import annotations

import argparse
import json
import os
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import torch

DEVICE_CHOICES = "auto, cpu, cuda, cuda:<index>"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help keeps the description's line breaks and shows every option's default, except where there is no value
    to show (None, a flag's False): those options say their default in their help text."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """An ArgumentParser named as the user types the command (`python -m prr_testbed.<name>`), described by `doc`."""
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=HelpFormatter)


def device_arg(text: str) -> str:
    """argparse type of --device: auto, cpu, cuda or cuda:<index>."""
    t = text.strip().lower()
    if t in ("auto", "cpu", "cuda"):
        return t
    if t.startswith("cuda:") and t[5:].isdigit():
        return t
    raise argparse.ArgumentTypeError(f"{text!r} is not a device; choose one of {DEVICE_CHOICES}")


def names_arg(known: Sequence[str]) -> Callable[[str], List[str]]:
    """An argparse type: a comma-separated, non-empty subset of `known` (task families, policies), as a list."""
    def parse(text: str) -> List[str]:
        names = [v.strip() for v in text.split(",") if v.strip()]
        if not names or any(v not in known for v in names):
            raise argparse.ArgumentTypeError(f"{text!r}: choose a comma-separated subset of {','.join(known)}")
        return names
    return parse


def model_arg(text: str) -> str:
    """--model: a model folder, or the name of a testbed model (prr_testbed.MODELS), given as its folder."""
    from . import MODELS, model_dir

    if text not in MODELS:
        return text
    try:
        return model_dir(text)
    except FileNotFoundError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def shown_path(path: str) -> str:
    """`path` as a result file records it: relative to the folder that holds the prr_testbed package when it lies
    under it (the shipped models and controllers: "prr_testbed/assets/step_model"), else as given."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    full = os.path.abspath(path)
    return os.path.relpath(full, root).replace(os.sep, "/") if full.startswith(root + os.sep) else path


CONTROLLER_HELP = ("PRR controller folder, trained for --model (default: the one that ships beside --model; the demo "
                   "and step models have one, another --model needs its own)")


def controller_for(model: Optional[str], controller: Optional[str] = None) -> Tuple[Optional[str], Optional[str]]:
    """(the PRR controller folder to use, None): --controller when given, else the one that ships beside --model
    (absent: the demo model); or (None, why none fits) for a model that has none.

    A controller learns from one model's decodes (its confidences, its convergence), so another model's PRR numbers
    from it would mean nothing (prr_testbed.SHIPPED_CONTROLLERS)."""
    from . import MODEL_DIR, SHIPPED_CONTROLLERS

    if controller is not None:
        return controller, None
    real = os.path.realpath(model or MODEL_DIR)
    for model_dir, controller_dir in SHIPPED_CONTROLLERS.items():
        if real == os.path.realpath(model_dir):
            return controller_dir, None
    return None, (f"no PRR controller ships for {model} (the shipped ones were trained on the demo and step models' "
                  "decodes); pass --controller with one trained for it (python -m prr_testbed.train_controller "
                  "--model ...)")


def model_help() -> str:
    """--model's help text, with the names of prr_testbed.MODELS."""
    from . import MODELS

    return f"a model folder, or a testbed model's name ({', '.join(MODELS)}; default: demo, the shipped one)"


def resolve_device(requested: str) -> torch.device:
    """The torch device for a --device value; ValueError saying what is missing when CUDA was asked for and torch
    cannot use it. "auto" is the first GPU when torch sees one, else the CPU."""
    requested = device_arg(requested)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(requested)
    if dev.type == "cuda":
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            raise ValueError(f"{requested} was asked for, but the installed torch ({torch.__version__}) is a CPU-only "
                             "build; install a CUDA build of torch, or use --device cpu")
        if not torch.cuda.is_available():
            raise ValueError(f"{requested} was asked for, but torch {torch.__version__} sees no CUDA GPU "
                             "(torch.cuda.is_available() is False: no GPU, no driver, or CUDA_VISIBLE_DEVICES hides "
                             "it); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{requested} was asked for, but torch sees {torch.cuda.device_count()} GPU(s) "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return dev


def _check_parent(path: str, create_parent: bool) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    existing = parent
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{existing} is a file, so nothing can be written under it; choose another path")
    if existing != parent and not create_parent:
        raise ValueError(f"the folder {parent} does not exist; create it first, or choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"the folder {existing} is not writable; choose another path")


def check_output_file(path: str, create_parent: bool = False) -> None:
    """ValueError unless a file can be written at `path`: not a folder, and its folder exists (or, with
    `create_parent`, can be created) and is writable."""
    if not path:
        raise ValueError("the path is empty")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder; give a file path")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ValueError(f"{path} exists and is not writable")
    _check_parent(path, create_parent)


def check_output_dir(path: str, create_parent: bool = False) -> None:
    """ValueError unless `path` is (or can be created as) a writable folder; its parent must exist unless
    `create_parent`."""
    if not path:
        raise ValueError("the path is empty")
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ValueError(f"{path} is a file; give a folder path")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"the folder {path} is not writable")
        return
    _check_parent(path, create_parent)


def foreign_config(folder: str, writes: Optional[str]) -> Optional[str]:
    """What a folder holds, by its config.json's `format` (e.g. "a prr_ext.mdlm (its config.json's format)"), when
    that is not `writes`, the format of the config.json a command writes there (None: it writes none). None when
    the folder holds no config.json, or one of `writes`."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            fmt = json.load(f).get("format")
    except (OSError, ValueError, AttributeError):
        return "an unreadable config.json"
    if writes is not None and fmt == writes:
        return None
    return f"a {fmt} (its config.json's format)" if fmt else "a config.json that names no format"


def check_outputs(ap: argparse.ArgumentParser, args: argparse.Namespace, files: Iterable[str] = (),
                  dirs: Iterable[str] = (), inputs: Iterable[str] = (), writes: Optional[str] = None) -> None:
    """Check the output paths of `args` (destinations `files` and `dirs`; None = not asked for) before any work,
    exiting with a usage error that names the argument. An argument left at its default may create its folders
    (the defaults live under runs/ or the current folder); a path the user gave must have an existing folder.
    No output may be an input (destinations `inputs`) or another output: nothing a command reads or writes is
    overwritten by its own results. An output folder that already holds a config.json must hold what the command
    writes there (`writes`, that config's `format`; None: no config.json at all), so a model or controller folder
    given by mistake is refused, not overwritten."""
    def arg_name(dest: str) -> str:  # "--out", or a positional argument's name
        action = next((a for a in ap._actions if a.dest == dest), None)
        return action.option_strings[0] if action is not None and action.option_strings else dest

    seen: dict = {}  # real path -> the argument that names it
    for dest in inputs:
        if getattr(args, dest, None) is not None:
            seen.setdefault(os.path.realpath(getattr(args, dest)), dest)
    for dests, check, folders in ((files, check_output_file, False), (dirs, check_output_dir, True)):
        for dest in dests:
            value = getattr(args, dest)
            if value is None:
                continue
            name = arg_name(dest)
            try:
                check(value, create_parent=value == ap.get_default(dest))
            except ValueError as e:
                ap.error(f"argument {name}: {e}")
            real = os.path.realpath(value)
            if real in seen:
                ap.error(f"argument {name}: {value} is also {arg_name(seen[real])}, which this command would "
                         "overwrite; give another path")
            seen[real] = dest
            held = foreign_config(value, writes) if folders and os.path.isdir(value) else None
            if held:
                ap.error(f"argument {name}: {value} holds {held}, which this command would overwrite; give "
                         "another folder")


def write_json(path: str, doc: dict, prog: str) -> dict:
    """Write a command's JSON result to `path` (its folders made as needed; `check_outputs` has vetted it before the
    work) and say where, as every command's last line does."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"[{prog}] wrote {os.path.abspath(path)}")
    return doc


def trained_tasks(model: Optional[str], asked: Optional[Sequence[str]]) -> List[str]:
    """The task families to decode with the model in folder `model` (None: the shipped one): `asked`, or the first
    of the testbed's sets (the demo families, the step families, the long ones) that the model's training record
    (config.json's training.final_valid_acc) holds. ValueError naming the families the model was not trained on,
    when its record says which it was: decoding them gives 0 % and says nothing about the rules."""
    from . import MODEL_DIR
    from . import tasks as T

    try:
        with open(os.path.join(model or MODEL_DIR, "config.json")) as f:
            trained = set(json.load(f).get("training", {}).get("final_valid_acc", {}))
    except (OSError, ValueError, AttributeError):  # no record (a model from elsewhere): nothing to check against
        trained = set()
    if asked is None:
        return next((list(names) for names in (T.FAMILY_NAMES, T.STEP_FAMILY_NAMES, T.LONG_FAMILY_NAMES)
                     if set(names) <= trained), list(T.FAMILY_NAMES))
    untrained = [t for t in asked if trained and t not in trained]
    if untrained:
        raise ValueError(f"the model was not trained on {','.join(untrained)} (its record: {','.join(sorted(trained))})"
                         "; choose among those, or another --model")
    return list(asked)


def check_trained(ap: argparse.ArgumentParser, option: str, model: Optional[str],
                  asked: Optional[Sequence[str]]) -> List[str]:
    """`trained_tasks`, with a usage error naming `option` (--tasks, --families) instead of its ValueError."""
    try:
        return trained_tasks(model, asked)
    except ValueError as e:
        ap.error(f"argument {option}: {e}")


def check_input_dir(ap: argparse.ArgumentParser, option: str, path: Optional[str], must_hold: Iterable[str],
                    what: str) -> None:
    """Exit with a usage error naming `option` unless `path` (None = the shipped default, not checked here) is a
    folder holding the files `must_hold`; for a model, a PRR controller or a length predictor, whose folders all hold
    a config.json and a model.safetensors, its config.json must name that kind (its `format`)."""
    from prr_ext.controller import FORMAT as CONTROLLER_FORMAT
    from prr_ext.length import FORMAT as LENGTH_FORMAT

    from .model import FORMAT as MODEL_FORMAT

    if path is None:
        return
    missing = [f for f in must_hold if not os.path.isfile(os.path.join(path, f))]
    if not os.path.isdir(path):
        ap.error(f"argument {option}: {path} is not a folder; give the folder of a saved {what}")
    if missing:
        ap.error(f"argument {option}: {path} holds no {what} ({', '.join(missing)} missing)")
    fmt = {"model": MODEL_FORMAT, "PRR controller": CONTROLLER_FORMAT, "length predictor": LENGTH_FORMAT}.get(what)
    held = foreign_config(path, fmt) if fmt else None
    if held:
        ap.error(f"argument {option}: {path} holds {held}, not a {what}")


def progress(total: int, desc: str = "", disable: bool = False, unit: str = "batch"):
    """A tqdm progress bar on stderr (the tables stay on stdout)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=disable, dynamic_ncols=True, mininterval=1.0, unit=unit, leave=False)
