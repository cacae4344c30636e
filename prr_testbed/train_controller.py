"""Train PRR's controller on the testbed's model, end to end (docs/prr_training.md).

    python -m prr_testbed.train_controller --out runs/prr              # GPU minutes; hours on a CPU
    python -m prr_testbed.train_controller --out runs/prr --install    # ... and ship it beside its model
    torchrun --nproc_per_node N -m prr_testbed.train_controller ...    # rollouts sharded over N processes

    round 0      full-refinement rollouts (LowConfidence, one token per step) of training prompts
    round r > 0  rollouts with the round r-1 controller; targets = full refinement of each block from the state in
                 which the controller entered it
    each round   empirical-convergence-progress labels -> fit the MLP on the pooled records -> choose the
                 temperature map (best validation AUP) and tau on the validation split -> evaluate on the held-out
                 test split

Writes under --out: run.json (the settings that define the rounds), rounds.json (every round's choice and test
numbers), round<r>/controller (config.json, model.safetensors, policy.json with the tuned tau: a --controller folder
for the demo and the sweep), round<r>/round.json and the rollout shards. Only --install writes into the package:
the controller slot beside --model (prr_testbed.SHIPPED_CONTROLLERS: assets/controller for the demo model,
assets/step_controller for the step model).

Resumable: finished rounds of the same run are loaded, not redone, and --rounds can grow. A run in --out with other
settings (--families, --model, --label, --seed, the prompt counts, the grids, ...) is an error, not silently reused:
choose another --out or delete the old one.

Data-parallel: under torchrun (NCCL on GPUs, gloo on CPU) prompts are sharded by rank, records travel as safetensors
shards, rank 0 fits, tunes and writes.
"""
from __future__ import annotations

import math
import os
import random
import shutil
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from prr_ext import Controller
from prr_ext import prr_rounds as R
from prr_ext.controller import TUNED_TAU_FILE
from prr_ext.prr_training import Rollout, fit_controller, rollout
from prr_ext.user_common import check_controller_grids, floats, ints

from . import MODEL_DIR
from . import harness as E
from .stats import aup
from . import tasks as T
from .cli import (check_input_dir, check_outputs, check_trained, controller_for, device_arg, model_arg, model_help,
                  names_arg, parser, progress)
from .model import MaskedDiffusionLM, make_canvas

PROG = "python -m prr_testbed.train_controller"
# The settings that define a run's rounds; a resumed run must have the same ones (run.json).
RUN_SETTINGS = ("model", "families", "train_prompts", "val_prompts", "test_prompts", "label", "hidden", "epochs",
                "t_max_grid", "t_min_grid", "tau_grid", "select", "seed", "eos_exit")
RUN_SETTING_DEFAULTS = {"eos_exit": False}  # what a run.json written before a setting existed ran with


# ---------------------------------------------------------------------------------------------------------------
# distributed helpers (no-ops in a single process)
# ---------------------------------------------------------------------------------------------------------------
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
            block_continuation: bool, on_batch: Optional[Callable[[], None]] = None,
            eos_exit: bool = False) -> Rollout:
    """Rollouts of `examples` in batches (prr_ext.prr_training.rollout), as one Rollout; eos_exit: each row's
    rollout stops once its answer and EOS are committed (rollout's eos_id)."""
    fam = T.get_family(family)
    tok = model.tokenizer
    parts = []
    for i in range(0, len(examples), batch_size):
        x, plens = make_canvas(tok, [e.prompt for e in examples[i:i + batch_size]], fam.gen_length, device)
        parts.append(rollout(model, x, plens, policy=policy, block_length=fam.block_length, steps=fam.gen_length,
                             mask_id=tok.mask_id, block_continuation=block_continuation,
                             eos_id=tok.eos_id if eos_exit else None))
        if on_batch is not None:
            on_batch()
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


def tune(model, ctrl: Controller, families: Sequence[str], val: Dict[str, List[T.Example]], vanilla: Dict[str, float],
         *, t_max_grid, t_min_grid, tau_grid, batch_size: int, device, select: str = "aup",
         on_batch: Optional[Callable[[], None]] = None, eos_exit: bool = False) -> Dict:
    """Choose the temperature map (t_max, t_min) and the default tau on the validation split.

    select="nfe": the (map, tau) with the fewest NFE whose accuracy stays within 1 point of full refinement on every
    family (else the most accurate). select="aup": the map whose tau sweep has the largest validation AUP (each
    family's AUP divided by its gen_length, the largest possible tokens per forward, then averaged), because the map
    shapes the whole accuracy-parallelism curve while tau only picks a point on it; then that map's tau by the "nfe"
    rule. Both only ever look at validation prompts. eos_exit: the decodes use EOS early exit (harness.evaluate).
    """
    if select not in ("aup", "nfe"):
        raise ValueError(f"select must be 'aup' or 'nfe', got {select!r}")
    grid = []  # (t_max, t_min, tau, {family: result})
    for t_max in t_max_grid:
        for t_min in t_min_grid:
            c = Controller(ctrl.tensors, extra_features=ctrl.extra_features, t_max=t_max, t_min=t_min)
            for tau in tau_grid:
                grid.append((t_max, t_min, tau, {f: E.evaluate(model, f, val[f], E.RunSpec("prr", tau), controller=c,
                                                               batch_size=batch_size, device=device,
                                                               on_batch=on_batch, eos_exit=eos_exit)
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
            map_aup[m] = sum(aup([r[f]["tokens_per_forward"] for r in pts], [r[f]["accuracy"] for r in pts],
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


def evaluate_round(model, ctrl: Controller, tau: float, families, test, *, batch_size, device,
                   on_batch: Optional[Callable[[], None]] = None, eos_exit: bool = False) -> Dict[str, Dict]:
    out = {}
    for f in families:
        r = E.evaluate(model, f, test[f], E.RunSpec("prr", tau), controller=ctrl, batch_size=batch_size, device=device,
                       on_batch=on_batch, eos_exit=eos_exit)
        out[f] = {k: r[k] for k in ("accuracy", "mean_nfe", "tokens_per_forward", "gen_length", "n")}
    return out


# ---------------------------------------------------------------------------------------------------------------
# run settings: one run per --out
# ---------------------------------------------------------------------------------------------------------------
def run_settings(args) -> Dict:
    """The settings that define the rounds of a run (RUN_SETTINGS), as stored in <out>/run.json."""
    d = {k: getattr(args, k) for k in RUN_SETTINGS}
    d["model"] = os.path.abspath(args.model)
    return d


# ---------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = parser(PROG, __doc__)
    p.add_argument("--out", default=os.path.join("runs", "prr"),
                   help="the run's folder (resumable; its parent must exist, except for the default's)")
    p.add_argument("--model", default=None, type=model_arg, help=model_help())
    p.add_argument("--rounds", type=int, default=3, help="self-evolving rounds after round 0 (total = rounds + 1)")
    p.add_argument("--families", type=names_arg(tuple(T.FAMILIES)), default=None,
                   help="task families (comma-separated; default: those the model was trained on)")
    p.add_argument("--train-prompts", type=int, default=512, help="training prompts per family")
    p.add_argument("--val-prompts", type=int, default=128, help="validation prompts per family (tuning)")
    p.add_argument("--test-prompts", type=int, default=500, help="held-out test prompts per family (evaluation)")
    p.add_argument("--label", choices=("progress", "binary"), default="progress",
                   help="convergence-progress labels, or Learn2PD's binary ones")
    p.add_argument("--hidden", type=ints, default="32,32", help="the MLP's hidden sizes")
    p.add_argument("--epochs", type=int, default=8, help="epochs of the MLP fit per round")
    p.add_argument("--batch-size", type=int, default=256, help="prompts decoded together")
    p.add_argument("--t-max-grid", type=floats, default="1.0,2.0", help="temperature-map t_max values tried")
    p.add_argument("--t-min-grid", type=floats, default="0.1,0.25,0.5", help="temperature-map t_min values tried")
    p.add_argument("--tau-grid", type=floats, default="0.5,0.7,0.8,0.9,0.95", help="PRR taus tried")
    p.add_argument("--select", choices=("aup", "nfe"), default="aup",
                   help="how the temperature map is chosen on the validation split: aup = the best AUP of its tau "
                   "sweep, nfe = the fewest NFE within 1 point of full refinement")
    p.add_argument("--device", type=device_arg, default="auto",
                   help="auto (the GPU when there is one), cpu, cuda, cuda:<index>")
    p.add_argument("--seed", type=int, default=0, help="seeds the training prompts and the fits")
    p.add_argument("--eos-exit", action="store_true",
                   help="EOS early exit in the rollouts and every evaluation (generate's eos_fill): a row stops once "
                        "its answer and EOS are committed, so the records and the NFE cover answers, not the canvas's "
                        "padding; for the long families, whose quality bar is judged this way (default: off)")
    p.add_argument("--install", action="store_true",
                   help="copy the final controller beside --model in the package, where the demo and the sweep "
                        "find it (prr_testbed/assets/controller for the demo model, assets/step_controller for "
                        "--model steps; other models have no slot)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    for name in ("rounds", "train_prompts", "val_prompts", "test_prompts", "epochs", "batch_size"):
        if getattr(args, name) < (0 if name == "rounds" else 1):
            p.error(f"argument --{name.replace('_', '-')}: must be >= {0 if name == 'rounds' else 1}")
    check_controller_grids(p, args)
    args.families = check_trained(p, "--families", args.model, args.families)
    check_outputs(p, args, dirs=("out",), inputs=("model",))
    check_input_dir(p, "--model", args.model, ("config.json", "model.safetensors"), "model")
    args.model = MODEL_DIR if args.model is None else args.model
    args.install_dir = None
    if args.install:
        args.install_dir, why = controller_for(args.model)
        if why:
            p.error(f"argument --install: {args.model} has no shipped controller slot (the demo and step models "
                    "have one); train without --install and pass the round's controller folder as --controller")
    problem = R.check_run_settings(args.out, run_settings(args), RUN_SETTING_DEFAULTS)
    if problem:
        p.error(f"argument --out: {problem}; its finished rounds would be reused. Choose another --out, or delete "
                f"{args.out} to start over")
    args.device, args.device_note = E.pick_device_arg(p, args.device)
    return args


def main(argv=None) -> Dict:
    args = parse_args(argv)
    t_start = time.time()
    device = R.init_distributed(args.device)
    rank, world = R.rank(), R.world_size()
    log = print if rank == 0 else (lambda *a, **k: None)
    quiet = args.no_progress or rank != 0
    if args.device_note:
        log(f"NOTE: {args.device_note}")
    torch.manual_seed(args.seed)
    families = args.families
    model = MaskedDiffusionLM.from_pretrained(args.model, device=device)
    hidden = tuple(args.hidden)
    train = {f: training_examples(f, args.train_prompts, args.seed) for f in families}
    val = {f: T.heldout_set(f, "valid", args.val_prompts) for f in families}
    test = {f: T.heldout_set(f, "test", args.test_prompts) for f in families}
    batches = lambda exs: math.ceil(len(exs) / args.batch_size)  # noqa: E731
    os.makedirs(args.out, exist_ok=True)
    summary_path = os.path.join(args.out, "rounds.json")
    summary = R.read_json(summary_path) if os.path.exists(summary_path) else {"rounds": []}
    if rank == 0:
        R.write_json(os.path.join(args.out, "run.json"), {"command": PROG, "settings": run_settings(args)})
    log(f"[train_controller] {len(families)} families x {args.train_prompts} training prompts, "
        f"rounds 0..{args.rounds}, on {E.device_label(device)}{f' x {world} ranks' if world > 1 else ''}; "
        f"writing {args.out}", flush=True)

    vanilla_val = None
    if rank == 0:
        vanilla_val = summary.get("vanilla_val_accuracy")  # same run settings (run.json): same numbers
        if vanilla_val is None or "vanilla_test" not in summary:
            spec = E.RunSpec("lowconf", None, 1.0)
            total = sum(batches(val[f]) + batches(test[f]) for f in families)
            with progress(total, "full refinement (val, test)", disable=quiet) as bar:
                vanilla_val = {f: E.evaluate(model, f, val[f], spec, batch_size=args.batch_size, device=device,
                                             on_batch=lambda: bar.update(1), eos_exit=args.eos_exit)["accuracy"]
                               for f in families}
                vt = {f: E.evaluate(model, f, test[f], spec, batch_size=args.batch_size, device=device,
                                    on_batch=lambda: bar.update(1), eos_exit=args.eos_exit) for f in families}
            summary["vanilla_test"] = {f: {k: vt[f][k] for k in ("accuracy", "mean_nfe", "gen_length", "n")}
                                       for f in families}
            summary["vanilla_val_accuracy"] = vanilla_val
            R.write_json(summary_path, summary)
        log(f"full refinement: val acc {vanilla_val}  test {summary['vanilla_test']}", flush=True)

    def collect_round(r: int, policy) -> Dict[str, Rollout]:
        mine = {f: train[f][rank::world] for f in families}
        with progress(sum(batches(mine[f]) for f in families), f"round {r}: rollouts", disable=quiet) as bar:
            return {f: collect(model, f, mine[f], policy, batch_size=args.batch_size, device=device,
                               block_continuation=r > 0, on_batch=lambda: bar.update(1), eos_exit=args.eos_exit)
                    for f in families}

    def finish_round(r: int, cdir: str, t0: float) -> Dict:
        feats, labels = R.load_labelled(args.out, range(r + 1), args.label)
        fitted = fit_controller(feats, labels, hidden=hidden, epochs=args.epochs, seed=args.seed + r,
                                device=str(device), progress=not quiet)
        n_points = len(args.t_max_grid) * len(args.t_min_grid) * len(args.tau_grid)
        with progress(n_points * sum(batches(val[f]) for f in families), f"round {r}: tuning on valid",
                      disable=quiet) as bar:
            choice = tune(model, fitted, families, val, vanilla_val, t_max_grid=args.t_max_grid,
                          t_min_grid=args.t_min_grid, tau_grid=args.tau_grid, batch_size=args.batch_size,
                          device=device, select=args.select, on_batch=lambda: bar.update(1),
                          eos_exit=args.eos_exit)
        fitted = Controller(fitted.tensors, extra_features=fitted.extra_features, t_max=choice["t_max"],
                            t_min=choice["t_min"])
        fitted.save(cdir)
        R.write_json(os.path.join(cdir, TUNED_TAU_FILE), {"tau": choice["tau"], "trained_by": PROG, "round": r})
        with progress(sum(batches(test[f]) for f in families), f"round {r}: test", disable=quiet) as bar:
            test_res = evaluate_round(model, fitted, choice["tau"], families, test, batch_size=args.batch_size,
                                      device=device, on_batch=lambda: bar.update(1), eos_exit=args.eos_exit)
        entry = {"round": r, "records": int(feats.shape[0]), "label": args.label, **choice, "test": test_res,
                 "seconds": time.time() - t0}
        summary["rounds"] = [e for e in summary["rounds"] if e["round"] != r] + [entry]
        R.write_json(summary_path, summary)
        log(f"round {r}: {entry['records']} records, t_max={choice['t_max']} t_min={choice['t_min']} "
            f"tau={choice['tau']}; test " + ", ".join(
                f"{f} acc {v['accuracy']:.1f} nfe {v['mean_nfe']:.1f}/{v['gen_length']}" for f, v in
                test_res.items()), flush=True)
        if not choice["within_1pt"]:
            scope = "the chosen temperature map's" if args.select == "aup" else "the grids'"
            log(f"NOTE: round {r}: none of {scope} (map, tau) points kept every family within 1 point of full "
                f"refinement on the validation split, so the most accurate was taken (tau {choice['tau']}). A tau "
                "grid reaching higher (--tau-grid ...,0.99), larger t_min values, or --select nfe (every map) may find "
                "one.", flush=True)
        return entry

    _, tau = R.run_rounds(args.out, args.rounds, collect=collect_round, finish=finish_round, log=log)

    final = os.path.join(args.out, f"round{args.rounds}", "controller")
    if rank == 0 and args.install:
        if os.path.isdir(args.install_dir):
            shutil.rmtree(args.install_dir)
        shutil.copytree(final, args.install_dir)
        R.write_json(os.path.join(args.install_dir, TUNED_TAU_FILE),
                    {"tau": tau, "trained_by": PROG, "rounds": args.rounds + 1})
        log(f"installed the controller in {args.install_dir}")
    log(f"[train_controller] done in {time.time() - t_start:.0f} s; wrote {os.path.abspath(summary_path)} and the "
        f"final controller {os.path.abspath(final)} (tau={tau})" + (f", installed in {args.install_dir}"
                                                                    if args.install else ""))
    R.shutdown()
    return summary


if __name__ == "__main__":
    main()
