"""pytest-benchmark timings of the CUDA step kernel (one graph replay of 16 steps per round).

    python -m pytest benchmarks/bench_step.py --benchmark-json=benchmarks/results/bench_step_<device>.json
    python -m pytest benchmarks/bench_step.py -k "LowConfidence or PRR"

pytest-benchmark times each round on the host (replay + synchronize); the CUDA-event median per step, the floor, the
bytes read, the device, the commit and the command are stored in each benchmark's extra_info, and
benchmarks/render_results.py renders a results/bench_step_*.json file as a table. benchmarks/run_bench.py times the
same steps with the eager and compiled baselines beside them. Without a GPU and the CUDA kernels every case skips.
"""
import os
import shlex
import statistics
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_lib as BL  # noqa: E402

import prr_ext  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or not prr_ext.has_cuda_kernels(),
                                reason="needs a GPU and a build with the CUDA kernels")

_BW = {}


def bandwidth() -> float:
    if "bw" not in _BW:
        _BW["bw"] = BL.read_bandwidth()
    return _BW["bw"]


@pytest.mark.parametrize("shape", BL.SHAPES, ids=[s[0].replace(" ", "_") for s in BL.SHAPES])
@pytest.mark.parametrize("policy", BL.POLICIES)
def test_step_kernel(benchmark, shape, policy):
    label, B, L, blk = shape
    case = BL.Case(label, B, L, blk, policy)
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    kb = BL.KernelBench(case, l2_bytes=l2)
    per_step = []

    def one_round():
        per_step.append(kb.run_once())

    benchmark.pedantic(one_round, rounds=15, warmup_rounds=2)
    us = statistics.median(per_step)
    floor = case.bytes_read / bandwidth() * 1e6
    benchmark.extra_info.update(dict(us_per_step_cuda_events=us, floor_us=floor, x_floor=us / floor,
                                     bytes_read=case.bytes_read, steps_per_round=len(kb.states),
                                     device=torch.cuda.get_device_name(0), torch=torch.__version__,
                                     commit=BL.git_commit(), kernel=BL.git_kernel(),
                                     command=" ".join(["python -m pytest"] + [shlex.quote(a) for a in sys.argv[1:]])))
