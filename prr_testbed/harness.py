"""Evaluation harness: task families x commit policies x hyper-parameter sweeps on the shipped model.

    python -m prr_ext.eval                                   # full sweep, 500 test prompts per family
    python -m prr_ext.eval --n 100 --quick                   # a smaller sweep
    python -m prr_ext.eval --policies lowconf,threshold --taus 0.5 --n 500     # the quality bar (benchmarks/RESULTS.md)

For every (family, policy, hyper-parameters) point: accuracy (exact checkers of prr_ext.tasks, on the fixed-seed
*test* sets, which nothing is trained on), mean NFE (forwards per prompt), tokens per forward (TPF = generation
length / mean NFE; the <eos> slots count, as every slot of the canvas is decoded), tokens/s (generated slots per
second of wall time, batch `--batch-size`, no KV cache) and, per family and policy, AUP over that policy's points
(docs: ../shared/reference/decoding-semantics.md section 5; y_max = best accuracy of any point on the family).
Writes a JSON file and a PNG Pareto plot (accuracy vs mean NFE, one curve per policy, one panel per family).

Decoding goes through `prr_ext.generate` (LLaDA style: semi-autoregressive blocks, every commit by `prr_ext.step`)
on left-padded batches (the model masks the pads), greedy (temperature 0), fp32 confidences.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

import prr_ext

from . import tasks as T
from .model import MaskedDiffusionLM, decode_responses, load_default, make_canvas

CONTROLLER_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "controller")

# Default sweeps (--quick uses the first list of each pair).
TAUS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
TAUS_QUICK = (0.5, 0.7, 0.9)
FACTORS = (0.1, 0.25, 0.5, 1.0, 2.0)
FACTORS_QUICK = (0.25, 1.0)
GAMMAS = (0.001, 0.01, 0.1, 0.5, 1.0)
GAMMAS_QUICK = (0.01, 0.1, 1.0)
PRR_TAUS = (0.5, 0.7, 0.9, 0.95)
PRR_TAUS_QUICK = (0.7, 0.9)
STEPS_FRACS = (1.0, 0.5, 0.25)      # LowConfidence steps = frac * gen_length
POLICY_NAMES = ("lowconf", "threshold", "factor", "eb", "prr")
POLICY_LABELS = {"lowconf": "LowConfidence", "threshold": "Threshold", "factor": "Factor", "eb": "EntropyBound",
                 "prr": "PRR"}


# ---------------------------------------------------------------------------------------------------------------
# AUP (d3LLM), exactly as ../shared/reference/decoding-semantics.md section 5 states it
# ---------------------------------------------------------------------------------------------------------------
def aup_weight(y: float, y_max: float) -> float:
    """W(y) = min(exp(-3 (1 - y / y_max)), 1)."""
    return min(math.exp(-3.0 * (1.0 - y / y_max)), 1.0)


def aup(rho: Sequence[float], y: Sequence[float], y_max: float) -> float:
    """Area under the accuracy-parallelism curve of one method on one task.

    rho: tokens per forward of each point; y: accuracy in percent; y_max: best accuracy of any method on the task.
    Points are sorted by rho; only those with y >= y_1 - 5 are kept (y_1: the accuracy of the lowest-rho point), so
    y_1 - y_last <= 5; then AUP = rho_1 y_1 + sum_{i>=2} (rho_i - rho_{i-1}) (y_i W(y_i) + y_{i-1} W(y_{i-1})) / 2.
    """
    if len(rho) != len(y) or not rho:
        raise ValueError("rho and y must be non-empty and of equal length")
    if not y_max > 0:
        raise ValueError("y_max must be > 0")
    pts = sorted(zip(map(float, rho), map(float, y)), key=lambda p: p[0])
    y1 = pts[0][1]
    pts = [p for p in pts if p[1] >= y1 - 5.0]
    assert pts[0][1] - pts[-1][1] <= 5.0
    total = pts[0][0] * pts[0][1]
    for (r0, a0), (r1, a1) in zip(pts, pts[1:]):
        total += 0.5 * (r1 - r0) * (a1 * aup_weight(a1, y_max) + a0 * aup_weight(a0, y_max))
    return total


# ---------------------------------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class RunSpec:
    """One point of a sweep: a policy with its hyper-parameters and a step budget (a fraction of gen_length)."""

    policy: str                 # one of POLICY_NAMES
    param: Optional[float] = None   # tau / f / gamma (None for lowconf)
    steps_frac: float = 1.0

    @property
    def label(self) -> str:
        name = POLICY_LABELS[self.policy]
        if self.policy == "lowconf":
            return f"{name}(steps={self.steps_frac:g}G)"
        key = {"threshold": "tau", "factor": "f", "eb": "gamma", "prr": "tau"}[self.policy]
        s = f"{name}({key}={self.param:g})"
        return s if self.steps_frac == 1.0 else s[:-1] + f", steps={self.steps_frac:g}G)"

    def make_policy(self, controller=None) -> prr_ext.Policy:
        if self.policy == "lowconf":
            return prr_ext.LowConfidence()
        if self.policy == "threshold":
            return prr_ext.Threshold(tau=self.param)
        if self.policy == "factor":
            return prr_ext.Factor(f=self.param)
        if self.policy == "eb":
            return prr_ext.EntropyBound(gamma=self.param)
        if self.policy == "prr":
            if controller is None:
                raise ValueError("the PRR policy needs a controller")
            return prr_ext.PRR(controller, tau=self.param)
        raise ValueError(f"unknown policy {self.policy!r}; known: {POLICY_NAMES}")


def steps_for(family: T.TaskFamily, steps_frac: float, gen_length: int, block_length: int) -> int:
    """frac * gen_length, rounded to a positive multiple of the number of blocks."""
    nb = gen_length // block_length
    return max(nb, int(round(steps_frac * gen_length / nb)) * nb)


def decode_batch(model: Callable, x: torch.Tensor, prompt_lens: torch.Tensor, *, block_length: int, steps: int,
                 policy: prr_ext.Policy, mask_id: int, pad_id: int = 0, temperature: float = 0.0):
    """Decode one left-padded batch (canvas `x` from `make_canvas`): (final canvas, nfe [B], seconds).

    Uses `prr_ext.generate` (LLaDA style, the model gets the pads' attention_mask); without it, the documented loop
    `state = prr_ext.State(...); while not state.done: prr_ext.step(model(state.x).logits, state)`."""
    P = int(prompt_lens.max())
    G = x.shape[1] - P
    if hasattr(prr_ext, "generate"):
        prompt_ids = x[:, :P]
        out = prr_ext.generate(model, prompt_ids, gen_length=G, block_length=block_length, steps=steps,
                               policy=policy, temperature=temperature, mask_id=mask_id,
                               attention_mask=(prompt_ids != pad_id).to(torch.int64),
                               confidence_dtype=torch.float32)
        return out.tokens, out.nfe, out.seconds
    _sync(x.device)
    t0 = time.perf_counter()
    state = prr_ext.State(x, mask_id=mask_id, prompt_length=prompt_lens, block_length=block_length, steps=steps,
                          policy=policy, temperature=temperature)
    limit = state.num_blocks * max(state.steps_per_block, block_length) + 1
    for _ in range(limit):
        if state.done:
            break
        out = model(state.x)
        prr_ext.step(out.logits if hasattr(out, "logits") else out, state)
    else:
        if not state.done:
            raise RuntimeError("decode did not finish within its step limit")
    _sync(x.device)
    return state.x, state.nfe, time.perf_counter() - t0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def evaluate(model: MaskedDiffusionLM, family: str, examples: Sequence[T.Example], spec: RunSpec, *,
             batch_size: int = 64, device="cpu", controller=None, gen_length: Optional[int] = None,
             block_length: Optional[int] = None, on_batch: Optional[Callable[[], None]] = None,
             keep_responses: bool = False) -> Dict:
    """Decode `examples` of `family` with one sweep point; accuracy, NFE, TPF, tokens/s."""
    fam = T.get_family(family)
    G = gen_length or fam.gen_length
    BL = block_length or (fam.block_length if G == fam.gen_length else G)
    steps = steps_for(fam, spec.steps_frac, G, BL)
    policy = spec.make_policy(controller)
    tok = model.tokenizer
    device = torch.device(device)
    correct, nfe, answer_tokens, seconds = [], [], 0, 0.0
    responses: List[str] = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        x, plens = make_canvas(tok, [e.prompt for e in chunk], G, device)
        final, row_nfe, secs = decode_batch(model, x, plens, block_length=BL, steps=steps, policy=policy,
                                            mask_id=tok.mask_id, pad_id=tok.pad_id)
        seconds += secs
        gs = final.shape[1] - G
        resp = decode_responses(tok, final, gs)
        correct += [bool(fam.check(e, r)) for e, r in zip(chunk, resp)]
        nfe += row_nfe.tolist()
        answer_tokens += int((final[:, gs:] != tok.eos_id).sum())
        if keep_responses:
            responses += resp
        if on_batch is not None:
            on_batch()
    n = len(examples)
    mean_nfe = sum(nfe) / n
    out = {"task": family, "policy": spec.policy, "label": spec.label, "param": spec.param,
           "steps_frac": spec.steps_frac, "steps": steps, "gen_length": G, "block_length": BL, "n": n,
           "accuracy": 100.0 * sum(correct) / n, "mean_nfe": mean_nfe, "tokens_per_forward": G / mean_nfe,
           "answer_tokens_per_forward": answer_tokens / sum(nfe), "tokens_per_s": n * G / seconds,
           "seconds": seconds, "batch_size": batch_size}
    if keep_responses:
        out["responses"] = responses
        out["correct"] = correct
    return out


# ---------------------------------------------------------------------------------------------------------------
# sweeps
# ---------------------------------------------------------------------------------------------------------------
def build_specs(policies: Sequence[str], *, taus=TAUS, factors=FACTORS, gammas=GAMMAS, prr_taus=PRR_TAUS,
                steps_fracs=STEPS_FRACS, adaptive_steps_fracs=(1.0,)) -> List[RunSpec]:
    specs: List[RunSpec] = []
    for p in policies:
        if p == "lowconf":
            specs += [RunSpec("lowconf", None, f) for f in steps_fracs]
        else:
            vals = {"threshold": taus, "factor": factors, "eb": gammas, "prr": prr_taus}.get(p)
            if vals is None:
                raise ValueError(f"unknown policy {p!r}; known: {POLICY_NAMES}")
            specs += [RunSpec(p, float(v), f) for f in adaptive_steps_fracs for v in vals]
    return specs


def load_controller(path: Optional[str] = None):
    """The PRR controller at `path` (default: the shipped prr_ext/assets/controller), or None if there is none."""
    path = path or CONTROLLER_DIR
    if not os.path.isfile(os.path.join(path, "config.json")):
        return None
    return prr_ext.Controller.load(path)


def pick_device(requested: str = "auto") -> Tuple[torch.device, Optional[str]]:
    """(device, note): CUDA when present and prr_ext has CUDA kernels; a note explains a fallback to the CPU."""
    if requested != "auto":
        dev = torch.device(requested)
        if dev.type == "cuda" and not prr_ext.has_cuda_kernels():
            raise SystemExit("prr_ext was built without CUDA kernels: rebuild it with nvcc available "
                             "(pip install --no-build-isolation . , without PRR_EXT_FORCE_CPU) or use --device cpu")
        return dev, None
    if torch.cuda.is_available():
        if prr_ext.has_cuda_kernels():
            return torch.device("cuda"), None
        return torch.device("cpu"), ("a CUDA GPU is present, but this build of prr_ext has no CUDA kernels "
                                     "(built without nvcc, or with PRR_EXT_FORCE_CPU=1): running on the CPU. Rebuild "
                                     "with `pip install --no-build-isolation .` where nvcc is found to use the GPU.")
    return torch.device("cpu"), None


def summarize(results: List[Dict]) -> Dict:
    """Per-task y_max and per-(task, policy) AUP over that policy's points."""
    out: Dict = {"y_max": {}, "aup": {}}
    for task in dict.fromkeys(r["task"] for r in results):
        rows = [r for r in results if r["task"] == task]
        y_max = max(r["accuracy"] for r in rows)
        out["y_max"][task] = y_max
        out["aup"][task] = {}
        for pol in dict.fromkeys(r["policy"] for r in rows):
            pr = [r for r in rows if r["policy"] == pol]
            out["aup"][task][pol] = (aup([r["tokens_per_forward"] for r in pr], [r["accuracy"] for r in pr], y_max)
                                     if y_max > 0 else 0.0)
    return out


def plot_pareto(results: List[Dict], path: str, title: str = "accuracy vs NFE") -> None:
    """One panel per task: accuracy (%) vs mean NFE, one curve per policy (points sorted by NFE)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.ticker
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in results))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4.2), squeeze=False)
    colors = {"lowconf": "tab:gray", "threshold": "tab:blue", "factor": "tab:green", "eb": "tab:orange",
              "prr": "tab:red"}
    for ax, task in zip(axes[0], tasks):
        rows = [r for r in results if r["task"] == task]
        for pol in dict.fromkeys(r["policy"] for r in rows):
            pr = sorted((r for r in rows if r["policy"] == pol), key=lambda r: r["mean_nfe"])
            ax.plot([r["mean_nfe"] for r in pr], [r["accuracy"] for r in pr], "o-", color=colors.get(pol),
                    label=POLICY_LABELS.get(pol, pol), alpha=0.85, ms=5)
        G = rows[0]["gen_length"]
        ax.set_title(f"{task} (G={G}, n={rows[0]['n']})")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([1, 2, 3, 5, 10, 20, 50, 100, 200, 500]))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("mean NFE (forwards per prompt, log scale)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_sweep(model: MaskedDiffusionLM, tasks: Sequence[str], specs: Sequence[RunSpec], *, n: int,
              batch_size: int = 64, device="cpu", controller=None, progress: bool = True,
              log: Callable[[str], None] = print) -> List[Dict]:
    sets = {t: T.heldout_set(t, "test", n) for t in tasks}
    total = sum(math.ceil(len(sets[t]) / batch_size) for t in tasks) * len(specs)
    try:
        from tqdm import tqdm
        bar = tqdm(total=total, disable=not progress, dynamic_ncols=True, mininterval=1.0, unit="batch")
    except ImportError:  # pragma: no cover
        bar = None
    results = []
    for t in tasks:
        for spec in specs:
            if bar is not None:
                bar.set_description(f"{t} {spec.label}")
            r = evaluate(model, t, sets[t], spec, batch_size=batch_size, device=device, controller=controller,
                         on_batch=(lambda: bar.update(1)) if bar is not None else None)
            results.append(r)
            msg = (f"{t:7s} {r['label']:34s} acc {r['accuracy']:6.2f}%  NFE {r['mean_nfe']:6.2f}  "
                   f"TPF {r['tokens_per_forward']:5.2f}  {r['tokens_per_s']:8.1f} tok/s")
            (bar.write(msg) if bar is not None and progress else log(msg))
    if bar is not None:
        bar.close()
    return results


def _floats(s: Optional[str], default):
    return default if s is None else tuple(float(v) for v in s.split(",") if v.strip())


def main(argv=None) -> Dict:
    ap = argparse.ArgumentParser(description="prr_ext evaluation harness: tasks x policies x sweeps",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--tasks", default=",".join(T.FAMILY_NAMES))
    ap.add_argument("--policies", default="lowconf,threshold,factor,eb,prr",
                    help="subset of " + ",".join(POLICY_NAMES) + " (prr is skipped without a controller)")
    ap.add_argument("--n", type=int, default=T.DEFAULT_HELDOUT_SIZE, help="test prompts per task (first n of 500)")
    ap.add_argument("--quick", action="store_true", help="smaller default sweeps")
    ap.add_argument("--taus", default=None, help="Threshold taus (comma-separated)")
    ap.add_argument("--factors", default=None, help="Factor f values")
    ap.add_argument("--gammas", default=None, help="EntropyBound gammas")
    ap.add_argument("--prr-taus", default=None, help="PRR taus")
    ap.add_argument("--steps-fracs", default=None, help="LowConfidence steps as fractions of gen_length")
    ap.add_argument("--adaptive-steps-fracs", default="1", help="step budgets (fractions of gen_length) of the "
                    "adaptive policies (< 1 raises their per-step floor)")
    ap.add_argument("--controller", default=None, help="PRR controller directory (default: prr_ext/assets/controller)")
    ap.add_argument("--model", default=None, help="model directory (default: the shipped prr_ext/assets/model)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default="benchmarks/eval_results.json")
    ap.add_argument("--plot", default=None, help="PNG path (default: --out with .png)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, note = pick_device(args.device)
    if note:
        print(f"[eval] NOTE: {note}")
    q = args.quick
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    controller = None
    if "prr" in policies:
        controller = load_controller(args.controller)
        if controller is None:
            print(f"[eval] NOTE: no PRR controller at {args.controller or CONTROLLER_DIR}: PRR skipped")
            policies.remove("prr")
        elif controller.extra_features:
            print("[eval] NOTE: the controller needs extra features this harness does not compute: PRR skipped")
            policies.remove("prr")
            controller = None
    specs = build_specs(policies, taus=_floats(args.taus, TAUS_QUICK if q else TAUS),
                        factors=_floats(args.factors, FACTORS_QUICK if q else FACTORS),
                        gammas=_floats(args.gammas, GAMMAS_QUICK if q else GAMMAS),
                        prr_taus=_floats(args.prr_taus, PRR_TAUS_QUICK if q else PRR_TAUS),
                        steps_fracs=_floats(args.steps_fracs, (1.0, 0.5) if q else STEPS_FRACS),
                        adaptive_steps_fracs=_floats(args.adaptive_steps_fracs, (1.0,)))
    model = (load_default(device) if args.model is None else MaskedDiffusionLM.from_pretrained(args.model, device))
    t0 = time.time()
    results = run_sweep(model, tasks, specs, n=args.n, batch_size=args.batch_size, device=device,
                        controller=controller, progress=not args.no_progress)
    summ = summarize(results)
    meta = {"device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                     f" ({torch.get_num_threads()} threads)"),
            "torch": torch.__version__, "python": platform.python_version(), "prr_ext": prr_ext.__version__,
            "model": args.model or "prr_ext/assets/model", "n": args.n, "batch_size": args.batch_size,
            "split": "test", "temperature": 0.0, "wall_seconds": round(time.time() - t0, 1),
            "tpf": "gen_length / mean NFE (<eos> slots included)", "tokens_per_s": "gen_length * n / decode seconds"}
    doc = {"meta": meta, "results": results, **summ}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
    plot = args.plot or os.path.splitext(args.out)[0] + ".png"
    plot_pareto(results, plot, title=f"prr_ext eval on the shipped model ({meta['device']}, n={args.n}/task)")
    print("\n[eval] AUP per task (TPF, accuracy %; y_max = best accuracy on the task):")
    for task, d in summ["aup"].items():
        print(f"  {task:7s} y_max {summ['y_max'][task]:6.2f}  " + "  ".join(
            f"{POLICY_LABELS.get(p, p)} {v:7.1f}" for p, v in d.items()))
    print(f"[eval] wrote {args.out} and {plot} ({meta['wall_seconds']} s)")
    return doc


if __name__ == "__main__":
    main()
