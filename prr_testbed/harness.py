"""The testbed's evaluation harness: decode task prompts with a commit policy and measure it.

For one (family, policy, hyper-parameters) point, `evaluate` gives accuracy (the exact checkers of prr_testbed.tasks,
on the fixed-seed *test* sets, which nothing is trained on), mean NFE (forwards per prompt), tokens per forward
(TPF = generation length / mean NFE; the <eos> slots count, as every slot of the canvas is decoded) and tokens/s
(generated slots per second of wall time, no KV cache). `summarize` adds, per family and policy, AUP over that
policy's points (y_max = the best accuracy of any point on the family); `plot_pareto` draws accuracy against NFE.

Decoding goes through `prr_ext.generate` (LLaDA style: semi-autoregressive blocks, every commit by `prr_ext.step`)
on left-padded batches (the model masks the pads), greedy (temperature 0), fp32 confidences.
The commands built on it: `python -m prr_testbed.sweep`, `python -m prr_testbed.demo`,
`python -m prr_testbed.train_controller`.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

import prr_ext

from . import tasks as T
from .cli import resolve_device
from .model import MaskedDiffusionLM, decode_responses, make_canvas

POLICY_NAMES = ("lowconf", "threshold", "factor", "eb", "prr")
POLICY_LABELS = {"lowconf": "LowConfidence", "threshold": "Threshold", "factor": "Factor", "eb": "EntropyBound",
                 "prr": "PRR"}


# ---------------------------------------------------------------------------------------------------------------
# AUP: the area under the accuracy-parallelism curve, as d3LLM defines it
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
    """Decode one left-padded batch (canvas `x` from `make_canvas`) with `prr_ext.generate`, the pads masked by
    attention_mask: (final canvas, nfe [B], seconds)."""
    P = int(prompt_lens.max())
    G = x.shape[1] - P
    prompt_ids = x[:, :P]
    out = prr_ext.generate(model, prompt_ids, gen_length=G, block_length=block_length, steps=steps,
                           policy=policy, temperature=temperature, mask_id=mask_id,
                           attention_mask=(prompt_ids != pad_id).to(torch.int64),
                           confidence_dtype=torch.float32)
    return out.tokens, out.nfe, out.seconds


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


# ---------------------------------------------------------------------------------------------------------------
# the Pareto plot
# ---------------------------------------------------------------------------------------------------------------
# (colour, marker, marker size, offset in points): distinct hollow shapes, each policy's drawn a few points off the
# true place in its own direction, so that points of different policies at the same (NFE, accuracy) -- the adaptive
# rules often are -- stay visible side by side instead of hiding each other.
POLICY_STYLE = {"lowconf": ("tab:gray", "o", 8, (0, 0)), "threshold": ("tab:blue", "s", 9, (-4, 0)),
                "factor": ("tab:green", "D", 8, (4, 0)), "eb": ("tab:orange", "^", 9, (0, -4)),
                "prr": ("tab:red", "*", 13, (0, 4))}


def have_matplotlib() -> bool:
    """Whether the plot can be drawn (matplotlib is the optional extra `plot`: pip install matplotlib)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


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
