"""generate(gen_length="auto"): each query gets its own canvas length, predicted with a data-driven margin.

    lp = prr_ext.LengthPredictor.load(path, fingerprint=prr_ext.model_fingerprint(model))
    out = prr_ext.generate(model, prompt_ids, gen_length="auto", length_predictor=lp, target_truncation=0.02,
                           block_length=32, steps=256, max_gen_length=256, policy=prr_ext.Threshold(0.9))
    out.gen_lengths, out.truncated, out.token_forwards          # [B] each

The loop, per batch:
  1. one forward of the prompt: the query features (`query_features`: the model's last hidden states, mean-pooled
     over each row's prompt tokens; the model must return `.hidden_states` when called with
     output_hidden_states=True, as Hugging Face models and prr_testbed's do);
  2. budgets from the predictor (`LengthPredictor.budget`: exp(prediction + the calibrated margin), rounded up to a
     block multiple, capped at max_gen_length);
  3. rows bucketed by budget, each bucket decoded by the ordinary loop (`generate` with that gen_length; `steps`
     scales with it: steps * G_b / max_gen_length, at least one step per block);
  4. truncation: a row whose canvas holds no EOS is truncated; truncation="extend" (default) appends
     `block_length`-multiples of masks after its committed tokens and continues (the committed canvas becomes the
     prompt of a continuation, its length doubling up to max_gen_length), "rerun" decodes the row again from scratch
     at double the length, None leaves it. Either way the cost is counted.
Cost: `token_forwards` = sum over the row's forwards of the canvas length the forward covered (the feature forward
counts its prompt). The result's tokens are [B, P + max of the final lengths], positions past a row's canvas filled
with EOS.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from typing import Callable, Optional

import torch

from .decode_common import GenerateResult, hidden_states_of
from .length import LengthPredictor, LengthPredictorFormatError, pooled_features

__all__ = ["query_features", "model_fingerprint", "generate_auto", "TRUNCATION_MODES"]

TRUNCATION_MODES = ("extend", "rerun", None)


def query_features(model: Callable, prompt_ids: torch.Tensor,
                   attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[B, D] float32: the model's last hidden states of the prompt, mean-pooled over each row's tokens."""
    kw = {"output_hidden_states": True}
    if attention_mask is not None:
        kw["attention_mask"] = attention_mask
    with torch.no_grad():
        out = model(prompt_ids, **kw)
    hidden = hidden_states_of(out, "the length predictor (its features are the pooled hidden states)")
    return pooled_features(hidden, attention_mask)


def model_fingerprint(model) -> str:
    """A short id of a model's architecture and weights (parameter names and shapes, and a sample of the first
    parameter's values): a length predictor remembers the one it was fitted for, and `LengthPredictor.load(...,
    fingerprint=)` refuses another. The tokenizer is part of it through the embedding's shape and values."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model_fingerprint needs a torch.nn.Module, got {type(model).__name__}")
    h = hashlib.sha256()
    first = None
    for name, p in model.named_parameters():
        h.update(f"{name}:{tuple(p.shape)};".encode())
        if first is None:
            first = p
    if first is not None:
        sample = first.detach().flatten()[:256].to("cpu", torch.float64)
        h.update(" ".join(f"{v:.6e}" for v in sample.tolist()).encode())
    return f"{type(model).__name__}@{h.hexdigest()[:16]}"


def _steps_for(steps: int, G: int, max_gen_length: int, block_length: int) -> int:
    """The step budget of a G-slot canvas: steps scaled by G / max_gen_length, a multiple of its block count."""
    blocks = G // block_length
    s = max(blocks, round(steps * G / max_gen_length))
    return int(math.ceil(s / blocks) * blocks)


def _has_eos(gen: torch.Tensor, eos_id: int) -> torch.Tensor:
    return (gen == eos_id).any(1)


def generate_auto(generate: Callable, model: Callable, prompt_ids: torch.Tensor, *,
                  length_predictor: Optional[LengthPredictor], target_truncation: float, block_length: int, steps: int,
                  max_gen_length: int, eos_id: int, attention_mask: Optional[torch.Tensor] = None,
                  truncation: Optional[str] = "extend", check_fingerprint: bool = True,
                  budgets: Optional[torch.Tensor] = None, **kw) -> GenerateResult:
    """The loop of the module docstring; `generate` is prr_ext.generate (called per bucket with a fixed length).
    `budgets` [B] (block multiples <= max_gen_length) replace the predictor's, e.g. oracle lengths in a benchmark;
    then no feature forward runs."""
    if budgets is None and not isinstance(length_predictor, LengthPredictor):
        raise TypeError("gen_length='auto' needs length_predictor=prr_ext.LengthPredictor.load(path), got "
                        f"{type(length_predictor).__name__}")
    if truncation not in TRUNCATION_MODES:
        raise ValueError(f"truncation must be one of {TRUNCATION_MODES}, got {truncation!r}")
    for name, v in (("block_length", block_length), ("steps", steps), ("max_gen_length", max_gen_length)):
        if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
            raise ValueError(f"gen_length='auto' needs {name} as a positive int, got {v!r}")
    if max_gen_length % block_length:
        raise ValueError(f"max_gen_length={max_gen_length} must be a multiple of block_length={block_length}")
    if budgets is None and check_fingerprint and length_predictor.fingerprint:
        # the model, or the module a call adapter wraps (prr_ext.hub's MaskedLMCall, DreamShiftedLogits: .model)
        module = model if isinstance(model, torch.nn.Module) else getattr(model, "model", None)
        fp = model_fingerprint(module) if isinstance(module, torch.nn.Module) else None
        if fp is None:
            warnings.warn(f"the length predictor was fitted for {length_predictor.fingerprint!r}; the model is a "
                          f"{type(model).__name__}, not a torch.nn.Module (nor one in its .model), so that is not "
                          "checked", stacklevel=3)
        elif fp != length_predictor.fingerprint:
            raise LengthPredictorFormatError(f"the length predictor was fitted for {length_predictor.fingerprint!r}, "
                                             f"not for this model ({fp!r}): fit one for this model and tokenizer")
    B, P = prompt_ids.shape
    dev = prompt_ids.device
    am = attention_mask
    plens = am.sum(1) if am is not None else torch.full((B,), P, dtype=torch.int64, device=dev)
    if budgets is None:
        feats = query_features(model, prompt_ids, am)
        budgets = length_predictor.budget(feats, target_truncation, multiple=block_length,
                                          maximum=max_gen_length).to(dev)
        token_forwards = plens.to(torch.float64).clone()  # the feature forward
    else:
        budgets = budgets.to(dev, torch.int64)
        if bool((budgets % block_length != 0).any()) or bool((budgets < 1).any()) or \
                bool((budgets > max_gen_length).any()):
            raise ValueError(f"budgets must be positive multiples of block_length={block_length} <= "
                             f"max_gen_length={max_gen_length}")
        token_forwards = torch.zeros(B, dtype=torch.float64, device=dev)
    nfe = torch.zeros(B, dtype=torch.int64, device=dev)
    rows = {}  # row -> its current canvas (prompt columns then generated) [P + G] and its attention row
    seconds, forwards = 0.0, int(length_predictor is not None and token_forwards.any())

    def decode(idx: torch.Tensor, prompt: torch.Tensor, pmask: Optional[torch.Tensor], G: int):
        nonlocal seconds, forwards
        out = generate(model, prompt, gen_length=G, block_length=block_length,
                       steps=_steps_for(steps, G, max_gen_length, block_length), attention_mask=pmask, eos_id=eos_id,
                       **kw)
        seconds += out.seconds
        forwards += out.forwards
        nfe[idx] += out.nfe
        token_forwards[idx] += out.nfe.to(torch.float64) * prompt.shape[1] + out.nfe.to(torch.float64) * G
        return out

    for G in sorted(set(budgets.tolist())):
        idx = (budgets == G).nonzero().flatten()
        out = decode(idx, prompt_ids[idx], am[idx] if am is not None else None, int(G))
        for k, b in enumerate(idx.tolist()):
            rows[b] = out.tokens[k]
    lengths = budgets.clone()
    truncated = torch.tensor([not bool((rows[b][P:] == eos_id).any()) for b in range(B)], device=dev)
    if truncation is not None:
        while True:
            todo = [b for b in range(B) if not bool((rows[b][P:] == eos_id).any()) and int(lengths[b]) < max_gen_length]
            if not todo:
                break
            for G_old in sorted({int(lengths[b]) for b in todo}):
                group = [b for b in todo if int(lengths[b]) == G_old]
                idx = torch.tensor(group, device=dev)
                G_new = min(2 * G_old, max_gen_length)
                if truncation == "rerun":  # from scratch at the larger length
                    out = decode(idx, prompt_ids[idx], am[idx] if am is not None else None, G_new)
                    for k, b in enumerate(group):
                        rows[b] = out.tokens[k]
                else:  # extend: the committed canvas is the continuation's prompt
                    canvas = torch.stack([rows[b] for b in group])
                    cmask = None
                    if am is not None:
                        cmask = torch.cat([am[idx], torch.ones(len(group), G_old, dtype=am.dtype, device=dev)], 1)
                    out = decode(idx, canvas, cmask, G_new - G_old)
                    for k, b in enumerate(group):
                        rows[b] = out.tokens[k]
                lengths[idx] = G_new
    width = P + int(lengths.max())
    tokens = torch.full((B, width), eos_id, dtype=prompt_ids.dtype, device=dev)
    for b in range(B):
        tokens[b, :rows[b].numel()] = rows[b]
    committed = torch.stack([(rows[b][P:] != kw.get("mask_id", -1)).sum() for b in range(B)]).to(torch.float64)
    return GenerateResult(tokens=tokens, prompt_length=P, nfe=nfe, seconds=seconds, forwards=forwards,
                          tokens_per_forward=committed / nfe.to(torch.float64).clamp_min(1.0), state=None,
                          gen_lengths=lengths, truncated=truncated, token_forwards=token_forwards)
