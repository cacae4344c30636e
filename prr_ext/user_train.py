"""Train a PRR controller for your own model (docs/prr_training.md, "Your own model").

    python -m prr_ext.train --model PATH --data train.jsonl --val val.jsonl [--checker gsm8k] --out DIR
                            [--rounds 2] [--gen-length 256 --block-length 32 --steps S] [--chat] ...
    torchrun --nproc_per_node N -m prr_ext.train ...      # rollouts sharded over N processes

    round 0      full-refinement rollouts (LowConfidence) of the --data prompts (no answers or checker needed)
    round r > 0  rollouts with the round r-1 controller; targets = full refinement of each block from the state in
                 which the controller entered it
    each round   convergence-progress labels -> fit the MLP on the pooled records of rounds 0..r -> choose the
                 temperature map (t_max, t_min) and tau on --val with the checker: the fewest NFE whose accuracy
                 stays within --tolerance points of full refinement (else the most accurate point)

Writes under --out: run.json (the settings), round<r>/rollouts_rank<k>.safetensors, round<r>/controller (a
prr_ext.Controller folder with policy.json, the tuned tau, and model.json, the fingerprint of this model),
round<r>/round.json, controller/ (a copy of the last round's controller, for `python -m prr_ext.eval --controller`)
and report.json (every round's choice and validation numbers).

Resumable: a round whose round.json exists is loaded, not redone; a rank's finished rollouts are reused; --rounds
can grow. A run in --out with other settings is an error: choose another --out or delete the old one.

Without --model and --data, `python -m prr_ext.train` runs the testbed's controller training
(`python -m prr_testbed.train_controller`, same arguments), as before.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch

from . import user_common as U
from .constants import MAX_FEATURES, NUM_BASE_FEATURES
from .controller import FORMAT as CONTROLLER_FORMAT
from .controller import Controller
from .decode_common import hidden_states_of
from .hidden_features import HiddenFeatures
from .data import Record
from .policies import PRR, LowConfidence, Policy
from . import prr_rounds as R
from .prr_training import Rollout, fit_controller, rollout

PROG = "python -m prr_ext.train"
RUN_SETTINGS = ("model", "fingerprint", "data", "val", "checker", "n_train", "n_val", "gen_length", "block_length",
                "steps", "chat", "label", "hidden", "epochs", "t_max_grid", "t_min_grid", "tau_grid", "tolerance",
                "seed", "hidden_features")
HIDDEN_DIR = "hidden_features"  # <out>/hidden_features/: the run's HiddenFeatures map (fitted before round 0)


def build_parser():
    from prr_testbed.cli import parser

    p = parser(PROG, __doc__)
    U.add_model_args(p)
    p.add_argument("--data", required=True, help="JSONL training prompts (answers not needed)")
    p.add_argument("--val", required=True, help="JSONL validation prompts with answers (tuning, with --checker)")
    p.add_argument("--out", required=True, help="the run's folder (resumable; its parent must exist)")
    p.add_argument("--rounds", type=int, default=2, help="self-evolving rounds after round 0 (total = rounds + 1)")
    p.add_argument("--n-train", type=int, default=None, help="only the first N training prompts (default: all)")
    p.add_argument("--n-val", type=int, default=None, help="only the first N validation prompts (default: all)")
    p.add_argument("--label", choices=("progress", "binary"), default="progress",
                   help="convergence-progress labels, or Learn2PD's binary ones")
    p.add_argument("--hidden", type=U.ints, default="32,32", help="the MLP's hidden sizes")
    p.add_argument("--epochs", type=int, default=8, help="epochs of the MLP fit per round")
    p.add_argument("--t-max-grid", type=U.floats, default="1.0,2.0", help="temperature-map t_max values tried")
    p.add_argument("--t-min-grid", type=U.floats, default="0.25", help="temperature-map t_min values tried")
    p.add_argument("--tau-grid", type=U.floats, default="0.7,0.9,0.95", help="PRR taus tried")
    p.add_argument("--tolerance", type=float, default=1.0,
                   help="accuracy points below full refinement that a chosen (map, tau) may lose on --val")
    p.add_argument("--seed", type=int, default=0, help="seeds the fits")
    p.add_argument("--hidden-features", type=int, default=0, metavar="R",
                   help="also feed the controller R features of the model's last hidden state (its top-R principal "
                   "directions on the training prompts' all-masked canvases; prr_ext.HiddenFeatures). 0 = off")
    return p


def parse_args(argv=None):
    from prr_testbed.cli import check_outputs, foreign_config

    p = build_parser()
    args = p.parse_args(argv)
    U.check_canvas(p, args)
    for name in ("rounds", "n_train", "n_val", "epochs"):
        v = getattr(args, name)
        if v is not None and v < (0 if name == "rounds" else 1):
            p.error(f"argument --{name.replace('_', '-')}: must be >= {0 if name == 'rounds' else 1}")
    if not 0 <= args.hidden_features <= MAX_FEATURES - NUM_BASE_FEATURES:
        p.error(f"argument --hidden-features: must lie in [0, {MAX_FEATURES - NUM_BASE_FEATURES}] (the controller "
                f"takes at most {MAX_FEATURES} features, {NUM_BASE_FEATURES} of them the base features)")
    U.check_controller_grids(p, args)
    check_outputs(p, args, dirs=("out",), inputs=("model",))
    out_ctrl = os.path.join(args.out, "controller")
    if os.path.lexists(out_ctrl) and (not os.path.isdir(out_ctrl) or os.path.islink(out_ctrl)
                                      or foreign_config(out_ctrl, CONTROLLER_FORMAT) is not None
                                      or not os.path.isfile(os.path.join(out_ctrl, "config.json"))):
        # the run replaces <out>/controller at its end: only a controller that an earlier run wrote
        p.error(f"argument --out: {out_ctrl} exists and is not a controller (its final copy is written there); "
                "give another --out")
    if args.checker is None:
        args.checker = "exact"
        print("NOTE: no --checker given; tuning on --val grades with 'exact' (the stripped response equals the "
              "answer)", flush=True)
    args.checker_fn = U.checker_arg(p, args.checker)
    args.train_records = U.load_records(p, "--data", args.data, require_answer=False, n=args.n_train)
    args.val_records = U.load_records(p, "--val", args.val, require_answer=True, n=args.n_val)
    U.check_answers(p, "--val", args.val_records, args.checker)
    args.device = U.resolve_device_arg(p, args.device)
    return p, args


def run_settings(args, fingerprint: str) -> Dict:
    d = {k: getattr(args, k) for k in RUN_SETTINGS if k != "fingerprint"}
    for k in ("model", "data", "val"):
        d[k] = os.path.abspath(d[k])
    d["fingerprint"] = fingerprint
    return d


# ---------------------------------------------------------------------------------------------------------------
# rollouts of user prompts
# ---------------------------------------------------------------------------------------------------------------
class _MaskedCall:
    """The decoder's model call with a fixed attention mask (left-padded prompts), as `rollout` calls it: model(x)."""

    def __init__(self, call, attention: Optional[torch.Tensor]):
        self.call, self.attention = call, attention

    def __call__(self, x: torch.Tensor, **kw):
        if self.attention is None:
            return self.call(x, **kw)
        return self.call(x, attention_mask=self.attention, **kw)


def _canvases(dec, records: Sequence[Record], *, gen_length: int, chat: bool, batch_size: int):
    """Per left-padded batch of `records`: (canvas x [B, P + G] with G masks, its model call, [B] prompt lengths)."""
    encoded = [dec.encode_prompt(r.prompt, chat=chat) for r in records]
    for lo in range(0, len(encoded), batch_size):
        chunk = encoded[lo:lo + batch_size]
        prompt_ids, am = dec._left_pad(chunk)
        B, P = prompt_ids.shape
        x = torch.cat([prompt_ids, torch.full((B, gen_length), dec.ids.mask, dtype=torch.int64,
                                              device=prompt_ids.device)], dim=1)
        attention = None if am is None else torch.cat([am, torch.ones((B, gen_length), dtype=am.dtype,
                                                                      device=am.device)], dim=1)
        plens = torch.tensor([len(c) for c in chunk], dtype=torch.int64, device=prompt_ids.device)
        yield x, _MaskedCall(dec.call, attention), plens


@torch.no_grad()
def fit_hidden_features(dec, records: Sequence[Record], r: int, *, gen_length: int, chat: bool,
                        batch_size: int) -> HiddenFeatures:
    """The HiddenFeatures map of the run: top-r principal directions of the model's last hidden states at the
    generation positions of one forward over each batch's initial (all-masked) canvas.

    Deterministic and computed from all `records` (not a rank's share), so every rank of a torchrun job gets the
    same map without communication. The initial canvas is the one state every rollout shares; later states differ
    by policy, and the map must not depend on the round's controller."""
    rows = []
    for x, call, _ in _canvases(dec, records, gen_length=gen_length, chat=chat, batch_size=batch_size):
        hidden = hidden_states_of(call(x, output_hidden_states=True), "--hidden-features")
        rows.append(hidden[:, x.shape[1] - gen_length:].reshape(-1, hidden.shape[-1]).float().cpu())
    return HiddenFeatures.fit(torch.cat(rows), r)


def collect(dec, records: Sequence[Record], policy: Policy, *, gen_length: int, block_length: int, steps: int,
            chat: bool, batch_size: int, block_continuation: bool, on_batch=None,
            hidden_features: Optional[HiddenFeatures] = None) -> Dict[str, Rollout]:
    """Rollouts (prr_ext.prr_training.rollout) of `records` in left-padded batches, one per batch ("b<i>"); with
    `hidden_features` the records carry its features after the 13 base ones."""
    rollouts: Dict[str, Rollout] = {}
    for b, (x, call, plens) in enumerate(_canvases(dec, records, gen_length=gen_length, chat=chat,
                                                    batch_size=batch_size)):
        ro = rollout(call, x, plens, policy=policy, block_length=block_length, steps=steps, mask_id=dec.ids.mask,
                     block_continuation=block_continuation, hidden_features=hidden_features)
        rollouts[f"b{b}"] = ro
        if on_batch is not None:
            on_batch()
    return rollouts


# ---------------------------------------------------------------------------------------------------------------
# tuning on the validation prompts
# ---------------------------------------------------------------------------------------------------------------
def tune(dec, ctrl: Controller, val: Sequence[Record], vanilla_acc: float, args, on_batch=None,
         hidden_features: Optional[HiddenFeatures] = None) -> Dict:
    """The (t_max, t_min, tau) with the fewest validation NFE whose accuracy is within --tolerance points of full
    refinement; when none is, the most accurate (fewest NFE among ties). Every grid point is recorded."""
    grid: List[Dict] = []
    for t_max in args.t_max_grid:
        for t_min in args.t_min_grid:
            c = Controller(ctrl.tensors, extra_features=ctrl.extra_features, t_max=t_max, t_min=t_min)
            for tau in args.tau_grid:
                r = U.evaluate(dec, val, PRR(c, tau=tau), checker=args.checker_fn, gen_length=args.gen_length,
                               block_length=args.block_length, steps=args.steps, chat=args.chat,
                               batch_size=args.batch_size, on_batch=on_batch, hidden_features=hidden_features)
                grid.append({"t_max": t_max, "t_min": t_min, "tau": tau, "val_accuracy": r["accuracy"],
                             "val_mean_nfe": r["mean_nfe"], "val_tokens_per_forward": r["tokens_per_forward"]})

    def key(g):
        ok = g["val_accuracy"] >= vanilla_acc - args.tolerance
        return (ok, -g["val_mean_nfe"]) if ok else (ok, g["val_accuracy"], -g["val_mean_nfe"])

    best = dict(max(grid, key=key))
    best["within_tolerance"] = best["val_accuracy"] >= vanilla_acc - args.tolerance
    best["grid"] = grid
    return best


# ---------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------
def run(argv=None) -> Dict:
    p, args = parse_args(argv)
    t_start = time.time()
    device = R.init_distributed(args.device)
    rank, world = R.rank(), R.world_size()
    log = print if rank == 0 else (lambda *a, **k: None)
    quiet = args.no_progress or rank != 0
    torch.manual_seed(args.seed)
    dec = U.load_decoder(p, args, device)
    fingerprint = U.model_fingerprint(dec.model)
    settings = run_settings(args, fingerprint)
    problem = R.check_run_settings(args.out, settings, defaults={"hidden_features": 0})
    if problem:
        p.error(f"argument --out: {problem}; its finished rounds would be reused. Choose another --out, or delete "
                f"{args.out} to start over")
    # every prompt encodes (chat template, empty prompts) before any work
    for option, recs in (("--data", args.train_records), ("--val", args.val_records)):
        U.check_prompts(p, dec, option, recs, args.chat)
    os.makedirs(args.out, exist_ok=True)
    report_path = os.path.join(args.out, "report.json")
    report = U.read_json(report_path) if os.path.isfile(report_path) else {"rounds": []}
    if rank == 0:
        U.write_json(os.path.join(args.out, "run.json"), {"command": PROG, "settings": settings})
    log(f"[train] {len(args.train_records)} training / {len(args.val_records)} validation prompts, rounds "
        f"0..{args.rounds}, {dec.kind} model {args.model} on {device}{f' x {world} ranks' if world > 1 else ''}; "
        f"writing {args.out}", flush=True)
    canvas = dict(gen_length=args.gen_length, block_length=args.block_length, steps=args.steps, chat=args.chat,
                  batch_size=args.batch_size)
    val_batches = -(-len(args.val_records) // args.batch_size)

    hidden = None
    if args.hidden_features:
        # fitted once, before round 0, and kept in <out>: a resumed run (and every round's controller) uses the
        # same map. Every rank decides from the folder before rank 0 may write it, then computes or loads the same.
        hdir = os.path.join(args.out, HIDDEN_DIR)
        saved = os.path.isfile(os.path.join(hdir, "hidden_features.safetensors"))
        R.barrier()
        if saved:
            hidden = HiddenFeatures.load(hdir)
        else:
            try:
                hidden = fit_hidden_features(dec, args.train_records, args.hidden_features,
                                             gen_length=args.gen_length, chat=args.chat, batch_size=args.batch_size)
            except ValueError as e:  # no hidden states from this model, or fewer positions / dims than R
                p.error(f"argument --hidden-features: {e}")
            if rank == 0:
                hidden.save(hdir)
        log(f"[train] hidden-state features: {hidden!r} ({'loaded from' if saved else 'fitted, saved in'} {hdir})",
            flush=True)

    vanilla = report.get("vanilla_val")
    if rank == 0 and vanilla is None:
        with U.progress(val_batches, "full refinement (val)", disable=quiet) as bar:
            r = U.evaluate(dec, args.val_records, LowConfidence(), checker=args.checker_fn,
                           on_batch=lambda: bar.update(1), **canvas)
        vanilla = {k: r[k] for k in ("accuracy", "mean_nfe", "tokens_per_forward", "n")}
        report["vanilla_val"] = vanilla
        U.write_json(report_path, report)
    if rank == 0:
        log(f"full refinement on val: accuracy {vanilla['accuracy']:.1f}, NFE {vanilla['mean_nfe']:.1f}", flush=True)

    def collect_round(r: int, policy) -> Dict[str, Rollout]:
        mine = args.train_records[rank::world]
        with U.progress(-(-len(mine) // args.batch_size), f"round {r}: rollouts", disable=quiet) as bar:
            return collect(dec, mine, policy, block_continuation=r > 0, on_batch=lambda: bar.update(1),
                           hidden_features=hidden, **canvas)

    def finish_round(r: int, cdir: str, t0: float) -> Dict:
        feats, labels = R.load_labelled(args.out, range(r + 1), args.label)
        fitted = fit_controller(feats, labels, hidden=tuple(args.hidden), epochs=args.epochs, seed=args.seed + r,
                                device=str(device), progress=not quiet)
        n_points = len(args.t_max_grid) * len(args.t_min_grid) * len(args.tau_grid)
        with U.progress(n_points * val_batches, f"round {r}: tuning on val", disable=quiet) as bar:
            choice = tune(dec, fitted, args.val_records, vanilla["accuracy"], args, on_batch=lambda: bar.update(1),
                          hidden_features=hidden)
        fitted = Controller(fitted.tensors, extra_features=fitted.extra_features, t_max=choice["t_max"],
                            t_min=choice["t_min"])
        U.save_controller(fitted, cdir, dec, choice["tau"], {"round": r}, hidden_features=hidden)
        entry = {"round": r, "records": int(feats.shape[0]), "label": args.label, **choice,
                 "seconds": time.time() - t0}
        report["rounds"] = [e for e in report["rounds"] if e["round"] != r] + [entry]
        U.write_json(report_path, report)
        log(f"round {r}: {entry['records']} records, t_max={choice['t_max']:g} t_min={choice['t_min']:g} "
            f"tau={choice['tau']:g}; val accuracy {choice['val_accuracy']:.1f} (full refinement "
            f"{vanilla['accuracy']:.1f}), NFE {choice['val_mean_nfe']:.1f}", flush=True)
        return entry

    _, tau = R.run_rounds(args.out, args.rounds, collect=collect_round, finish=finish_round, log=log)

    final = os.path.join(args.out, f"round{args.rounds}", "controller")
    out_ctrl = os.path.join(args.out, "controller")
    if rank == 0:
        if os.path.isdir(out_ctrl):
            shutil.rmtree(out_ctrl)
        shutil.copytree(final, out_ctrl)
        report.update({"command": " ".join([PROG] + list(sys.argv[1:] if argv is None else argv)),
                       "settings": settings, "controller": os.path.abspath(out_ctrl), "tau": tau,
                       "final_round": args.rounds})
        U.write_json(report_path, report)
    log(f"[train] done in {time.time() - t_start:.0f} s; controller {os.path.abspath(out_ctrl)} (tau={tau}), "
        f"report {os.path.abspath(report_path)}")
    R.shutdown()
    return report


def main(argv=None):
    def testbed(a):
        from prr_testbed.train_controller import main as tc_main

        return tc_main(a)

    return U.dispatch(argv, build_parser, run, testbed, "python -m prr_testbed.train_controller")


if __name__ == "__main__":
    main()
