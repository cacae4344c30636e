"""Dream-compatible generation: Dream's `_sample` (Dream-org/Dream-v0-Instruct-7B generation_utils.py), in PyTorch.

This loop does not use the fused op: Dream's rule differs from every prr_ext policy (the token is the argmax of
the model-dtype (bf16) probabilities, not of the logits; the count k is one number for the whole batch, from the
batch-average mask count; there are no blocks). It reproduces `_sample` token for token, including:

* the logit right shift (position j is predicted from hidden state j - 1; position 0 keeps its own);
* probabilities, confidences, margins and negative entropies in the logits' dtype (no upcast);
* the float32 schedule `timesteps = linspace(1, eps, steps + 1)` and `k = int(n * (1 - s / t))` (the last step
  takes `int(n)`), with n = masks / B, a float32 batch average: with steps == gen_length step 0 commits nothing
  and the last step two;
* `top_p` / `top_k` / temperature change the confidences, not only the sampled token; sampling goes through
  torch.distributions.Categorical (whose validation failure falls back to the argmax, as Dream's try/except does);
* the same `torch.topk` / `torch.multinomial` calls on the same [B, L] tensors, so tie resolution is the
  reference's own.

Randomness: `generator=None` uses torch's global generator exactly as Dream does (`Categorical.sample`,
`torch.rand`, `torch.multinomial`); with a generator the same draws come from it (Categorical.sample is
`multinomial(probs / probs.sum(-1), 1, True)`).

Model calls: `model(x)` for unpadded batches; with padding (attention_mask has zeros) `model(x,
attention_mask=am4d, position_ids=tok_idx)` with Dream's [B, 1, L, L] boolean mask and cumulative position ids
(pads -> 1), the tensors `_sample` passes positionally.

Deviation from the upstream code path: when no hook is given the shifted logits are never materialised
(masked rows are gathered from the unshifted logits at j - 1); the values are identical.

Input checks (they only reject inputs; on everything they accept the result is `_sample`'s, token for token):

* arguments: steps a positive int, temperature finite >= 0, top_k a positive int or None, top_p in (0, 1] or None,
  eps in (0, 1), alg_temp finite >= 0 or None (ValueError naming the argument);
* every forward must return floating-point logits (float32, bfloat16, float16 or float64; else TypeError) of shape
  [B, P + gen_length, V], V the same at every step (else ValueError); logits_hook must return the same;
* non-finite logits: upstream `_sample` turns a masked position's logits row holding NaN or +Inf, or only -Inf, into
  NaN probabilities and commits token 0 there (the argmax of an all-NaN row; topk ranks NaN confidences first),
  and does the same when `logits / temperature` overflows. style="dream" does not follow Dream there: such a row
  is a ValueError (naming the step and the position), checked on the logits of the masked positions (after
  logits_hook) with one row max per position and one host sync per step. The op's rule (docs/semantics.md,
  "Non-finite logits": such rows are never committed and stay masked) applies to style="llada", not here; neither
  loop ever commits a token read from such a row. -Inf entries in a row with a finite maximum are ordinary
  zero-probability tokens (a logits_hook may forbid tokens that way).
"""
from __future__ import annotations

import math
import operator
import time
from typing import Any, Callable, Optional, Tuple

import torch
import torch.distributions as dists
import torch.nn.functional as F

from .decode_common import (GenerateResult, check_inputs, check_mask_id, first_forward, is_int, logits_of,
                            make_result, resolve_mask_id, sync_device)

__all__ = ["dream_generate", "sample_tokens", "DREAM_MASK_ID"]

DREAM_MASK_ID = 151666  # <|mask|>
ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")
LOGITS_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _top_p_logits(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, sorted_indices = torch.sort(logits, descending=True)
    cumulative_probs = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    remove = cumulative_probs > top_p
    remove[..., 1:] = remove[..., :-1].clone()  # keep the first token above the threshold
    remove[..., 0] = 0
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, sorted_indices, remove)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def _top_k_logits(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    top_k = min(top_k, logits.size(-1))
    remove = logits < torch.topk(logits, top_k)[0][..., -1, None]
    return logits.masked_fill(remove, torch.finfo(logits.dtype).min)


def sample_tokens(logits: torch.Tensor, temperature: float = 0.0, top_p: Optional[float] = None,
                  top_k: Optional[int] = None, margin_confidence: bool = False, neg_entropy: bool = False,
                  generator: Optional[torch.Generator] = None):
    """Dream's sample_tokens: (confidence, token) per row of `logits` [N, V], in the logits' dtype."""
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = _top_p_logits(logits, top_p)
    if top_k is not None:
        logits = _top_k_logits(logits, top_k)
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0:
        try:
            cat = dists.Categorical(probs=probs)  # normalises and validates exactly as Dream's call does
            if generator is None:
                x0 = cat.sample()
            else:
                x0 = torch.multinomial(cat.probs.reshape(-1, cat.probs.shape[-1]), 1, True,
                                       generator=generator).T.reshape(cat.batch_shape)
            confidence = torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)
        except Exception:  # Dream: fall back to the argmax
            confidence, x0 = probs.max(dim=-1)
    else:
        confidence, x0 = probs.max(dim=-1)
    if margin_confidence:
        sorted_probs, _ = torch.sort(probs, dim=-1, descending=True)
        confidence = sorted_probs[:, 0] - sorted_probs[:, 1]
    if neg_entropy:
        confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return confidence, x0


@torch.no_grad()
def dream_generate(model: Callable, prompt_ids: torch.Tensor, *, gen_length: int, steps: int, alg: str = "entropy",
                   temperature: float = 0.0, top_p: Optional[float] = None, top_k: Optional[int] = None,
                   alg_temp: Optional[float] = None, eps: float = 1e-3, mask_id: Optional[int] = None,
                   attention_mask: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
                   logits_hook: Optional[Callable] = None, tokens_hook: Optional[Callable] = None) -> GenerateResult:
    """Dream's `_sample` with max_length = P + gen_length. See the module docstring; returns a GenerateResult
    (nfe = steps for every row). mask_id None (default) takes the model's: `model.config.mask_token_id`, else
    `model.tokenizer.mask_token_id`, else Dream's 151666; an id outside the model's vocabulary is a ValueError.
    Sampling options as in Dream: top_k a positive int (None: off), top_p in (0, 1] (None or 1: off), eps in (0, 1)
    (the schedule's last timestep), alg_temp finite >= 0 (None or 0: the k most confident positions; > 0: sampled
    from softmax(confidence / alg_temp)); anything else is a ValueError naming the argument. The model's logits
    must be floating-point [B, P + gen_length, V]; a masked position whose logits row holds NaN or +Inf (or only
    -Inf) is a ValueError, where Dream would commit token 0 (module docstring)."""
    check_inputs(prompt_ids, attention_mask, gen_length)
    if alg not in ALGS:
        raise ValueError(f"alg must be one of {ALGS}, got {alg!r}")
    if not is_int(steps) or steps <= 0:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    temperature = _as_float("temperature", temperature, "a finite number >= 0")
    if not (temperature >= 0.0) or math.isinf(temperature):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    top_k = check_sampling_args(top_k, top_p, eps, alg_temp)
    mask_id, mask_from = resolve_mask_id(mask_id, model, DREAM_MASK_ID, "Dream's mask id")
    dev = prompt_ids.device
    B, P = prompt_ids.shape
    x = F.pad(prompt_ids.to(torch.int64), (0, gen_length), value=mask_id)  # [B, N], N = P + gen_length
    model_kwargs = dream_model_kwargs(attention_mask, gen_length)
    shift_whole = logits_hook is not None or tokens_hook is not None  # the hooks see the shifted [B, N, V] logits

    sync_device(dev)
    t0 = time.perf_counter()
    timesteps = torch.linspace(1, eps, steps + 1, device=dev)
    if tokens_hook is not None:
        x = tokens_hook(None, x, None)
    rows = torch.arange(B, device=dev)
    for i in range(steps):
        mask_index = x == mask_id  # [B, N]
        if i == 0:
            raw = first_forward(lambda: logits_of(model(x, **model_kwargs)), model, mask_id, mask_from, x)  # [B, N, V]
            check_logits(raw, x, None, "the model")
            check_mask_id(mask_id, mask_from, raw.shape[-1], "the logits' last dimension V")
            V = raw.shape[-1]
        else:
            raw = logits_of(model(x, **model_kwargs))
            check_logits(raw, x, V, "the model")
        logits, mask_logits = masked_logits(raw, x, mask_index, i, logits_hook, shift_whole)  # mask_logits [M, V]
        check_finite_rows(mask_logits, mask_index, temperature, i, logits_hook is not None)
        t, s = timesteps[i], timesteps[i + 1]
        if alg == "origin":
            p_transfer = 1 - s / t if i < steps - 1 else 1
            commit_origin(x, mask_index, mask_logits, p_transfer, mask_id, temperature, top_p, top_k, generator)
        else:
            num_mask_token = mask_index.sum() / mask_index.shape[0]  # float32 batch average
            k = int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
            commit_most_confident(x, mask_index, mask_logits, k, alg, rows, logits.dtype, mask_id, temperature,
                                  top_p, top_k, alg_temp, generator)
        if tokens_hook is not None:
            x = tokens_hook(i, x, logits)
    sync_device(dev)
    nfe = torch.full((B,), steps, dtype=torch.int64, device=dev)
    return make_result(x, P, nfe, mask_id, time.perf_counter() - t0, steps)


def _as_float(name: str, value: Any, what: str) -> float:
    """float(value) for a real number (Python, NumPy, a one-element tensor); else a ValueError naming `name`."""
    if not isinstance(value, (bool, str, bytes)):
        try:
            return float(value)
        except (TypeError, ValueError, RuntimeError):
            pass
    raise ValueError(f"{name} must be {what}, got {value!r}")


def check_sampling_args(top_k: Any, top_p: Any, eps: Any, alg_temp: Any) -> Optional[int]:
    """Dream's sampling options: top_k a positive int or None, top_p in (0, 1] or None, eps in (0, 1), alg_temp a
    finite number >= 0 or None; a ValueError naming the argument otherwise. Returns top_k as an int (from a NumPy
    or tensor integer); the loop uses the other values as passed."""
    if top_k is not None:
        try:  # ints, NumPy integers, one-element integer tensors; not bools, not floats
            k = None if isinstance(top_k, bool) else operator.index(top_k)
        except TypeError:
            k = None
        if k is None or k <= 0:
            raise ValueError(f"top_k must be a positive int (the number of most likely tokens kept when sampling) "
                             f"or None (no top-k filtering), got {top_k!r}")
        top_k = k
    if top_p is not None:
        what = "a number in (0, 1] (the nucleus' probability mass; 1 keeps every token) or None (no top-p filtering)"
        if not 0.0 < _as_float("top_p", top_p, what) <= 1.0:
            raise ValueError(f"top_p must be {what}, got {top_p!r}")
    what = "a number in (0, 1) (the schedule's last timestep: timesteps = linspace(1, eps, steps + 1); Dream's " \
           "default 1e-3)"
    if not 0.0 < _as_float("eps", eps, what) < 1.0:
        raise ValueError(f"eps must be {what}, got {eps!r}")
    if alg_temp is not None:
        what = "a finite number >= 0 or None (None or 0: commit the k most confident positions; > 0: sample them " \
               "from softmax(confidence / alg_temp))"
        t = _as_float("alg_temp", alg_temp, what)
        if not (t >= 0.0) or math.isinf(t):
            raise ValueError(f"alg_temp must be {what}, got {alg_temp!r}")
    return top_k


def check_logits(logits: Any, x: torch.Tensor, V: Optional[int], who: str) -> None:
    """The logits `who` ("the model", "logits_hook") returned for the canvas x [B, N]: a floating-point tensor of
    shape [B, N, V] (V: the first forward's, when known). Dream reads one row per canvas position (right-shifted),
    so logits of any other shape would be committed misaligned; integer logits have no softmax."""
    B, N = x.shape
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{who} must return the logits as a tensor [{B}, {N}, V], got {type(logits).__name__}")
    if logits.dim() != 3 or tuple(logits.shape[:2]) != (B, N) or (V is not None and logits.shape[2] != V):
        raise ValueError(f"{who} returned logits of shape {tuple(logits.shape)}; expected [{B}, {N}, "
                         f"{'V' if V is None else V}] (batch, canvas length P + gen_length, vocabulary"
                         f"{'' if V is None else ' as at the first forward'}): style='dream' reads the logits of "
                         f"every canvas position at every step, so return the full [B, L, V] logits")
    if logits.dtype not in LOGITS_DTYPES:
        names = ", ".join(str(d).replace("torch.", "") for d in LOGITS_DTYPES)
        raise TypeError(f"{who} returned {str(logits.dtype).replace('torch.', '')} logits; expected floating-point "
                        f"logits ({names}): return the model's raw float logits, not token ids or a cast of them")


def check_finite_rows(mask_logits: torch.Tensor, mask_index: torch.Tensor, temperature: float, i: int,
                      hooked: bool) -> None:
    """The logits rows of the masked positions [M, V] must each have a finite maximum (no NaN, no +Inf, not only
    -Inf), also after the division by temperature: Dream's `_sample` commits token 0 from such a row (NaN
    probabilities); style="dream" raises a ValueError instead. One row max per position and one host sync;
    nothing changes on finite input."""
    if mask_logits.shape[0] == 0:
        return
    row_max = mask_logits.amax(-1)  # NaN propagates
    finite = torch.isfinite(row_max)
    scaled_ok = torch.isfinite(row_max / temperature) if temperature > 0 else finite  # logits / temperature
    if bool((finite & scaled_ok).all()):
        return
    b_idx, j_idx = mask_index.nonzero(as_tuple=True)  # row-major: the order of mask_logits' rows
    source = "the model's logits" + (" (after logits_hook)" if hooked else "")
    non_finite = not bool(finite.all())
    bad = (~finite if non_finite else ~scaled_ok).nonzero()[:, 0]
    where = (f"for {bad.numel()} of the {mask_logits.shape[0]} masked positions at step {i} (first: batch row "
             f"{int(b_idx[bad[0]])}, canvas position {int(j_idx[bad[0]])})")
    if non_finite:
        raise ValueError(
            f"{source} hold NaN or +Inf (or only -Inf) {where}; Dream's _sample would commit token 0 there, "
            "style='dream' raises instead. Check the model's output (e.g. an fp16 overflow: run it in bfloat16 or "
            "float32)" + (" and the logits_hook (forbid tokens with -Inf, never force one with +Inf)" if hooked else ""))
    raise ValueError(
        f"temperature={temperature} overflows {source} ({str(mask_logits.dtype).replace('torch.', '')}): logits / "
        f"temperature is infinite {where}, where Dream's _sample would commit token 0; use a larger temperature, "
        "or temperature=0 (greedy)")


def dream_model_kwargs(attention_mask: Optional[torch.Tensor], gen_length: int) -> dict:
    """The model's keywords besides x: none for an unpadded batch; with padding (zeros in attention_mask) Dream's
    [B, 1, N, N] boolean attention mask and cumulative position ids [B, N] (pads -> 1), N = P + gen_length."""
    if attention_mask is None or not torch.any(attention_mask == 0.0):
        return {}
    am = F.pad(attention_mask, (0, gen_length), value=1.0)  # [B, N]
    tok_idx = am.long().cumsum(-1) - 1
    tok_idx.masked_fill_(am == 0, 1)
    am = torch.logical_and(am.unsqueeze(1).unsqueeze(-2), am.unsqueeze(1).unsqueeze(-1))  # [B, 1, N, N]
    return {"attention_mask": am, "position_ids": tok_idx}


def masked_logits(raw: torch.Tensor, x: torch.Tensor, mask_index: torch.Tensor, i: int,
                  logits_hook: Optional[Callable], shift_whole: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Dream's right shift (position j is predicted from hidden state j - 1; position 0 keeps its own):
    (logits [B, N, V] the hooks see, logits of the masked positions [M, V] in row-major order). Without hooks
    the shifted tensor is never built: the masked rows are gathered from `raw` at j - 1."""
    if shift_whole:
        logits = torch.cat([raw[:, :1], raw[:, :-1]], dim=1)
        if logits_hook is not None:
            logits = logits_hook(i, x, logits)
            check_logits(logits, x, raw.shape[-1], "logits_hook")
        return logits, logits[mask_index]
    b_idx, j_idx = mask_index.nonzero(as_tuple=True)
    return raw, raw[b_idx, (j_idx - 1).clamp_min(0)]


def commit_origin(x: torch.Tensor, mask_index: torch.Tensor, mask_logits: torch.Tensor, p_transfer, mask_id: int,
                  temperature: float, top_p: Optional[float], top_k: Optional[int],
                  generator: Optional[torch.Generator]) -> None:
    """alg="origin": every masked position is committed with probability p_transfer (one uniform draw each), to
    a token sampled from its logits; x [B, N] is written in place."""
    x0 = torch.zeros_like(x[mask_index], dtype=torch.long) + mask_id
    transfer = torch.rand(*x0.shape, device=x.device, generator=generator) < p_transfer
    _, x0[transfer] = sample_tokens(mask_logits[transfer], temperature=temperature, top_p=top_p, top_k=top_k,
                                    generator=generator)
    x[mask_index] = x0.clone()


def commit_most_confident(x: torch.Tensor, mask_index: torch.Tensor, mask_logits: torch.Tensor, k: int, alg: str,
                          rows: torch.Tensor, conf_dtype: torch.dtype, mask_id: int, temperature: float,
                          top_p: Optional[float], top_k: Optional[int], alg_temp: Optional[float],
                          generator: Optional[torch.Generator]) -> None:
    """alg in maskgit_plus / topk_margin / entropy: in every row, commit the k positions of highest confidence
    (sampled from softmax(confidence / alg_temp) when alg_temp is set); x [B, N] is written in place. A row with
    fewer than k masks gets -inf slots selected (Dream's batch-average k), writing mask_id there."""
    confidence, x0 = sample_tokens(mask_logits, temperature=temperature, top_p=top_p, top_k=top_k,
                                   margin_confidence=alg == "topk_margin", neg_entropy=alg == "entropy",
                                   generator=generator)
    full_confidence = torch.full_like(x, -torch.inf, dtype=conf_dtype)  # [B, N]
    full_confidence[mask_index] = confidence
    if k <= 0:
        return
    if alg_temp is None or alg_temp == 0:
        _, transfer_index = torch.topk(full_confidence, k)  # [B, k]
    else:
        full_confidence = F.softmax(full_confidence / alg_temp, dim=-1)
        transfer_index = torch.multinomial(full_confidence, num_samples=k, generator=generator)
    x_ = torch.zeros_like(x) + mask_id
    x_[mask_index] = x0.clone()
    row_indices = rows.unsqueeze(1).expand_as(transfer_index)
    x[row_indices, transfer_index] = x_[row_indices, transfer_index]
