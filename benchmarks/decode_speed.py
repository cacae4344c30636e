"""Decode speed of whole loops, and the share of it spent outside the model's forwards (issue #24).

    python benchmarks/decode_speed.py --model shipped --device cpu      # the shipped testbed model, "words" prompts
    python benchmarks/decode_speed.py --model llada8b --device cuda     # LLaDA-8B-shaped, random bf16 weights
    python benchmarks/decode_speed.py --model tiny --device cpu         # a seconds-long smoke run of the same code

Every loop decodes the same prompts with LowConfidence and steps = gen_length (LLaDA's vanilla decoding: one token
per row per forward, the same NFE in every loop, so tokens/s compare directly):
  eager      LLaDA's generate loop: the full forward, then LLaDA's low-confidence step in plain torch
             (bench_lib.llada_step_eager: softmax over the full logits, gather, masked top-k)
  op         prr_ext.generate: the full forward, then the fused step
  op+graph   the same, each block's steps captured in CUDA graphs (cuda_graph=True; CUDA only)
  prefix     prr_ext.generate over prr_testbed.model.CachedLM(model, "prefix") (block_info=True)
  dual       CachedLM(model, "dual")
Per loop and batch size: the wall seconds of the decode (the minimum over --repeats, after one warm-up), decode
tokens/s (B x gen_length / seconds), the seconds inside the model's calls (each call timed: CUDA events on a GPU,
perf_counter on the CPU) and the share outside them, 1 - forwards / total: the step, the loop's bookkeeping and the
launches between forwards. With op+graph the forwards run inside the graphs and are not timed apart (null). Tokens:
op decodes exactly eager's tokens (a warning says otherwise: LLaDA's argmax can pick the mask token, prr_ext's never
does); the caches are approximate by design, their token agreement with eager is reported. Writes --out (JSON) and
prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Dict, List, Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import prr_ext  # noqa: E402
from bench_lib import git_commit, llada_step_eager  # noqa: E402
from prr_ext.decode_common import sync_device  # noqa: E402
from prr_ext.reference import schedule_k  # noqa: E402
from prr_testbed import tasks as T  # noqa: E402
from prr_testbed.cli import check_outputs  # noqa: E402
from prr_testbed.model import CachedLM, MaskedDiffusionLM, ModelConfig, load_default, make_canvas  # noqa: E402

LOOPS = ("eager", "op", "op+graph", "prefix", "dual")
# LLaDA-8B-Base's shape (its config.json): MHA, SwiGLU, vocabulary 126464, mask 126336
LLADA8B = dict(vocab_size=126464, d_model=4096, n_layers=32, n_heads=32, d_ff=12288, mask_id=126336, eos_id=126081,
               pad_id=126081)
TINY = dict(vocab_size=1000, d_model=64, n_layers=2, n_heads=4, d_ff=160, mask_id=999, eos_id=1, pad_id=1)


class TimedCalls:
    """Wraps a model callable: times each call (CUDA events, read once at the end; perf_counter on the CPU) and
    passes attribute reads through, so prr_ext.generate sees the model itself."""

    def __init__(self, runner, device: torch.device):
        self._runner, self._cuda = runner, device.type == "cuda"
        self.reset()

    def reset(self) -> None:
        self._events: List = []
        self._cpu_seconds = 0.0

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def __call__(self, *args, **kwargs):
        if self._cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self._runner(*args, **kwargs)
            end.record()
            self._events.append((start, end))
            return out
        t0 = time.perf_counter()
        out = self._runner(*args, **kwargs)
        self._cpu_seconds += time.perf_counter() - t0
        return out

    def seconds(self) -> float:
        if self._cuda:
            torch.cuda.synchronize()
            return sum(s.elapsed_time(e) for s, e in self._events) / 1e3
        return self._cpu_seconds


@torch.inference_mode()
def eager_generate(model, prompt_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], gen_length: int,
                   block_length: int, steps: int, mask_id: int) -> torch.Tensor:
    """LLaDA's generate (low_confidence, temperature 0, no CFG): [B, P + G] tokens."""
    B, P = prompt_ids.shape
    x = torch.cat([prompt_ids, torch.full((B, gen_length), mask_id, dtype=torch.int64, device=prompt_ids.device)], 1)
    am = None if attention_mask is None else torch.cat(
        [attention_mask, torch.ones(B, gen_length, dtype=attention_mask.dtype, device=x.device)], 1)
    num_blocks = gen_length // block_length
    per_block = steps // num_blocks
    for blk in range(num_blocks):
        block_end = P + (blk + 1) * block_length
        for i in range(per_block):  # every row's block holds block_length masks: one schedule for the batch
            logits = (model(x) if am is None else model(x, attention_mask=am)).logits
            x = llada_step_eager(logits, x, mask_id, block_end, schedule_k(block_length, per_block, i))
    return x


def build(args, device: torch.device):
    """(model, prompt_ids [Bmax, P], attention_mask or None, mask_id, gen_length, block_length)."""
    if args.model == "shipped":
        model = load_default(device)
        fam = T.get_family(args.family)
        tok = model.tokenizer
        examples = T.heldout_set(args.family, "test", max(args.batch))
        x, plens = make_canvas(tok, [e.prompt for e in examples], fam.gen_length, device)
        P = int(plens.max())
        prompt = x[:, :P]
        return model, prompt, (prompt != tok.pad_id).to(torch.int64), tok.mask_id, fam.gen_length, fam.block_length
    shape = LLADA8B if args.model == "llada8b" else TINY
    cfg = ModelConfig(max_seq_len=args.prompt_length + args.gen_length, **shape)
    dtype = torch.bfloat16 if args.model == "llada8b" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: 8B parameters never pass through the host
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = MaskedDiffusionLM(cfg).eval()
        finally:
            torch.set_default_dtype(default)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, shape["mask_id"], (max(args.batch), args.prompt_length), generator=g).to(device)
    return model, prompt, None, shape["mask_id"], args.gen_length, args.block_length


def run_loop(loop: str, model, timed: TimedCalls, prompt, am, mask_id, G, BL, device) -> torch.Tensor:
    if loop == "eager":
        return eager_generate(timed, prompt, am, G, BL, G, mask_id)
    out = prr_ext.generate(timed, prompt, gen_length=G, block_length=BL, steps=G, policy=prr_ext.LowConfidence(),
                           mask_id=mask_id, attention_mask=am, confidence_dtype=torch.float32,
                           cuda_graph=loop == "op+graph", block_info=loop in ("prefix", "dual"))
    return out.tokens


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", choices=("shipped", "llada8b", "tiny"), default="shipped")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", default="1,8,32", help="comma list of batch sizes")
    ap.add_argument("--loops", default=",".join(LOOPS), help=f"comma list of {', '.join(LOOPS)}")
    ap.add_argument("--family", default="words", help="shipped model: the task family whose test prompts decode")
    ap.add_argument("--prompt-length", type=int, default=64, help="llada8b / tiny: random prompt tokens")
    ap.add_argument("--gen-length", type=int, default=128, help="llada8b / tiny")
    ap.add_argument("--block-length", type=int, default=32, help="llada8b / tiny")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="CPU: torch threads (default: torch's)")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/decode/decode_<model>_<device>.json")
    args = ap.parse_args(argv)
    try:
        args.batch = [int(b) for b in args.batch.split(",")]
        assert args.batch and min(args.batch) >= 1
    except (ValueError, AssertionError):
        ap.error(f"argument --batch: a comma list of positive ints, got {args.batch!r}")
    loops = [s.strip() for s in args.loops.split(",") if s.strip()]
    if not loops or any(s not in LOOPS for s in loops):
        ap.error(f"argument --loops: choose from {', '.join(LOOPS)}")
    if args.repeats < 1:
        ap.error("argument --repeats: must be >= 1")
    if args.model != "shipped" and args.gen_length % args.block_length:
        ap.error("argument --block-length: must divide --gen-length")
    if args.model == "shipped" and args.family not in T.FAMILIES:
        ap.error(f"argument --family: choose from {', '.join(T.FAMILY_NAMES)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("argument --device: CUDA is not available here")
    if device.type != "cuda" and "op+graph" in loops:
        loops.remove("op+graph")  # CUDA graphs need a GPU
    slug = args.device.split(":")[0]
    args.out = args.out or os.path.join(HERE, "results", "decode", f"decode_{args.model}_{slug}.json")
    check_outputs(ap, args, files=("out",))  # before the benchmark, not after it
    out_path = args.out
    if args.threads:
        torch.set_num_threads(args.threads)

    model, prompts, ams, mask_id, G, BL = build(args, device)
    print(f"{args.model} model ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters) on {device}, "
          f"{torch.get_num_threads()} thread(s); prompt width {prompts.shape[1]}, gen {G}, block {BL}", flush=True)
    rows: List[Dict] = []
    for B in args.batch:
        prompt, am = prompts[:B], None if ams is None else ams[:B]
        eager_tokens = None
        for loop in loops:
            runner = CachedLM(model, loop) if loop in ("prefix", "dual") else model
            timed = TimedCalls(runner, device)
            with torch.inference_mode():
                run_loop(loop, model, timed, prompt, am, mask_id, G, BL, device)  # warm-up (and graph capture)
                best = None
                for _ in range(args.repeats):
                    timed.reset()
                    if isinstance(runner, CachedLM):
                        runner.reset()
                    sync_device(device)
                    t0 = time.perf_counter()
                    tokens = run_loop(loop, model, timed, prompt, am, mask_id, G, BL, device)
                    sync_device(device)
                    total = time.perf_counter() - t0
                    fwd = None if loop == "op+graph" else timed.seconds()
                    if best is None or total < best[0]:
                        best = (total, fwd)
            total, fwd = best
            gen = tokens[:, -G:].cpu()
            if loop == "eager":
                eager_tokens = gen
            agree = None if eager_tokens is None else float((gen == eager_tokens).double().mean())
            if loop in ("op", "op+graph") and agree is not None and agree != 1.0:
                # (LLaDA's argmax may pick the mask token itself, which prr_ext never commits: docs/semantics.md)
                print(f"WARNING: {loop} decoded other tokens than LLaDA's eager loop at B={B} (agreement {agree})",
                      flush=True)
            row = dict(B=B, loop=loop, seconds=total, tokens_per_s=B * G / total, forward_seconds=fwd,
                       outside_share=None if fwd is None else max(0.0, 1.0 - fwd / total),
                       token_agreement_with_eager=agree)
            rows.append(row)
            outside = "n/a" if fwd is None else f"{100 * row['outside_share']:5.1f}%"
            print(f"B={B:3d} {loop:9s} {total:8.3f} s  {row['tokens_per_s']:10.1f} tok/s  outside forwards {outside}"
                  f"  agreement {agree}", flush=True)
    doc = dict(command="python benchmarks/decode_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               commit=git_commit(), date=time.strftime("%Y-%m-%d"), model=args.model, device=str(device),
               device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
               threads=torch.get_num_threads(), torch=torch.__version__, gen_length=G, block_length=BL,
               prompt_width=int(prompts.shape[1]), policy="LowConfidence", steps=G, repeats=args.repeats, rows=rows)
    with open(out_path, "w") as f:
        json.dump(doc, f, indent=1)
    print("\n| B | loop | seconds | tokens/s | outside the forwards | token agreement with eager |\n"
          "|---:|---|---:|---:|---:|---:|")
    for r in rows:
        share = "—" if r["outside_share"] is None else f"{100 * r['outside_share']:.1f}%"
        agree = "—" if r["token_agreement_with_eager"] is None else f"{r['token_agreement_with_eager']:.4f}"
        print(f"| {r['B']} | {r['loop']} | {r['seconds']:.3f} | {r['tokens_per_s']:.1f} | {share} | {agree} |")
    print(f"\nwrote {os.path.abspath(out_path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
