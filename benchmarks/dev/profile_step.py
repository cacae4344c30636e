"""Profiling helpers for the CUDA step kernel (not part of the benchmark tables).

    python benchmarks/dev/profile_step.py ncu "(8,256)" LowConfidence   # eager launches, for `ncu -k regex:step_kernel`
    python benchmarks/dev/profile_step.py sweep                          # launch shapes via PRR_CUDA_CS / _NT / _PERSIST
    python benchmarks/dev/profile_step.py latency                        # where the 32-row step's time goes

benchmarks/device_run.sh's ncu, ncusrc and sweep phases run it. `sweep` times each shape (SWEEP_SHAPES, ';'-separated
labels of bench_lib.SHAPES) under a few cluster sizes / CTA sizes / persistence settings against the launcher's
choice; `latency` splits the 32-row step into graph-node cost, the V-independent chain and the cluster size.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import bench_lib as BL  # noqa: E402

import prr_ext  # noqa: E402


def case_of(label, policy):
    for s in BL.SHAPES:
        if s[0] == label:
            return BL.Case(s[0], s[1], s[2], s[3], policy)
    raise SystemExit(f"unknown shape {label!r}: use one of {'; '.join(s[0] for s in BL.SHAPES)}")


def ncu(label, policy, n=4):
    case = case_of(label, policy)
    pol = BL.make_policy(policy)
    gen = torch.Generator(device="cuda").manual_seed(0)
    lg = BL.make_logits(case, 1, gen)[0]
    for i in range(n):
        s = BL.make_state(case, pol, seed=i)
        prr_ext.step(lg, s)
    torch.cuda.synchronize()
    print("done", label, policy)


def sweep():
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    bw = BL.read_bandwidth()
    print(f"read bandwidth {bw / 1e12:.3f} TB/s")
    configs = [None, (2, 256, 1), (4, 128, 1), (8, 128, 1), (4, 256, 0)]
    for label in os.environ.get("SWEEP_SHAPES", "(1,32);(8,32);(8,256)").split(";"):
        for policy in ["LowConfidence", "PRR"]:
            case = case_of(label, policy)
            floor = case.bytes_read / bw * 1e6
            for cfg in configs:
                cs, nt, persist = cfg if cfg else ("launcher", 0, 1)
                env = dict(PRR_CUDA_CS=cs, PRR_CUDA_NT=nt, PRR_CUDA_PERSIST=persist) if cfg else {}
                with BL.launch_overrides(env):
                    kb = BL.KernelBench(case, l2_bytes=l2)
                    us = kb.median_us(repeats=7)
                    del kb
                print(f"{label:10s} {policy:14s} cs={cs} nt={nt:4d} persist={persist}  {us:9.2f} us  "
                      f"x{us / floor:5.2f} floor", flush=True)


def latency():
    """The 32-row case's time by parts: a graph of trivial kernels (the per-node launch cost of a replay), the step
    with a tiny vocabulary (the kernel's fixed dependent chain, almost no bytes), vocabularies in between, and the
    full vocabulary at each cluster size."""
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    x = torch.ones(1, device="cuda")
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        for _ in range(3):
            x.add_(1)
        torch.cuda.synchronize()
        with torch.cuda.graph(g, stream=s):
            for _ in range(16):
                x.add_(1)
    ts = []
    for _ in range(15):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) * 1000 / 16)
    ts.sort()
    print(f"graph of 16 trivial kernels: {ts[len(ts) // 2]:.2f} us per node", flush=True)
    v_full, mask_full = BL.V_BENCH, BL.MASK_ID
    for policy in ["LowConfidence", "PRR"]:
        for V in (256, 4096, 32768, v_full):
            BL.V_BENCH, BL.MASK_ID = V, (mask_full if V == v_full else V - 1)
            kb = BL.KernelBench(case_of("(1,32)", policy), l2_bytes=l2)
            print(f"(1,32) {policy:14s} V={V:6d} default launch  {kb.median_us(repeats=9):8.2f} us", flush=True)
            del kb
        BL.V_BENCH, BL.MASK_ID = v_full, mask_full
        for cs in (1, 2, 4, 8):
            with BL.launch_overrides(dict(PRR_CUDA_CS=cs)):
                kb = BL.KernelBench(case_of("(1,32)", policy), l2_bytes=l2)
                print(f"(1,32) {policy:14s} V={v_full} cs={cs}          {kb.median_us(repeats=9):8.2f} us", flush=True)
                del kb


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("ncu", "sweep", "latency") or (sys.argv[1] == "ncu" and len(sys.argv) != 4):
        sys.exit(__doc__)
    if sys.argv[1] == "ncu":
        ncu(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "latency":
        latency()
    else:
        sweep()
