"""One denoising step through each engine adapter, side by side with the engine's own sampler, at real model shapes.

    python benchmarks/engine_steps.py [--device cpu|cuda] [--threads 1] [--repeats 9]
                                      [--out benchmarks/results/engines/engine_steps_<device>.json]

What a user pays per step for swapping an engine's built-in rule for a prr_ext rule, on the same fresh logits:

* diffusers `LLaDA2Pipeline`: `BlockRefinementScheduler.step` (threshold 0.95, no editing) against
  `prr_ext.integrations.diffusers.PolicyScheduler` with Threshold(0.95), LowConfidence and PRR; block 32, LLaDA2's
  vocabulary (157184), B = 1 and 8, greedy.
* transformers DiffusionGemma: `EntropyBoundSampler` (bound 0.1) `accept_canvas` + `renoise_canvas` against
  `prr_ext.integrations.diffusion_gemma.PolicySampler` with EntropyBound(0.1), Threshold(0.9) and PRR; canvas 256,
  Gemma's vocabulary (262144), B = 1.
* SGLang: the built-in `LowConfidence` algorithm (threshold 0.95) against the `PrrExt` plugin with Threshold(0.95),
  LowConfidence and PRR, on a real `ForwardBatch` of LLaDA2's block 32, B = 1 and 8 (needs sglang importable, e.g.
  `PYTHONPATH=build/sglang-site` after scripts/test.sh's SGLang stage).

Each timed step starts a block / canvas on fresh logits (fp32, drawn once per case, never zeros), so every position
is a candidate. The floor is the logits' bytes over the read bandwidth of this device measured in the same run
(`amax` over a 1 GiB fp32 tensor on the same threads). Times are medians over `--repeats`. Engines that are not
installed are skipped with a note.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch

import prr_ext
from prr_ext.decode_common import sync_device

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_lib import git_commit  # noqa: E402

LLADA2_VOCAB, LLADA2_MASK, LLADA2_BLOCK = 157184, 156895, 32
GEMMA_VOCAB, GEMMA_CANVAS = 262144, 256


def median_ms(fn: Callable[[], None], device: str, repeats: int) -> float:
    fn()  # warm-up (first-call costs: imports, allocator)
    dev = torch.device(device)
    out = []
    for _ in range(repeats):
        sync_device(dev)
        t0 = time.perf_counter()
        fn()
        sync_device(dev)
        out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(out)


def read_bandwidth(device: str, repeats: int) -> float:
    """Bytes/s of a pure read: amax over 1 GiB of fp32."""
    t = torch.randn(1 << 28, device=device)
    ms = median_ms(lambda: torch.amax(t), device, repeats)
    return t.numel() * 4 / (ms * 1e-3)


def controller() -> prr_ext.Controller:
    return prr_ext.Controller.init(0)


def diffusers_cases(device: str, gen: torch.Generator) -> List[Dict]:
    from diffusers import BlockRefinementScheduler

    from prr_ext.integrations.diffusers import PolicyScheduler
    cases = []
    for B in (1, 8):
        logits = torch.randn(B, LLADA2_BLOCK, LLADA2_VOCAB, generator=gen).mul_(3.0).to(device)
        sample = torch.full((B, LLADA2_BLOCK), LLADA2_MASK, dtype=torch.int64, device=device)
        kw = dict(mask_token_id=LLADA2_MASK, threshold=0.95, editing_threshold=None, temperature=0.0)

        def run(sched, logits=logits, sample=sample):  # (bound now: the loop rebinds logits for the next B)
            def once():
                sched.set_timesteps(8, device=device)
                sched.step(logits, 0, sample.clone(), **kw)
            return once
        variants = {"BlockRefinementScheduler (diffusers)": BlockRefinementScheduler(block_length=LLADA2_BLOCK),
                    "PolicyScheduler(Threshold(0.95))": PolicyScheduler(prr_ext.Threshold(0.95), LLADA2_BLOCK),
                    "PolicyScheduler(LowConfidence())": PolicyScheduler(prr_ext.LowConfidence(), LLADA2_BLOCK),
                    "PolicyScheduler(PRR)": PolicyScheduler(prr_ext.PRR(controller(), tau=0.9), LLADA2_BLOCK)}
        cases.append(dict(engine="diffusers LLaDA2Pipeline", shape=f"B={B}, block {LLADA2_BLOCK}, V={LLADA2_VOCAB}",
                          logits_bytes=logits.numel() * 4, variants={k: run(v) for k, v in variants.items()}))
    return cases


def diffusion_gemma_cases(device: str, gen: torch.Generator) -> List[Dict]:
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import (EntropyBoundSampler,
                                                                                EntropyBoundSamplerConfig)

    from prr_ext.integrations.diffusion_gemma import PolicySampler
    B, N = 1, 48
    logits = torch.randn(B, GEMMA_CANVAS, GEMMA_VOCAB, generator=gen).mul_(3.0).to(device)
    canvas = torch.randint(0, GEMMA_VOCAB, (B, GEMMA_CANVAS), generator=gen).to(device)
    denoiser = torch.randint(0, GEMMA_VOCAB, (B, GEMMA_CANVAS), generator=gen).to(device)

    def run(sampler):
        def once():
            accepted = sampler.accept_canvas(canvas, denoiser, logits, N)
            sampler.renoise_canvas(accepted, N)
        return once
    upstream = EntropyBoundSampler(EntropyBoundSamplerConfig(entropy_bound=0.1), GEMMA_CANVAS, GEMMA_VOCAB, N)
    ours = {"PolicySampler(EntropyBound(0.1))": prr_ext.EntropyBound(0.1),
            "PolicySampler(Threshold(0.9))": prr_ext.Threshold(0.9),
            "PolicySampler(PRR)": prr_ext.PRR(controller(), tau=0.9)}
    variants = {"EntropyBoundSampler (transformers)": run(upstream)}
    variants.update({k: run(PolicySampler(p, GEMMA_CANVAS, GEMMA_VOCAB, N)) for k, p in ours.items()})
    return [dict(engine="transformers DiffusionGemma", shape=f"B={B}, canvas {GEMMA_CANVAS}, V={GEMMA_VOCAB}",
                 logits_bytes=logits.numel() * 4, variants=variants)]


def sglang_cases(device: str, gen: torch.Generator) -> List[Dict]:
    from sglang.srt.dllm.algorithm import get_algorithm
    from sglang.srt.dllm.config import DllmConfig
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode

    from prr_ext.integrations import sglang as plugin
    plugin.register()
    ctrl_dir = os.path.join(os.path.dirname(HERE), "prr_testbed", "assets", "controller")
    configs = {"LowConfidence (sglang)": ("LowConfidence", {"threshold": 0.95}),
               "PrrExt threshold 0.95": ("PrrExt", {"policy": "threshold", "tau": 0.95}),
               "PrrExt low_confidence": ("PrrExt", {"policy": "low_confidence"}),
               "PrrExt prr": ("PrrExt", {"policy": "prr", "controller": ctrl_dir})}
    cases = []
    for B in (1, 8):
        logits = torch.randn(B * LLADA2_BLOCK, LLADA2_VOCAB, generator=gen).mul_(3.0).to(device)

        def run(name, cfg, logits=logits, B=B):  # (bound now: the loop rebinds logits and B)
            algo = get_algorithm(DllmConfig(algorithm=name, algorithm_config=dict(cfg), block_size=LLADA2_BLOCK,
                                            mask_id=LLADA2_MASK, max_running_requests=64,
                                            first_done_first_out_mode=False))

            def once():  # a fresh batch of B all-mask blocks: the first step of a block
                ids = torch.full((B * LLADA2_BLOCK,), LLADA2_MASK, dtype=torch.int64, device=device)
                fb = ForwardBatch(forward_mode=ForwardMode.DLLM_EXTEND, batch_size=B, input_ids=ids,
                                  req_pool_indices=torch.arange(B, device=device),
                                  seq_lens=torch.full((B,), LLADA2_BLOCK, device=device),
                                  out_cache_loc=torch.zeros(ids.numel(), dtype=torch.int64, device=device),
                                  seq_lens_sum=ids.numel())
                algo.step(fb, logits, algo.init_step_state(fb))
            return once
        cases.append(dict(engine="SGLang dLLM algorithm", shape=f"B={B}, block {LLADA2_BLOCK}, V={LLADA2_VOCAB}",
                          logits_bytes=logits.numel() * 4,
                          variants={k: run(name, cfg) for k, (name, cfg) in configs.items()}))
    return cases


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", default=None, help="default: benchmarks/results/engines/engine_steps_<device>.json")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        ap.error("argument --repeats/--threads: must be >= 1")
    from prr_testbed.cli import check_outputs

    args.out = args.out or os.path.join(HERE, "results", "engines", f"engine_steps_{args.device.split(':')[0]}.json")
    check_outputs(ap, args, files=("out",))  # before the benchmark, not after it
    out = args.out
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    bw = read_bandwidth(args.device, args.repeats)
    print(f"{args.device}, {args.threads} thread(s), read bandwidth {bw / 1e9:.2f} GB/s", flush=True)
    rows = []
    for name, build in (("diffusers", diffusers_cases), ("DiffusionGemma", diffusion_gemma_cases),
                        ("SGLang", sglang_cases)):
        try:
            cases = build(args.device, gen)
        except (ImportError, AttributeError) as e:
            print(f"skipping {name}: {e}", flush=True)
            continue
        for case in cases:
            floor_ms = case["logits_bytes"] / bw * 1e3
            for variant, fn in case["variants"].items():
                ms = median_ms(fn, args.device, args.repeats)
                rows.append(dict(engine=case["engine"], shape=case["shape"], variant=variant, ms=ms,
                                 floor_ms=floor_ms, x_floor=ms / floor_ms))
                print(f"{case['engine']:28s} {case['shape']:34s} {variant:38s} {ms:9.2f} ms  "
                      f"({ms / floor_ms:5.1f}x floor {floor_ms:.2f} ms)", flush=True)
    result = dict(command="python benchmarks/engine_steps.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  commit=git_commit(), date=time.strftime("%Y-%m-%d"), device=args.device,
                  cpu=platform.processor() or platform.machine(), threads=args.threads, torch=torch.__version__,
                  read_bandwidth_bytes_per_s=bw, repeats=args.repeats, rows=rows)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print("\n| engine | shape | step | ms | × floor |\n|---|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['engine']} | {r['shape']} | {r['variant']} | {r['ms']:.2f} | {r['x_floor']:.1f} |")
    print(f"\nwrote {os.path.abspath(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
