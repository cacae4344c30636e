"""`prr_ext.step`: a thin Python wrapper over the C++ op `torch.ops.prr_ext.step` (schema in csrc/prr_ops.cpp).

The wrapper validates arguments (clear Python errors naming the argument), draws LLaDA-exact noise when
rng="torch", and calls the op, which does all the math in one pass (one kernel launch on CUDA).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ._load import _C  # noqa: F401  (registers torch.ops.prr_ext.*)
from .constants import CONFIDENCE_DTYPES, NUM_STATS, POLICY_RANDOM
from .policies import PRR
from .state import State

LOGITS_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@torch.library.register_fake("prr_ext::step")
def _step_fake(logits, x, *state_and_options):
    """Output shapes and dtypes of the op (the other arguments do not change them)."""
    B, L = x.shape
    Lr = logits.shape[1]
    return (x.new_empty((B, L), dtype=torch.bool), x.new_empty((B, Lr), dtype=torch.int64),
            logits.new_empty((B, Lr, NUM_STATS), dtype=torch.float32))


def has_cuda_kernels() -> bool:
    """Whether this build of prr_ext contains the CUDA implementation of the step."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("prr_ext::step", "CUDA")


def _check_rows_tensor(name: str, t: Optional[torch.Tensor], B: int, Lr: int, device, last: Optional[int] = None):
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    want = (B, Lr) if last is None else (B, Lr, last)
    if tuple(t.shape) != want:
        raise ValueError(f"{name} must have shape {want} (matching logits' [B, Lr]), got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the state is on {device}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    return t.float().contiguous()


def _argmax_nonmask(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """First index of the largest non-mask logit (the op's argmax), without copying the logits."""
    if mask_id < 0:  # a uniform canvas: no mask token
        return logits.argmax(-1)
    saved = logits[..., mask_id].clone()
    logits[..., mask_id] = -math.inf
    am = logits.argmax(-1)
    logits[..., mask_id] = saved
    return am


def llada_draws(logits: torch.Tensor, state: State, want_candidates: bool = False):
    """LLaDA's random draws from state.generator, in LLaDA's order (rng="torch"): one fp64 rand_like(logits) at
    T > 0, candidate = argmax(exp(l) / (-log u)^T) with the mask token excluded; then one fp32 rand([B, Lr]) for
    RandomRemask. At T == 0 the candidate is the argmax, computed only if `want_candidates`.
    Returns (candidates [B, Lr] int64 or None, random_conf [B, Lr] fp32 or None)."""
    cand = rconf = None
    if state.temperature > 0:
        u = torch.rand(logits.shape, dtype=torch.float64, device=logits.device, generator=state.generator)
        g = logits.to(torch.float64).exp() / (-torch.log(u)) ** state.temperature
        if state.mask_id >= 0:
            g[..., state.mask_id] = -1.0  # scores are >= 0: the mask token is never a candidate
        cand = g.argmax(-1)
    elif want_candidates:
        cand = _argmax_nonmask(logits, state.mask_id)
    if state.policy.code == POLICY_RANDOM:
        rconf = torch.rand(logits.shape[:2], device=logits.device, generator=state.generator)
    return cand, rconf


def step(logits: torch.Tensor, state: State, *, scores: Optional[torch.Tensor] = None,
         extra_features: Optional[torch.Tensor] = None, candidates: Optional[torch.Tensor] = None,
         random_conf: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One denoising step: choose and commit tokens into `state.x` in place.

    Args:
      logits: [B, L, V] logits of the whole canvas, or [B, block_length, V] of the active block only (bf16, fp16,
              fp32 or fp64; any strides, unit stride in V preferred). Only rows of masked positions inside the
              active block are read (of every block position on a uniform canvas, mask_id=None).
      state:  a `prr_ext.State`.
      scores: optional [B, Lr] PRR stability scores in (0, 1) that replace the controller MLP (e.g. from an external
              hidden-state head). Their range is not checked (that would synchronise with the host): clamp them.
      extra_features: optional [B, Lr, F] extra controller inputs (F = controller.extra_features).
      candidates: optional [B, Lr] int64 tokens to commit instead of the op's own choice (e.g. from your own
              sampler); the op still computes their confidence. Out-of-range tokens or mask_id are never committed.
      random_conf: optional [B, Lr] RandomRemask keys replacing the op's Philox draws (RandomRemask only).
      With rng="torch" and neither given, both are LLaDA's draws from state.generator (see llada_draws).

    Returns the [B, L] bool mask of the positions committed at this step. The candidate tokens and per-token
    statistics of the step are left in `state.last_tokens` [B, Lr] and `state.last_stats` [B, Lr, 7]
    (columns: reference.STAT_*).

    A step on a finished State (`state.done`) commits nothing. A State belongs to the canvas it was built for:
    for a new batch or length, build a new State.

    CUDA: one kernel launch, no host synchronisation, safe to capture in a CUDA graph (with rng="philox").
    """
    if not isinstance(state, State):
        raise TypeError(f"state must be a prr_ext.State, got {type(state).__name__}")
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a tensor, got {type(logits).__name__}")
    x = state.x
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, L, V] or [B, block_length, V], got shape {tuple(logits.shape)}")
    if logits.dtype not in LOGITS_DTYPES:
        raise TypeError(f"logits must be one of {LOGITS_DTYPES}, got {logits.dtype}")
    if logits.device != x.device:
        raise ValueError(f"logits are on {logits.device} but the state (x) is on {x.device}")
    B, L = x.shape
    if (B, L) != (state.row_state.shape[0], state.gen_start + state.gen_length) or x.dtype != torch.int64 \
            or not x.is_contiguous() or x.device != state.row_state.device:
        raise ValueError(f"state.x is a {tuple(x.shape)} {x.dtype} tensor on {x.device}, but this State was built for "
                         f"a contiguous ({state.row_state.shape[0]}, {state.gen_start + state.gen_length}) int64 "
                         f"canvas on {state.row_state.device}; build a new prr_ext.State for a new canvas")
    Lr, V = logits.shape[1], logits.shape[2]
    if logits.shape[0] != B:
        raise ValueError(f"logits batch size {logits.shape[0]} does not match the state's B={B}")
    if Lr not in (L, state.block_length):
        raise ValueError(f"logits must cover the whole canvas (L={L}) or one block (block_length="
                         f"{state.block_length}), got {Lr} positions")
    if V <= state.mask_id:
        raise ValueError(f"logits vocabulary size V={V} must be larger than mask_id={state.mask_id}")
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    pol = state.policy.base_rule
    is_prr = isinstance(pol, PRR)
    if (scores is not None or extra_features is not None) and not is_prr:
        raise ValueError("scores / extra_features are only used by the PRR policy")
    scores = _check_rows_tensor("scores", scores, B, Lr, x.device)
    n_extra = pol.controller.extra_features if is_prr else 0
    if extra_features is not None and n_extra == 0:
        raise ValueError("extra_features: this controller takes none (controller.extra_features = 0); leave it out, "
                         "or train a controller with extra features")
    if is_prr and scores is None and n_extra and extra_features is None:
        raise ValueError(f"the controller expects {n_extra} extra_features per token; pass extra_features "
                         f"[B, Lr, {n_extra}] (or scores)")
    extra_features = _check_rows_tensor("extra_features", extra_features, B, Lr, x.device,
                                        n_extra if extra_features is not None else None)

    if candidates is not None:
        if not isinstance(candidates, torch.Tensor) or tuple(candidates.shape) != (B, Lr):
            raise ValueError(f"candidates must be a [B, Lr]={(B, Lr)} tensor")
        if candidates.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"candidates must be int64 (or int32) token ids, got {candidates.dtype}")
        if candidates.device != x.device:
            raise ValueError(f"candidates are on {candidates.device} but the state (x) is on {x.device}")
        candidates = candidates.to(torch.int64).contiguous()
    if random_conf is not None and state.policy.code != POLICY_RANDOM:
        raise ValueError(f"random_conf is only used by RandomRemask, not {type(pol).__name__}; leave it out")
    random_conf = _check_rows_tensor("random_conf", random_conf, B, Lr, x.device)
    if state.rng == "torch" and candidates is None and random_conf is None:
        candidates, random_conf = llada_draws(logits, state)
    if state.needs_prev_logp and tuple(state.prev_logp.shape) != (B, state.block_length, V):
        # KLASS: the previous step's log-probabilities of the block, allocated once V is known (a decode loop that
        # is captured in a CUDA graph runs one step before the capture)
        state.prev_logp = torch.zeros(B, state.block_length, V, dtype=torch.float32, device=x.device)

    commit, tokens, stats = torch.ops.prr_ext.step(**op_arguments(logits, state, scores=scores,
                                                                  extra_features=extra_features,
                                                                  candidates=candidates, random_conf=random_conf))
    state.last_tokens, state.last_stats = tokens, stats
    return commit


def op_arguments(logits: torch.Tensor, state: State, *, scores: Optional[torch.Tensor] = None,
                 extra_features: Optional[torch.Tensor] = None, candidates: Optional[torch.Tensor] = None,
                 random_conf: Optional[torch.Tensor] = None) -> dict:
    """The arguments of `torch.ops.prr_ext.step` for one step of `state`, by name in the schema's order
    (csrc/prr_ops.cpp): `torch.ops.prr_ext.step(**args)` or `(*args.values())`. No checks: `step` validates first;
    tests call the op directly with one argument replaced."""
    pol = state.policy.base_rule
    is_prr = isinstance(pol, PRR)
    return dict(
        logits=logits, x=state.x, row_state=state.row_state, traj=state.traj, prev_p1=state.prev_p1,
        workspace=state.workspace, rule_state=state.rule_state, prev_logp=state.prev_logp, seed=state.seed,
        prompt_lens=state.prompt_lens, controller=state.controller_buf,
        scores=scores, extra_features=extra_features, candidates=candidates, random_conf=random_conf,
        mask_id=state.mask_id, gen_start=state.gen_start, block_length=state.block_length, steps=state.steps,
        policy=pol.code, confidence_dtype=CONFIDENCE_DTYPES[state.confidence_dtype],
        shaping=pol.shaping_code if is_prr else 0, union_schedule=bool(getattr(pol, "union_schedule", True)),
        temperature=state.temperature, param=pol.param, alpha=float(getattr(pol, "alpha", 1.0)),
        mlp_dims=pol.controller.dims() if is_prr else [0, 0, 0], rule_params=state.policy.rule_params())
