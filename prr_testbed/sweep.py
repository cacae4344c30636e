"""Sweep task families x commit policies x hyper-parameters on the testbed's model (prr_testbed.harness measures).

    python -m prr_testbed.sweep --quick --n 100          # a smaller sweep (minutes on a CPU)
    python -m prr_testbed.sweep                          # the full sweep, 500 test prompts per family (use a GPU)
    python -m prr_testbed.sweep --policies lowconf,threshold --taus 0.5 --n 500    # a candidate model's accuracy

Every point decodes the first --n prompts of each family's test set with one policy and prints accuracy, mean NFE,
tokens per forward and tokens/s; then AUP per family and policy, and the noise of those numbers: 95% bootstrap
intervals over the prompts (--bootstrap resamples, --seed) of every accuracy and AUP, and paired comparisons on the
same prompts (difference, its interval, exact McNemar p) of each adaptive policy's best point against vanilla
(LowConfidence, one token per forward) and against each other, with a verdict that names a better policy only
beyond noise. Writes --out (JSON: every point with its per-prompt correctness and NFE, the AUP table, the intervals,
the paired comparisons and the run's settings) and the accuracy-vs-NFE plot (--plot; skipped with a note when
matplotlib is not installed).
Cost: (points) x (families) x ceil(n / batch size) batches: the default sweep has 41 points (--quick: 20), each
decoding 3 x 500 prompts, which wants a GPU.
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from typing import Callable, Dict, List, Sequence

import torch

import prr_ext
from prr_ext.user_common import floats

from . import MODEL_DIR, load_controller
from . import tasks as T
from .cli import (CONTROLLER_HELP, check_input_dir, check_outputs, check_trained, controller_for, device_arg, model_arg,
                  model_help, names_arg, parser, progress, shown_path)
from .harness import (NEEDS_CONTROLLER, POLICY_LABELS, POLICY_NAMES, RunSpec, add_accuracy_intervals, device_label,
                      evaluate, have_matplotlib, param_error, pick_device_arg, plot_format_error, plot_pareto,
                      summarize, summarize_noise)
from .model import MaskedDiffusionLM, load_model_arg
from .stats import BOOTSTRAP_RESAMPLES

PROG = "python -m prr_testbed.sweep"
# Default sweeps (--quick uses the second list of each pair).
TAUS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
TAUS_QUICK = (0.5, 0.7, 0.9)
FACTORS = (0.1, 0.25, 0.5, 1.0, 2.0)
FACTORS_QUICK = (0.25, 1.0)
GAMMAS = (0.001, 0.01, 0.1, 0.5, 1.0)
GAMMAS_QUICK = (0.01, 0.1, 1.0)
PRR_TAUS = (0.5, 0.7, 0.9, 0.95)
PRR_TAUS_QUICK = (0.7, 0.9)
LOCALLEAP_TAUS = (0.7, 0.8, 0.9, 0.95)
LOCALLEAP_TAUS_QUICK = (0.8, 0.9)
SLOWFAST_FILLS = (0.7, 0.8, 0.9, 0.95)
SLOWFAST_FILLS_QUICK = (0.8, 0.9)
KLASS_CONFS = (0.6, 0.7, 0.8, 0.9)
KLASS_CONFS_QUICK = (0.7, 0.9)
R2_TAUS = (0.7, 0.9, 0.95)          # R2 over Threshold and over PRR: the base's tau
R2_TAUS_QUICK = (0.9,)
STEPS_FRACS = (1.0, 0.5, 0.25)      # LowConfidence steps = frac * gen_length
STEPS_FRACS_QUICK = (1.0, 0.5)


def build_specs(policies: Sequence[str], *, taus=TAUS, factors=FACTORS, gammas=GAMMAS, prr_taus=PRR_TAUS,
                steps_fracs=STEPS_FRACS, adaptive_steps_fracs=(1.0,), localleap_taus=LOCALLEAP_TAUS,
                slowfast_fills=SLOWFAST_FILLS, klass_confs=KLASS_CONFS, r2_taus=R2_TAUS) -> List[RunSpec]:
    """The sweep's points: LowConfidence at each step budget, every other policy at each of its values."""
    specs: List[RunSpec] = []
    for p in policies:
        if p == "lowconf":
            specs += [RunSpec("lowconf", None, f) for f in steps_fracs]
        else:
            vals = {"threshold": taus, "factor": factors, "eb": gammas, "prr": prr_taus, "localleap": localleap_taus,
                    "slowfast": slowfast_fills, "klass": klass_confs, "r2": r2_taus, "r2prr": r2_taus}.get(p)
            if vals is None:
                raise ValueError(f"unknown policy {p!r}; known: {POLICY_NAMES}")
            specs += [RunSpec(p, float(v), f) for f in adaptive_steps_fracs for v in vals]
    return specs


LEVEL = 0.95    # coverage of every interval; the paired verdict's test threshold is 1 - LEVEL


def noise_lines(results: Sequence[Dict], noise: Dict, n_boot: int, seed: int) -> List[str]:
    """The printed summary of the intervals (when n_boot > 0) and of the paired comparisons."""
    lines = []
    if n_boot:
        lines.append(f"\n[sweep] accuracy with its {LEVEL:.0%} bootstrap interval over the prompts "
                     f"({n_boot} resamples, seed {seed}):")
        lines += [f"  {r['task']:7s} {r['label']:34s} acc {r['accuracy']:6.2f}%  [{r['accuracy_interval'][0]:6.2f}, "
                  f"{r['accuracy_interval'][1]:6.2f}]" for r in results]
        lines.append(f"[sweep] AUP {LEVEL:.0%} intervals (every point of a policy resampled on the same prompts, "
                     "y_max fixed):")
        for task, d in noise["aup_interval"].items():
            lines.append(f"  {task:7s} " + "  ".join(f"{POLICY_LABELS.get(p, p)} [{lo:.1f}, {hi:.1f}]"
                                                      for p, (lo, hi) in d.items()))
    lines.append("[sweep] paired comparisons on the same prompts: A - B (points)"
                 + (f" [{LEVEL:.0%} paired-bootstrap interval]" if n_boot else "")
                 + ", exact McNemar p (prompts only A / only B solves), mean NFE A / B:")
    for task, comps in noise["paired"].items():
        if not comps:
            lines.append(f"  {task:7s} (no adaptive policy to compare)")
        for c in comps:
            iv = f" [{c['interval'][0]:+6.2f}, {c['interval'][1]:+6.2f}]" if c["interval"] is not None else ""
            lines.append(f"  {task:7s} {c['a']} vs {c['b']}: {c['difference']:+6.2f}{iv}  p {c['p_value']:.3g} "
                         f"({c['a_only']} / {c['b_only']})  NFE {c['mean_nfe_a']:.2f} / {c['mean_nfe_b']:.2f}: "
                         f"{c['verdict']}")
    return lines


# A run of numbers that json.dumps(indent=...) spread over lines: "[" and a line break, then digits, signs, points,
# exponents, commas and whitespace only. JSON strings never hold a raw line break, so no string can match.
_NUMBER_LIST = re.compile(r"\[\n[-+0-9.eE,\s]*\]")


def dumps_compact(doc: Dict) -> str:
    """json.dumps(doc, indent=1), with every list of numbers on one line: the per-prompt lists (n values per point)
    would otherwise take a line per value."""
    text = json.dumps(doc, indent=1)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(0)[1:-1].split(",")) + "]", text)


def run_sweep(model: MaskedDiffusionLM, tasks: Sequence[str], specs: Sequence[RunSpec], *, n: int,
              batch_size: int = 64, device="cpu", controller=None, show_progress: bool = True,
              log: Callable[[str], None] = print, eos_exit: bool = False) -> List[Dict]:
    """Evaluate every spec on the first `n` test prompts of every task; one result dict per (task, spec).
    eos_exit: EOS early exit in every decode (harness.evaluate)."""
    sets = {t: T.heldout_set(t, "test", n) for t in tasks}
    total = sum(math.ceil(len(sets[t]) / batch_size) for t in tasks) * len(specs)
    results = []
    with progress(total, disable=not show_progress) as bar:
        for t in tasks:
            for spec in specs:
                bar.set_description(f"{t} {spec.label}")
                r = evaluate(model, t, sets[t], spec, batch_size=batch_size, device=device, controller=controller,
                             on_batch=lambda: bar.update(1), eos_exit=eos_exit)
                results.append(r)
                msg = (f"{t:7s} {r['label']:34s} acc {r['accuracy']:6.2f}%  NFE {r['mean_nfe']:6.2f}  "
                       f"TPF {r['tokens_per_forward']:5.2f}  {r['tokens_per_s']:8.1f} tok/s")
                if show_progress:
                    bar.write(msg)
                else:
                    log(msg)
    return results


def git_commit() -> str:
    """The short commit of the source tree this command runs from ("unknown" outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=os.path.dirname(os.path.abspath(__file__)),
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


# the grid options and the policy each one's values go to (checked before any decoding)
GRID_POLICIES = (("taus", "threshold"), ("factors", "factor"), ("gammas", "eb"), ("prr_taus", "prr"),
                 ("localleap_taus", "localleap"), ("slowfast_fills", "slowfast"), ("klass_confs", "klass"),
                 ("r2_taus", "r2"))


def parse_args(argv=None):
    ap = parser(PROG, __doc__)
    ap.add_argument("--tasks", type=names_arg(tuple(T.FAMILIES)), default=None,
                    help="task families (comma-separated; default: those the model was trained on: "
                         + ",".join(T.FAMILY_NAMES) + " for the demo model, " + ",".join(T.STEP_FAMILY_NAMES)
                         + " for --model steps, " + ",".join(T.LONG_FAMILY_NAMES) + " for --model long)")
    ap.add_argument("--policies", type=names_arg(POLICY_NAMES), default=None,
                    help=f"policies (comma-separated; default: all, {','.join(POLICY_NAMES)}); prr and r2prr use "
                         "--controller")
    ap.add_argument("--n", type=int, default=T.DEFAULT_HELDOUT_SIZE, help="test prompts per task (the first n of 500)")
    ap.add_argument("--quick", action="store_true", help="the smaller default grids (20 points instead of 41)")
    ap.add_argument("--taus", type=floats, default=None,
                    help=f"Threshold taus (default: {TAUS}, --quick {TAUS_QUICK})")
    ap.add_argument("--factors", type=floats, default=None,
                    help=f"Factor f values (default: {FACTORS}, --quick {FACTORS_QUICK})")
    ap.add_argument("--gammas", type=floats, default=None,
                    help=f"EntropyBound gammas (default: {GAMMAS}, --quick {GAMMAS_QUICK})")
    ap.add_argument("--prr-taus", type=floats, default=None,
                    help=f"PRR taus (default: {PRR_TAUS}, --quick {PRR_TAUS_QUICK})")
    ap.add_argument("--localleap-taus", type=floats, default=None,
                    help=f"LocalLeap taus (relaxed tau = tau - 0.15; default: {LOCALLEAP_TAUS}, --quick "
                         f"{LOCALLEAP_TAUS_QUICK})")
    ap.add_argument("--slowfast-fills", type=floats, default=None,
                    help=f"SlowFast fill thresholds (default: {SLOWFAST_FILLS}, --quick {SLOWFAST_FILLS_QUICK})")
    ap.add_argument("--klass-confs", type=floats, default=None,
                    help=f"KLASS confidence thresholds (default: {KLASS_CONFS}, --quick {KLASS_CONFS_QUICK})")
    ap.add_argument("--r2-taus", type=floats, default=None,
                    help=f"R2's base taus, over Threshold and PRR (default: {R2_TAUS}, --quick {R2_TAUS_QUICK})")
    ap.add_argument("--steps-fracs", type=floats, default=None, help="LowConfidence step budgets as fractions of "
                    f"gen_length (default: {STEPS_FRACS}, --quick {STEPS_FRACS_QUICK})")
    ap.add_argument("--adaptive-steps-fracs", type=floats, default="1", help="step budgets (fractions of "
                    "gen_length) of the adaptive policies (< 1 raises their per-step floor)")
    ap.add_argument("--controller", default=None, help=CONTROLLER_HELP)
    ap.add_argument("--model", default=None, type=model_arg, help=model_help())
    ap.add_argument("--batch-size", type=int, default=64, help="prompts decoded together")
    ap.add_argument("--eos-exit", action="store_true",
                    help="EOS early exit (generate's eos_fill): a row stops taking forwards once its answer and EOS "
                         "are committed, so NFE counts the answer's slots, not the whole canvas's (default: every "
                         "slot is decoded)")
    ap.add_argument("--device", type=device_arg, default="auto", help="auto (the GPU when there is one), cpu, cuda, "
                    "cuda:<index>")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--out", default=os.path.join("runs", "sweep", "results.json"),
                    help="the results JSON (its folder must exist, except for the default's)")
    ap.add_argument("--plot", default=None, help="the plot PNG (default: --out with .png)")
    ap.add_argument("--bootstrap", type=int, default=BOOTSTRAP_RESAMPLES,
                    help="bootstrap resamples of the prompts for the 95%% intervals; 0: no intervals")
    ap.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.n < 1 or args.batch_size < 1:
        ap.error("argument --n/--batch-size: must be >= 1")
    if args.bootstrap < 0:
        ap.error("argument --bootstrap: must be >= 0 (0: no intervals)")
    if args.threads is not None and args.threads < 1:
        ap.error("argument --threads: must be >= 1")
    for dest, policy in GRID_POLICIES:
        for value in getattr(args, dest) or ():
            if err := param_error(policy, value):
                ap.error(f"argument --{dest.replace('_', '-')}: {err}")
    for dest in ("steps_fracs", "adaptive_steps_fracs"):
        if any(not 0.0 < f <= 1.0 for f in getattr(args, dest) or ()):
            ap.error(f"argument --{dest.replace('_', '-')}: step budgets are fractions of gen_length in (0, 1]")
    if args.plot is None:
        args.plot = os.path.splitext(args.out)[0] + ".png"
    check_outputs(ap, args, files=("out",))
    if os.path.realpath(args.plot) == os.path.realpath(args.out):
        ap.error(f"argument --plot: {args.plot} is also --out (the results JSON); give --out a .json path, or "
                 "--plot another path")
    if args.plot != os.path.splitext(args.out)[0] + ".png":
        check_outputs(ap, args, files=("plot",))
    if err := plot_format_error(args.plot):
        ap.error(f"argument --plot: {err}")
    check_input_dir(ap, "--model", args.model, ("config.json", "model.safetensors"), "model")
    args.tasks = check_trained(ap, "--tasks", args.model, args.tasks)
    chosen, args.policies = args.policies is not None, args.policies or list(POLICY_NAMES)
    args.controller_note = None
    # the controller: --controller, else the one that ships beside --model (none: PRR is dropped, or refused)
    args.controller_dir, mismatch = controller_for(args.model, args.controller)
    if mismatch and any(p in args.policies for p in NEEDS_CONTROLLER):
        if chosen:  # asked for by name: an error, not a silent skip
            ap.error(f"argument --controller: {mismatch}, or leave {' and '.join(NEEDS_CONTROLLER)} out of --policies")
        args.policies = [p for p in args.policies if p not in NEEDS_CONTROLLER]
        args.controller_note = f"{mismatch}. PRR skipped"
    if any(p in args.policies for p in NEEDS_CONTROLLER):
        check_input_dir(ap, "--controller", args.controller, ("config.json", "model.safetensors"), "PRR controller")
    args.device, args.device_note = pick_device_arg(ap, args.device)
    return ap, args


def main(argv=None) -> Dict:
    ap, args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if args.device_note:
        print(f"[sweep] NOTE: {args.device_note}")
    if args.controller_note:
        print(f"[sweep] NOTE: {args.controller_note}")
    plot = have_matplotlib()
    if not plot:
        print("[sweep] NOTE: matplotlib is not installed: no plot (pip install matplotlib)")
    q = args.quick
    tasks, policies = list(args.tasks), list(args.policies)
    controller = None
    if any(p in policies for p in NEEDS_CONTROLLER):
        where = args.controller_dir
        if args.controller is None and not os.path.isfile(os.path.join(where, "config.json")):
            print(f"[sweep] NOTE: no PRR controller is shipped ({where}): PRR skipped")
            policies = [p for p in policies if p not in NEEDS_CONTROLLER]
        else:
            controller = load_controller(where)
            if controller.extra_features:
                msg = f"the controller in {where} needs extra features this harness does not compute"
                if args.controller is not None:
                    ap.error(f"argument --controller: {msg}")
                print(f"[sweep] NOTE: {msg}: PRR skipped")
                policies = [p for p in policies if p not in NEEDS_CONTROLLER]
                controller = None
    specs = build_specs(policies, taus=args.taus or (TAUS_QUICK if q else TAUS),
                        factors=args.factors or (FACTORS_QUICK if q else FACTORS),
                        gammas=args.gammas or (GAMMAS_QUICK if q else GAMMAS),
                        prr_taus=args.prr_taus or (PRR_TAUS_QUICK if q else PRR_TAUS),
                        steps_fracs=args.steps_fracs or (STEPS_FRACS_QUICK if q else STEPS_FRACS),
                        adaptive_steps_fracs=args.adaptive_steps_fracs,
                        localleap_taus=args.localleap_taus or (LOCALLEAP_TAUS_QUICK if q else LOCALLEAP_TAUS),
                        slowfast_fills=args.slowfast_fills or (SLOWFAST_FILLS_QUICK if q else SLOWFAST_FILLS),
                        klass_confs=args.klass_confs or (KLASS_CONFS_QUICK if q else KLASS_CONFS),
                        r2_taus=args.r2_taus or (R2_TAUS_QUICK if q else R2_TAUS))
    print(f"[sweep] {len(specs)} points x {len(tasks)} tasks, n={args.n} test prompts each, batch {args.batch_size}, "
          f"on {device_label(device)}", flush=True)
    model = load_model_arg(args.model, device)
    t0 = time.time()
    results = run_sweep(model, tasks, specs, n=args.n, batch_size=args.batch_size, device=device,
                        controller=controller, show_progress=not args.no_progress, eos_exit=args.eos_exit)
    summ = summarize(results)
    if args.bootstrap:
        add_accuracy_intervals(results, n_boot=args.bootstrap, level=LEVEL, seed=args.seed)
    noise = summarize_noise(results, n_boot=args.bootstrap, level=LEVEL, seed=args.seed)
    dev_txt = device_label(device) + ("" if device.type == "cuda" else f" ({torch.get_num_threads()} threads)")
    meta = {"command": " ".join([PROG] + list(sys.argv[1:] if argv is None else argv)),
            "commit": git_commit(), "date": time.strftime("%Y-%m-%d"),
            "device": dev_txt, "torch": torch.__version__, "python": platform.python_version(),
            "prr_ext": prr_ext.__version__, "model": shown_path(args.model or MODEL_DIR),
            "controller": None if controller is None else shown_path(args.controller_dir), "n": args.n,
            "batch_size": args.batch_size, "split": "test", "temperature": 0.0,
            "wall_seconds": round(time.time() - t0, 1),
            "eos_exit": args.eos_exit,
            "tpf": "gen_length / mean NFE (<eos> slots included)", "tokens_per_s": "gen_length * n / decode seconds",
            "bootstrap": args.bootstrap, "seed": args.seed, "level": LEVEL,
            "intervals": "percentile bootstrap over the n prompts; AUP: the same resample for every point of a "
                         "policy, y_max fixed",
            "paired": "best point (highest accuracy, then fewest NFE) of each adaptive policy vs vanilla "
                      "(lowconf, steps = gen_length) and vs each other; difference = a - b in points; p: exact "
                      "McNemar; verdict: interval excludes 0 and p < 1 - level"}
    doc = {"meta": meta, "results": results, **summ, **noise}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(dumps_compact(doc))
    written = [args.out]
    if plot:
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
        plot_pareto(results, args.plot, title=f"prr_ext policies on the testbed model (n={args.n}/task)")
        written.append(args.plot)
    print("\n[sweep] AUP per task (TPF, accuracy %; y_max = best accuracy on the task):")
    for task, d in summ["aup"].items():
        print(f"  {task:7s} y_max {summ['y_max'][task]:6.2f}  " + "  ".join(
            f"{POLICY_LABELS.get(p, p)} {v:7.1f}" for p, v in d.items()))
    for line in noise_lines(results, noise, args.bootstrap, args.seed):
        print(line)
    print(f"[sweep] wrote {' and '.join(os.path.abspath(p) for p in written)} ({meta['wall_seconds']} s)")
    return doc


if __name__ == "__main__":
    main()
