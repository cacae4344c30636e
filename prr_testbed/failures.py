"""Where a testbed model fails: vanilla decoding of held-out prompts, accuracy by instance size, and the failures
beside their references.

    python -m prr_testbed.failures --model runs/long --tasks trace,mul --n 60 --out runs/failures.json

Each task's prompts (the first --n of the --split held-out set) are decoded one token per step (LowConfidence, steps
= the family's canvas) with EOS early exit, as the quality bar's vanilla point. Per task it prints the accuracy by
instance size (mul: digits of each factor; cumsum and sort: numbers in the list; trace: statements; chain: steps;
cups and balls: swaps; ring: moves; dial: turns; the other families: the reference's length in characters, by tens)
and the first --show failures; --out keeps every prompt's reference, response and verdict. The long families'
format changes came from reading these tables (docs/long_families.md).
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Dict, List

import torch

from . import tasks as T
from .cli import (check_input_dir, check_outputs, check_trained, device_arg, model_arg, model_help, names_arg, parser,
                  progress, write_json)
from .harness import RunSpec, evaluate, pick_device_arg
from .model import load_model_arg

PROG = "python -m prr_testbed.failures"


def instance_size(example: T.Example) -> str:
    """The size an example's difficulty grows with, as a sortable label."""
    p = example.prompt
    if example.family == "mul":
        a, b = p.rstrip("=").split("*")
        return f"{len(a)}x{len(b)} digits"
    if example.family in ("cumsum", "sort"):
        return f"{len(p.rstrip('=').split()) - 1} numbers"
    if example.family == "trace":
        return f"{p.count(';') + 1} statements"
    if example.family == "chain":
        return f"{p.rstrip('=').split()[2]} steps"
    if example.family in ("cups", "balls", "dial"):  # space-separated steps after the colon
        return f"{len(p.split(':', 1)[1].split())} {'turns' if example.family == 'dial' else 'swaps'}"
    if example.family == "ring":
        return f"{len(p.rstrip('=').split(':', 1)[1])} moves"
    return f"{len(example.response) // 10 * 10}+ chars"


def by_size(records: List[Dict]) -> List[Dict]:
    """[{size, correct, n, accuracy}] in the order of the sizes (the numbers in the labels compared as numbers)."""
    groups: Dict[str, List[int]] = defaultdict(list)
    for r in records:
        groups[r["size"]].append(r["correct"])
    key = lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]  # noqa: E731
    return [dict(size=s, correct=sum(v), n=len(v), accuracy=100.0 * sum(v) / len(v))
            for s, v in sorted(groups.items(), key=lambda kv: key(kv[0]))]


def parse_args(argv=None):
    ap = parser(PROG, __doc__)
    ap.add_argument("--model", default=None, type=model_arg, help=model_help())
    ap.add_argument("--tasks", type=names_arg(tuple(T.FAMILIES)), default=None,
                    help="task families (comma-separated; default: those the model was trained on)")
    ap.add_argument("--split", default="valid", choices=["valid", "test"], help="held-out split")
    ap.add_argument("--n", type=int, default=60, help="prompts per task (the first n of the split's set)")
    ap.add_argument("--show", type=int, default=5, help="failures printed per task")
    ap.add_argument("--batch-size", type=int, default=20, help="prompts decoded together")
    ap.add_argument("--device", type=device_arg, default="auto", help="auto (the GPU when there is one), cpu, cuda, "
                    "cuda:<index>")
    ap.add_argument("--out", default=None, help="JSON of every prompt's verdict (default: none)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.n < 1 or args.batch_size < 1 or args.show < 0:
        ap.error("arguments --n and --batch-size must be >= 1, --show >= 0")
    if args.out is not None:
        check_outputs(ap, args, files=("out",))
    check_input_dir(ap, "--model", args.model, ("config.json", "model.safetensors"), "model")
    args.tasks = check_trained(ap, "--tasks", args.model, args.tasks)
    args.device, args.device_note = pick_device_arg(ap, args.device)
    return args


def main(argv=None) -> Dict:
    args = parse_args(argv)
    if args.device_note:
        print(f"[failures] NOTE: {args.device_note}")
    device = torch.device(args.device)
    model = load_model_arg(args.model, device)
    report: Dict = dict(model=args.model or "shipped", split=args.split, n=args.n, tasks={})
    batches = sum(-(-args.n // args.batch_size) for _ in args.tasks)
    with progress(batches, desc="failures", disable=args.no_progress) as bar:
        for task in args.tasks:
            examples = T.heldout_set(task, args.split, n=args.n)
            r = evaluate(model, task, examples, RunSpec("lowconf"), batch_size=args.batch_size, device=device,
                         keep_responses=True, eos_exit=True, on_batch=lambda: bar.update(1))
            records = [dict(prompt=e.prompt, reference=e.response, response=got, correct=ok, size=instance_size(e))
                       for e, got, ok in zip(examples, r["responses"], r["correct"])]
            report["tasks"][task] = dict(accuracy=r["accuracy"], by_size=by_size(records), records=records)
    for task, t in report["tasks"].items():
        print(f"{task}: {t['accuracy']:.1f}% of {args.n} {args.split} prompts (vanilla, one token per step)")
        for row in t["by_size"]:
            print(f"  {row['size']:>16}  {row['correct']:3d}/{row['n']:<3d} {row['accuracy']:5.1f}%")
        for rec in [x for x in t["records"] if not x["correct"]][:args.show]:
            print(f"  {rec['prompt']}\n    want {rec['reference']}\n    got  {rec['response']}")
    if args.out is not None:
        write_json(args.out, report, "failures")
    return report


if __name__ == "__main__":
    main()
