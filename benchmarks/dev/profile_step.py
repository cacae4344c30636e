"""Development helpers for the CUDA step kernel (not part of the benchmark table).

    python benchmarks/dev/profile_step.py ncu "(8,256)" LowConfidence   # eager launches, for `ncu -k regex:step_kernel`
    python benchmarks/dev/profile_step.py sweep                          # launch-shape sweep via PRR_CUDA_CS / _NT
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
    raise ValueError(label)


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
                cs, nt, persist = cfg if cfg else ("default", 0, 1)
                if cfg:
                    os.environ["PRR_CUDA_CS"], os.environ["PRR_CUDA_NT"] = str(cs), str(nt)
                    os.environ["PRR_CUDA_PERSIST"] = str(persist)
                else:
                    for k in ("PRR_CUDA_CS", "PRR_CUDA_NT", "PRR_CUDA_PERSIST"):
                        os.environ.pop(k, None)
                kb = BL.KernelBench(case, l2_bytes=l2)
                us = kb.median_us(repeats=7)
                del kb
                print(f"{label:10s} {policy:14s} cs={cs} nt={nt:4d} persist={persist}  {us:9.2f} us  x{us / floor:5.2f} floor", flush=True)
    for k in ("PRR_CUDA_CS", "PRR_CUDA_NT", "PRR_CUDA_PERSIST"):
        os.environ.pop(k, None)


if __name__ == "__main__":
    if sys.argv[1] == "ncu":
        ncu(sys.argv[2], sys.argv[3])
    else:
        sweep()
