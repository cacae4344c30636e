"""Measure the KV caches (prr_testbed.model.CachedLM): exactness and speed against the plain model.

    python -m prr_testbed.kv_bench --n 64 --device cpu --out benchmarks/results/kv_cache/cpu.json

Every family's first --n test prompts are decoded three ways with the same policy (greedy, prr_ext.generate in
batches of --batch-size, steps = gen_length, the family's block length): without a cache (the model's full forward
every step), with CachedLM(model, "prefix") and with CachedLM(model, "dual") (both through block_info=True). Per
family and cache: token agreement with the no-cache run (the fraction of generated slots holding the same token,
<eos> padding included, and the fraction of rows whose whole generation is identical), accuracy (the task checkers)
each way, mean NFE, the forwards split into prefills (full forwards) and block-only forwards, and wall seconds
(decode time summed over batches; the minimum over --repeats runs, the runs being deterministic and interleaved
across the caches, after one untimed warm-up run per cache). The caches are
approximate by design (cached K/V go stale while a block is decoded), so agreement below 1 is expected. Writes --out
(JSON) and prints a table.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from typing import Dict

import torch

import prr_ext

from . import tasks as T
from .cli import (check_input_dir, check_outputs, check_trained, device_arg, model_arg, model_help, names_arg, parser,
                  progress, write_json)
from .harness import device_label, param_error, pick_device_arg
from .model import CachedLM, MaskedDiffusionLM, decode_responses, load_model_arg, make_canvas
from .sweep import git_commit

PROG = "python -m prr_testbed.kv_bench"
CACHES = ("none", "prefix", "dual")
POLICIES = ("threshold", "lowconf")


def parse_args(argv=None):
    ap = parser(PROG, __doc__)
    ap.add_argument("--model", default=None, type=model_arg, help=model_help())
    ap.add_argument("--families", type=names_arg(tuple(T.FAMILIES)), default=None,
                    help="task families (comma-separated; default: those the model was trained on)")
    ap.add_argument("--policies", type=names_arg(POLICIES), default="threshold",
                    help=f"comma list of {', '.join(POLICIES)} (threshold: Threshold(--tau); lowconf: LowConfidence, "
                         "one token per step)")
    ap.add_argument("--tau", type=float, default=0.9, help="Threshold's tau")
    ap.add_argument("--n", type=int, default=64, help="test prompts per family")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per cache (the minimum is reported)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--device", type=device_arg, default="cpu")
    ap.add_argument("--out", default=os.path.join("runs", "kv_bench.json"))
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.n < 1 or args.batch_size < 1 or args.repeats < 1:
        ap.error("argument --n/--batch-size/--repeats: must be >= 1")
    if args.threads is not None and args.threads < 1:
        ap.error("argument --threads: must be >= 1")
    if err := param_error("threshold", args.tau):
        ap.error(f"argument --tau: {err}")
    check_outputs(ap, args, files=["out"])
    check_input_dir(ap, "--model", args.model, ("config.json", "model.safetensors"), "model")
    args.families = check_trained(ap, "--families", args.model, args.families)
    return ap, args


def _policy(name: str, tau: float) -> prr_ext.Policy:
    return prr_ext.Threshold(tau=tau) if name == "threshold" else prr_ext.LowConfidence()


@torch.inference_mode()
def run_cache(model: MaskedDiffusionLM, fam: T.TaskFamily, examples, policy: str, tau: float, cache: str,
              batch_size: int, device) -> Dict:
    """Decode `examples` once: generated tokens [n, G], correctness, nfe, seconds, prefills / block calls."""
    tok = model.tokenizer
    G, BL = fam.gen_length, fam.block_length
    runner = model if cache == "none" else CachedLM(model, cache)
    gens, correct, nfe, seconds = [], [], [], 0.0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        x, plens = make_canvas(tok, [e.prompt for e in chunk], G, device)
        P = int(plens.max())
        prompt_ids = x[:, :P]
        out = prr_ext.generate(runner, prompt_ids, gen_length=G, block_length=BL, steps=G,
                               policy=_policy(policy, tau), mask_id=tok.mask_id,
                               attention_mask=(prompt_ids != tok.pad_id).to(torch.int64),
                               confidence_dtype=torch.float32, block_info=cache != "none")
        seconds += out.seconds
        gens.append(out.generated.cpu())
        correct += [int(bool(fam.check(e, r))) for e, r in zip(chunk, decode_responses(tok, out.tokens, P))]
        nfe += [int(v) for v in out.nfe.tolist()]
    return {"generated": torch.cat(gens), "correct": correct, "nfe": nfe, "seconds": seconds,
            "prefills": getattr(runner, "prefills", None), "block_calls": getattr(runner, "block_calls", None)}


def main(argv=None) -> Dict:
    ap, args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, note = pick_device_arg(ap, args.device)
    if note:
        print(f"[kv_bench] NOTE: {note}")
    dev_txt = device_label(device)
    model = load_model_arg(args.model, device)
    print(f"[kv_bench] {','.join(args.policies)} on {args.n} test prompts of {','.join(args.families)}, caches "
          f"{','.join(CACHES)}, {args.repeats} timed run(s) each after a warm-up, on {dev_txt}", flush=True)
    t0 = time.time()
    rows = []
    bar = progress(len(args.policies) * len(args.families) * len(CACHES) * (1 + args.repeats), "kv_bench",
                   disable=args.no_progress, unit="run")
    for policy in args.policies:
        for name in args.families:
            fam = T.get_family(name)
            examples = T.heldout_set(name, "test", args.n)
            for cache in CACHES:  # warm-up (first-call allocations, thread pools)
                run_cache(model, fam, examples[:args.batch_size], policy, args.tau, cache, args.batch_size, device)
                bar.update(1)
            runs, all_seconds = {}, {c: [] for c in CACHES}
            for _ in range(args.repeats):  # interleaved, so that a slow spell of the machine hits every cache
                for cache in CACHES:
                    r = run_cache(model, fam, examples, policy, args.tau, cache, args.batch_size, device)
                    bar.update(1)
                    all_seconds[cache].append(round(r["seconds"], 4))
                    if cache not in runs or r["seconds"] < runs[cache]["seconds"]:
                        runs[cache] = r
            base = runs["none"]
            for cache in CACHES:
                r = runs[cache]
                same = r["generated"] == base["generated"]
                n = len(examples)
                rows.append({
                    "policy": policy, "param": args.tau if policy == "threshold" else None, "task": name,
                    "cache": cache, "n": n, "gen_length": fam.gen_length, "block_length": fam.block_length,
                    "token_agreement": float(same.double().mean()),
                    "row_agreement": float(same.all(1).double().mean()),
                    "accuracy": 100.0 * sum(r["correct"]) / n,
                    "accuracy_no_cache": 100.0 * sum(base["correct"]) / n,
                    "mean_nfe": sum(r["nfe"]) / n, "prefills": r["prefills"], "block_calls": r["block_calls"],
                    "seconds": round(r["seconds"], 4), "seconds_each_run": all_seconds[cache],
                    "speedup": round(base["seconds"] / r["seconds"], 3),
                    "correct": r["correct"]})
    bar.close()
    doc = {"meta": {"command": " ".join([PROG] + list(sys.argv[1:] if argv is None else argv)),
                    "commit": git_commit(), "date": time.strftime("%Y-%m-%d"), "device": dev_txt,
                    "torch": torch.__version__, "python": platform.python_version(),
                    "threads": torch.get_num_threads(), "n": args.n, "batch_size": args.batch_size,
                    "repeats": args.repeats, "split": "test", "temperature": 0.0, "steps": "gen_length",
                    "model": args.model or "prr_testbed/assets/model", "wall_seconds": round(time.time() - t0, 1),
                    "seconds": "decode seconds summed over batches, the minimum over --repeats runs",
                    "token_agreement": "fraction of generated slots equal to the no-cache run's"},
           "results": rows}
    print(f"{'policy':<10} {'task':<7} {'cache':<7} {'tok.agree':>9} {'row.agree':>9} {'acc':>6} {'acc(no)':>7} "
          f"{'NFE':>5} {'prefill':>7} {'block':>5} {'sec':>7} {'speedup':>7}")
    for r in rows:
        print(f"{r['policy']:<10} {r['task']:<7} {r['cache']:<7} {r['token_agreement']:>9.4f} "
              f"{r['row_agreement']:>9.4f} {r['accuracy']:>6.1f} {r['accuracy_no_cache']:>7.1f} {r['mean_nfe']:>5.2f} "
              f"{'-' if r['prefills'] is None else r['prefills']:>7} "
              f"{'-' if r['block_calls'] is None else r['block_calls']:>5} {r['seconds']:>7.3f} "
              f"{r['speedup']:>7.2f}")
    return write_json(args.out, doc, "kv_bench")


if __name__ == "__main__":
    main()
