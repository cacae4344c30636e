"""Evaluate commit rules on your own model and prompts.

    python -m prr_ext.eval --model PATH --data FILE.jsonl [--checker gsm8k] [--policies lowconf,threshold,prr]
                           [--controller DIR] [--gen-length 256 --block-length 32 --steps S] [--chat] [--n N]
                           [--batch-size B] [--device auto] [--out results.json]

--data is a JSONL file, one {"prompt": ..., "answer": ...} per line (prr_ext.data; answers only needed with
--checker). Each policy point decodes every prompt; the table and the JSON give accuracy (with a checker), mean
NFE (forwards per prompt), tokens per forward (gen_length / mean NFE) and tokens/s.

--policies: a comma-separated list of lowconf, threshold, factor, entropy, prr, each optionally with its parameter
(threshold:0.8, factor:1.0, entropy:0.1, prr:0.9). threshold and prr without one take every --taus value (default:
0.9 for threshold, the controller's tuned tau from its policy.json for prr). prr needs --controller (from
`python -m prr_ext.train`), which is refused when it was trained for another model. A controller trained with
`--hidden-features R` carries its hidden-state map (hidden_features.safetensors) in its folder; prr then calls the
model with output_hidden_states=True and feeds the map's R features to the controller.

Without --model and --data, `python -m prr_ext.eval` runs the testbed's sweep (`python -m prr_testbed.sweep`, same
arguments), as before.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Dict, List

import torch

from . import user_common as U
from .controller import Controller, ControllerFormatError

PROG = "python -m prr_ext.eval"


def build_parser():
    from prr_testbed.cli import parser

    p = parser(PROG, __doc__)
    U.add_model_args(p)
    p.add_argument("--data", required=True, help="JSONL prompts (and answers) to evaluate on")
    p.add_argument("--policies", default="lowconf,threshold",
                   help="comma-separated policy points: lowconf, threshold[:tau], factor[:f], entropy[:gamma], "
                   "prr[:tau]")
    p.add_argument("--taus", type=U.floats, default=None,
                   help="taus for threshold / prr given without a parameter (comma-separated)")
    p.add_argument("--controller", default=None, help="a PRR controller folder (needed by prr)")
    p.add_argument("--n", type=int, default=None, help="only the first N prompts (default: all)")
    p.add_argument("--out", default=None, help="write the results as JSON to this file (default: none)")
    p.add_argument("--responses", action="store_true", help="keep every response in the JSON")
    return p


def parse_points(p, text: str) -> List[tuple]:
    """[(name, param or None)] from --policies."""
    points = []
    for item in (v.strip() for v in text.split(",")):
        if not item:
            continue
        name, _, value = item.partition(":")
        if name not in U.POLICY_NAMES:
            p.error(f"argument --policies: unknown policy {name!r}; choose from {', '.join(U.POLICY_NAMES)}")
        if name == "lowconf" and value:
            p.error("argument --policies: lowconf takes no parameter")
        try:
            param = float(value) if value else None
        except ValueError:
            p.error(f"argument --policies: {item!r}: {value!r} is not a number")
        points.append((name, param))
    if not points:
        p.error("argument --policies: give at least one policy")
    return points


def parse_args(argv=None):
    from prr_testbed.cli import check_outputs

    p = build_parser()
    args = p.parse_args(argv)
    U.check_canvas(p, args)
    if args.n is not None and args.n < 1:
        p.error("argument --n: must be >= 1")
    args.points = parse_points(p, args.policies)
    if any(name == "prr" for name, _ in args.points) and args.controller is None:
        p.error("argument --controller: the prr policy needs a controller folder (python -m prr_ext.train)")
    # what needs no model is checked before the model loads (minutes for an 8B one): each point's parameter and
    # the controller's files (its match with the model is checked once the model is there)
    stand_in = Controller.init(0)
    for name, param in args.points:
        for v in [param] if param is not None or name not in ("threshold", "prr") else args.taus or [None]:
            try:
                U.make_policy(name, v, stand_in)
            except (ValueError, TypeError) as e:
                p.error(f"argument --policies: {name}:{v}: {e}")
    if args.controller is not None:
        try:
            Controller.load(args.controller)
        except ControllerFormatError as e:
            p.error(f"argument --controller: {e}")
    check_outputs(p, args, files=("out",), inputs=("data",))
    args.checker_fn = U.checker_arg(p, args.checker)
    args.records = U.load_records(p, "--data", args.data, require_answer=args.checker is not None, n=args.n)
    U.check_answers(p, "--data", args.records, args.checker)
    args.device = U.resolve_device_arg(p, args.device)
    return p, args


def run(argv=None) -> Dict:
    p, args = parse_args(argv)
    quiet = args.no_progress
    dec = U.load_decoder(p, args, args.device)
    U.check_prompts(p, dec, "--data", args.records, args.chat)
    ctrl, ctrl_tau, hidden = (None, None, None)
    if args.controller is not None:  # hidden: the controller's own HiddenFeatures map, when it was trained with one
        ctrl, ctrl_tau, hidden = U.load_controller_arg(p, args.controller, dec)
    specs = []  # (label, name, param, policy)
    for name, param in args.points:
        params = [param]
        if param is None and name in ("threshold", "prr"):
            params = args.taus or [ctrl_tau if name == "prr" and ctrl_tau is not None else 0.9]
        for v in params:
            try:
                pol = U.make_policy(name, v, ctrl)
            except (ValueError, TypeError) as e:
                p.error(f"argument --policies: {name}:{v}: {e}")
            specs.append((name if v is None else f"{name}:{v:g}", name, v, pol))
    n = len(args.records)
    batches = -(-n // args.batch_size)
    print(f"[eval] {n} prompts of {args.data} x {len(specs)} policy points on {dec.kind} model {args.model} "
          f"({args.device}); gen_length {args.gen_length}, block_length {args.block_length}, steps {args.steps}",
          flush=True)
    points = []
    t_start = time.time()
    with U.progress(batches * len(specs), "eval", disable=quiet) as bar:
        for label, name, v, pol in specs:
            r = U.evaluate(dec, args.records, pol, checker=args.checker_fn, gen_length=args.gen_length,
                           block_length=args.block_length, steps=args.steps, chat=args.chat,
                           batch_size=args.batch_size, on_batch=lambda: bar.update(1),
                           keep_responses=args.responses, hidden_features=hidden)
            points.append({"label": label, "policy": name, "param": v, **r})
    print(f"{'policy':<16} {'acc %':>7} {'NFE':>8} {'tok/fwd':>8} {'tok/s':>9}")
    for pt in points:
        acc = "-" if pt["accuracy"] is None else f"{pt['accuracy']:.1f}"
        tps = "-" if pt["tokens_per_s"] is None else f"{pt['tokens_per_s']:.1f}"
        print(f"{pt['label']:<16} {acc:>7} {pt['mean_nfe']:>8.2f} {pt['tokens_per_forward']:>8.2f} {tps:>9}")
    doc = {"command": " ".join([PROG] + list(sys.argv[1:] if argv is None else argv)),
           "model": os.path.abspath(args.model), "kind": dec.kind,
           "fingerprint": U.model_fingerprint(dec.model), "data": os.path.abspath(args.data), "n": n,
           "checker": args.checker, "controller": os.path.abspath(args.controller) if args.controller else None,
           "settings": {"gen_length": args.gen_length, "block_length": args.block_length, "steps": args.steps,
                        "chat": args.chat, "batch_size": args.batch_size, "device": str(args.device),
                        "dtype": args.dtype},
           "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": time.time() - t_start, "points": points}
    if args.out:
        U.write_json(args.out, doc)
        print(f"wrote {os.path.abspath(args.out)}")
    return doc


def main(argv=None):
    def testbed(a):
        from prr_testbed.sweep import main as sweep_main

        return sweep_main(a)

    return U.dispatch(argv, build_parser, run, testbed, "python -m prr_testbed.sweep")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
