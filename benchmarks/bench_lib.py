"""Shared pieces of the step benchmarks (benchmarks/run_bench.py, benchmarks/bench_step.py, benchmarks/dev/*.py).

* the workload: shapes and policies (bf16 logits, V = 126464, every L position masked and active, plus the
  full-sequence case: 1024 logits rows of which a 32-position block is active);
* `KernelBench`: prr_ext.step timed inside a CUDA graph of N steps, each on its own fresh State (so every timed step
  sees all positions masked), CUDA events around the replay, median over repeats; logits rotate over enough buffers
  that the bytes read per replay exceed twice the L2;
* `read_bandwidth`: amax over a 4 GiB bf16 tensor (the floor's denominator, measured in the same run);
* the baselines: `llada_step_eager` (LLaDA's low-confidence step in plain torch: softmax -> gather -> masked top-k,
  over the logits LLaDA computes it on) and `vector_step` (an equivalent pure-torch step per policy, for
  torch.compile);
* `launch_overrides`: the CUDA launcher's PRR_CUDA_* overrides for a block of code (side-by-side launch shapes);
* `git_commit` / `git_kernel` / `device_slug`: what a result file records about the run.
"""
from __future__ import annotations

import contextlib
import math
import os
import statistics
import subprocess
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional

import torch
import torch.nn.functional as F

import prr_ext
from prr_ext import _C
from render_results import device_slug  # noqa: F401  (re-exported: the device part of a result file's name)

V_BENCH = 126464
MASK_ID = 126336  # LLaDA's mask token

# (label, B, canvas L, block_length, logits rows): all L positions masked, the block covers the canvas, except the
# full-sequence case where the canvas is 1024 long, the logits cover it, and the active block has 32 positions.
SHAPES = [
    ("(1,32)", 1, 32, 32),
    ("(8,32)", 8, 32, 32),
    ("(1,256)", 1, 256, 256),
    ("(8,256)", 8, 256, 256),
    ("(32,256)", 32, 256, 256),
    ("(1,1024)", 1, 1024, 1024),
    ("full (1,1024) blk 32", 1, 1024, 32),
]


def make_policy(name: str):
    if name == "LowConfidence":
        return prr_ext.LowConfidence()
    if name == "RandomRemask":
        return prr_ext.RandomRemask()
    if name == "Threshold":
        return prr_ext.Threshold(0.9)
    if name == "Factor":
        return prr_ext.Factor(1.0)
    if name == "EntropyBound":
        return prr_ext.EntropyBound(0.1)
    if name == "PRR":
        return prr_ext.PRR(prr_ext.Controller.init(0), tau=0.9)  # temperature shaping: the 2-sweep path
    if name == "LocalLeap":
        return prr_ext.LocalLeap()
    if name == "SlowFast":
        return prr_ext.SlowFast()
    if name == "KLASS":
        return prr_ext.KLASS()  # its KL sweep: a second pass over the row, as PRR's temperature shaping
    if name == "R2":
        return prr_ext.R2(base=prr_ext.Threshold(0.9))
    raise ValueError(f"unknown policy {name!r}: use one of {', '.join(POLICIES + RULES)}")


POLICIES = ["LowConfidence", "RandomRemask", "Threshold", "Factor", "EntropyBound", "PRR"]
# The rules added beside them (LocalLeap, SlowFast, KLASS, R2 over Threshold), timed on request
# (run_bench.py --policies LocalLeap,SlowFast,KLASS,R2): they have no torch.compile baseline (vector_step covers the
# six above), and a full run is the six.
RULES = ["LocalLeap", "SlowFast", "KLASS", "R2"]

# The CUDA launcher's overrides (csrc/cuda: read from the environment once, re-read by
# prr_ext._C.reload_launch_overrides()); launch_overrides() accepts these names only, so that a misspelt knob cannot
# silently time the default launch.
LAUNCH_OVERRIDES = ("PRR_CUDA_CS", "PRR_CUDA_NT", "PRR_CUDA_PACKED", "PRR_CUDA_SELECT_SORT", "PRR_CUDA_PERSIST",
                    "PRR_CUDA_DYNROWS")


def _reload_launch_overrides() -> None:
    # Builds from before the overrides were read once into a struct (an earlier kernel built by
    # benchmarks/dev/build_copy.sh -r kernel-v*) have no reload function: their launcher reads the environment at
    # every launch, so there is nothing to re-read.
    reload = getattr(_C, "reload_launch_overrides", None)
    if reload is not None:
        reload()


@contextlib.contextmanager
def launch_overrides(env: Dict[str, str]) -> Iterator[None]:
    """Run the block with the CUDA launcher's overrides `env` (e.g. {"PRR_CUDA_NT": "128"}) set, then restore the
    environment. The launcher reads the variables once, so each change is followed by
    prr_ext._C.reload_launch_overrides(). A CUDA graph captured inside the block keeps the launch shape it captured.
    An empty `env` changes nothing."""
    unknown = sorted(set(env) - set(LAUNCH_OVERRIDES))
    if unknown:
        raise ValueError(f"unknown CUDA launch override(s) {', '.join(unknown)}: use {', '.join(LAUNCH_OVERRIDES)}")
    if not env:
        yield
        return
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update({k: str(v) for k, v in env.items()})
    _reload_launch_overrides()
    try:
        yield
    finally:
        for k, old in saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old
        _reload_launch_overrides()


def parse_variants(spec: str, arg: str = "--variants") -> List[tuple]:
    """'label:PRR_CUDA_NT=64,PRR_CUDA_CS=1;label2:...' -> [(label, {name: value})], checked."""
    out = []
    for item in filter(None, (v.strip() for v in spec.split(";"))):
        label, sep, kv = item.partition(":")
        pairs = [p for p in kv.split(",") if p]
        if not sep or not label or not pairs or any("=" not in p for p in pairs):
            raise SystemExit(f"{arg}: '{item}' is not 'label:NAME=VALUE[,NAME=VALUE...]'")
        env = dict(p.split("=", 1) for p in pairs)
        unknown = sorted(set(env) - set(LAUNCH_OVERRIDES))
        if unknown:
            raise SystemExit(f"{arg}: unknown launch override(s) {', '.join(unknown)} in '{item}'; "
                             f"known: {', '.join(LAUNCH_OVERRIDES)}")
        out.append((label, env))
    return out


def _git(*args: str) -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_commit() -> str:
    """The tree's commit (short hash, '+dirty' with uncommitted changes to tracked files). PRR_COMMIT overrides it,
    for a copy whose git metadata is not the tree's (a device machine's)."""
    if os.environ.get("PRR_COMMIT"):
        return os.environ["PRR_COMMIT"]
    c = _git("rev-parse", "--short", "HEAD") or "unknown"
    return c + ("+dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")


def git_kernel() -> str:
    """The newest kernel-v* tag at or before the commit (git describe: 'kernel-v17', 'kernel-v17-3-g<hash>'), or ''.
    PRR_KERNEL overrides it, like PRR_COMMIT."""
    if os.environ.get("PRR_KERNEL"):
        return os.environ["PRR_KERNEL"]
    return _git("describe", "--tags", "--match", "kernel-v*", "--dirty")


@dataclass
class Case:
    label: str
    B: int
    L: int
    BL: int
    policy: str

    @property
    def rows_read(self) -> int:  # masked rows of the active block
        return self.B * self.BL

    @property
    def bytes_read(self) -> int:
        return self.rows_read * V_BENCH * 2


def make_state(case: Case, policy, seed: int = 0) -> prr_ext.State:
    x = torch.full((case.B, case.L), MASK_ID, dtype=torch.int64, device="cuda")
    steps = case.L // case.BL * 4  # a few steps per block; the timed step is each state's first
    return prr_ext.State(x, MASK_ID, 0, case.BL, steps, policy,
                         seed=torch.arange(case.B, dtype=torch.int64) + seed)


def make_logits(case: Case, n: int, gen: torch.Generator) -> List[torch.Tensor]:
    out = []
    for _ in range(n):
        t = torch.empty(case.B, case.L, V_BENCH, dtype=torch.bfloat16, device="cuda")
        t.normal_(0.0, 3.0, generator=gen)
        out.append(t)
    return out


def n_buffers(case: Case, l2_bytes: int, cap_bytes: int = 12 << 30) -> int:
    """Logits buffers to rotate: bytes read per rotation >= 2 x L2, total allocation <= cap."""
    want = max(2, math.ceil(2 * l2_bytes / case.bytes_read))
    full = case.B * case.L * V_BENCH * 2
    return max(1, min(want, cap_bytes // full))


def cuda_time_ms(fn: Callable[[], None], iters: int) -> List[float]:
    """Per-call times (ms) of `fn`, CUDA events around each call."""
    out = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        out.append(s.elapsed_time(e))
    return out


def read_bandwidth(gib: float = 4.0, iters: int = 20) -> float:
    """Bytes/s of a pure read: amax over a `gib` GiB bf16 tensor (median)."""
    n = int(gib * (1 << 30)) // 2
    t = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
    for _ in range(3):
        torch.amax(t)
    ms = statistics.median(cuda_time_ms(lambda: torch.amax(t), iters))
    del t
    torch.cuda.empty_cache()
    return n * 2 / (ms * 1e-3)


class KernelBench:
    """prr_ext.step for one case, captured in a CUDA graph of `n_steps` steps on fresh states."""

    def __init__(self, case: Case, n_steps: int = 16, l2_bytes: int = 50 << 20, seed: int = 0):
        self.case = case
        pol = make_policy(case.policy)
        gen = torch.Generator(device="cuda").manual_seed(seed)
        self.logits = make_logits(case, n_buffers(case, l2_bytes), gen)
        self.states = [make_state(case, pol, seed=i) for i in range(n_steps)]
        self.saved = [(s.x.clone(), s.row_state.clone()) for s in self.states]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (module load, first launch) outside the capture
            for i, s in enumerate(self.states):
                prr_ext.step(self.logits[i % len(self.logits)], s)
        torch.cuda.current_stream().wait_stream(side)
        self.reset()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            for i, s in enumerate(self.states):
                prr_ext.step(self.logits[i % len(self.logits)], s)
        torch.cuda.synchronize()

    def reset(self):
        for s, (x, rs) in zip(self.states, self.saved):
            s.x.copy_(x)
            s.row_state.copy_(rs)
        torch.cuda.synchronize()

    def run_once(self) -> float:
        """One replay; returns µs per step."""
        self.reset()
        ms = cuda_time_ms(self.graph.replay, 1)[0]
        return ms * 1e3 / len(self.states)

    def median_us(self, repeats: int = 15) -> float:
        self.run_once()
        return statistics.median(self.run_once() for _ in range(repeats))


# ---------------------------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------------------------
def llada_step_eager(logits: torch.Tensor, x: torch.Tensor, mask_id: int, block_end: int, k: int,
                     softmax_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """LLaDA's low_confidence step (generate.py, temperature 0) in plain torch, on the logits it is given. The
    confidence softmax runs in `softmax_dtype`: fp32 here by default; fp64 is what LLaDA's generate.py used before
    June 2025 and what Fast-dLLM's copy of it still uses."""
    mask_index = x == mask_id
    x0 = torch.argmax(logits, dim=-1)
    p = F.softmax(logits.to(softmax_dtype), dim=-1)
    x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
    x0_p[:, block_end:] = -math.inf
    x0 = torch.where(mask_index, x0, x)
    confidence = torch.where(mask_index, x0_p, torch.tensor(-math.inf, device=x.device))
    transfer_index = torch.zeros_like(x0, dtype=torch.bool)
    for j in range(confidence.shape[0]):
        _, select_index = torch.topk(confidence[j], k=k)
        transfer_index[j, select_index] = True
    x = x.clone()
    x[transfer_index] = x0[transfer_index]
    return x


def vector_step(logits: torch.Tensor, x: torch.Tensor, lo: int, BL: int, mask_id: int, code: int, param: float,
                k: int, ctrl: Optional[List[torch.Tensor]] = None, t_max: float = 1.5, t_min: float = 0.25):
    """An equivalent pure-torch step (block rows only, fixed shapes, no host sync) for torch.compile: statistics,
    the policy's key, a stable sort, the commit count and the scatter into x. Returns (new x, commit mask)."""
    rows = logits[:, lo:lo + BL].float()
    masked = x[:, lo:lo + BL] == mask_id
    nm = rows.clone()
    nm[..., mask_id] = -math.inf
    top2 = nm.topk(2, dim=-1)
    lse = torch.logsumexp(rows, dim=-1)
    p1 = torch.exp(top2.values[..., 0] - lse)
    p2 = torch.exp(top2.values[..., 1] - lse)
    logp = rows - lse[..., None]
    pr = logp.exp()
    ent = -torch.where(pr > 0, pr * logp, torch.zeros_like(pr)).sum(-1)
    cand = top2.indices[..., 0]
    ninf = torch.tensor(-math.inf, device=x.device)
    if code == prr_ext.PRR.code:
        pos = torch.arange(BL, device=x.device, dtype=torch.float32).expand_as(p1) / BL
        one = torch.ones_like(p1)
        feats = torch.stack([one * 0.0, one * 0.0, one * 0.0, one, one * 0.0, pos, one * 0.0, one * 0.0, p1,
                             p1 - p2, ent / math.log(rows.shape[-1]), one * 0.0, one * 0.0], -1)
        mean, std, w0, b0, w1, b1, wo, bo = ctrl
        h = F.silu(((feats - mean) / std) @ w0.T + b0)
        h = F.silu(h @ w1.T + b1)
        s = torch.sigmoid(h @ wo.T + bo).squeeze(-1)
        temp = torch.exp((1 - s) * math.log(t_max) + s * math.log(t_min))
        key = torch.softmax(rows / temp[..., None], -1).gather(-1, cand[..., None]).squeeze(-1)
    elif code == prr_ext.EntropyBound.code:
        key = -ent
    elif code == prr_ext.RandomRemask.code:
        key = torch.rand_like(p1)
    else:
        key = p1
    key = torch.where(masked, key, ninf).double()
    srt, order = torch.sort(key, dim=-1, descending=True, stable=True)
    n = masked.sum(-1)
    valid = srt > -math.inf
    if code in (prr_ext.LowConfidence.code, prr_ext.RandomRemask.code):
        count = torch.clamp(n, max=k)
    else:
        floor = 1 if code == prr_ext.PRR.code else max(k, 1)
        if code in (prr_ext.Threshold.code, prr_ext.PRR.code):
            extra = ((srt >= param) & valid).sum(-1)
        elif code == prr_ext.Factor.code:
            m = torch.arange(1, BL + 1, device=x.device, dtype=torch.float64)
            ok = ((m + 1.0) * (1.0 - srt) < param) & valid
            extra = torch.cumprod(ok.long(), -1).sum(-1)
        else:
            h = torch.where(valid, -srt, torch.zeros_like(srt))
            before = torch.cumsum(h, -1) - h
            extra = torch.cumprod(((before <= param) & valid).long(), -1).sum(-1)
        count = torch.minimum(torch.clamp(extra, min=floor), n)
    take = torch.arange(BL, device=x.device)[None, :] < count[:, None]
    commit_blk = torch.zeros_like(masked).scatter(-1, order, take)
    newx = x.clone()
    newx[:, lo:lo + BL] = torch.where(commit_blk, cand, x[:, lo:lo + BL])
    return newx, commit_blk


def ctrl_tensors(policy) -> Optional[List[torch.Tensor]]:
    if not isinstance(policy, prr_ext.PRR):
        return None
    t = {k: v.cuda() for k, v in policy.controller.tensors.items()}
    return [t["in_mean"], t["in_std"], t["w0"], t["b0"], t["w1"], t["b1"], t["w_out"], t["b_out"]]


def eager_llada_us(case: Case, iters: int = 10, softmax_dtype: torch.dtype = torch.float32) -> float:
    gen = torch.Generator(device="cuda").manual_seed(1)
    lg = make_logits(case, 1, gen)[0]
    x = torch.full((case.B, case.L), MASK_ID, dtype=torch.int64, device="cuda")
    k = max(1, case.BL // 4)
    fn = lambda: llada_step_eager(lg, x, MASK_ID, case.BL, k, softmax_dtype)  # noqa: E731
    for _ in range(3):
        fn()
    return statistics.median(cuda_time_ms(fn, iters)) * 1e3


_COMPILED = {}
# one compiled function per policy, re-specialised per shape: allow the recompiles (the default limit is 8)
torch._dynamo.config.recompile_limit = 512
torch._dynamo.config.accumulated_recompile_limit = 8192


def compiled_us(case: Case, iters: int = 10) -> float:
    pol = make_policy(case.policy)
    key = (pol.code,)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(vector_step, dynamic=True, fullgraph=True)
    fn_c = _COMPILED[key]
    gen = torch.Generator(device="cuda").manual_seed(2)
    lg = make_logits(case, 1, gen)[0]
    x = torch.full((case.B, case.L), MASK_ID, dtype=torch.int64, device="cuda")
    k = max(1, case.BL // 4)
    ctrl = ctrl_tensors(pol)
    fn = lambda: fn_c(lg, x, 0, case.BL, MASK_ID, pol.code, pol.param, k, ctrl)  # noqa: E731
    for _ in range(3):
        fn()
    return statistics.median(cuda_time_ms(fn, iters)) * 1e3
