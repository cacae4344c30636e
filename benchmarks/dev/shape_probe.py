"""Time prr_ext.step on shapes outside bench_lib.SHAPES, under CUDA launch overrides (a probe, not a table).

    python benchmarks/dev/shape_probe.py "1,1024,1024;4,256,256" LowConfidence "nt64:PRR_CUDA_NT=64" ...

Shapes are ';'-separated "B,L,block_length"; each variant is "label:NAME=VALUE[,NAME=VALUE]" with NAME one of
bench_lib.LAUNCH_OVERRIDES. Every shape is timed with the launcher's choice first, then under each variant.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import bench_lib as BL  # noqa: E402


def parse_shapes(spec: str) -> list:
    shapes = []
    for s in filter(None, (x.strip() for x in spec.split(";"))):
        try:
            B, L, blk = (int(v) for v in s.split(","))
        except ValueError:
            sys.exit(f"shapes: '{s}' is not 'B,L,block_length' (three integers)")
        if min(B, L, blk) < 1 or L % blk:
            sys.exit(f"shapes: '{s}' needs B, L, block_length >= 1 and block_length dividing L")
        shapes.append((B, L, blk))
    return shapes


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    shapes = parse_shapes(sys.argv[1])
    policy = sys.argv[2]
    if policy not in BL.POLICIES:
        sys.exit(f"policy: unknown {policy!r}; use one of {', '.join(BL.POLICIES)}")
    variants = [("launcher", {})] + BL.parse_variants(";".join(sys.argv[3:]), arg="variants")
    bw = BL.read_bandwidth()
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    print(f"read bandwidth {bw / 1e12:.3f} TB/s")
    for B, L, blk in shapes:
        for name, env in variants:
            case = BL.Case(f"({B},{L}) blk {blk}", B, L, blk, policy)
            with BL.launch_overrides(env):
                kb = BL.KernelBench(case, l2_bytes=l2)
                us = kb.median_us()
                del kb
            torch.cuda.empty_cache()
            floor = case.bytes_read / bw * 1e6
            print(f"({B},{L}) blk {blk:5d} {policy:14s} {name:10s} {us:9.2f} us  x{us / floor:5.2f} floor", flush=True)


if __name__ == "__main__":
    main()
