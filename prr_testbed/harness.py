"""The testbed's evaluation harness: decode task prompts with a commit policy and measure it.

For one (family, policy, hyper-parameters) point, `evaluate` gives accuracy (the exact checkers of prr_testbed.tasks,
on the fixed-seed *test* sets, which nothing is trained on), mean NFE (forwards per prompt), tokens per forward
(TPF = generation length / mean NFE; the <eos> slots count, as every slot of the canvas is decoded) and tokens/s
(generated slots per second of wall time, no KV cache), and per prompt whether it was solved (`correct`) and its
forwards (`nfe_per_prompt`). `summarize` adds, per family and policy, AUP over that policy's points (y_max = the best
accuracy of any point on the family); `plot_pareto` draws accuracy against NFE.

Noise (prr_testbed.stats): `add_accuracy_intervals` and `summarize_noise` add each point's 95% bootstrap interval,
each policy's AUP interval and paired comparisons of the rules on the same prompts, so that a difference between
rules is claimed only beyond the noise of the prompt sample.

Decoding goes through `prr_ext.generate` (LLaDA style: semi-autoregressive blocks, every commit by `prr_ext.step`)
on left-padded batches (the model masks the pads), greedy (temperature 0), fp32 confidences.
The commands built on it: `python -m prr_testbed.sweep`, `python -m prr_testbed.demo`,
`python -m prr_testbed.train_controller`.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

import prr_ext

from . import tasks as T
from .cli import resolve_device
from .model import MaskedDiffusionLM, decode_responses, make_canvas
from .stats import BOOTSTRAP_RESAMPLES, aup, aup_interval, bootstrap_interval, paired_comparison

POLICY_NAMES = ("lowconf", "threshold", "factor", "eb", "prr", "localleap", "slowfast", "klass", "r2", "r2prr")
POLICY_LABELS = {"lowconf": "LowConfidence", "threshold": "Threshold", "factor": "Factor", "eb": "EntropyBound",
                 "prr": "PRR", "localleap": "LocalLeap", "slowfast": "SlowFast", "klass": "KLASS",
                 "r2": "R2+Threshold", "r2prr": "R2+PRR"}
# The swept hyper-parameter of each rule (RunSpec.param); the others keep their upstream defaults: LocalLeap's
# relaxed threshold is tau - 0.15 (upstream's demo: 0.9 / 0.75) with radius 4, SlowFast sweeps its fill threshold,
# KLASS its confidence threshold (kappa 0.01, history 2), R2 (every pass at the pinned defaults) its base's tau.
PARAM_NAMES = {"threshold": "tau", "factor": "f", "eb": "gamma", "prr": "tau", "localleap": "tau", "slowfast": "fill",
               "klass": "c", "r2": "tau", "r2prr": "tau"}
NEEDS_CONTROLLER = ("prr", "r2prr")


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
        key = PARAM_NAMES[self.policy]
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
        if self.policy in NEEDS_CONTROLLER and controller is None:
            raise ValueError(f"the {POLICY_LABELS[self.policy]} policy needs a controller")
        if self.policy == "prr":
            return prr_ext.PRR(controller, tau=self.param)
        if self.policy == "localleap":
            return prr_ext.LocalLeap(tau=self.param, relaxed_tau=max(0.0, self.param - 0.15), radius=4)
        if self.policy == "slowfast":
            return prr_ext.SlowFast(fill_threshold=self.param)
        if self.policy == "klass":
            return prr_ext.KLASS(conf_threshold=self.param)
        if self.policy == "r2":
            return prr_ext.R2(base=prr_ext.Threshold(tau=self.param))
        if self.policy == "r2prr":
            return prr_ext.R2(base=prr_ext.PRR(controller, tau=self.param))
        raise ValueError(f"unknown policy {self.policy!r}; known: {POLICY_NAMES}")


def param_error(policy: str, value: float) -> Optional[str]:
    """Why `policy` cannot take the hyper-parameter `value` (the policy's own check, e.g. "tau must lie in [0, 1],
    got 1.5"), or None. Commands ask before any decoding, so that a bad grid value fails at once."""
    try:
        RunSpec(policy, value).make_policy(prr_ext.Controller.init(0) if policy in NEEDS_CONTROLLER else None)
    except (ValueError, TypeError) as e:
        return str(e)
    return None


def steps_for(family: T.TaskFamily, steps_frac: float, gen_length: int, block_length: int) -> int:
    """frac * gen_length, rounded to a positive multiple of the number of blocks."""
    nb = gen_length // block_length
    return max(nb, int(round(steps_frac * gen_length / nb)) * nb)


def decode_batch(model: Callable, x: torch.Tensor, prompt_lens: torch.Tensor, *, block_length: int, steps: int,
                 policy: prr_ext.Policy, mask_id: int, pad_id: int = 0, temperature: float = 0.0,
                 eos_id: Optional[int] = None):
    """Decode one left-padded batch (canvas `x` from `make_canvas`) with `prr_ext.generate`, the pads masked by
    attention_mask: (final canvas, nfe [B], seconds). eos_id: EOS early exit (generate's eos_fill with this id): a
    row whose answer and its EOS are committed gets EOS everywhere after and takes no more forwards."""
    P = int(prompt_lens.max())
    G = x.shape[1] - P
    prompt_ids = x[:, :P]
    out = prr_ext.generate(model, prompt_ids, gen_length=G, block_length=block_length, steps=steps,
                           policy=policy, temperature=temperature, mask_id=mask_id,
                           attention_mask=(prompt_ids != pad_id).to(torch.int64),
                           confidence_dtype=torch.float32, eos_id=eos_id, eos_fill=eos_id is not None)
    return out.tokens, out.nfe, out.seconds


@torch.inference_mode()
def evaluate(model: MaskedDiffusionLM, family: str, examples: Sequence[T.Example], spec: RunSpec, *,
             batch_size: int = 64, device="cpu", controller=None, gen_length: Optional[int] = None,
             block_length: Optional[int] = None, on_batch: Optional[Callable[[], None]] = None,
             keep_responses: bool = False, eos_exit: bool = False) -> Dict:
    """Decode `examples` of `family` with one sweep point; accuracy, NFE, TPF, tokens/s.

    eos_exit: EOS early exit (`decode_batch`), so that a row's forwards stop with its answer: the NFE of answers
    shorter than the canvas then count the answer's slots, not the canvas's (off: every slot is decoded).

    The result also keeps, in the order of `examples`, `correct` (1 when the checker accepts the response, else 0)
    and `nfe_per_prompt` (the forwards that prompt's row took): the bootstrap intervals and paired comparisons
    below resample prompts, so they need the per-prompt values, not only the means. `responses` only with
    `keep_responses`.
    """
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
                                            mask_id=tok.mask_id, pad_id=tok.pad_id,
                                            eos_id=tok.eos_id if eos_exit else None)
        seconds += secs
        gs = final.shape[1] - G
        resp = decode_responses(tok, final, gs)
        correct += [int(bool(fam.check(e, r))) for e, r in zip(chunk, resp)]
        nfe += [int(v) for v in row_nfe.tolist()]
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
           "seconds": seconds, "batch_size": batch_size, "eos_exit": bool(eos_exit), "correct": correct,
           "nfe_per_prompt": nfe}
    if keep_responses:
        out["responses"] = responses
    return out


# ---------------------------------------------------------------------------------------------------------------
# devices and summaries
# ---------------------------------------------------------------------------------------------------------------
def pick_device(requested: str = "auto") -> Tuple[torch.device, Optional[str]]:
    """(device, note) for a --device value. "auto": the GPU when torch sees one and prr_ext has CUDA kernels, else
    the CPU, with a note saying why a present GPU is not used. ValueError (saying what is missing) when CUDA is asked
    for and torch cannot use it, or prr_ext was built without its CUDA kernels."""
    dev = resolve_device(requested)
    if dev.type != "cuda":
        return dev, None
    if prr_ext.has_cuda_kernels():
        return dev, None
    if requested == "auto":
        return torch.device("cpu"), ("a CUDA GPU is present, but this build of prr_ext has no CUDA kernels "
                                     "(built without nvcc, or with PRR_EXT_FORCE_CPU=1): running on the CPU. Rebuild "
                                     "with `pip install --no-build-isolation .` where nvcc is found to use the GPU.")
    raise ValueError(f"{requested} was asked for, but this build of prr_ext has no CUDA kernels (built without nvcc, "
                     "or with PRR_EXT_FORCE_CPU=1); rebuild it where nvcc is found "
                     "(pip install --no-build-isolation .), or use --device cpu")


def pick_device_arg(ap: argparse.ArgumentParser, requested: str) -> Tuple[torch.device, Optional[str]]:
    """pick_device for a command's --device value; a device it cannot use is a usage error naming --device."""
    try:
        return pick_device(requested)
    except ValueError as e:
        ap.error(f"argument --device: {e}")


def device_label(device: torch.device) -> str:
    """"cpu" or "cuda:0 (NVIDIA H200)"."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


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


ADAPTIVE_POLICIES = ("threshold", "factor", "eb", "prr", "localleap", "slowfast", "klass", "r2", "r2prr")


def _per_prompt(r: Dict, key: str) -> List:
    if key not in r:
        raise ValueError(f"result {r.get('task')!r} {r.get('label')!r} has no per-prompt {key!r}: intervals need "
                         "results of evaluate() that keep them")
    return r[key]


def add_accuracy_intervals(results: List[Dict], *, n_boot: int = BOOTSTRAP_RESAMPLES, level: float = 0.95,
                           seed: int = 0) -> None:
    """Give every result (of `evaluate`) an `accuracy_interval`: [low, high] in percent, a bootstrap over its
    prompts (`bootstrap_interval` of 100 * correct).

    At 0 % or 100 % accuracy every resample gives the same value and the interval has no width: the bootstrap
    cannot see failures the prompts never showed, so such an interval says "n prompts, none failed", not "exact".
    """
    for r in results:
        r["accuracy_interval"] = list(bootstrap_interval([100.0 * c for c in _per_prompt(r, "correct")], n_boot,
                                                         level, seed))


def best_point(rows: Sequence[Dict]) -> Dict:
    """A policy's best point: the highest accuracy, ties broken by the fewest mean NFE."""
    return max(rows, key=lambda r: (r["accuracy"], -r["mean_nfe"]))


def summarize_noise(results: List[Dict], *, n_boot: int = BOOTSTRAP_RESAMPLES, level: float = 0.95,
                    seed: int = 0) -> Dict:
    """What summarize() reports, with its noise: per task and policy the AUP interval, per task the paired
    comparisons.

    Parameters
    ----------
    results : list of dict
        Results of `evaluate`, each task's points measured on the same prompts.
    n_boot : int
        Bootstrap resamples; 0: no intervals (the paired comparisons keep their exact tests).
    level, seed
        As in `bootstrap_interval`; one seed for everything, so that every statistic on a task's prompts is
        computed on the same resamples.

    Returns
    -------
    dict
        "aup_interval": {task: {policy: [low, high]}} (only with n_boot > 0; [0, 0] where every point of the task
        has accuracy 0, as summarize() gives AUP 0 there);
        "paired": {task: [comparison, ...]}: each adaptive policy's best point (`best_point`) against vanilla
        (LowConfidence with steps = gen_length, one token per forward) and against every other adaptive policy's
        best point, each a `paired_comparison` (A = the first named) with a, b (labels), policy_a, policy_b,
        mean_nfe_a, mean_nfe_b. The best points are chosen on the same prompts they are compared on, which favours
        a policy with more points a little; the comparison is meant to tell noise from a difference, not to tune.
    """
    summ = summarize(results)
    out: Dict = {"paired": {}}
    if n_boot:
        out["aup_interval"] = {}
    for task in dict.fromkeys(r["task"] for r in results):
        rows = [r for r in results if r["task"] == task]
        if n_boot:
            out["aup_interval"][task] = {}
            for pol in dict.fromkeys(r["policy"] for r in rows):
                pr = [r for r in rows if r["policy"] == pol]
                y_max = summ["y_max"][task]
                out["aup_interval"][task][pol] = [0.0, 0.0] if not y_max > 0 else list(aup_interval(
                    [_per_prompt(r, "correct") for r in pr], [_per_prompt(r, "nfe_per_prompt") for r in pr],
                    [r["gen_length"] for r in pr], y_max, n_boot=n_boot, level=level, seed=seed))
        vanilla = [r for r in rows if r["policy"] == "lowconf" and r["steps_frac"] == 1.0]
        best = [best_point([r for r in rows if r["policy"] == p]) for p in ADAPTIVE_POLICIES
                if any(r["policy"] == p for r in rows)]
        pairs = [(x, vanilla[0]) for x in best] if vanilla else []
        pairs += [(x, y) for i, x in enumerate(best) for y in best[i + 1:]]
        out["paired"][task] = []
        for x, y in pairs:
            c = paired_comparison(_per_prompt(x, "correct"), _per_prompt(y, "correct"), n_boot=n_boot, level=level,
                                  seed=seed, names=(x["label"], y["label"]))
            out["paired"][task].append({"a": x["label"], "b": y["label"], "policy_a": x["policy"],
                                        "policy_b": y["policy"], "mean_nfe_a": x["mean_nfe"],
                                        "mean_nfe_b": y["mean_nfe"], **c})
    return out


# ---------------------------------------------------------------------------------------------------------------
# the Pareto plot
# ---------------------------------------------------------------------------------------------------------------
# (colour, marker, marker size, offset in points): distinct hollow shapes, each policy's drawn a few points off the
# true place in its own direction, so that points of different policies at the same (NFE, accuracy) -- the adaptive
# rules often are -- stay visible side by side instead of hiding each other.
POLICY_STYLE = {"lowconf": ("tab:gray", "o", 8, (0, 0)), "threshold": ("tab:blue", "s", 9, (-4, 0)),
                "factor": ("tab:green", "D", 8, (4, 0)), "eb": ("tab:orange", "^", 9, (0, -4)),
                "prr": ("tab:red", "*", 13, (0, 4)), "localleap": ("tab:purple", "v", 9, (-3, 3)),
                "slowfast": ("tab:brown", "P", 9, (3, 3)), "klass": ("tab:pink", "X", 9, (-3, -3)),
                "r2": ("tab:cyan", "h", 9, (3, -3)), "r2prr": ("tab:olive", "p", 10, (0, 6))}


def have_matplotlib() -> bool:
    """Whether the plot can be drawn (matplotlib is the optional extra `plot`: pip install matplotlib)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_format_error(path: str) -> Optional[str]:
    """Why matplotlib cannot save a plot at `path` (its extension names no format it writes), or None (also when
    matplotlib is missing: then no plot is drawn). Commands ask before their work, not at its end."""
    if not have_matplotlib():
        return None
    from matplotlib.figure import Figure

    ext = os.path.splitext(path)[1][1:].lower()
    formats = Figure().canvas.get_supported_filetypes()
    if ext not in formats:
        what = "." + ext if ext else "a file without an extension"
        return f"{path}: matplotlib writes {', '.join('.' + f for f in sorted(formats))}, not {what}"
    return None


def plot_pareto(results: List[Dict], path: str, title: str = "accuracy vs NFE") -> None:
    """One panel per task: accuracy (%) vs mean NFE (log scale), one curve per policy (points sorted by NFE).
    Needs matplotlib (ImportError without it: see have_matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import matplotlib.transforms

    tasks = list(dict.fromkeys(r["task"] for r in results))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4.6), squeeze=False)
    handles = {}
    for ax, task in zip(axes[0], tasks):
        rows = [r for r in results if r["task"] == task]
        for pol in dict.fromkeys(r["policy"] for r in rows):
            color, marker, size, (dx, dy) = POLICY_STYLE.get(pol, ("black", "x", 8, (0, 0)))
            shift = matplotlib.transforms.ScaledTranslation(dx / 72, dy / 72, fig.dpi_scale_trans)
            pr = sorted((r for r in rows if r["policy"] == pol), key=lambda r: r["mean_nfe"])
            xy = [(r["mean_nfe"], r["accuracy"]) for r in pr]
            (line,) = ax.plot(*zip(*xy), marker=marker, ms=size, mew=1.6, mfc="none", color=color, lw=1.2, alpha=0.9,
                              clip_on=False, transform=ax.transData + shift)
            ax.update_datalim(xy)  # the shifted transform keeps the line out of the autoscaling
            handles.setdefault(POLICY_LABELS.get(pol, pol), line)
        ax.autoscale_view()
        lo = min(r["accuracy"] for r in rows)
        ax.set_ylim(max(0.0, lo - max(1.0, 0.08 * (100.0 - lo))), 100.0)  # accuracy stops at 100 %
        ax.set_title(f"{task} (G={rows[0]['gen_length']}, n={rows[0]['n']})", pad=10)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([1, 2, 3, 5, 10, 20, 50, 100, 200, 500]))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("mean NFE (forwards per prompt, log scale)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=len(handles), frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
