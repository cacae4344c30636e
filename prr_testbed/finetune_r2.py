"""Redundancy-aware fine-tuning (R²-dLLM's second half, issue 22): teach a masked-diffusion LM to be right *and*
confident on the canvases an aggressive adaptive commit rule actually visits, so that fewer forwards suffice with
less threshold tuning. The design and its reasons: docs/r2_finetune.md.

    python -m prr_testbed.finetune_r2 --out runs/model_r2ft                 # the shipped model, a few CPU minutes
    python -m prr_testbed.finetune_r2 --init-from runs/long --families mul,cumsum,sort,trace,chain --out runs/long_r2ft

Each round:
  1. collect: decode --prompts *train-split* prompts per family (never valid / test) with prr_ext.Threshold(tau),
     steps == gen_length, tau cycling over --taus, recording every canvas the sampler fed to the model;
  2. keep: trajectories whose response the family's checker accepts (targets: the trajectory's own final tokens,
     self-distillation); with --failed-prefixes also the canvases of rejected trajectories up to the step that
     committed the first token differing from the reference response (targets: the reference; those canvases hold
     only correct commits, and on the last of them the model was confidently wrong);
  3. train: loss = trajectory CE (masked slots of the active block of a visited canvas, late-committed slots
     weighted 1 + --late-weight) + --sft-weight x the LLaDA SFT loss of train_model on fresh random masks.

Writes --out/config.json and --out/model.safetensors (fp16, as the shipped model; config.json records the settings,
the collection statistics and the parent model's record). With --eval-n > 0 it prints valid-split accuracy and NFE
of Threshold(--taus[0]) and of one-token-per-step LowConfidence before and after (never the test sets; measure
those with `python -m prr_testbed.sweep --model <out>` and `python -m prr_testbed.compare_sweeps`).
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

import prr_ext

from . import MODEL_DIR
from . import tasks as T
from .cli import check_input_dir, check_outputs, device_arg, parser, progress
from .harness import RunSpec, decode_batch, evaluate, pick_device_arg
from .model import FORMAT as MODEL_FORMAT
from .model import MaskedDiffusionLM, decode_responses, load_model_arg, make_canvas
from .train_model import diffusion_loss, encode_example, lr_at, make_batch

PROG = "python -m prr_testbed.finetune_r2"
IGNORE = -100  # F.cross_entropy's ignore_index: slots outside the loss


# ---------------------------------------------------------------------------------------------------------------
# trajectories
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Trajectory:
    """One prompt decoded by the collecting rule.

    `states` are the generation regions (G token ids, mask_id where masked) of the canvases the sampler fed to the
    model, in order, each different from the one before and each with at least one masked slot; `final` is the
    generation region it ended with and `reference` the family's reference response (+ <eos> padding to G)."""

    family: str
    prompt_ids: List[int]
    states: List[List[int]]
    final: List[int]
    reference: List[int]
    accepted: bool
    tau: float
    nfe: int


@dataclass
class TrainState:
    """One training example: the canvas (prompt + generation region) the sampler saw, its targets, and the loss
    weight of every generation slot (0 outside the loss)."""

    prompt_ids: List[int]
    canvas: List[int]
    target: List[int]
    weight: List[float] = field(default_factory=list)


class CanvasRecorder:
    """Wraps a model for prr_ext.generate and keeps a copy of every canvas it is called on (the states the sampler
    visits); everything else (config, tokenizer, ...) is the wrapped model's."""

    def __init__(self, model):
        self.model = model
        self.canvases: List[torch.Tensor] = []

    def __call__(self, x, **kwargs):
        self.canvases.append(x.detach().clone())
        return self.model(x, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


@torch.no_grad()
def collect_trajectories(model, family: Union[str, T.TaskFamily], examples: Sequence[T.Example],
                         taus: Sequence[float], *, batch_size: int = 64, device="cpu",
                         on_batch=None) -> List[Trajectory]:
    """Decode `examples` with prr_ext.Threshold(tau) at steps == gen_length (tau cycles over `taus`, one per
    batch) and return one Trajectory per example, with the canvases the sampler visited and whether the family's
    checker accepts the response.

    Parameters
    ----------
    model : callable
        A MaskedDiffusionLM (or any model with `.tokenizer` and prr_ext.generate's calling convention).
    family : str or TaskFamily
        The family of every example (its gen_length, block_length and checker are used).
    examples : sequence of Example
        Prompts with their reference responses (train split: the caller's responsibility).
    taus : sequence of float
        Threshold values, in (0, 1].
    """
    fam = T.get_family(family) if isinstance(family, str) else family
    G, BL = fam.gen_length, fam.block_length
    tok = model.tokenizer
    out: List[Trajectory] = []
    for bi, i in enumerate(range(0, len(examples), batch_size)):
        chunk = examples[i:i + batch_size]
        tau = float(taus[bi % len(taus)])
        x, plens = make_canvas(tok, [e.prompt for e in chunk], G, device)
        rec = CanvasRecorder(model)
        final, nfe, _ = decode_batch(rec, x, plens, block_length=BL, steps=G, policy=prr_ext.Threshold(tau=tau),
                                     mask_id=tok.mask_id, pad_id=tok.pad_id)
        gs = final.shape[1] - G
        visited = torch.stack(rec.canvases)[:, :, gs:].cpu()  # [calls, B, G]
        responses = decode_responses(tok, final, gs)
        for b, ex in enumerate(chunk):
            states: List[List[int]] = []
            for canvas in visited[:, b].tolist():
                if tok.mask_id in canvas and (not states or canvas != states[-1]):
                    states.append(canvas)
            ids, plen = encode_example(tok, ex, G)
            out.append(Trajectory(fam.name, ids[:plen], states, final[b, gs:].tolist(), ids[plen:],
                                  bool(fam.check(ex, responses[b])), tau, int(nfe[b])))
        if on_batch is not None:
            on_batch()
    return out


def training_states(trajectories: Sequence[Trajectory], mask_id: int, block_length: Union[int, Dict[str, int]], *,
                    failed_prefixes: bool = False, late_weight: float = 0.0) -> List[TrainState]:
    """The visited canvases to train on, with their targets and loss weights.

    Accepted trajectories give all their states, the target being the trajectory's own final tokens (commits are
    final, so every committed slot of a state already holds its target). Rejected ones give nothing, or with
    `failed_prefixes` their states up to and including the last one whose committed slots all agree with the
    reference response, the target being the reference.

    The loss covers the masked slots of the state's active block (the block of its first masked slot: the only
    logits the sampler reads on that canvas); a slot the sampler left masked on that step (committed later) weighs
    1 + late_weight, the others 1.
    """
    out: List[TrainState] = []
    for tr in trajectories:
        if tr.accepted:
            target, states = tr.final, tr.states
        elif failed_prefixes:
            target, states = tr.reference, []
            for s in tr.states:
                if any(v != mask_id and v != r for v, r in zip(s, target)):
                    break
                states.append(s)
        else:
            continue
        BL = block_length[tr.family] if isinstance(block_length, dict) else block_length
        for k, s in enumerate(states):
            nxt = tr.states[k + 1] if k + 1 < len(tr.states) else None
            first = s.index(mask_id)
            lo = first - first % BL
            w = [0.0] * len(s)
            for j in range(lo, min(lo + BL, len(s))):
                if s[j] == mask_id:
                    late = nxt is not None and nxt[j] == mask_id
                    w[j] = 1.0 + (late_weight if late else 0.0)
            out.append(TrainState(tr.prompt_ids, s, list(target), w))
    return out


def collate_states(states: Sequence[TrainState], pad_id: int, device="cpu") -> Dict[str, torch.Tensor]:
    """Left-padded input ids [B, L], targets [B, L] (IGNORE outside the loss) and weights [B, L]."""
    rows = [(s.prompt_ids + s.canvas, [IGNORE] * len(s.prompt_ids) + [t if w > 0 else IGNORE
                                                                       for t, w in zip(s.target, s.weight)],
             [0.0] * len(s.prompt_ids) + s.weight) for s in states]
    L = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.int64)
    tgt = torch.full((len(rows), L), IGNORE, dtype=torch.int64)
    wts = torch.zeros((len(rows), L), dtype=torch.float32)
    for b, (x, y, w) in enumerate(rows):
        ids[b, L - len(x):] = torch.tensor(x)
        tgt[b, L - len(y):] = torch.tensor(y)
        wts[b, L - len(w):] = torch.tensor(w)
    return {"ids": ids.to(device), "target": tgt.to(device), "weight": wts.to(device)}


def trajectory_loss(model: MaskedDiffusionLM, batch: Dict[str, torch.Tensor],
                    autocast_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Per state: sum of weight x CE over its loss slots divided by their number (the LLaDA weighting 1 / (p G)
    with p G = the masked slots), averaged over the states."""
    ids, tgt, w = batch["ids"], batch["target"], batch["weight"]
    with torch.autocast(ids.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = model(ids).logits
    ce = F.cross_entropy(logits.float().transpose(1, 2), tgt, ignore_index=IGNORE, reduction="none")  # [B, L]
    count = (tgt != IGNORE).sum(1).clamp_min(1)
    return ((ce * w).sum(1) / count).mean()


# ---------------------------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------------------------
def _floats(text: str) -> Tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not vals:
        raise argparse.ArgumentTypeError("give at least one value")
    return vals


def parse_args(argv=None):
    ap = parser(PROG, __doc__)
    ap.add_argument("--init-from", default=None,
                    help="the model to fine-tune (a folder with config.json + model.safetensors; default: the shipped "
                         "one, prr_testbed/assets/model)")
    ap.add_argument("--out", default=os.path.join("runs", "model_r2ft"),
                    help="output folder (its parent must exist, except for the default's)")
    ap.add_argument("--families", default=",".join(T.FAMILY_NAMES),
                    help="task families the model was trained on (comma-separated)")
    ap.add_argument("--mix", default=None, help="SFT sampling weights of the families (default: equal)")
    ap.add_argument("--taus", type=_floats, default=(0.5, 0.7),
                    help="Threshold taus of the collecting decode (cycled over the batches)")
    ap.add_argument("--prompts", type=int, default=512, help="train-split prompts per family and round")
    ap.add_argument("--rounds", type=int, default=2,
                    help="collect-then-train rounds (each round collects with the model of the round before)")
    ap.add_argument("--steps", type=int, default=150, help="optimizer steps per round")
    ap.add_argument("--batch-size", type=int, default=64, help="visited canvases per step")
    ap.add_argument("--sft-batch-size", type=int, default=64, help="fresh SFT sequences per step (0: no SFT loss)")
    ap.add_argument("--sft-weight", type=float, default=1.0, help="weight of the LLaDA SFT loss")
    ap.add_argument("--late-weight", type=float, default=1.0,
                    help="extra weight of slots the collecting rule committed on a later step")
    ap.add_argument("--failed-prefixes", action=argparse.BooleanOptionalAction, default=True,
                    help="also train on rejected trajectories' canvases up to their first wrong commit, "
                         "reference targets")
    ap.add_argument("--lr", type=float, default=3e-5,
                    help="peak learning rate (2e-4 at these batch sizes damaged the shipped model: "
                         "docs/r2_finetune.md)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--decode-batch-size", type=int, default=128, help="prompts decoded together when collecting")
    ap.add_argument("--eval-n", type=int, default=200,
                    help="valid-split prompts per family for the before/after check (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights-dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--device", type=device_arg, default="auto",
                    help="auto (the GPU when there is one and prr_ext has CUDA kernels), cpu, cuda, cuda:<index>")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    for name in ("prompts", "rounds", "steps", "batch_size", "decode_batch_size"):
        if getattr(args, name) < 1:
            ap.error(f"argument --{name.replace('_', '-')}: must be >= 1")
    for name in ("sft_batch_size", "eval_n", "warmup"):
        if getattr(args, name) < 0:
            ap.error(f"argument --{name.replace('_', '-')}: must be >= 0")
    for name in ("sft_weight", "late_weight", "weight_decay"):
        if not getattr(args, name) >= 0:
            ap.error(f"argument --{name.replace('_', '-')}: must be >= 0")
    if not args.lr > 0:
        ap.error("argument --lr: must be > 0")
    if any(not 0.0 < t <= 1.0 for t in args.taus):
        ap.error(f"argument --taus: every tau must lie in (0, 1], got {','.join(map(str, args.taus))}")
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in args.families if f not in T.FAMILIES]
    if unknown or not args.families:
        ap.error(f"argument --families: {','.join(unknown) or 'none given'}: choose from {','.join(T.FAMILIES)}")
    if args.mix is None:
        args.mix = [1.0] * len(args.families)
    else:
        try:
            args.mix = [float(w) for w in args.mix.split(",")]
        except ValueError:
            ap.error(f"argument --mix: {args.mix!r} is not a comma-separated list of numbers")
        if len(args.mix) != len(args.families) or any(not w >= 0 for w in args.mix) or not sum(args.mix) > 0:
            ap.error(f"argument --mix: give {len(args.families)} weights >= 0 (one per family), not all 0")
    check_outputs(ap, args, dirs=("out",), writes=MODEL_FORMAT)
    if os.path.realpath(args.out) == os.path.realpath(MODEL_DIR):
        ap.error(f"argument --out: {args.out} is the shipped model's folder; write the fine-tuned model elsewhere")
    check_input_dir(ap, "--init-from", args.init_from, ("config.json", "model.safetensors"), "model")
    args.device, args.device_note = pick_device_arg(ap, args.device)
    return args


def quick_check(model, families: Sequence[str], n: int, tau: float, device) -> Dict[str, Dict[str, float]]:
    """Valid-split accuracy (%) and mean NFE of Threshold(tau) and of vanilla LowConfidence, per family."""
    out = {}
    for name in families:
        exs = T.heldout_set(name, "valid", n)
        out[name] = {}
        for key, spec in (("threshold", RunSpec("threshold", tau)), ("lowconf", RunSpec("lowconf"))):
            r = evaluate(model, name, exs, spec, batch_size=128, device=device)
            out[name][key] = {"accuracy": r["accuracy"], "mean_nfe": r["mean_nfe"]}
    return out


def _check_lines(tag: str, check: Dict, tau: float) -> str:
    return f"[finetune_r2] {tag} (valid split): " + "  ".join(
        f"{f} Threshold({tau:g}) {d['threshold']['accuracy']:.1f}% NFE {d['threshold']['mean_nfe']:.2f}, "
        f"vanilla {d['lowconf']['accuracy']:.1f}%" for f, d in check.items())


def main(argv=None) -> Dict:
    args = parse_args(argv)
    t_start = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device_note:
        print(f"[finetune_r2] NOTE: {args.device_note}")
    dev = args.device
    torch.manual_seed(args.seed)
    model = load_model_arg(args.init_from, dev)
    parent = getattr(model, "metadata", {})
    tok = model.tokenizer
    autocast_dtype = torch.bfloat16 if dev.type == "cuda" else None
    print(f"[finetune_r2] {args.init_from or 'prr_testbed/assets/model'} ({model.num_parameters():,} params) on {dev}; "
          f"families {args.families}, taus {list(args.taus)}, {args.rounds} rounds x ({args.prompts} prompts/family, "
          f"{args.steps} steps)", flush=True)
    before = quick_check(model, args.families, args.eval_n, args.taus[0], dev) if args.eval_n else None
    if before:
        print(_check_lines("before", before, args.taus[0]), flush=True)

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98), eps=1e-8)
    mask_gen = torch.Generator(device=dev).manual_seed(args.seed + 1)   # SFT masks
    pick_gen = torch.Generator().manual_seed(args.seed + 2)             # which visited canvases form a batch
    block_lengths = {f: T.get_family(f).block_length for f in args.families}
    total, step, log = args.rounds * args.steps, 0, []
    for rnd in range(args.rounds):
        model.eval()
        trajectories: List[Trajectory] = []
        with progress(len(args.families) * -(-args.prompts // args.decode_batch_size),
                      desc=f"round {rnd + 1} collect", disable=args.no_progress) as bar:
            for name in args.families:
                rng = random.Random(f"prr_testbed.finetune_r2/{args.seed}/{rnd}/{name}")  # seeds the collection
                fam = T.get_family(name)
                exs = [fam.sample_split(rng, "train") for _ in range(args.prompts)]
                trajectories += collect_trajectories(model, fam, exs, args.taus, batch_size=args.decode_batch_size,
                                                     device=dev, on_batch=lambda: bar.update(1))
        states = training_states(trajectories, tok.mask_id, block_lengths, failed_prefixes=args.failed_prefixes,
                                 late_weight=args.late_weight)
        stats = {"round": rnd + 1, "families": {}}
        for name in args.families:
            trs = [t for t in trajectories if t.family == name]
            stats["families"][name] = {"accepted": sum(t.accepted for t in trs) / len(trs),
                                       "mean_nfe": sum(t.nfe for t in trs) / len(trs)}
        stats["states"] = len(states)
        print(f"[finetune_r2] round {rnd + 1}: collected " + "  ".join(
            f"{f} accepted {d['accepted']:.1%} NFE {d['mean_nfe']:.2f}" for f, d in stats["families"].items())
            + f"; {len(states)} canvases to train on", flush=True)
        if not states:
            raise SystemExit("[finetune_r2] no trajectory was kept (nothing accepted, and --no-failed-prefixes): the "
                             "model cannot solve these families; fine-tune a model trained on them")
        model.train()
        ema = None
        with progress(args.steps, desc=f"round {rnd + 1} train", disable=args.no_progress, unit="step") as bar:
            for _ in range(args.steps):
                lr = lr_at(step, total, args.lr, args.warmup)
                for g in opt.param_groups:
                    g["lr"] = lr
                pick = torch.randint(len(states), (args.batch_size,), generator=pick_gen).tolist()
                loss_traj = trajectory_loss(model, collate_states([states[i] for i in pick], tok.pad_id, dev),
                                            autocast_dtype)
                loss = loss_traj
                if args.sft_batch_size and args.sft_weight:
                    sft = make_batch(args.seed, step, args.sft_batch_size, args.families, args.mix, tok)
                    loss = loss + args.sft_weight * diffusion_loss(model, {k: v.to(dev) for k, v in sft.items()},
                                                                   mask_gen, autocast_dtype)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                step += 1
                lv = (float(loss_traj.detach()), float(loss.detach()))
                ema = lv if ema is None else tuple(0.9 * e + 0.1 * v for e, v in zip(ema, lv))
                bar.set_postfix(traj=f"{ema[0]:.4f}", total=f"{ema[1]:.4f}", lr=f"{lr:.1e}")
                bar.update(1)
        stats["trajectory_loss"], stats["total_loss"] = ema
        log.append(stats)
        print(f"[finetune_r2] round {rnd + 1}: {step}/{total} steps, trajectory loss {ema[0]:.4f}, total {ema[1]:.4f} "
              f"({time.time() - t_start:.0f} s)", flush=True)
    model.eval()
    after = quick_check(model, args.families, args.eval_n, args.taus[0], dev) if args.eval_n else None
    if after:
        print(_check_lines("after ", after, args.taus[0]), flush=True)
    meta = {
        "command": PROG + " " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in [
                ("families", ",".join(args.families)), ("mix", ",".join(map(str, args.mix))),
                ("taus", ",".join(map(str, args.taus))), ("prompts", args.prompts), ("rounds", args.rounds),
                ("steps", args.steps), ("batch_size", args.batch_size), ("sft_batch_size", args.sft_batch_size),
                ("sft_weight", args.sft_weight), ("late_weight", args.late_weight), ("lr", args.lr),
                ("warmup", args.warmup), ("weight_decay", args.weight_decay), ("seed", args.seed)])
        + (" --failed-prefixes" if args.failed_prefixes else " --no-failed-prefixes")
        + " --init-from <the model of 'parent'>",
        "objective": "R2 fine-tuning (docs/r2_finetune.md): CE on the active block's masked slots of canvases "
                     "visited by Threshold(taus) on train prompts (accepted: own final tokens; failed prefixes: "
                     "reference), late-committed slots weighted 1 + late_weight, + sft_weight x LLaDA SFT loss",
        "data": "prr_testbed.tasks train split (hash-disjoint from valid/test)",
        "rounds": log, "valid_check_before": before, "valid_check_after": after,
        "device": str(dev), "torch": torch.__version__, "python": platform.python_version(),
        "train_seconds": round(time.time() - t_start, 1), "parent": parent,
    }
    model.save_pretrained(args.out, dtype=getattr(torch, args.weights_dtype), metadata=meta)
    print(f"[finetune_r2] wrote {os.path.abspath(args.out)} (config.json, model.safetensors) in "
          f"{time.time() - t_start:.0f} s", flush=True)
    return meta


if __name__ == "__main__":
    main()
