r"""Measure Predict-then-Diffuse on a mixed-length workload: compute, time, accuracy and truncations per strategy.

    python -m prr_testbed.length_bench --predictor runs/length --out runs/length_bench.json
    python -m prr_testbed.length_bench --model runs/long --families mul,cumsum,sort,trace,chain \
        --predictor runs/lp_long --out benchmarks/results/length_<device>.json

Every strategy decodes the same test-split prompts of --families (mixed in one batch stream, greedy):
  vanilla      every canvas at --max-length, one token per step (LowConfidence, steps = canvas length)
  fixed        every canvas at --max-length, the base rule (--tau: Threshold)
  fixed+prr    every canvas at --max-length, PRR with --controller (tau: its tuned value)
  eos_exit     fixed, with prr_ext.generate(eos_fill=True): rows stop once their EOS is settled
  oracle       each canvas at the model's own length (first EOS + 1 under full refinement, as train_length labels),
               rounded up to a block
  predictor    gen_length="auto" with the predictor (--target-truncation, --truncation recovery)
  predictor+vanilla   the predicted canvases, one token per step
  predictor+eos_exit  the same with eos_fill=True: each predicted canvas also stops once its EOS is settled
  predictor+prr       the same with PRR (--controller, its tuned tau)
  predictor+prr+r2    the same with R2 over PRR
--counts draws a length-skewed mix by family (e.g. mostly the family of the shortest answers); --short-share P draws one
within every family: P of each family's queries from the shortest third of its answers, the rest from the other two
thirds (mostly short answers with a long tail, for families whose lengths overlap).
--strategies runs a subset (e.g. fixed,predictor with --truncation extend, then rerun: what each recovery costs).
Whether the predictor's and PRR's savings multiply: vanilla / predictor+prr against (vanilla / predictor+vanilla) x
(vanilla / fixed+prr), each saving measured alone (the JSON's "multiplicative", when all four strategies ran).
Per strategy: mean token-forwards per query (sum over a query's forwards of the canvas length covered; the feature
forward counts), wall seconds, accuracy (the task checkers), the truncation rate (canvases without EOS at the first
try) and the forwards; and its accuracy against the same rule on the fixed canvas, on the same prompts (a paired
bootstrap interval and an exact McNemar test: prr_testbed.stats.paired_comparison). Writes --out (JSON) and prints a
table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List

import torch

import prr_ext
from prr_ext.auto_length import generate_auto

from . import load_controller, tuned_tau
from . import tasks as T
from .cli import (CONTROLLER_HELP, check_input_dir, check_outputs, check_trained, controller_for, device_arg, model_arg,
                  model_help, names_arg, parser, shown_path, write_json)
from .harness import param_error, pick_device_arg
from .model import decode_responses, load_model_arg, make_canvas
from .stats import paired_comparison
from .train_length import label_and_features

PROG = "python -m prr_testbed.length_bench"
STRATEGIES = ("vanilla", "fixed", "fixed+prr", "eos_exit", "oracle", "predictor", "predictor+vanilla",
              "predictor+eos_exit", "predictor+prr", "predictor+prr+r2")
FIXED = ("vanilla", "fixed", "fixed+prr", "eos_exit")  # the strategies on the --max-length canvas
# each strategy's accuracy is compared, on the same prompts, with the same rule on the fixed canvas
SAME_RULE_FIXED = {"eos_exit": "fixed", "oracle": "fixed", "predictor": "fixed", "predictor+eos_exit": "fixed",
                   "predictor+vanilla": "vanilla", "predictor+prr": "fixed+prr", "predictor+prr+r2": "fixed+prr"}


def _counts(text: str) -> Dict[str, int]:
    """"fam=n,..." -> {family: n}, every family known and every n >= 1."""
    out: Dict[str, int] = {}
    for item in text.split(","):
        name, _, n = item.strip().partition("=")
        if name not in T.FAMILIES or not n.isdigit() or int(n) < 1 or name in out:
            raise argparse.ArgumentTypeError(f"{item.strip()!r}: give family=count pairs, each family once "
                                             f"({', '.join(T.FAMILY_NAMES)}), with a count >= 1")
        out[name] = int(n)
    return out


def add_paired_comparisons(rows: List[Dict]) -> None:
    """Give each strategy of SAME_RULE_FIXED its accuracy against the same rule on the fixed canvas, on the same
    prompts ("vs_same_rule_fixed": prr_testbed.stats.paired_comparison plus "baseline"), and print them."""
    correct_of = {r["strategy"]: r["correct"] for r in rows}
    if not any(SAME_RULE_FIXED.get(name) in correct_of for name in correct_of):
        return
    print("[length_bench] accuracy against the same rule on the fixed canvas, same prompts (points, 95% paired "
          "bootstrap interval, exact McNemar p):", flush=True)
    for r in rows:
        base = SAME_RULE_FIXED.get(r["strategy"])
        if base in correct_of:
            c = paired_comparison(r["correct"], correct_of[base], names=(r["strategy"], base))
            r["vs_same_rule_fixed"] = dict(c, baseline=base)
            print(f"  {r['strategy']:18s} - {base:9s} {c['difference']:+6.2f} [{c['interval'][0]:+6.2f}, "
                  f"{c['interval'][1]:+6.2f}]  p {c['p_value']:.3g}  {c['verdict']}", flush=True)


def compare_written(path: str) -> Dict:
    """--compare-only: add the paired comparisons to a JSON that this command wrote before they existed."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"{PROG}: --compare-only: cannot read {path} ({e})") from None
    if not (isinstance(doc, dict) and isinstance(doc.get("strategies"), list)
            and all("strategy" in r and "correct" in r for r in doc["strategies"])):
        raise SystemExit(f"{PROG}: {path} is not a JSON this command wrote (no strategies with per-prompt results)")
    add_paired_comparisons(doc["strategies"])
    return write_json(path, doc, "length_bench")



def skewed_draw(family: str, n: int, short_share: float) -> List[T.Example]:
    """n test prompts of `family`, round(short_share * n) of them from the shortest third of its first 3n test prompts
    (by the reference answer's length; ties in the set's order) and the rest from the other two thirds, each part in
    the set's order."""
    pool = T.heldout_set(family, "test", 3 * n)
    by_length = sorted(range(len(pool)), key=lambda i: (len(pool[i].response), i))
    k = round(short_share * n)
    short, rest = sorted(by_length[:n])[:k], sorted(by_length[n:])[:n - k]
    return [pool[i] for i in sorted(short + rest)]


def parse_args(argv=None):
    ap = parser(PROG, __doc__)
    ap.add_argument("--predictor", help="a length-predictor folder (python -m prr_testbed.train_length); required")
    ap.add_argument("--compare-only", metavar="RESULT_JSON",
                    help="measure nothing: add the paired comparisons to a JSON this command wrote without them")
    ap.add_argument("--model", default=None, type=model_arg, help=model_help())
    ap.add_argument("--controller", default=None, help=CONTROLLER_HELP)
    ap.add_argument("--families", type=names_arg(tuple(T.FAMILIES)), default=None,
                    help="task families (comma-separated; default: those the model was trained on)")
    ap.add_argument("--n", type=int, default=200, help="test prompts per family")
    ap.add_argument("--counts", type=_counts, default=None,
                    help="test prompts per family for a skewed mix, e.g. arith=96,sudoku=12,words=12 (replaces "
                         "--families and --n)")
    ap.add_argument("--short-share", type=float, default=None,
                    help="a length-skewed mix within each family: this share of its --n prompts from the shortest "
                         "third of its answers, the rest from the longer two thirds (e.g. 0.8)")
    ap.add_argument("--strategies", type=names_arg(STRATEGIES), default=",".join(STRATEGIES),
                    help="which strategies to run, comma-separated (the savings and comparisons need their "
                         "reference strategies among them)")
    ap.add_argument("--max-length", type=int, default=None, help="the fixed canvas (default: the predictor's)")
    ap.add_argument("--block-length", type=int, default=None, help="(default: the predictor's)")
    ap.add_argument("--tau", type=float, default=0.9, help="Threshold's tau (fixed, eos_exit, oracle, predictor)")
    ap.add_argument("--target-truncation", type=float, default=0.02)
    ap.add_argument("--truncation", choices=["extend", "rerun", "none"], default="extend")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", type=device_arg, default="auto")
    ap.add_argument("--out", default=os.path.join("runs", "length_bench.json"))
    args = ap.parse_args(argv)
    if args.compare_only:
        if not os.path.isfile(args.compare_only):
            ap.error(f"argument --compare-only: {args.compare_only} is not a file")
        return ap, args
    if args.predictor is None:
        ap.error("argument --predictor: required (a folder written by python -m prr_testbed.train_length)")
    if args.n < 1 or args.batch_size < 1:
        ap.error("argument --n/--batch-size: must be >= 1")
    if args.short_share is not None and not 0.0 <= args.short_share <= 1.0:
        ap.error(f"argument --short-share: a share between 0 and 1, got {args.short_share}")
    if args.short_share is not None and args.counts is not None:
        ap.error("argument --short-share: not with --counts (give one way of skewing the mix)")
    if err := param_error("threshold", args.tau):
        ap.error(f"argument --tau: {err}")
    if not 0.0 < args.target_truncation < 1.0:
        ap.error(f"argument --target-truncation: must lie in (0, 1), got {args.target_truncation}")
    check_input_dir(ap, "--predictor", args.predictor, ("config.json", "model.safetensors"), "length predictor")
    if args.counts is not None:
        check_trained(ap, "--counts", args.model, list(args.counts))
    args.families = check_trained(ap, "--families", args.model, args.families)
    check_input_dir(ap, "--model", args.model, ("config.json", "model.safetensors"), "model")
    check_input_dir(ap, "--controller", args.controller, ("config.json", "model.safetensors"), "PRR controller")
    args.controller_dir, mismatch = controller_for(args.model, args.controller)
    if mismatch and any("prr" in name for name in args.strategies):
        ap.error(f"argument --controller: {mismatch}, or run --strategies without the prr ones")
    check_outputs(ap, args, files=("out",))
    args.device, args.device_note = pick_device_arg(ap, args.device)
    return ap, args


def main(argv=None) -> Dict:
    argv = list(argv if argv is not None else sys.argv[1:])
    ap, args = parse_args(argv)
    if args.compare_only:
        return compare_written(args.compare_only)
    device = args.device
    model = load_model_arg(args.model, device)
    try:
        lp = prr_ext.LengthPredictor.load(args.predictor, fingerprint=prr_ext.model_fingerprint(model))
    except prr_ext.length.LengthPredictorFormatError as e:
        ap.error(f"argument --predictor: {e}")
    G = args.max_length or lp.meta.get("max_length")
    BL = args.block_length or lp.meta.get("block_length")
    if not (isinstance(G, int) and isinstance(BL, int)):
        ap.error("argument --max-length/--block-length: the predictor records no canvas; give both")
    if G < 1 or BL < 1 or G % BL:
        ap.error(f"argument --block-length: {BL} must divide the canvas length {G} (--max-length, or the "
                 "predictor's)")
    controller_dir = args.controller_dir  # None: --model has no controller, and no prr strategy runs (parse_args)
    prr_tau = (tuned_tau(controller_dir) or 0.9) if controller_dir else None
    tok = model.tokenizer
    counts = args.counts or {f: args.n for f in args.families}
    args.families = list(counts)
    draw = (lambda f, n: T.heldout_set(f, "test", n)) if args.short_share is None else (
        lambda f, n: skewed_draw(f, n, args.short_share))
    examples = [(f, e) for f, n in counts.items() for e in draw(f, n)]
    print(f"[length_bench] {len(examples)} test prompts of {','.join(args.families)}; canvas {G}, block {BL}"
          + ("; labelling the oracle lengths ..." if "oracle" in args.strategies else ""), flush=True)
    oracle_len = None
    if "oracle" in args.strategies:
        _, oracle_len = label_and_features(model, examples, max_length=G, block_length=BL,
                                           batch_size=args.batch_size, device=device, show_progress=False)
    trunc = None if args.truncation == "none" else args.truncation
    policies = {"vanilla": prr_ext.LowConfidence(), "fixed": prr_ext.Threshold(args.tau),
                "predictor+vanilla": prr_ext.LowConfidence(), "eos_exit": prr_ext.Threshold(args.tau),
                "oracle": prr_ext.Threshold(args.tau), "predictor": prr_ext.Threshold(args.tau),
                "predictor+eos_exit": prr_ext.Threshold(args.tau)}
    if controller_dir:
        prr = prr_ext.PRR(load_controller(controller_dir), tau=prr_tau)
        policies.update({"fixed+prr": prr, "predictor+prr": prr, "predictor+prr+r2": prr_ext.R2(base=prr)})
    rows: List[Dict] = []
    for name in args.strategies:
        tf, correct, truncated, forwards, secs = [], [], [], 0, 0.0
        for i in range(0, len(examples), args.batch_size):
            chunk = examples[i:i + args.batch_size]
            x, _ = make_canvas(tok, [e.prompt for _, e in chunk], 0, device)
            am = (x != tok.pad_id).to(torch.int64)
            common = dict(block_length=BL, steps=G, policy=policies[name], mask_id=tok.mask_id, eos_id=tok.eos_id,
                          attention_mask=am, confidence_dtype=torch.float32)
            t0 = time.perf_counter()
            if name in FIXED:
                out = prr_ext.generate(model, x, gen_length=G, eos_fill=name == "eos_exit", **common)
                trunc_rows = ~(out.generated == tok.eos_id).any(1)
            elif name == "oracle":
                budgets = (torch.ceil(oracle_len[i:i + len(chunk)].double() / BL) * BL).to(torch.int64)
                out = generate_auto(prr_ext.generate, model, x, length_predictor=None, target_truncation=0.02,
                                    max_gen_length=G, truncation=None, budgets=budgets.clamp(BL, G), **common)
                trunc_rows = out.truncated
            else:
                out = prr_ext.generate(model, x, gen_length="auto", length_predictor=lp,
                                       target_truncation=args.target_truncation, max_gen_length=G, truncation=trunc,
                                       eos_fill=name == "predictor+eos_exit", **common)
                trunc_rows = out.truncated
            secs += time.perf_counter() - t0
            forwards += out.forwards
            tf += out.token_forwards.tolist()
            truncated += trunc_rows.tolist()
            resp = decode_responses(tok, out.tokens, out.prompt_length)
            correct += [int(T.get_family(f).check(e, r)) for (f, e), r in zip(chunk, resp)]
        n = len(examples)
        rows.append({"strategy": name, "policy": repr(policies[name]).split("(")[0],
                     "token_forwards_per_query": sum(tf) / n, "seconds": round(secs, 3),
                     "accuracy": 100.0 * sum(correct) / n, "truncation_rate": 100.0 * sum(truncated) / n,
                     "forwards": forwards, "correct": correct, "token_forwards": tf})
        r = rows[-1]
        print(f"  {name:18s} token-forwards/query {r['token_forwards_per_query']:9.1f}  acc {r['accuracy']:6.2f}%  "
              f"truncated {r['truncation_rate']:5.2f}%  {r['seconds']:7.2f} s", flush=True)
    tf_of = {r["strategy"]: r["token_forwards_per_query"] for r in rows}
    for r in rows:
        for ref in ("fixed", "vanilla"):
            if ref in tf_of:
                r[f"compute_vs_{ref}"] = tf_of[ref] / r["token_forwards_per_query"]
    add_paired_comparisons(rows)
    multiplicative = None
    if {"vanilla", "predictor+vanilla", "fixed+prr", "predictor+prr"} <= set(tf_of):
        saving = {k: tf_of["vanilla"] / tf_of[k] for k in ("predictor+vanilla", "fixed+prr", "predictor+prr")}
        multiplicative = {"predictor_alone": saving["predictor+vanilla"], "prr_alone": saving["fixed+prr"],
                          "product_of_the_two": saving["predictor+vanilla"] * saving["fixed+prr"],
                          "predictor_and_prr": saving["predictor+prr"]}
        print("[length_bench] savings against vanilla: predictor alone {predictor_alone:.2f}x, PRR alone "
              "{prr_alone:.2f}x (product {product_of_the_two:.2f}x); both {predictor_and_prr:.2f}x"
              .format(**multiplicative), flush=True)
    doc = {"meta": {"command": " ".join([PROG] + argv),
                    "device": str(device), "torch": torch.__version__, "families": args.families, "n": args.n,
                    "counts": counts, "short_share": args.short_share,
                    "max_length": G, "block_length": BL, "target_truncation": args.target_truncation,
                    "truncation": args.truncation, "predictor": args.predictor,
                    "model": args.model or "prr_testbed/assets/model",
                    "controller": shown_path(controller_dir) if controller_dir else None, "prr_tau": prr_tau,
                    "strategies": list(args.strategies)},
           "multiplicative": multiplicative, "strategies": rows}
    if oracle_len is not None:
        doc["meta"].update(oracle_mean_length=float(oracle_len.double().mean()),
                           oracle_min_length=int(oracle_len.min()), oracle_max_length=int(oracle_len.max()))
    return write_json(args.out, doc, "length_bench")


if __name__ == "__main__":
    main()
