"""`python -m prr_testbed.train_controller`: PRR's controller, trained end to end (docs/prr_training.md).

    round 0      full-refinement rollouts (LowConfidence, one token per step) of training prompts
    round r > 0  rollouts with the round r-1 controller; targets = full refinement of each block from the state in
                 which the controller entered it
    each round   empirical-convergence-progress labels -> fit the MLP on the pooled records -> choose the
                 temperature map (best validation AUP) and tau on the validation split -> evaluate on the held-out
                 test split

Data-parallel: run under `torchrun --nproc_per_node N` (NCCL on GPUs, gloo on CPU); prompts are sharded by rank,
records travel as safetensors shards, rank 0 fits. Resumable: finished rounds are loaded, not redone.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from typing import Dict, List, Optional, Sequence

import torch

from prr_ext import PRR, Controller, LowConfidence
from prr_ext.prr_training import Rollout, convergence_labels, fit_controller, rollout

from . import CONTROLLER_DIR, MODEL_DIR
from . import harness as E
from . import tasks as T
from .model import MaskedDiffusionLM, make_canvas


# ---------------------------------------------------------------------------------------------------------------
# distributed helpers (no-ops in a single process)
# ---------------------------------------------------------------------------------------------------------------
def _dist():
    return torch.distributed if torch.distributed.is_available() and torch.distributed.is_initialized() else None


def _rank() -> int:
    d = _dist()
    return d.get_rank() if d else 0


def _world() -> int:
    d = _dist()
    return d.get_world_size() if d else 1


def _barrier():
    d = _dist()
    if d:
        d.barrier()


def _init_dist(device: torch.device) -> torch.device:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend)
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    return device


# ---------------------------------------------------------------------------------------------------------------
# pipeline pieces
# ---------------------------------------------------------------------------------------------------------------
def training_examples(family: str, n: int, seed: int) -> List[T.Example]:
    """n distinct training-split examples (never test or validation prompts)."""
    fam = T.get_family(family)
    rng = random.Random(f"prr_ext.train/{family}/{seed}")  # this string seeds the training prompts
    seen, out = set(), []
    while len(out) < n:
        ex = fam.sample_split(rng, "train")
        if ex.prompt not in seen:
            seen.add(ex.prompt)
            out.append(ex)
    return out


def collect(model, family: str, examples: Sequence[T.Example], policy, *, batch_size: int, device,
            block_continuation: bool) -> Rollout:
    fam = T.get_family(family)
    tok = model.tokenizer
    parts = []
    for i in range(0, len(examples), batch_size):
        x, plens = make_canvas(tok, [e.prompt for e in examples[i:i + batch_size]], fam.gen_length, device)
        parts.append(rollout(model, x, plens, policy=policy, block_length=fam.block_length, steps=fam.gen_length,
                             mask_id=tok.mask_id, block_continuation=block_continuation))
    return _concat_padded(parts)


def _concat_padded(parts: Sequence[Rollout]) -> Rollout:
    """Rollout.concat for canvases of different widths (left-padded prompts): pad canvases on the left."""
    width = max(p.final.shape[1] for p in parts)
    fixed = []
    for p in parts:
        shift = width - p.final.shape[1]
        pad = lambda c: torch.nn.functional.pad(c, (shift, 0), value=0)  # noqa: E731  (<pad> id 0)
        fixed.append(Rollout(p.feats, p.row, p.col + shift, p.t, p.cand, p.committed, pad(p.final), pad(p.target),
                             p.nfe))
    return Rollout.concat(fixed)


def shard_path(out: str, r: int, rank: int) -> str:
    return os.path.join(out, f"round{r}", f"rollouts_rank{rank}.safetensors")


def save_shard(path: str, per_family: Dict[str, Rollout]) -> None:
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tensors = {}
    for fam, ro in per_family.items():
        tensors.update(ro.to_tensors(prefix=f"{fam}."))
    save_file(tensors, path + ".tmp")
    os.replace(path + ".tmp", path)  # atomic: a half-written shard never counts as done


def load_records(out: str, rounds: Sequence[int], families: Sequence[str], label: str):
    """Features and labels of every record of the given rounds (all ranks' shards)."""
    from safetensors.torch import load_file

    feats, labels = [], []
    for r in rounds:
        rd = os.path.join(out, f"round{r}")
        for name in sorted(os.listdir(rd)):
            if not (name.startswith("rollouts_rank") and name.endswith(".safetensors")):
                continue
            d = load_file(os.path.join(rd, name))
            for fam in families:
                if f"{fam}.feats" not in d:
                    continue
                ro = Rollout.from_tensors(d, prefix=f"{fam}.")
                progress, binary = convergence_labels(ro)
                feats.append(ro.feats)
                labels.append(progress if label == "progress" else binary)
    return torch.cat(feats), torch.cat(labels)


def tune(model, ctrl: Controller, families: Sequence[str], val: Dict[str, List[T.Example]], vanilla: Dict[str, float],
         *, t_max_grid, t_min_grid, tau_grid, batch_size: int, device, select: str = "aup") -> Dict:
    """Choose the temperature map (t_max, t_min) and the default tau on the validation split.

    select="nfe": the (map, tau) with the fewest NFE whose accuracy stays within 1 point of full refinement on every
    family (else the most accurate). select="aup": the map whose tau sweep has the largest validation AUP (each
    family's AUP divided by its gen_length, the largest possible tokens per forward, then averaged), because the map
    shapes the whole accuracy-parallelism curve while tau only picks a point on it; then that map's tau by the "nfe"
    rule. Both only ever look at validation prompts.
    """
    if select not in ("aup", "nfe"):
        raise ValueError(f"select must be 'aup' or 'nfe', got {select!r}")
    grid = []  # (t_max, t_min, tau, {family: result})
    for t_max in t_max_grid:
        for t_min in t_min_grid:
            c = Controller(ctrl.tensors, extra_features=ctrl.extra_features, t_max=t_max, t_min=t_min)
            for tau in tau_grid:
                grid.append((t_max, t_min, tau, {f: E.evaluate(model, f, val[f], E.RunSpec("prr", tau), controller=c,
                                                               batch_size=batch_size, device=device)
                                                 for f in families}))

    def point(t_max, t_min, tau, res):
        ok = all(res[f]["accuracy"] >= vanilla[f] - 1.0 for f in families)
        rel_nfe = sum(res[f]["mean_nfe"] / res[f]["gen_length"] for f in families) / len(families)
        acc = sum(res[f]["accuracy"] for f in families) / len(families)
        return (ok, -rel_nfe if ok else acc), {"t_max": t_max, "t_min": t_min, "tau": tau, "within_1pt": ok,
                                               "val_rel_nfe": rel_nfe, "val_accuracy": acc}

    maps = sorted({(g[0], g[1]) for g in grid})
    map_aup = {}
    if select == "aup":
        y_max = {f: max([vanilla[f]] + [g[3][f]["accuracy"] for g in grid]) for f in families}
        for m in maps:
            pts = [g[3] for g in grid if (g[0], g[1]) == m]
            map_aup[m] = sum(E.aup([r[f]["tokens_per_forward"] for r in pts], [r[f]["accuracy"] for r in pts],
                                   y_max[f]) / pts[0][f]["gen_length"]
                             for f in families if y_max[f] > 0) / len(families)  # all-zero accuracy: no area
        maps = [max(maps, key=lambda m: map_aup[m])]
    best_key, best = None, None
    for g in grid:
        if (g[0], g[1]) in maps:
            key, entry = point(*g)
            if best_key is None or key > best_key:
                best_key, best = key, entry
    if map_aup:
        best["val_aup_per_G"] = map_aup[(best["t_max"], best["t_min"])]
        best["val_aup_per_G_by_map"] = {f"{m[0]:g}/{m[1]:g}": v for m, v in map_aup.items()}
    return best


def evaluate_round(model, ctrl: Controller, tau: float, families, test, *, batch_size, device) -> Dict[str, Dict]:
    out = {}
    for f in families:
        r = E.evaluate(model, f, test[f], E.RunSpec("prr", tau), controller=ctrl, batch_size=batch_size, device=device)
        out[f] = {k: r[k] for k in ("accuracy", "mean_nfe", "tokens_per_forward", "gen_length", "n")}
    return out


# ---------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------
def _floats(s: str) -> List[float]:
    return [float(v) for v in s.split(",") if v]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m prr_testbed.train_controller",
                                description="Train PRR's controller with progressive self-evolving rounds.")
    p.add_argument("--out", default="runs/prr", help="output directory (resumable)")
    p.add_argument("--model", default=MODEL_DIR, help="model directory (default: the shipped model)")
    p.add_argument("--rounds", type=int, default=3, help="self-evolving rounds after round 0 (total = rounds + 1)")
    p.add_argument("--families", default=",".join(T.FAMILY_NAMES))
    p.add_argument("--train-prompts", type=int, default=512, help="training prompts per family")
    p.add_argument("--val-prompts", type=int, default=128, help="validation prompts per family (tuning)")
    p.add_argument("--test-prompts", type=int, default=500, help="held-out test prompts per family (evaluation)")
    p.add_argument("--label", choices=("progress", "binary"), default="progress")
    p.add_argument("--hidden", default="32,32")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--t-max-grid", default="1.0,2.0")
    p.add_argument("--t-min-grid", default="0.1,0.25,0.5")
    p.add_argument("--tau-grid", default="0.5,0.7,0.8,0.9,0.95")
    p.add_argument("--select", choices=("aup", "nfe"), default="aup",
                   help="how the temperature map is chosen on the validation split (see tune())")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--install", action="store_true",
                   help="copy the final controller to prr_testbed/assets/controller")
    return p.parse_args(argv)


def main(argv=None) -> Dict:
    args = parse_args(argv)
    try:
        device, note = E.pick_device(args.device)
    except ValueError as e:
        raise SystemExit(f"--device: {e}")
    device = _init_dist(device)
    rank, world = _rank(), _world()
    log = print if rank == 0 else (lambda *a, **k: None)
    if note:
        log(note)
    torch.manual_seed(args.seed)
    families = [f for f in args.families.split(",") if f]
    model = MaskedDiffusionLM.from_pretrained(args.model, device=device)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    train = {f: training_examples(f, args.train_prompts, args.seed) for f in families}
    val = {f: T.heldout_set(f, "valid", args.val_prompts) for f in families}
    test = {f: T.heldout_set(f, "test", args.test_prompts) for f in families}
    os.makedirs(args.out, exist_ok=True)
    summary_path = os.path.join(args.out, "rounds.json")
    summary = json.load(open(summary_path)) if os.path.exists(summary_path) else {"rounds": []}

    vanilla_val = vanilla_test = None
    if rank == 0:
        spec = E.RunSpec("lowconf", None, 1.0)
        vanilla_val = {f: E.evaluate(model, f, val[f], spec, batch_size=args.batch_size, device=device)["accuracy"]
                       for f in families}
        vt = {f: E.evaluate(model, f, test[f], spec, batch_size=args.batch_size, device=device) for f in families}
        vanilla_test = {f: {k: vt[f][k] for k in ("accuracy", "mean_nfe", "gen_length", "n")} for f in families}
        summary["vanilla_test"] = vanilla_test
        summary["vanilla_val_accuracy"] = vanilla_val
        log(f"full refinement: val acc {vanilla_val}  test {vanilla_test}")

    ctrl: Optional[Controller] = None
    tau = None
    for r in range(args.rounds + 1):
        rd = os.path.join(args.out, f"round{r}")
        cdir = os.path.join(rd, "controller")
        meta_path = os.path.join(rd, "round.json")
        if os.path.exists(meta_path):  # resumable: this round is finished
            ctrl, tau = Controller.load(cdir), json.load(open(meta_path))["tau"]
            log(f"round {r}: loaded (tau={tau})")
            continue
        t0 = time.time()
        if not os.path.exists(shard_path(args.out, r, rank)):
            policy = LowConfidence() if r == 0 else PRR(ctrl, tau=tau)
            mine = {f: train[f][rank::world] for f in families}
            recs = {f: collect(model, f, mine[f], policy, batch_size=args.batch_size, device=device,
                               block_continuation=r > 0) for f in families}
            save_shard(shard_path(args.out, r, rank), recs)
        _barrier()
        if rank == 0:
            feats, labels = load_records(args.out, range(r + 1), families, args.label)
            fitted = fit_controller(feats, labels, hidden=hidden, epochs=args.epochs, seed=args.seed + r,
                                    device=str(device), progress=True)
            choice = tune(model, fitted, families, val, vanilla_val, t_max_grid=_floats(args.t_max_grid),
                          t_min_grid=_floats(args.t_min_grid), tau_grid=_floats(args.tau_grid),
                          batch_size=args.batch_size, device=device, select=args.select)
            fitted = Controller(fitted.tensors, extra_features=fitted.extra_features, t_max=choice["t_max"],
                                t_min=choice["t_min"])
            fitted.save(cdir)
            test_res = evaluate_round(model, fitted, choice["tau"], families, test, batch_size=args.batch_size,
                                      device=device)
            entry = {"round": r, "records": int(feats.shape[0]), "label": args.label, **choice, "test": test_res,
                     "seconds": time.time() - t0}
            with open(meta_path, "w") as f:
                json.dump(entry, f, indent=2)
            summary["rounds"] = [e for e in summary["rounds"] if e["round"] != r] + [entry]
            with open(summary_path, "w") as f:
                json.dump(summary, f, indent=2)
            log(f"round {r}: {entry['records']} records, t_max={choice['t_max']} t_min={choice['t_min']} "
                f"tau={choice['tau']}; test " + ", ".join(
                    f"{f} acc {v['accuracy']:.1f} nfe {v['mean_nfe']:.1f}/{v['gen_length']}" for f, v in
                    test_res.items()))
        _barrier()
        ctrl, tau = Controller.load(cdir), json.load(open(meta_path))["tau"]

    if rank == 0 and args.install:
        if os.path.isdir(CONTROLLER_DIR):
            shutil.rmtree(CONTROLLER_DIR)
        shutil.copytree(os.path.join(args.out, f"round{args.rounds}", "controller"), CONTROLLER_DIR)
        with open(os.path.join(CONTROLLER_DIR, "policy.json"), "w") as f:
            json.dump({"tau": tau, "trained_by": "python -m prr_testbed.train_controller", "rounds": args.rounds + 1},
                      f, indent=2)
        log(f"installed the controller in {CONTROLLER_DIR}")
    if _dist():
        torch.distributed.destroy_process_group()
    return summary


if __name__ == "__main__":
    main()
