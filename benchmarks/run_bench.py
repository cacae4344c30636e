"""Print one table of prr_ext.step timings on the GPU and append it to benchmarks/RESULTS.md.

    python benchmarks/run_bench.py [--policies LowConfidence,PRR] [--shapes "(1,32),(8,256)"]
                                   [--compiled-policies LowConfidence,PRR] [--no-append]

Columns: shape, policy, µs per step (CUDA graph of 16 steps, CUDA events, median of 15 replays), × floor (µs over
logits bytes / read bandwidth measured in this run by amax over 4 GiB of bf16), × eager (LLaDA's plain-torch step
with an fp32 confidence softmax, µs / ours), × eager fp64 (the same step with LLaDA's pre-June-2025 and Fast-dLLM's
fp64 softmax) and × compiled (torch.compile of benchmarks/bench_lib.vector_step µs / ours). bf16 logits, V = 126464.
"""
from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_lib as BL  # noqa: E402


def git_commit() -> str:
    if os.environ.get("PRR_COMMIT"):
        return os.environ["PRR_COMMIT"]
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        c = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return (c.strip() or "unknown") + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--policies", default=",".join(BL.POLICIES))
    ap.add_argument("--shapes", default=None, help="comma-separated labels from bench_lib.SHAPES (default: all)")
    ap.add_argument("--compiled-policies", default=",".join(BL.POLICIES))
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--note", default="")
    ap.add_argument("--variants", default="",
                    help="side-by-side launcher variants, 'label:VAR=value,VAR=value;label2:...' (environment knobs of "
                         "the CUDA launcher, e.g. 'regtiles:PRR_CUDA_STAGES=0'); each case is also timed under each")
    args = ap.parse_args()
    pols = [p for p in args.policies.split(",") if p]
    comp_pols = set(p for p in args.compiled_policies.split(",") if p)
    shapes = BL.SHAPES
    if args.shapes:
        want = set(s.strip() for s in args.shapes.split(";"))
        shapes = [s for s in shapes if s[0] in want]

    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    bw = BL.read_bandwidth()
    print(f"device {props.name}, {props.multi_processor_count} SMs, L2 {l2 >> 20} MB; torch {torch.__version__}; "
          f"read bandwidth (amax, 4 GiB bf16) {bw / 1e12:.3f} TB/s", flush=True)

    variants = [("", {})]
    for v in filter(None, args.variants.split(";")):
        name, _, kv = v.partition(":")
        variants.append((name, dict(item.split("=", 1) for item in kv.split(",") if item)))

    rows = []
    for label, B, L, blk in shapes:
        base = BL.Case(label, B, L, blk, "LowConfidence")
        eager = BL.eager_llada_us(base)
        eager64 = BL.eager_llada_us(base, softmax_dtype=torch.float64)
        for pol in pols:
            for vname, env in variants:
                case = BL.Case(label, B, L, blk, pol)
                saved = {k: os.environ.get(k) for k in env}
                os.environ.update(env)  # the launcher reads its knobs at each launch, i.e. when the graph is captured
                try:
                    kb = BL.KernelBench(case, l2_bytes=l2)
                    us = kb.median_us()
                    del kb
                finally:
                    for k, old in saved.items():
                        if old is None:
                            os.environ.pop(k, None)
                        else:
                            os.environ[k] = old
                floor = case.bytes_read / bw * 1e6
                comp = BL.compiled_us(case) if (pol in comp_pols and not vname) else float("nan")
                pname = f"{pol} [{vname}]" if vname else pol
                rows.append((label, pname, us, us / floor, eager / us, eager64 / us, comp / us, floor, eager, eager64,
                             comp))
                print(f"  {label:22s} {pname:14s} {us:9.2f} us  floor {floor:8.2f} us  x{us / floor:5.2f}   "
                      f"eager {eager:9.1f} us (x{eager / us:6.1f})   eager fp64 {eager64:9.1f} us "
                      f"(x{eager64 / us:6.1f})   compiled {comp:9.1f} us (x{comp / us:6.1f})", flush=True)
                torch.cuda.empty_cache()

    hdr = ("| shape (B, L) | policy | µs | × floor | × eager | × eager fp64 | × compiled | floor µs | eager µs | "
           "eager fp64 µs | compiled µs |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [hdr]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]:.2f} | {r[4]:.1f} | {r[5]:.1f} | {r[6]:.1f} | "
                     f"{r[7]:.2f} | {r[8]:.1f} | {r[9]:.1f} | {r[10]:.1f} |")
    table = "\n".join(lines)
    print()
    print(table)
    if not args.no_append:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        with open(path, "a") as f:
            f.write(f"\n### Run {stamp} — {props.name}, torch {torch.__version__}, commit {git_commit()}\n\n")
            f.write(f"Read bandwidth (amax over 4 GiB bf16, this run): {bw / 1e12:.3f} TB/s. bf16 logits, "
                    f"V = {BL.V_BENCH}; µs per step = CUDA graph of 16 steps on fresh states / 16, median of 15 "
                    f"replays, logits rotated over > 2× L2. × eager / × eager fp64 / × compiled are speedups "
                    f"(baseline µs / ours); eager = LLaDA's step with an fp32 confidence softmax, eager fp64 = with "
                    f"an fp64 one."
                    f"{(' ' + args.note) if args.note else ''}\n\n")
            f.write(table + "\n")
        print(f"appended to {path}")


if __name__ == "__main__":
    main()
