"""Time prr_ext.step on shapes outside bench_lib.SHAPES, under launcher knobs (development probe, not the table).

    python benchmarks/dev/shape_probe.py "1,1024,1024;4,256,256" LowConfidence "nt64:PRR_CUDA_NT=64" ...
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import bench_lib as BL  # noqa: E402


def main():
    shapes = [tuple(int(v) for v in s.split(",")) for s in sys.argv[1].split(";")]
    policy = sys.argv[2]
    variants = [("launcher", {})] + [(v.split(":", 1)[0], dict(kv.split("=", 1) for kv in v.split(":", 1)[1].split(",")))
                                     for v in sys.argv[3:]]
    bw = BL.read_bandwidth()
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    print(f"read bandwidth {bw / 1e12:.3f} TB/s")
    for B, L, blk in shapes:
        for name, env in variants:
            for k in ("PRR_CUDA_CS", "PRR_CUDA_NT"):
                os.environ.pop(k, None)
            os.environ.update(env)
            case = BL.Case(f"({B},{L}) blk {blk}", B, L, blk, policy)
            kb = BL.KernelBench(case, l2_bytes=l2)
            us = kb.median_us()
            del kb
            torch.cuda.empty_cache()
            floor = case.bytes_read / bw * 1e6
            print(f"({B},{L}) blk {blk:5d} {policy:14s} {name:10s} {us:9.2f} us  x{us / floor:5.2f} floor", flush=True)


if __name__ == "__main__":
    main()
