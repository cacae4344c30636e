"""Ready decode loops around `prr_ext.step`: LLaDA-compatible (default) and Dream-compatible generation.

    out = prr_ext.generate(model, prompt_ids, gen_length=256, block_length=32, steps=256,
                           policy=prr_ext.LowConfidence(), confidence_dtype=torch.bfloat16)
    out.tokens            # [B, P + G]: the prompt columns (pads included), then the generated tokens
    out.generated         # [B, G]
    out.nfe               # [B] int64 forwards per row; out.tokens_per_forward [B]; out.seconds

`style="llada"` reproduces LLaDA's `generate()` (ML-GSAI/LLaDA generate.py, 2025-10 version; see
docs/semantics.md and the parity tests in python_tests/test_generate_llada.py): semi-autoregressive blocks with
LLaDA's per-block schedule, classifier-free guidance, left-padded batches with attention_mask, `logits_eos_inf`
and `confidence_eos_eot_inf`. Every commit goes through `prr_ext.step` (the fused CPU/CUDA op), so any prr_ext
policy (Threshold, Factor, EntropyBound, PRR, ...) runs inside the same loop. `style="dream"` reproduces Dream's
`_sample`; it is a pure-PyTorch loop (prr_ext/dream.py) because Dream's selection rule (argmax over bf16
probabilities, batch-averaged counts) is not one of the op's rules.

How the model is called (style="llada"):
    model(x)                                   attention_mask is None
    model(x, attention_mask=am)                am = cat(attention_mask, ones[B, G]): [B, P + G], 1 = attend
    ... , block_start=lo, block_end=hi         extra keywords when block_info=True
The result may be a tensor or an object with `.logits` (HF style), holding [B, P + G, V] logits of the whole canvas
or [B, block_length, V] logits of the active block only. A KV-cache model (prefix / dual cache) passes
`block_info=True`: the loop then tells it the active block's canvas columns [block_start, block_end) on every
call (int keywords; the active block is the lowest block any row still works on, `State.block_start`), and the
model may return either shape on any call (e.g. full logits at the block's first call, the "prefill", block-only
logits afterwards). With classifier-free guidance the model receives 2B rows (conditional, then unconditional).

The LLaDA loop, piece by piece: `build_canvas` (canvas and attention mask), `Forward` (the model call with
guidance and block keywords), `decode_step` = `apply_logit_flags` + `commit_step` (+ `fill_after_eos`), and
`graph_loop` (cuda_graph=True).
"""
from __future__ import annotations

import functools
import inspect
import math
import numbers
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Tuple, Union

import torch

from . import constants as K
from . import ops
from . import reference as R
from .decode_common import (GenerateResult, check_inputs, check_mask_id, first_forward, hidden_states_of, logits_of,
                            make_result, resolve_mask_id, resolve_token_id, sync_device)
from .dream import dream_generate
from .policies import LowConfidence, Policy, SlowFast
from .state import State

__all__ = ["generate", "GenerateResult", "LLADA_MASK_ID", "LLADA_EOS_ID", "LLADA_EOT_ID"]

LLADA_MASK_ID = 126336  # <|mdm_mask|>
LLADA_EOS_ID = 126081  # <|endoftext|>
LLADA_EOT_ID = 126348  # <|eot_id|>
STYLES = ("llada", "dream")
BACKENDS = ("op", "reference")


# ---------------------------------------------------------------------------------------------------------------
# the API
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def generate(model: Callable, prompt_ids: torch.Tensor, *, gen_length: Union[int, str],
             block_length: Optional[int] = None,
             steps: int, policy: Optional[Policy] = None, temperature: float = 0.0, cfg_scale: float = 0.0,
             attention_mask: Optional[torch.Tensor] = None, eos_id: Optional[int] = None,
             logits_eos_inf: bool = False, confidence_eos_eot_inf: bool = False, eot_id: Optional[int] = None,
             mask_id: Optional[int] = None, confidence_dtype: Optional[torch.dtype] = None,
             generator: Optional[torch.Generator] = None, rng: str = "philox", style: str = "llada",
             alg: str = "entropy", eps: float = 1e-3, top_p: Optional[float] = None, top_k: Optional[int] = None,
             alg_temp: Optional[float] = None, eos_fill: bool = False, cuda_graph: bool = False,
             block_info: bool = False, backend: str = "op", seed: Optional[torch.Tensor] = None,
             slow_fast_prefix: bool = False, length_predictor=None, target_truncation: float = 0.02,
             max_gen_length: Optional[int] = None, truncation: Optional[str] = "extend",
             logits_hook: Optional[Callable] = None, tokens_hook: Optional[Callable] = None,
             hidden_features=None) -> GenerateResult:
    """Generate `gen_length` tokens after `prompt_ids` [B, P] with a masked-diffusion LM.

    Common:
      model:          callable (see the module docstring for the calling convention); returns logits or `.logits`.
      prompt_ids:     [B, P] int64 on the device to decode on; left-padded batches come with `attention_mask`.
      gen_length:     G, generated tokens per row; or "auto": each row's own length from `length_predictor`
                      (style="llada"; prr_ext/auto_length.py):
        length_predictor:  a prr_ext.LengthPredictor fitted for this model (its features: the model's pooled
                      hidden states of the prompt, one extra forward; a predictor whose recorded fingerprint
                      names another model is a LengthPredictorFormatError, checked on the model or the module in
                      its `.model`);
        target_truncation: the truncation rate the margin is calibrated for (default 0.02);
        max_gen_length: the longest canvas (default: the predictor's `max_length`); `steps` is the budget at this
                      length and scales with each row's length; block_length is required;
        truncation:   what a canvas without EOS gets: "extend" (default; continue after its committed tokens with
                      the length doubled), "rerun" (decode again from scratch at double the length) or None.
      steps:          denoising steps (LLaDA: total over all blocks, steps % num_blocks == 0; Dream: NFE).
      temperature:    0 = greedy.
      mask_id:        the mask token. None (default) takes the model's: `model.config.mask_token_id`, else
                      `model.tokenizer.mask_token_id`, else LLaDA's 126336 (style="llada") / Dream's 151666
                      (style="dream"). An id outside the model's vocabulary (>= `model.config.vocab_size`, or
                      >= the logits' V at the first forward) is a ValueError.
      attention_mask: [B, P], 1 = token, 0 = left pad.
      generator:      torch.Generator for every random draw (None: torch's default generator, as the reference
                      loops use).

    style="llada" (LLaDA generate()):
      block_length:   semi-autoregressive block (default: gen_length, LLaDA's one-block default).
      policy:         any prr_ext policy (default LowConfidence() = LLaDA's 'low_confidence';
                      RandomRemask() = 'random').
      cfg_scale:      classifier-free guidance: the unconditional copy has every prompt column (pads included)
                      masked; logits = u + (cfg + 1)(c - u). With attention_mask=None the model is called
                      without a mask (LLaDA's reference raises there).
      logits_eos_inf: set the EOS logit to -inf before choosing tokens (EOS is never generated).
      confidence_eos_eot_inf: LLaDA's EOS/EoT confidence rule, reproduced exactly: candidates are chosen first;
                      their confidence then comes from a softmax with EoT's logit at -inf, and at T == 0 EOS's
                      too (LLaDA aliases the noisy logits to the logits at T == 0). A candidate EoT (or EOS at
                      T == 0) thus gets confidence 0 and commits last. Costs one extra pass over the logits
                      (a probe step) with rng="philox".
      eos_id, eot_id: None (default) takes the model's, in the order of mask_id: `model.config.eos_token_id` /
                      `eot_token_id`, else `model.tokenizer.eos_token_id` / `eot_token_id` (the first of a list),
                      else LLaDA's 126081 / 126348. Used by the EOS flags and eos_fill only; an id they use that
                      lies outside the logits' vocabulary is a ValueError.
      confidence_dtype: dtype of the confidence softmax; default = the logits' dtype (LLaDA >= 2025-06:
                      bf16 with a bf16 model); torch.float64 = LLaDA before June 2025 and Fast-dLLM.
      rng:            "philox" (default; batch-invariant, graph-safe) or "torch" (LLaDA's exact draws from
                      `generator`: token-for-token parity at T > 0 with the same seed; needs full-canvas logits
                      for that).
      eos_fill:       EOS work saving, off by default (it changes tokens and NFE vs. LLaDA): after every step,
                      a row whose generation region holds a committed EOS with every position before that EOS
                      committed gets all its still-masked positions set to EOS and is retired (no more forwards
                      or NFE; tokens committed after the EOS earlier stay, commits are final). The loop stops
                      when every row is retired or done. Uses eos_id; on device, no host synchronisation.
      cuda_graph:     CUDA only, rng="philox": a fixed run of steps_per_block steps (forward, guidance, flags,
                      step, EOS fill) is captured once with torch.cuda.graph and replayed until every row is done;
                      one host synchronisation per replay. Rows (and the batch) that finish early stop
                      committing inside the replay; the forwards of a replay still run (at most
                      steps_per_block - 1 wasted forwards at the end). Not with block_info or backend="reference".
      block_info:     call the model with block_start=/block_end= keywords (KV-cache models, see above).
      backend:        "op" (prr_ext.step, default) or "reference" (prr_ext.reference.step, pure PyTorch: the
                      specification, slow; for tests).
      seed:           [B] int64 Philox seeds passed to State (default drawn from `generator`).
      slow_fast_prefix: with a SlowFast policy (or R2 over one), SlowFast's forward saving: in the fast phase the
                      first forward of a sub-cycle runs on the whole canvas and the logits of the columns past the
                      span's end are kept; the later forwards of that sub-cycle run on the canvas up to the span's
                      end only (`model(x[:, :end])`, the suffix dropped from attention) and reuse the kept suffix
                      logits. `end` is the largest span end of the active rows. Changes the model's inputs, so the
                      tokens may differ from the full forward's; the model must accept a shorter canvas. One host
                      synchronisation per step (reading the spans); not with cuda_graph or block_info.
      hidden_features: a prr_ext.HiddenFeatures, for a PRR policy whose controller takes r = hidden_features.r
                      extra features (trained by `python -m prr_ext.train --hidden-features r`): every forward is
                      called with output_hidden_states=True (the model must then return `.hidden_states`, the
                      last layer's [B, L, D] or a tuple of layers), and hidden_features(last hidden state)
                      [B, L, r] of that forward is the step's extra_features. Not with cuda_graph, block_info,
                      cfg_scale > 0, slow_fast_prefix, gen_length="auto" or style="dream" (ValueError).

    style="dream" (Dream _sample, prr_ext/dream.py): alg in "origin", "maskgit_plus", "topk_margin", "entropy";
      eps, top_p, top_k, alg_temp as in Dream; logits_hook(i, x, logits) / tokens_hook(i, x, logits) are Dream's
      generation_logits_hook_func / generation_tokens_hook_func. block_length must be None or gen_length;
      policy, cfg_scale, the EOS flags, eos_fill, cuda_graph and rng do not apply.

    Returns a GenerateResult.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if policy is not None and not isinstance(policy, Policy):
        raise TypeError(f"policy must be a prr_ext policy (e.g. prr_ext.Threshold(0.9)), got {policy!r}")
    _check_hidden_features(hidden_features, policy, style=style, gen_length=gen_length, cuda_graph=cuda_graph,
                           block_info=block_info, cfg_scale=cfg_scale, slow_fast_prefix=slow_fast_prefix)
    if gen_length == "auto" and style != "llada":
        raise ValueError("gen_length='auto' applies to style='llada'")
    if style == "dream":
        if block_length not in (None, gen_length):
            raise ValueError("style='dream' has no blocks: block_length must be None or gen_length")
        if policy is not None:
            raise ValueError("style='dream' selects tokens with `alg`, not a prr_ext policy")
        if cfg_scale or logits_eos_inf or confidence_eos_eot_inf or eos_fill or cuda_graph or block_info \
                or slow_fast_prefix:
            raise ValueError("cfg_scale, the EOS flags, eos_fill, cuda_graph, block_info and slow_fast_prefix apply to "
                             "style='llada'")
        return dream_generate(model, prompt_ids, gen_length=gen_length, steps=steps, alg=alg, temperature=temperature,
                              top_p=top_p, top_k=top_k, alg_temp=alg_temp, eps=eps, mask_id=mask_id,
                              attention_mask=attention_mask, generator=generator, logits_hook=logits_hook,
                              tokens_hook=tokens_hook)
    if logits_hook is not None or tokens_hook is not None or alg_temp is not None or top_p is not None \
            or top_k is not None:
        raise ValueError("logits_hook, tokens_hook, alg_temp, top_p and top_k apply to style='dream'")
    if isinstance(gen_length, str):
        if gen_length != "auto":
            raise ValueError(f"gen_length must be a positive int or 'auto', got {gen_length!r}")
        return _auto_generate(model, prompt_ids, length_predictor=length_predictor,
                              target_truncation=target_truncation, max_gen_length=max_gen_length,
                              truncation=truncation, block_length=block_length, steps=steps,
                              attention_mask=attention_mask, eos_id=eos_id, mask_id=mask_id,
                              fixed=dict(policy=policy, temperature=temperature, cfg_scale=cfg_scale,
                                         logits_eos_inf=logits_eos_inf, confidence_eos_eot_inf=confidence_eos_eot_inf,
                                         eot_id=eot_id, confidence_dtype=confidence_dtype, generator=generator,
                                         rng=rng, eos_fill=eos_fill, backend=backend, seed=seed,
                                         slow_fast_prefix=slow_fast_prefix, cuda_graph=cuda_graph,
                                         block_info=block_info))
    auto_only = dict(length_predictor=length_predictor, target_truncation=target_truncation,
                     max_gen_length=max_gen_length, truncation=truncation)
    given = [k for k, v in auto_only.items() if v != _AUTO_ONLY_DEFAULTS[k]]
    if given:  # set for a length prediction that does not run: a forgotten gen_length="auto", most likely
        raise ValueError(f"{', '.join(given)} apply to gen_length='auto'; with gen_length={gen_length!r} leave "
                         f"{'it' if len(given) == 1 else 'them'} out")
    check_inputs(prompt_ids, attention_mask, gen_length)
    rules = TokenRules.resolve(model, mask_id=mask_id, eos_id=eos_id, eot_id=eot_id, logits_eos_inf=logits_eos_inf,
                               confidence_eos_eot_inf=confidence_eos_eot_inf, eos_fill=eos_fill)
    return _llada_generate(model, prompt_ids, gen_length=gen_length, block_length=gen_length if block_length is None else block_length,
                           steps=steps, policy=policy if policy is not None else LowConfidence(),
                           temperature=temperature, cfg_scale=cfg_scale, attention_mask=attention_mask, rules=rules,
                           confidence_dtype=confidence_dtype, generator=generator, rng=rng, cuda_graph=cuda_graph,
                           block_info=block_info, backend=backend, seed=seed, slow_fast_prefix=slow_fast_prefix,
                           hidden_features=hidden_features)


# generate's options that only gen_length="auto" reads, at their defaults (from the signature: one place)
_AUTO_ONLY_DEFAULTS = {k: inspect.signature(generate).parameters[k].default
                       for k in ("length_predictor", "target_truncation", "max_gen_length", "truncation")}


def _check_hidden_features(hidden_features, policy, *, style, gen_length, cuda_graph, block_info, cfg_scale,
                           slow_fast_prefix) -> None:
    """ValueErrors for hidden_features= with options it does not support, or with a policy whose controller takes
    another number of extra features (a controller that takes some needs hidden_features)."""
    from .hidden_features import HiddenFeatures
    from .policies import PRR

    rule = policy.base_rule if policy is not None else None
    n_extra = rule.controller.extra_features if isinstance(rule, PRR) else 0
    if hidden_features is None:
        if n_extra:
            raise ValueError(f"the PRR policy's controller takes {n_extra} extra features: pass hidden_features= "
                             "(the prr_ext.HiddenFeatures it was trained with, saved in its folder: "
                             "prr_ext.HiddenFeatures.load(controller_dir))")
        return
    if not isinstance(hidden_features, HiddenFeatures):
        raise TypeError(f"hidden_features must be a prr_ext.HiddenFeatures, got {type(hidden_features).__name__}")
    unsupported = [name for name, on in (
        ("style='dream'", style == "dream"), ("gen_length='auto'", gen_length == "auto"),
        ("cuda_graph=True", bool(cuda_graph)), ("block_info=True", bool(block_info)),
        ("cfg_scale > 0", bool(cfg_scale)), ("slow_fast_prefix=True", bool(slow_fast_prefix))) if on]
    if unsupported:
        raise ValueError(f"hidden_features= runs in the plain LLaDA loop only; not with {', '.join(unsupported)}")
    if not isinstance(rule, PRR):
        raise ValueError(f"hidden_features= feeds a PRR controller's extra features; the policy {policy!r} has no "
                         "controller")
    if n_extra != hidden_features.r:
        raise ValueError(f"hidden_features gives {hidden_features.r} features but the PRR policy's controller takes "
                         f"{n_extra} extra features: use the HiddenFeatures saved with that controller")


def _auto_generate(model, prompt_ids, *, length_predictor, target_truncation, max_gen_length, truncation,
                   block_length, steps, attention_mask, eos_id, mask_id, fixed) -> GenerateResult:
    """gen_length="auto" (prr_ext/auto_length.py): the ids resolved once, then generate() per bucket of rows."""
    from .auto_length import generate_auto
    from .length import LengthPredictor

    if not isinstance(length_predictor, LengthPredictor):
        raise TypeError("gen_length='auto' needs length_predictor=prr_ext.LengthPredictor.load(path), got "
                        f"{type(length_predictor).__name__}")
    check_inputs(prompt_ids, attention_mask, 1)
    rules = TokenRules.resolve(model, mask_id=mask_id, eos_id=eos_id, eot_id=fixed["eot_id"],
                               logits_eos_inf=False, confidence_eos_eot_inf=False, eos_fill=False)
    if max_gen_length is None:
        max_gen_length = length_predictor.meta.get("max_length")
        if max_gen_length is None:
            raise ValueError("gen_length='auto' needs max_gen_length= (the longest canvas): the predictor records "
                             "none")
    return generate_auto(generate, model, prompt_ids, length_predictor=length_predictor,
                         target_truncation=target_truncation, block_length=block_length, steps=steps,
                         max_gen_length=max_gen_length, eos_id=rules.eos_id, mask_id=rules.mask_id,
                         attention_mask=attention_mask, truncation=truncation, **fixed)


def _llada_generate(model, prompt_ids, *, gen_length, block_length, steps, policy, temperature, cfg_scale,
                    attention_mask, rules, confidence_dtype, generator, rng, cuda_graph, block_info, backend, seed,
                    slow_fast_prefix=False, hidden_features=None):
    cfg_scale = _check_llada_options(prompt_ids.device, backend, cfg_scale, cuda_graph, rng, block_info)
    if slow_fast_prefix:
        if not isinstance(policy.base_rule, SlowFast):
            raise ValueError(f"slow_fast_prefix=True needs a SlowFast policy (or R2 over one), got {policy}")
        if cuda_graph or block_info:
            raise ValueError("slow_fast_prefix=True cannot run with cuda_graph or block_info (it changes the forward's "
                             "length from step to step)")
    x, attention, prompt_length = build_canvas(prompt_ids, attention_mask, gen_length, rules.mask_id)  # x [B, P+G]
    P = prompt_ids.shape[1]
    forward = Forward(model, x, attention, mask_id=rules.mask_id, cfg_scale=cfg_scale, block_length=block_length,
                      block_info=block_info, hidden_features=hidden_features)
    sync_device(x.device)
    t0 = time.perf_counter()
    # [B, L, V]; the first forward runs before the State exists: its logits' dtype is the default confidence dtype.
    # The State's arguments are checked first, so that a bad option costs no forward.
    State.check_arguments(x, mask_id=rules.mask_id, prompt_length=prompt_length, gen_start=P,
                          block_length=block_length, steps=steps, policy=policy, temperature=temperature,
                          generator=generator, rng=rng, seed=seed,
                          confidence_dtype=confidence_dtype if confidence_dtype is not None else torch.float32)
    logits = first_forward(functools.partial(forward, P), model, rules.mask_id, rules.mask_from, x)
    state = State(x, mask_id=rules.mask_id, prompt_length=prompt_length, gen_start=P, block_length=block_length,
                  steps=steps, policy=policy, temperature=temperature, generator=generator, rng=rng, seed=seed,
                  confidence_dtype=confidence_dtype if confidence_dtype is not None else logits.dtype)
    decode_step(logits, state, backend, rules, forward.extra_features)
    del logits
    if cuda_graph:
        graph_loop(forward, state, backend, rules, GRAPH_IMPL)
    elif slow_fast_prefix:
        prefix_forward = SlowFastPrefix(forward, P)
        while not state.done:
            decode_step(prefix_forward(state), state, backend, rules)
    else:
        while not state.done:
            logits = forward(state.block_start if block_info else P)
            decode_step(logits, state, backend, rules, forward.extra_features)
    sync_device(x.device)
    return make_result(x, P, state.nfe, rules.mask_id, time.perf_counter() - t0, forward.calls, state)


def _check_llada_options(device: torch.device, backend: str, cfg_scale: float, cuda_graph: bool, rng: str,
                         block_info: bool) -> float:
    """The LLaDA loop's option checks; returns cfg_scale as a float."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, numbers.Real):
        raise TypeError(f"cfg_scale must be a number, got {cfg_scale!r}")
    cfg_scale = float(cfg_scale)
    if not (cfg_scale >= 0.0) or math.isinf(cfg_scale):
        raise ValueError(f"cfg_scale must be a finite number >= 0, got {cfg_scale}")
    if cuda_graph:
        if device.type != "cuda" and GRAPH_IMPL.needs_cuda:
            raise ValueError("cuda_graph=True needs CUDA tensors")
        if rng != "philox":
            raise ValueError("cuda_graph=True needs rng='philox' (rng='torch' draws on the host's generator state)")
        if block_info:
            raise ValueError("cuda_graph=True cannot pass host-side block_start/block_end to the model")
        if backend != "op":
            raise ValueError("cuda_graph=True needs backend='op'")
    return cfg_scale


# ---------------------------------------------------------------------------------------------------------------
# the pieces of the LLaDA loop
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenRules:
    """The token ids of the LLaDA loop and LLaDA's EOS options. `*_from` say where each id came from (for errors)."""

    mask_id: int
    eos_id: int
    eot_id: int
    logits_eos_inf: bool = False
    confidence_eos_eot_inf: bool = False
    eos_fill: bool = False
    mask_from: str = "passed as mask_id="
    eos_from: str = "passed as eos_id="
    eot_from: str = "passed as eot_id="

    @classmethod
    def resolve(cls, model, *, mask_id: Optional[int], eos_id: Optional[int], eot_id: Optional[int],
                **options: bool) -> "TokenRules":
        """Explicit ids win; None takes the model's (config, then tokenizer), else LLaDA's."""
        mask_id, mask_from = resolve_mask_id(mask_id, model, LLADA_MASK_ID, "LLaDA's mask id")
        eos_id, eos_from = resolve_token_id("eos_id", eos_id, model, "eos_token_id", LLADA_EOS_ID, "LLaDA's EOS id")
        eot_id, eot_from = resolve_token_id("eot_id", eot_id, model, "eot_token_id", LLADA_EOT_ID, "LLaDA's EoT id")
        return cls(mask_id, eos_id, eot_id, mask_from=mask_from, eos_from=eos_from, eot_from=eot_from, **options)

    @property
    def confidence_ids(self) -> Optional[Tuple[int, int]]:
        """(eos_id, eot_id) when confidence_eos_eot_inf is on, else None (commit_step's `eos_eot`)."""
        return (self.eos_id, self.eot_id) if self.confidence_eos_eot_inf else None


def build_canvas(prompt_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], gen_length: int, mask_id: int
                 ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Union[int, torch.Tensor]]:
    """The LLaDA canvas of a [B, P] prompt: (x, attention, prompt_length).

    x:             [B, P + G] int64, the prompt then G mask tokens.
    attention:     [B, P + G], attention_mask followed by G ones; None without attention_mask.
    prompt_length: P, or the [B] int64 true lengths of a left-padded batch (PRR's length features do not count
                   pads; the generation region still starts at P)."""
    B, P = prompt_ids.shape
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.int64, device=prompt_ids.device)
    x[:, :P] = prompt_ids
    if attention_mask is None:
        return x, None, P
    ones = torch.ones((B, gen_length), dtype=attention_mask.dtype, device=x.device)
    return x, torch.cat([attention_mask, ones], dim=-1), attention_mask.to(torch.int64).sum(1)


class Forward:
    """The model call of one LLaDA step: `forward(block_start)` -> logits [B, L, V] (L = P + G, or block_length
    for a block-only model).

    The model gets attention_mask= when the batch has one, and block_start= / block_end= with block_info. With
    classifier-free guidance (cfg_scale > 0) it gets 2B rows, the canvas then its unconditional copy (every prompt
    column masked, pads included), and the logits are u + (cfg_scale + 1)(c - u). `calls` counts the calls (a
    2B-row call counts once). x is read at every call: the steps update it in place.

    With `hidden_features` (a prr_ext.HiddenFeatures; no guidance) the model is called with
    output_hidden_states=True and `extra_features` holds hidden_features(last hidden state) [B, L, r] of the latest
    call (None without), the step's extra_features."""

    def __init__(self, model: Callable, x: torch.Tensor, attention: Optional[torch.Tensor], *, mask_id: int,
                 cfg_scale: float, block_length: int, block_info: bool, hidden_features=None):
        self.model, self.x, self.mask_id = model, x, mask_id  # x [B, P+G]
        self.hidden_features = hidden_features
        self.extra_features: Optional[torch.Tensor] = None
        self.cfg_scale, self.block_length, self.block_info = cfg_scale, block_length, block_info
        self.attention = attention  # [B, P+G] or None
        if cfg_scale > 0:
            self.prompt_columns = x != mask_id  # [B, P+G]: LLaDA's prompt_index, taken before any commit
            if attention is not None:
                self.attention = torch.cat([attention, attention], 0)  # [2B, P+G]
        self.calls = 0

    def __call__(self, block_start: int, length: Optional[int] = None) -> torch.Tensor:
        """The logits of the canvas, or of its first `length` columns (the model sees only those)."""
        self.calls += 1
        x = self.x if length is None else self.x[:, :length]
        if self.cfg_scale > 0:
            columns = self.prompt_columns if length is None else self.prompt_columns[:, :length]
            uncond = torch.where(columns, torch.full_like(x, self.mask_id), x)
            cond_logits, uncond_logits = torch.chunk(self._logits(torch.cat([x, uncond], 0), block_start, length), 2,
                                                     dim=0)
            logits = uncond_logits + (self.cfg_scale + 1) * (cond_logits - uncond_logits)
        else:
            logits = self._logits(x, block_start, length)
        if logits.dim() != 3 or logits.shape[0] != x.shape[0]:
            raise ValueError(f"the model returned logits of shape {tuple(logits.shape)}; expected [{x.shape[0]}, L, V]")
        return logits

    def _logits(self, inp: torch.Tensor, block_start: int, length: Optional[int] = None) -> torch.Tensor:
        kw = {}
        if self.attention is not None:
            kw["attention_mask"] = self.attention if length is None else self.attention[:, :length]
        if self.block_info:
            kw["block_start"], kw["block_end"] = block_start, block_start + self.block_length
        if self.hidden_features is None:
            return logits_of(self.model(inp, **kw))
        out = self.model(inp, output_hidden_states=True, **kw)
        logits = logits_of(out)
        hidden = hidden_states_of(out, "hidden_features")
        if hidden.shape[:2] != logits.shape[:2]:
            raise ValueError(f"the model's hidden states {tuple(hidden.shape)} do not cover the logits' rows "
                             f"{tuple(logits.shape[:2])}")
        self.extra_features = self.hidden_features(hidden)  # [B, L, r] float32
        return logits


class SlowFastPrefix:
    """SlowFast's forward saving (generate(slow_fast_prefix=True)): in a sub-cycle's fast phase, the first forward
    covers the whole canvas and keeps the logits past the span's end; the later ones cover the canvas up to the span's
    end and reuse them. A new sub-cycle, block or span (the key) takes a whole forward again."""

    def __init__(self, forward: Forward, prompt_width: int):
        self.forward, self.P = forward, prompt_width
        self.key, self.suffix = None, None

    def __call__(self, state: State) -> torch.Tensor:
        rs = state.row_state.cpu()
        blk = int(rs[:, R.RS_BLOCK].min())
        active = rs[:, R.RS_BLOCK] == blk
        explore = state.policy.base_rule.explore_steps
        if blk >= state.num_blocks or bool((rs[active, K.RS_EXPLORED] < explore).any()):
            self.key = self.suffix = None  # some row explores: whole forwards
            return self.forward(self.P)
        end = state.gen_start + blk * state.block_length + int(rs[active, K.RS_SPAN_END].max())
        key = (blk, end, tuple(rs[active][:, [K.RS_SPAN_START, K.RS_SPAN_END]].flatten().tolist()))
        if key != self.key or end >= state.x.shape[1]:
            logits = self.forward(self.P)  # [B, L, V]
            self.key, self.suffix = key, logits[:, end:].clone()
            return logits
        return torch.cat([self.forward(self.P, length=end), self.suffix], 1)  # [B, end, V] + [B, L - end, V]


def apply_logit_flags(logits: torch.Tensor, rules: TokenRules) -> None:
    """Check the ids against the logits' vocabulary V (mask_id always; eos_id / eot_id where an option uses them),
    then apply logits_eos_inf in place. logits: [B, L, V]."""
    V = logits.shape[-1]
    check_mask_id(rules.mask_id, rules.mask_from, V, "the logits' last dimension V")
    for name, tok, where, used in (
            ("eos_id", rules.eos_id, rules.eos_from, rules.logits_eos_inf or rules.confidence_eos_eot_inf
             or rules.eos_fill),
            ("eot_id", rules.eot_id, rules.eot_from, rules.confidence_eos_eot_inf)):
        if used and not 0 <= tok < V:
            raise ValueError(f"{name}={tok} ({where}) is outside the vocabulary (V={V}); pass {name}=")
    if rules.logits_eos_inf:
        logits[:, :, rules.eos_id] = -math.inf


def _backend_step(logits, state, backend, candidates=None, random_conf=None, extra_features=None) -> torch.Tensor:
    """One prr_ext.step (backend "op") or prr_ext.reference.step (backend "reference"), same side effects."""
    if backend == "reference":
        commit, tokens, stats = R.step(logits, state, candidates=candidates, random_conf=random_conf,
                                       extra_features=extra_features)
        state.last_tokens, state.last_stats = tokens, stats
        return commit
    return ops.step(logits, state, candidates=candidates, random_conf=random_conf, extra_features=extra_features)


def commit_step(logits: torch.Tensor, state: State, backend: str, eos_eot: Optional[Tuple[int, int]],
                extra_features: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One commit on already-combined logits [B, L, V], with the overrides rng="torch" and
    confidence_eos_eot_inf need. `eos_eot` = (eos_id, eot_id) for LLaDA's confidence_eos_eot_inf: the candidate
    is chosen from the logits as given, then the confidence is taken from a softmax in which EoT (and, at T == 0,
    EOS too: LLaDA's chained assignment aliases the noisy logits to the logits) is -inf. The op supports exactly
    that through its `candidates` input. `extra_features` [B, L, F]: a PRR controller's extra inputs. Returns the
    step's commit mask."""
    cand = rconf = None
    if state.rng == "torch" and (backend == "reference" or eos_eot is not None):
        cand, rconf = ops.llada_draws(logits, state, want_candidates=eos_eot is not None)
    elif eos_eot is not None:
        # Philox candidates: a throw-away copy of the state draws exactly the noise the real step would (same
        # seed, column and step counters) from the unmodified logits.
        probe = state.clone()
        _backend_step(logits, probe, backend, extra_features=extra_features)
        cand = probe.last_tokens
    if eos_eot is not None:
        eos_id, eot_id = eos_eot
        if state.temperature == 0:
            logits[..., eos_id] = -math.inf
        logits[..., eot_id] = -math.inf
    return _backend_step(logits, state, backend, cand, rconf, extra_features)


def fill_after_eos(state: State, eos_id: int) -> None:
    """EOS work saving, on device, no host synchronisation (graph-safe): in every row whose generation region
    holds a committed EOS with everything before it committed, fill every later masked position with EOS and
    retire the row (it needs no more forwards)."""
    x, mask_id = state.x, state.mask_id
    gen = x[:, state.gen_start:]  # [B, G], a view: written in place
    B, G = gen.shape
    masked = gen == mask_id
    is_eos = gen == eos_id
    idx = torch.arange(G, device=x.device)
    has_eos = is_eos.any(1)
    first = torch.where(has_eos, is_eos.to(torch.int8).argmax(1), torch.full_like(has_eos, G, dtype=torch.int64))
    clean = has_eos & ~(masked & (idx[None, :] < first[:, None])).any(1)
    fill = masked & clean[:, None]  # every mask of a clean row lies after its first EOS
    gen.copy_(torch.where(fill, torch.full_like(gen, eos_id), gen))
    rs = state.row_state
    blk = rs[:, R.RS_BLOCK]
    done = clean & (blk < state.num_blocks)
    rs[:, R.RS_STEP] = torch.where(done, torch.zeros_like(blk), rs[:, R.RS_STEP])
    rs[:, R.RS_BLOCK] = torch.where(done, torch.full_like(blk, state.num_blocks), blk)


def decode_step(logits: torch.Tensor, state: State, backend: str, rules: TokenRules,
                extra_features: Optional[torch.Tensor] = None) -> None:
    """One step of the LLaDA loop on the model's logits [B, L, V]: flags, commit, EOS fill. `extra_features`
    [B, L, F]: a PRR controller's extra inputs (generate(hidden_features=...))."""
    apply_logit_flags(logits, rules)
    commit_step(logits, state, backend, rules.confidence_ids, extra_features)
    if rules.eos_fill:
        fill_after_eos(state, rules.eos_id)


# ---------------------------------------------------------------------------------------------------------------
# cuda_graph=True
# ---------------------------------------------------------------------------------------------------------------
class GraphImpl(NamedTuple):
    """How graph_loop warms up and captures. warmup(fn) runs fn once before capture; capture(fn) records fn and
    returns its replay; needs_cuda: the canvas must live on CUDA."""

    warmup: Callable[[Callable[[], None]], None]
    capture: Callable[[Callable[[], None]], Callable[[], None]]
    needs_cuda: bool = True


def _cuda_warmup(fn: Callable[[], None]) -> None:
    """Run fn() eagerly on a side stream (CUDA graph warm-up: lazy initialisation, cuBLAS workspaces)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)


def _cuda_capture(fn: Callable[[], None]) -> Callable[[], None]:
    """Capture fn() into a CUDA graph (nothing runs during capture); return its replay."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


CUDA_GRAPHS = GraphImpl(_cuda_warmup, _cuda_capture)
# What cuda_graph=True uses, read at every call. Tests set an eager GraphImpl (warmup runs fn, capture returns fn,
# needs_cuda=False) to check the graph loop's logic on CPU: its "replays" run the captured steps' Python.
GRAPH_IMPL = CUDA_GRAPHS


def _run_steps(n: int, forward: Forward, state: State, backend: str, rules: TokenRules) -> None:
    """n steps with no host-side decision between them (what a graph captures): forward, flags, commit, fill."""
    for _ in range(n):
        decode_step(forward(state.gen_start), state, backend, rules)


def graph_loop(forward: Forward, state: State, backend: str, rules: TokenRules, impl: GraphImpl) -> None:
    """Warm up with one real (eager) step, capture steps_per_block steps once, replay until every row is done
    (one host synchronisation per replay). forward.calls counts the forwards run: Python-run calls count
    themselves (warm-up, an eager GraphImpl's replays), a real graph replay runs S forwards without Python."""
    if state.done:
        return
    impl.warmup(functools.partial(_run_steps, 1, forward, state, backend, rules))
    if state.done:
        return
    S = state.steps_per_block
    before = forward.calls
    replay = impl.capture(functools.partial(_run_steps, S, forward, state, backend, rules))
    forward.calls = before  # capturing runs nothing
    while not state.done:
        seen = forward.calls
        replay()
        if forward.calls == seen:  # a real graph replay (no Python ran)
            forward.calls += S
