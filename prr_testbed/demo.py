"""The demo: decode held-out prompts of the testbed's model with each of prr_ext's commit policies.

    python -m prr_testbed.demo               # 64 test prompts per task on a CPU (minutes), all 500 on a GPU
    python -m prr_testbed.demo --n 8         # a quick look
    python -m prr_testbed.demo --model steps # the step families, where the rules separate (8 prompts on a CPU)

Loads the shipped model (prr_testbed/assets/model, or --model) and the PRR controller that ships beside it
(prr_testbed.SHIPPED_CONTROLLERS; --controller for another model), decodes the first --n prompts of each task's
fixed test set (default tasks: the demo families, or for another model the step or long families it was trained on)
with LowConfidence (LLaDA vanilla, one token per step), Threshold (Fast-dLLM; tau 0.9 and an aggressive 0.5), Factor
(Fast-dLLM), EntropyBound (EB-Sampler), PRR (at the tau its controller was tuned with), LocalLeap, SlowFast, KLASS
and R2, prints one table (accuracy, NFE, tokens per forward, tokens/s per policy) and saves the accuracy-vs-NFE plot
(--plot; skipped with a note when matplotlib is not installed) and, with --json, the results.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

import torch

import prr_ext

from . import MODEL_DIR, load_controller, tuned_tau
from . import tasks as T
from .cli import (CONTROLLER_HELP, check_input_dir, check_outputs, check_trained, controller_for, device_arg, model_arg,
                  model_help, names_arg, parser, progress)
from .harness import (RunSpec, device_label, evaluate, have_matplotlib, pick_device_arg, plot_format_error,
                      plot_pareto, summarize)
from .model import default_model_available, load_model_arg, make_canvas

PROG = "python -m prr_testbed.demo"
DEMO_SPECS = (RunSpec("lowconf", None, 1.0), RunSpec("threshold", 0.9), RunSpec("threshold", 0.5),
              RunSpec("factor", 1.0), RunSpec("eb", 0.1), RunSpec("prr", 0.9), RunSpec("localleap", 0.9),
              RunSpec("slowfast", 0.9), RunSpec("klass", 0.9), RunSpec("r2", 0.9))
CPU_N = 64       # test prompts per task on the CPU
CPU_N_LONG = 8   # ... for the 160-slot families (about 3 minutes of 2 cores for the 10M step model)
GPU_N = T.DEFAULT_HELDOUT_SIZE


def _auto_threads(model, device) -> str:
    """On a busy CPU, OpenMP threads that wait for each other can make every op many times slower than one
    thread: time a forward both ways and keep the faster. Returns a note."""
    n = torch.get_num_threads()
    if device.type != "cpu" or n <= 1:
        return f"{n} CPU threads" if device.type == "cpu" else ""
    fam = T.get_family("words")
    x, _ = make_canvas(model.tokenizer, [e.prompt for e in T.heldout_set("words", "test", 16)], fam.gen_length)

    def best(k):
        torch.set_num_threads(k)
        ts = []
        with torch.inference_mode():
            for _ in range(3):
                t0 = time.perf_counter()
                model(x)
                ts.append(time.perf_counter() - t0)
        return min(ts)

    t_n, t_1 = best(n), best(1)
    if t_1 < 0.8 * t_n:
        torch.set_num_threads(1)
        return f"1 CPU thread (faster than {n} on this busy machine: {t_1 * 1e3:.0f} vs {t_n * 1e3:.0f} ms/forward)"
    torch.set_num_threads(n)
    return f"{n} CPU threads"


def parse_args(argv=None):
    ap = parser(PROG, __doc__)
    ap.add_argument("--n", type=int, default=None,
                    help=f"test prompts per task (default: {CPU_N} on the CPU, {CPU_N_LONG} for the 160-slot families, "
                         f"{GPU_N} on a GPU)")
    ap.add_argument("--tasks", type=names_arg(tuple(T.FAMILIES)), default=None,
                    help="task families (comma-separated; default: " + ",".join(T.FAMILY_NAMES) + ", or for another "
                         "--model the step or long families it was trained on)")
    ap.add_argument("--device", type=device_arg, default="auto",
                    help="auto (the GPU when there is one), cpu, cuda, cuda:<index>")
    ap.add_argument("--batch-size", type=int, default=None, help="prompts decoded together (default: 64 on the CPU, "
                    "500 on a GPU)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: the faster of torch's choice and 1, timed)")
    ap.add_argument("--plot", default="prr_testbed_demo.png", help="where to save the accuracy-vs-NFE plot")
    ap.add_argument("--json", default=None, help="also write the results as JSON here")
    ap.add_argument("--controller", default=None, help=CONTROLLER_HELP)
    ap.add_argument("--model", default=None, type=model_arg, help=model_help())
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    for name in ("n", "batch_size", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"argument --{name.replace('_', '-')}: must be >= 1")
    check_outputs(ap, args, files=("plot", "json"))
    if err := plot_format_error(args.plot):
        ap.error(f"argument --plot: {err}")
    check_input_dir(ap, "--model", args.model, ("config.json", "model.safetensors"), "model")
    check_input_dir(ap, "--controller", args.controller, ("config.json", "model.safetensors"), "PRR controller")
    if args.model is None and not default_model_available():
        ap.error(f"the shipped model is missing ({MODEL_DIR}): reinstall prr_ext, or train one with "
                 "`python -m prr_testbed.train_model` and pass --model")
    args.device, args.device_note = pick_device_arg(ap, args.device)
    return ap, args


def main(argv=None) -> dict:
    ap, args = parse_args(argv)
    t_start = time.time()
    device = args.device
    print(f"prr_ext {prr_ext.__version__} demo  |  torch {torch.__version__}  |  python {sys.version.split()[0]}")
    if args.device_note:
        print(f"NOTE: {args.device_note}")
    model = load_model_arg(args.model, device)
    if args.threads:
        torch.set_num_threads(args.threads)
        threads = f"{args.threads} CPU threads"
    else:
        threads = _auto_threads(model, device)
    dev_txt = device_label(device) + ("" if device.type == "cuda" else f", {threads}")
    cfg = model.config
    print(f"model: {model.num_parameters() / 1e6:.2f} M parameters ({cfg.n_layers} layers, d_model {cfg.d_model}, "
          f"{cfg.n_heads} heads, char vocabulary of {cfg.vocab_size}), device: {dev_txt}")

    tasks = check_trained(ap, "--tasks", args.model, args.tasks)
    # the 160-slot families retire each row once its answer and <eos> are committed, so NFE counts answers, as their
    # quality bar does (docs/long_families.md)
    long_canvas = {t: t in T.LONG_FAMILY_NAMES + T.STEP_FAMILY_NAMES for t in tasks}
    on_gpu = device.type == "cuda"
    n = args.n or (GPU_N if on_gpu else CPU_N_LONG if any(long_canvas.values()) else CPU_N)
    bs = args.batch_size or (500 if on_gpu else 64)
    specs = list(DEMO_SPECS)
    controller_dir, mismatch = controller_for(args.model, args.controller)
    controller = None
    if mismatch:
        print(f"NOTE: {mismatch}. PRR skipped.")
        specs = [s for s in specs if s.policy != "prr"]
    elif os.path.isfile(os.path.join(controller_dir, "config.json")):
        controller = load_controller(controller_dir)
        tau = tuned_tau(controller_dir)
        if tau is not None:  # the tau the controller was tuned with on the validation split
            specs = [RunSpec("prr", tau) if s.policy == "prr" else s for s in specs]
    if not mismatch and (controller is None or controller.extra_features):
        why = "no PRR controller is shipped" if controller is None else "the controller needs extra features"
        if args.controller is not None:
            ap.error(f"argument --controller: {why} ({controller_dir})")
        print(f"NOTE: PRR skipped: {why} ({controller_dir}).")
        specs = [s for s in specs if s.policy != "prr"]
        controller = None
    plot = have_matplotlib()
    if not plot:
        print("NOTE: matplotlib is not installed: no plot (pip install matplotlib, or prr_ext[plot])")
    print(f"decoding the first {n} test prompts of {', '.join(tasks)} with {len(specs)} policies "
          f"(greedy, batch {bs}) ...", flush=True)

    sets = {t: T.heldout_set(t, "test", n) for t in tasks}
    results = []
    total = len(specs) * sum(math.ceil(n / bs) for _ in tasks)
    with progress(total, disable=args.no_progress) as bar:
        for spec in specs:
            for t in tasks:
                bar.set_description(f"{spec.label} on {t}")
                results.append(evaluate(model, t, sets[t], spec, batch_size=bs, device=device, controller=controller,
                                        on_batch=lambda: bar.update(1), eos_exit=long_canvas[t]))
            msg = f"  {spec.label:24s} done ({time.time() - t_start:5.1f} s)"
            if args.no_progress:
                print(msg, flush=True)
            else:
                bar.write(msg)

    # ---- the table
    print()
    fams = " / ".join(tasks)
    acc_head, nfe_head = f"accuracy % ({fams})", f"mean NFE ({fams})"
    w = max(33, len(acc_head), len(nfe_head))
    head = f"{'policy':24s} | {acc_head:^{w}s} | {nfe_head:^{w}s} | {'TPF':>5s} | {'tokens/s':>8s}"
    print(head)
    print("-" * len(head))
    for spec in specs:
        rows = [r for r in results if r["label"] == spec.label]
        acc = " / ".join(f"{r['accuracy']:5.1f}" for r in rows)
        nfe = " / ".join(f"{r['mean_nfe']:5.1f}" for r in rows)
        tokens = sum(r["n"] * r["gen_length"] for r in rows)
        forwards = sum(r["n"] * r["mean_nfe"] for r in rows)
        secs = sum(r["seconds"] for r in rows)
        print(f"{spec.label:24s} | {acc:^{w}s} | {nfe:^{w}s} | {tokens / forwards:5.2f} | {tokens / secs:8.0f}")
    print("-" * len(head))
    G = ", ".join(f"{t} {T.get_family(t).gen_length}" for t in tasks)
    exits = [t for t in tasks if long_canvas[t]]
    print(f"n = {n} test prompts per task; generation lengths {G} (NFE of one-token-per-step decoding"
          + (f"; {', '.join(exits)}: each row stops once its answer and <eos> are committed" if exits else "")
          + f"); TPF = tokens per forward; tokens/s on {dev_txt}, batch {bs}, no KV cache, <eos> slots counted.")

    doc = {"device": dev_txt, "n": n, "results": results, **summarize(results)}
    written = []
    if args.json:  # before the plot: the results are the costly part
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
        written.append(f"json {os.path.abspath(args.json)}")
    if plot:
        plot_pareto(results, args.plot, title=f"prr_ext commit policies on the testbed model (n={n} per task)")
        written.append(f"plot {os.path.abspath(args.plot)}")
    print(f"demo finished in {time.time() - t_start:.1f} s" + (f"; wrote {', '.join(written)}" if written else ""))
    return doc


if __name__ == "__main__":
    main()
