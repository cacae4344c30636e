"""The demo: decode held-out prompts of the testbed's model with each of prr_ext's commit policies.

    python -m prr_testbed.demo             # 64 test prompts per task on a CPU; 500 on a GPU
    python -m prr_testbed.demo --n 200     # more prompts

Loads the masked-diffusion LM shipped in prr_testbed/assets/model (and the PRR controller in
prr_testbed/assets/controller), decodes the first --n prompts of each task's fixed test set with LowConfidence (LLaDA vanilla,
one token per step), Threshold (Fast-dLLM; tau 0.9 and an aggressive 0.5), Factor (Fast-dLLM), EntropyBound
(EB-Sampler) and PRR, prints one table
(accuracy, NFE, tokens per forward, tokens/s per policy) and saves the accuracy-vs-NFE plot (--plot).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

import prr_ext

from . import CONTROLLER_DIR, MODEL_DIR, load_controller, tuned_tau
from . import tasks as T
from .harness import RunSpec, evaluate, have_matplotlib, pick_device, plot_pareto, summarize
from .model import MaskedDiffusionLM, default_model_available, load_default, make_canvas

DEMO_SPECS = (RunSpec("lowconf", None, 1.0), RunSpec("threshold", 0.9), RunSpec("threshold", 0.5),
              RunSpec("factor", 1.0), RunSpec("eb", 0.1), RunSpec("prr", 0.9))
CPU_N = 64  # test prompts per task on the CPU


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


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m prr_testbed.demo",
                                 description="prr_ext demo: commit policies on the testbed's masked-diffusion LM")
    ap.add_argument("--n", type=int, default=None,
                    help=f"test prompts per task (default: {CPU_N} on the CPU, which keeps the demo well under 3 min "
                         "on 2 cores; 500 on a GPU)")
    ap.add_argument("--tasks", default=",".join(T.FAMILY_NAMES))
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 64 on the CPU, 500 on a GPU")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: auto)")
    ap.add_argument("--plot", default="prr_testbed_demo.png", help="where to save the accuracy-vs-NFE plot")
    ap.add_argument("--json", default=None, help="also write the results as JSON here")
    ap.add_argument("--controller", default=None, help="PRR controller directory (default: the shipped one)")
    ap.add_argument("--model", default=None, help="model directory (default: the shipped prr_testbed/assets/model)")
    args = ap.parse_args(argv)
    t_start = time.time()

    print(f"prr_ext {prr_ext.__version__} demo  |  torch {torch.__version__}  |  python {sys.version.split()[0]}")
    try:
        device, note = pick_device(args.device)
    except ValueError as e:
        raise SystemExit(f"--device: {e}")
    if note:
        print(f"NOTE: {note}")
    if args.model is None and not default_model_available():
        raise SystemExit(f"the shipped model is missing ({MODEL_DIR}); reinstall prr_ext or train one with "
                         "`python -m prr_testbed.train_model`")
    model = load_default(device) if args.model is None else MaskedDiffusionLM.from_pretrained(args.model, device)
    if args.threads:
        torch.set_num_threads(args.threads)
        threads = f"{args.threads} CPU threads"
    else:
        threads = _auto_threads(model, device)
    dev_txt = (f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f"cpu, {threads}")
    cfg = model.config
    print(f"model: {model.num_parameters() / 1e6:.2f} M parameters ({cfg.n_layers} layers, d_model {cfg.d_model}, "
          f"{cfg.n_heads} heads, char vocabulary of {cfg.vocab_size}), device: {dev_txt}")

    on_gpu = device.type == "cuda"
    n = args.n or (T.DEFAULT_HELDOUT_SIZE if on_gpu else CPU_N)
    bs = args.batch_size or (500 if on_gpu else 64)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    controller_dir = args.controller or CONTROLLER_DIR
    controller = (load_controller(controller_dir) if os.path.isfile(os.path.join(controller_dir, "config.json"))
                  else None)
    specs = list(DEMO_SPECS)
    tau = tuned_tau(controller_dir)
    if tau is not None:  # the tau the controller was tuned with on the validation split
        specs = [RunSpec("prr", tau) if s.policy == "prr" else s for s in specs]
    if controller is None or controller.extra_features:
        where = controller_dir
        why = "no PRR controller is shipped yet" if controller is None else "the controller needs extra features"
        print(f"NOTE: PRR skipped: {why} ({where}).")
        specs = [s for s in specs if s.policy != "prr"]
        controller = None
    print(f"decoding the first {n} test prompts of {', '.join(tasks)} with {len(specs)} policies "
          f"(greedy, batch {bs}) ...", flush=True)

    results = []
    for spec in specs:
        for t in tasks:
            exs = T.heldout_set(t, "test", n)
            results.append(evaluate(model, t, exs, spec, batch_size=bs, device=device, controller=controller))
        print(f"  {spec.label:24s} done ({time.time() - t_start:5.1f} s)", flush=True)

    # ---- the table
    print()
    fams = " / ".join(tasks)
    head = (f"{'policy':24s} | {'accuracy % (' + fams + ')':^33s} | {'mean NFE (' + fams + ')':^33s} | "
            f"{'TPF':>5s} | {'tokens/s':>8s}")
    print(head)
    print("-" * len(head))
    for spec in specs:
        rows = [r for r in results if r["label"] == spec.label]
        acc = " / ".join(f"{r['accuracy']:5.1f}" for r in rows)
        nfe = " / ".join(f"{r['mean_nfe']:5.1f}" for r in rows)
        tokens = sum(r["n"] * r["gen_length"] for r in rows)
        forwards = sum(r["n"] * r["mean_nfe"] for r in rows)
        secs = sum(r["seconds"] for r in rows)
        print(f"{spec.label:24s} | {acc:^33s} | {nfe:^33s} | {tokens / forwards:5.2f} | {tokens / secs:8.0f}")
    print("-" * len(head))
    G = ", ".join(f"{t} {T.get_family(t).gen_length}" for t in tasks)
    print(f"n = {n} test prompts per task; generation lengths {G} (NFE of one-token-per-step decoding); TPF = "
          f"tokens per forward; tokens/s on {dev_txt}, batch {bs}, no KV cache, <eos> slots counted.")

    if have_matplotlib():
        plot_pareto(results, args.plot, title=f"prr_ext demo: shipped model, n={n}/task, {dev_txt}")
        print(f"plot: {os.path.abspath(args.plot)}")
    else:
        print("NOTE: matplotlib is not installed: no plot (pip install matplotlib, or prr_ext[plot])")
    doc = {"device": dev_txt, "n": n, "results": results, **summarize(results)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"json: {os.path.abspath(args.json)}")
    print(f"demo finished in {time.time() - t_start:.1f} s")
    return doc


if __name__ == "__main__":
    main()
