"""`prr_ext.step`: a thin Python wrapper over the C++ op `torch.ops.prr_ext.step` (schema in csrc/prr_ops.cpp).

The wrapper validates arguments (clear Python errors naming the argument), draws LLaDA-exact noise when
rng="torch", and calls the op, which does all the math in one pass (one kernel launch on CUDA).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _C  # noqa: F401  (registers torch.ops.prr_ext.*)
from .policies import PRR, POLICY_RANDOM
from .reference import NUM_STATS
from .state import CONFIDENCE_DTYPES, State

LOGITS_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@torch.library.register_fake("prr_ext::step")
def _step_fake(logits, x, row_state, traj, prev_p1, workspace, seed, prompt_lens, controller, scores,
               extra_features, candidates, random_conf, mask_id, gen_start, block_length, steps, policy,
               confidence_dtype, shaping, union_schedule, temperature, param, alpha, mlp_dims):
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


def step(logits: torch.Tensor, state: State, *, scores: Optional[torch.Tensor] = None,
         extra_features: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One denoising step: choose and commit tokens into `state.x` in place.

    Args:
      logits: [B, L, V] logits of the whole canvas, or [B, block_length, V] of the active block only (bf16, fp16,
              fp32 or fp64; any strides, unit stride in V preferred). Only rows of masked positions inside the
              active block are read.
      state:  a `prr_ext.State`.
      scores: optional [B, Lr] PRR stability scores in (0, 1) that replace the controller MLP (e.g. from an external
              hidden-state head).
      extra_features: optional [B, Lr, F] extra controller inputs (F = controller.extra_features).

    Returns the [B, L] bool mask of the positions committed at this step. The candidate tokens and per-token
    statistics of the step are left in `state.last_tokens` [B, Lr] and `state.last_stats` [B, Lr, 7]
    (columns: reference.STAT_*).

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
    pol = state.policy
    is_prr = isinstance(pol, PRR)
    if (scores is not None or extra_features is not None) and not is_prr:
        raise ValueError("scores / extra_features are only used by the PRR policy")
    scores = _check_rows_tensor("scores", scores, B, Lr, x.device)
    n_extra = pol.controller.extra_features if is_prr else 0
    if is_prr and scores is None and n_extra and extra_features is None:
        raise ValueError(f"the controller expects {n_extra} extra_features per token; pass extra_features "
                         f"[B, Lr, {n_extra}] (or scores)")
    extra_features = _check_rows_tensor("extra_features", extra_features, B, Lr, x.device,
                                        n_extra if extra_features is not None else None)

    candidates = random_conf = None
    if state.rng == "torch":  # LLaDA's exact draws, in its order: Gumbel noise first, then the random key
        if state.temperature > 0:
            u = torch.rand(logits.shape, dtype=torch.float64, device=x.device, generator=state.generator)
            gumbel_scores = logits.to(torch.float64).exp() / (-torch.log(u)) ** state.temperature
            gumbel_scores[..., state.mask_id] = -1.0  # the mask token is never a candidate
            candidates = gumbel_scores.argmax(-1)
        if pol.code == POLICY_RANDOM:
            random_conf = torch.rand((B, Lr), device=x.device, generator=state.generator)

    commit, tokens, stats = torch.ops.prr_ext.step(
        logits, x, state.row_state, state.traj, state.prev_p1, state.workspace, state.seed, state.prompt_lens,
        state.controller_buf, scores, extra_features, candidates, random_conf, state.mask_id, state.gen_start,
        state.block_length, state.steps, pol.code, CONFIDENCE_DTYPES[state.confidence_dtype],
        pol.shaping_code if is_prr else 0, bool(getattr(pol, "union_schedule", True)), state.temperature,
        pol.param, float(getattr(pol, "alpha", 1.0)), pol.controller.dims() if is_prr else [0, 0, 0])
    state.last_tokens, state.last_stats = tokens, stats
    return commit
