"""Where one step's time goes, phase by phase, from stamps the kernel itself takes.

With -DPRR_TIMELINE the kernel's thread 0 of every CTA stamps %globaltimer (ns, comparable across SMs) and clock64
(cycles, per SM) at the phase boundaries of `step_kernel`, and the extension registers torch.ops.prr_dev.timeline to
read them. The step is timed as the benchmark times it (a CUDA graph of 16 steps on fresh states,
bench_lib.KernelBench); the stamps are those of the graph's last step. Build such a copy without touching the tree:

    P=$(benchmarks/dev/build_copy.sh -D PRR_TIMELINE=1)
    PYTHONPATH=$P python benchmarks/dev/timeline.py "(1,32)" LowConfidence,PRR [V ...]    # default V: 126464 256
"""
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import bench_lib as BL  # noqa: E402

import prr_ext  # noqa: E402,F401  (loads the ops)

SLOTS = ["entry", "active block", "row known", "tiles done", "CTA merged", "cluster merged", "finalized",
         "tempered", "arrived", "selected", "exit", "fin: merged", "fin: features", "fin: hidden 1", "fin: score",
         "fin: done", "sel: loaded", "sel: sorted", "sel: counted", "sel: committed"]
ORDER = [0, 1, 2, 3, 4, 5, 11, 12, 13, 14, 15, 6, 7, 8, 16, 17, 18, 19, 9, 10]  # slots in the order a row passes them
N_CTAS, N_SLOTS = 2048, 24


def dump():
    buf = torch.zeros(N_CTAS * (2 * N_SLOTS + 1), dtype=torch.int64, device="cuda")
    torch.ops.prr_dev.timeline(buf)
    torch.cuda.synchronize()
    return buf.view(N_CTAS, 2 * N_SLOTS + 1).cpu()


def report(label, policy, V):
    BL.V_BENCH, BL.MASK_ID = V, (126336 if V > 126336 else V - 1)
    case = next((BL.Case(s[0], s[1], s[2], s[3], policy) for s in BL.SHAPES if s[0] == label), None)
    if case is None:
        sys.exit(f"unknown shape {label!r}: use one of {'; '.join(s[0] for s in BL.SHAPES)}")
    kb = BL.KernelBench(case, l2_bytes=50 << 20)
    us = kb.median_us(repeats=9)
    dump()  # clear
    kb.run_once()
    t = dump()
    rows = t[t[:, 0] != 0]
    g, c = rows[:, :N_SLOTS].double(), rows[:, N_SLOTS:2 * N_SLOTS].double()
    t0 = g[:, 0].min()
    span = (g[:, 10][g[:, 10] > 0].max() - t0) / 1e3
    print(f"\n{label} {policy} V={V}: {us:.2f} us per step in the graph; {len(rows)} CTAs on "
          f"{len(set(rows[:, 2 * N_SLOTS].tolist()))} SMs; first entry -> last exit {span:.2f} us")
    print(f"  {'slot':16s} {'n':>5s} {'min us':>8s} {'med us':>8s} {'max us':>8s}   {'med cycles since prev':>22s}")
    prev = 0
    for k in ORDER:
        name = SLOTS[k]
        # stamps before t0 are an earlier step's of the graph (the selection's slots: only the last arrival writes them)
        have = g[:, k] >= t0
        if not have.any():
            continue
        rel = (g[have, k] - t0) / 1e3
        both = have & (g[:, prev] >= t0)
        dc = statistics.median((c[both, k] - c[both, prev]).tolist()) if k > 0 and both.any() else 0
        print(f"  {name:16s} {int(have.sum()):5d} {rel.min():8.2f} {rel.median():8.2f} {rel.max():8.2f}   {dc:22.0f}")
        prev = k


if __name__ == "__main__":
    if not hasattr(torch.ops.prr_dev, "timeline"):
        sys.exit("timeline.py needs a build with -DPRR_TIMELINE: see this file's docstring")
    label = sys.argv[1] if len(sys.argv) > 1 else "(1,32)"
    policies = (sys.argv[2] if len(sys.argv) > 2 else "LowConfidence,PRR").split(",")
    vs = [int(v) for v in sys.argv[3:]] or [BL.V_BENCH, 256]
    for V in vs:
        for pol in policies:
            report(label, pol, V)
