"""Time prr_ext.step on the GPU for every benchmark shape and policy, and write the run as JSON.

    python benchmarks/run_bench.py                                  # -> benchmarks/results/step_<device>.json
    python benchmarks/run_bench.py --policies LowConfidence,PRR --shapes "(1,32);(8,256)"
    python benchmarks/run_bench.py --policies PRR --variants "static:PRR_CUDA_DYNROWS=0;nt128:PRR_CUDA_NT=128"

A full run (every shape and policy, compiled baselines for every policy, no variants) is the device's current table:
it goes to benchmarks/results/step_<device>.json, and `python benchmarks/render_results.py --write` puts it into
benchmarks/RESULTS.md. Any other run goes to benchmarks/results/scratch/ (ignored by git), unless --out says where.
The file records the device, torch and CUDA versions, the commit, the newest kernel-v* tag (git describe), this
command, the read bandwidth and, per (shape, policy[, variant]), the µs of our step, of its floor and of the
baselines; render_results.py derives the ratios.

Columns, as rendered: µs per step (CUDA graph of 16 steps, CUDA events, median of 15 replays), × floor (µs over the
logits bytes / the read bandwidth measured in this run by amax over 4 GiB of bf16), × eager (LLaDA's plain-torch step
with an fp32 confidence softmax, µs / ours), × eager fp64 (the same step with the fp64 softmax of LLaDA before June
2025 and of Fast-dLLM) and × compiled (torch.compile of benchmarks/bench_lib.vector_step, µs / ours). bf16 logits,
V = 126464.

--variants times each case again under the CUDA launcher's overrides (PRR_CUDA_CS, PRR_CUDA_NT, PRR_CUDA_PACKED,
PRR_CUDA_SELECT_SORT, PRR_CUDA_PERSIST, PRR_CUDA_DYNROWS), in the same process: the side-by-side measure of a launch
choice. PRR_COMMIT / PRR_KERNEL override the recorded commit / kernel tag where the checkout's git metadata is not the
tree's.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_lib as BL  # noqa: E402
import render_results as RR  # noqa: E402

import prr_ext  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SHAPE_LABELS = [s[0] for s in BL.SHAPES]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policies", default=",".join(BL.POLICIES),
                    help=f"comma-separated policies to time (default: %(default)s; also {', '.join(BL.RULES)})")
    ap.add_argument("--shapes", default=None,
                    help=f"';'-separated shape labels (default: all of {'; '.join(SHAPE_LABELS)})")
    ap.add_argument("--compiled-policies", default=",".join(BL.POLICIES),
                    help="policies whose torch.compile baseline is timed ('' for none: it costs a compile per shape; "
                         "default: %(default)s)")
    ap.add_argument("--variants", default="",
                    help="side-by-side launcher overrides, 'label:NAME=VALUE[,NAME=VALUE];label2:...' "
                         f"(NAME one of {', '.join(BL.LAUNCH_OVERRIDES)}; default: none)")
    ap.add_argument("--note", default="", help="a sentence stored with the run and shown with its table (default: none)")
    ap.add_argument("--out", default=None,
                    help="JSON file, or a folder (ending in '/') for the default file name (default: "
                         "benchmarks/results/step_<device>.json for a full run, else benchmarks/results/scratch/)")
    ap.add_argument("--no-save", action="store_true", help="print the table only")
    args = ap.parse_args(argv)

    args.policy_list = [p for p in args.policies.split(",") if p]
    bad = [p for p in args.policy_list if p not in BL.POLICIES + BL.RULES]
    if bad or not args.policy_list:
        ap.error(f"--policies: unknown or empty ({', '.join(bad) or 'none given'}); use "
                 f"{', '.join(BL.POLICIES + BL.RULES)}")
    args.compiled = [p for p in args.compiled_policies.split(",") if p]
    bad = [p for p in args.compiled if p not in BL.POLICIES]
    if bad:
        ap.error(f"--compiled-policies: unknown {', '.join(bad)}; use {', '.join(BL.POLICIES)} (the rules "
                 f"{', '.join(BL.RULES)} have no compiled baseline)")
    args.shape_list = BL.SHAPES
    if args.shapes:
        want = [s.strip() for s in args.shapes.split(";") if s.strip()]
        bad = [s for s in want if s not in SHAPE_LABELS]
        if bad or not want:
            ap.error(f"--shapes: unknown or empty ({', '.join(bad) or 'none given'}); use ';'-separated labels of "
                     f"{'; '.join(SHAPE_LABELS)}")
        args.shape_list = [s for s in BL.SHAPES if s[0] in want]
    args.variant_list = [("", {})] + BL.parse_variants(args.variants)
    args.full = (len(args.shape_list) == len(BL.SHAPES) and set(args.policy_list) == set(BL.POLICIES)
                 and set(args.compiled) == set(BL.POLICIES) and len(args.variant_list) == 1)
    return args


def output_path(args, device: str, stamp: str) -> str | None:
    """Where the JSON goes; checked before the run, so that a bad path fails at once and not after it."""
    if args.no_save:
        return None
    slug = BL.device_slug(device)
    name = f"step_{slug}.json" if args.full else f"step_{slug}-{stamp}.json"
    if args.out is None:
        path = os.path.join(RESULTS, name if args.full else os.path.join("scratch", name))
    elif args.out.endswith(("/", os.sep)) or os.path.isdir(args.out):
        path = os.path.join(args.out, name)
    else:
        path = args.out
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"--out: cannot create the folder {folder}: {e}")
    if os.path.isdir(path) or not os.access(folder, os.W_OK):
        raise SystemExit(f"--out: cannot write {path} (a folder, or not writable)")
    return path


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available() or not prr_ext.has_cuda_kernels():
        raise SystemExit("run_bench.py times the CUDA step: it needs a GPU and prr_ext built with its CUDA kernels "
                         f"(torch.cuda.is_available() = {torch.cuda.is_available()}, "
                         f"prr_ext.has_cuda_kernels() = {prr_ext.has_cuda_kernels()})")
    now = datetime.datetime.now(datetime.timezone.utc)
    props = torch.cuda.get_device_properties(0)
    out = output_path(args, props.name, now.strftime("%Y%m%d-%H%M%S"))  # two runs in a minute keep both
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    bw = BL.read_bandwidth()
    print(f"device {props.name}, {props.multi_processor_count} SMs, L2 {l2 / (1 << 20):g} MiB; torch "
          f"{torch.__version__}; read bandwidth (amax, 4 GiB bf16) {bw / 1e12:.3f} TB/s", flush=True)

    rows = []
    for label, B, L, blk in args.shape_list:
        base = BL.Case(label, B, L, blk, "LowConfidence")
        eager = BL.eager_llada_us(base)
        eager64 = BL.eager_llada_us(base, softmax_dtype=torch.float64)
        for pol in args.policy_list:
            case = BL.Case(label, B, L, blk, pol)
            floor = case.bytes_read / bw * 1e6
            comp = BL.compiled_us(case) if pol in args.compiled else None
            for vname, env in args.variant_list:
                with BL.launch_overrides(env):
                    kb = BL.KernelBench(case, l2_bytes=l2)  # captures the graph under the overrides
                    us = kb.median_us()
                    del kb
                torch.cuda.empty_cache()
                rows.append(dict(shape=label, policy=pol, variant=vname or None, us=us, floor_us=floor,
                                 eager_us=eager, eager_fp64_us=eager64, compiled_us=None if vname else comp))
                pname = f"{pol} [{vname}]" if vname else pol
                cs = "" if comp is None or vname else f"   compiled {comp:9.1f} us (x{comp / us:6.1f})"
                print(f"  {label:22s} {pname:22s} {us:9.2f} us  floor {floor:8.2f} us  x{us / floor:5.2f}   "
                      f"eager {eager:9.1f} us (x{eager / us:6.1f})   eager fp64 {eager64:9.1f} us "
                      f"(x{eager64 / us:6.1f}){cs}", flush=True)

    assert all(math.isfinite(r["us"]) for r in rows)
    record = dict(
        benchmark="step", device=props.name, sms=props.multi_processor_count, l2_mib=l2 / (1 << 20),
        torch=torch.__version__, cuda=torch.version.cuda, python=sys.version.split()[0],
        commit=BL.git_commit(), kernel=BL.git_kernel(), date=now.strftime("%Y-%m-%dT%H:%MZ"),
        command=" ".join(["python", "benchmarks/run_bench.py"] + [shlex.quote(a) for a in sys.argv[1:]]),
        read_bandwidth_bytes_per_s=bw, logits=dict(dtype="bfloat16", vocab=BL.V_BENCH), note=args.note,
        variants={name: env for name, env in args.variant_list if name}, rows=rows)
    print()
    print("\n".join(RR.render_step(dict(path=out or os.path.join(RESULTS, "(not saved)"), data=record),
                                   record["commit"])))
    if out:
        with open(out, "w") as f:
            json.dump(record, f, indent=1, ensure_ascii=False)
            f.write("\n")
        print(f"wrote {out}" + ("; python benchmarks/render_results.py --write puts it into benchmarks/RESULTS.md"
                                if args.full and args.out is None else ""))


if __name__ == "__main__":
    main()
