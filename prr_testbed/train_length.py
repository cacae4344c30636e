"""Fit a Predict-then-Diffuse length predictor (prr_ext.LengthPredictor) for a testbed model.

    python -m prr_testbed.train_length --out runs/length                        # the shipped model, its families
    python -m prr_testbed.train_length --model runs/long --families mul,cumsum,sort,trace,chain --out runs/length_long

Labels are the model's own: each train-split prompt is decoded with full refinement (LowConfidence, one token per
step) on the longest canvas (--max-length, default the families' longest), and its length is the position of the
first <eos> + 1 (the response and its <eos>; --max-length when the canvas holds none). The decodes exit early
(generate's eos_fill): a row stops once its first <eos> and everything before it are committed, which is where full
refinement leaves them, so the labels are full refinement's at a fraction of the forwards. Features are the model's
last hidden states of the prompt, mean-pooled (prr_ext.query_features: one forward of the prompt). The predictor is
a ridge regression of log length, its margin the split-conformal quantile of held-out residuals
(--calibration-fraction of the pairs). Then it reports, on test-split prompts labelled the same way, the achieved
truncation rate and the mean budget against the oracle length at --target-truncation.

Writes --out/config.json + model.safetensors (prr_ext.LengthPredictor.save; the model's fingerprint and the
settings in its meta) and --out/report.json. Needs the compiled prr_ext op (the decodes go through prr_ext.generate).
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Dict, List, Sequence, Tuple

import torch

import prr_ext

from . import tasks as T
from .cli import (check_input_dir, check_outputs, check_trained, device_arg, model_arg, model_help, names_arg, parser,
                  progress)
from .harness import pick_device_arg
from .model import MaskedDiffusionLM, load_model_arg, make_canvas
from prr_ext.length import FORMAT as LENGTH_FORMAT

PROG = "python -m prr_testbed.train_length"


def parse_args(argv=None):
    ap = parser(PROG, __doc__)
    ap.add_argument("--model", default=None, type=model_arg, help=model_help())
    ap.add_argument("--families", type=names_arg(tuple(T.FAMILIES)), default=None,
                    help="task families (comma-separated; default: those the model was trained on)")
    ap.add_argument("--train", type=int, default=400, help="train-split prompts per family (fit + calibration)")
    ap.add_argument("--test", type=int, default=200, help="test-split prompts per family (the report)")
    ap.add_argument("--max-length", type=int, default=None, help="the longest canvas (default: the families' max)")
    ap.add_argument("--block-length", type=int, default=None, help="budgets round up to it (default: the "
                    "families' smallest block length that divides --max-length)")
    ap.add_argument("--calibration-fraction", type=float, default=0.3)
    ap.add_argument("--ridge", type=float, default=1.0)
    ap.add_argument("--target-truncation", type=float, default=0.02)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0, help="the calibration split's seed and the prompts' sampling seed")
    ap.add_argument("--device", type=device_arg, default="auto")
    ap.add_argument("--out", default=os.path.join("runs", "length"))
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    args.families = check_trained(ap, "--families", args.model, args.families)
    if args.train < 4 or args.test < 1 or args.batch_size < 1:
        ap.error("argument --train/--test/--batch-size: --train must be >= 4, the others >= 1")
    if not 0.0 < args.target_truncation < 1.0:
        ap.error("argument --target-truncation: must lie in (0, 1)")
    if not 0.0 < args.calibration_fraction < 1.0:
        ap.error("argument --calibration-fraction: must lie in (0, 1)")
    # LengthPredictor.fit's rule for its split of the train pairs, checked before the labelling, not after it
    n = args.train * len(args.families)
    n_cal = int(round(n * args.calibration_fraction))
    if n_cal < 1 or n - n_cal < 2:
        ap.error(f"argument --calibration-fraction: {n} train pairs ({args.train} per family) leave {n_cal} to "
                 f"calibrate and {n - n_cal} to fit; each needs more (raise --train or change the fraction)")
    if not 0.0 <= args.ridge < math.inf:
        ap.error(f"argument --ridge: must be a finite number >= 0, got {args.ridge}")
    fams = [T.get_family(f) for f in args.families]
    if args.max_length is None:
        args.max_length = max(f.gen_length for f in fams)
    if args.max_length < 1:
        ap.error("argument --max-length: must be >= 1")
    if args.block_length is None:
        divisors = [f.block_length for f in fams if args.max_length % f.block_length == 0]
        args.block_length = min(divisors) if divisors else args.max_length
    if args.block_length < 1 or args.max_length % args.block_length:
        ap.error(f"argument --block-length: must divide --max-length ({args.max_length})")
    check_outputs(ap, args, dirs=("out",), inputs=("model",), writes=LENGTH_FORMAT)
    check_input_dir(ap, "--model", args.model, ("config.json", "model.safetensors"), "model")
    args.device, args.device_note = pick_device_arg(ap, args.device)
    return ap, args


def prompts_of(families: Sequence[str], split: str, n: int, seed: int) -> List[Tuple[str, T.Example]]:
    """n prompts of each family from `split` (the train split: drawn with the seed; test: the fixed held-out set)."""
    import random

    out = []
    for f in families:
        if split == "test":
            out += [(f, e) for e in T.heldout_set(f, "test", n)]
        else:
            rng = random.Random(f"prr_testbed.train_length/{seed}/{f}")
            out += [(f, T.get_family(f).sample_split(rng, "train")) for _ in range(n)]
    return out


@torch.inference_mode()
def label_and_features(model: MaskedDiffusionLM, examples: Sequence[Tuple[str, T.Example]], *, max_length: int,
                       block_length: int, batch_size: int, device, show_progress: bool = True
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(features [N, D] float32, lengths [N] int64): pooled prompt hidden states, and the first <eos> + 1 of the
    model's full-refinement decode (max_length when there is none)."""
    tok = model.tokenizer
    feats, lengths = [], []
    with progress(len(examples), disable=not show_progress, unit="prompt") as bar:
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            x, plens = make_canvas(tok, [e.prompt for _, e in chunk], max_length, device)
            P = x.shape[1] - max_length
            prompt = x[:, :P]
            am = (prompt != tok.pad_id).to(torch.int64)
            feats.append(prr_ext.query_features(model, prompt, am).cpu())
            out = prr_ext.generate(model, prompt, gen_length=max_length, block_length=block_length,
                                   steps=max_length, policy=prr_ext.LowConfidence(), mask_id=tok.mask_id,
                                   eos_id=tok.eos_id, attention_mask=am, confidence_dtype=torch.float32,
                                   eos_fill=True)  # a row stops once everything before its first <eos> is settled
            gen = out.generated.cpu()
            is_eos = gen == tok.eos_id
            first = torch.where(is_eos.any(1), is_eos.to(torch.int8).argmax(1) + 1, torch.full_like(plens.cpu(),
                                                                                                    max_length))
            lengths.append(first)
            bar.update(len(chunk))
    return torch.cat(feats), torch.cat(lengths)


def report(lp: prr_ext.LengthPredictor, feats: torch.Tensor, lengths: torch.Tensor, families: Sequence[str],
           target: float, block_length: int, max_length: int) -> Dict:
    """Achieved truncation rate and budgets on labelled pairs (overall and per family)."""
    budgets = lp.budget(feats, target, multiple=block_length, maximum=max_length)
    trunc = budgets < lengths
    oracle = torch.ceil(lengths.double() / block_length) * block_length
    out = {"target_truncation": target, "n": int(lengths.numel()),
           "truncation_rate": float(trunc.double().mean()),
           "mean_budget": float(budgets.double().mean()), "mean_oracle_budget": float(oracle.mean()),
           "mean_length": float(lengths.double().mean()), "max_length": max_length, "per_family": {}}
    for f in sorted(set(families)):
        idx = torch.tensor([i for i, g in enumerate(families) if g == f])
        out["per_family"][f] = {"n": int(idx.numel()), "truncation_rate": float(trunc[idx].double().mean()),
                                "mean_budget": float(budgets[idx].double().mean()),
                                "mean_length": float(lengths[idx].double().mean())}
    return out


def main(argv=None) -> Dict:
    ap, args = parse_args(argv)
    if args.device_note:
        print(f"[train_length] NOTE: {args.device_note}")
    model = load_model_arg(args.model, args.device)
    t0 = time.time()
    train = prompts_of(args.families, "train", args.train, args.seed)
    test = prompts_of(args.families, "test", args.test, args.seed)
    print(f"[train_length] labelling {len(train)} train and {len(test)} test prompts (full refinement, canvas "
          f"{args.max_length}) on {args.device}", flush=True)
    kw = dict(max_length=args.max_length, block_length=args.block_length, batch_size=args.batch_size,
              device=args.device, show_progress=not args.no_progress)
    f_train, y_train = label_and_features(model, train, **kw)
    f_test, y_test = label_and_features(model, test, **kw)
    lp = prr_ext.LengthPredictor.fit(
        f_train, y_train, ridge=args.ridge, calibration_fraction=args.calibration_fraction, seed=args.seed,
        fingerprint=prr_ext.model_fingerprint(model),
        meta={"max_length": args.max_length, "block_length": args.block_length, "families": args.families,
              "features": "prr_ext.query_features (mean of the last hidden states over the prompt)",
              "labels": "first <eos> + 1 of LowConfidence full refinement (max_length when none)",
              "model": args.model or "prr_testbed/assets/model"})
    rep = report(lp, f_test, y_test, [f for f, _ in test], args.target_truncation, args.block_length,
                 args.max_length)
    rep.update(command=" ".join([PROG] + list(argv if argv is not None else __import__("sys").argv[1:])),
               seconds=round(time.time() - t0, 1), train_pairs=int(y_train.numel()),
               censored_train_pairs=int((y_train >= args.max_length).sum()))
    os.makedirs(args.out, exist_ok=True)
    lp.save(args.out)
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(rep, f, indent=1)
    print(f"[train_length] test truncation {100 * rep['truncation_rate']:.1f}% at target "
          f"{100 * args.target_truncation:.0f}% (n={rep['n']}); mean budget {rep['mean_budget']:.1f} vs oracle "
          f"{rep['mean_oracle_budget']:.1f} vs fixed {args.max_length}")
    print(f"[train_length] wrote {args.out}/config.json, model.safetensors and report.json")
    return rep


if __name__ == "__main__":
    main()
