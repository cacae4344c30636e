"""A faithful re-implementation of LLaDA's reference decoding (`ML-GSAI/LLaDA` generate.py), for parity tests.

Written from a description of the upstream loop (op for op, in upstream order; docs/semantics.md states the rules), so
that prr_ext can be checked against LLaDA's exact semantics without the upstream repository. Four numerically
distinct upstream versions exist; `VERSIONS` maps a name to the switches that distinguish them:

    "2025-02"  4fc3cd2   fp64 confidence softmax; NO T == 0 shortcut: fp64 noise is drawn at T = 0 too and
                         x0 = argmax(exp(fp64 logits) / 1); single sequence
    "2025-03"  d5634da   fp64 confidence; T == 0 shortcut (the noise function returns the logits tensor itself)
    "2025-06"  f51cb17   confidence softmax in the logits (model) dtype, e.g. bf16; T == 0 shortcut
    "2025-10"  8e01df8 / 65cbed2   model dtype; batches with attention_mask (left padding); the EOS/EoT flags
                         `logits_eos_inf` and `confidence_eos_eot_inf` (with the upstream aliasing, see llada_step)

Fast-dLLM and most derived repositories froze the fp64 ("2025-03") variant.

RNG: upstream draws from torch's global generator (`torch.rand_like(logits, dtype=torch.float64)` at T > 0, one per
step after the CFG combine; `torch.rand((B, L))` fp32 for remasking='random'). Here every draw takes an optional
`generator`; with generator=None the draws are exactly upstream's (`torch.rand(shape, ...)` on the default generator
is what rand_like does). prr_ext.State(..., rng="torch", generator=g) draws the same numbers in the same order.

Known upstream behaviours kept on purpose:
  * the mask token is an ordinary candidate: when its logit (or Gumbel score) is the largest, x0 = mask_id and the
    "commit" writes mask_id over mask_id (a no-op that still uses up one of the step's k slots). prr_ext never
    proposes the mask token (it is excluded from the candidates but kept in the softmax normaliser).
  * ties in the confidence are resolved by torch.topk, which on CPU does not pick the lowest index among equal
    values (CUDA's does); prr_ext defines lowest-index-wins.
  * cfg_scale > 0 with attention_mask=None raises (upstream reads an unbound local).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

LLADA_MASK_ID = 126336
LLADA_EOS_ID = 126081
LLADA_EOT_ID = 126348


@dataclass(frozen=True)
class Version:
    fp64_confidence: bool  # softmax in fp64 (older versions, Fast-dLLM) or in the logits dtype (>= 2025-06)
    t0_shortcut: bool      # at T == 0 return the logits unchanged (no noise drawn)
    batch: bool            # attention_mask / left-padded batches supported upstream
    eos_flags: bool        # logits_eos_inf / confidence_eos_eot_inf exist upstream


VERSIONS = {
    "2025-02": Version(fp64_confidence=True, t0_shortcut=False, batch=False, eos_flags=False),
    "2025-03": Version(fp64_confidence=True, t0_shortcut=True, batch=False, eos_flags=False),
    "2025-06": Version(fp64_confidence=False, t0_shortcut=True, batch=False, eos_flags=False),
    "2025-10": Version(fp64_confidence=False, t0_shortcut=True, batch=True, eos_flags=True),
}
CURRENT = "2025-10"


def add_gumbel_noise(logits: torch.Tensor, temperature: float, *, t0_shortcut: bool = True,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Upstream `add_gumbel_noise`: exp(logits) / (-log u)^T in fp64, u ~ U(0, 1) (equivalent to Gumbel-max on
    logits / T). With the shortcut, T == 0 returns `logits` itself (the same tensor object: see the EOS aliasing)."""
    if temperature == 0 and t0_shortcut:
        return logits
    logits = logits.to(torch.float64)
    noise = torch.rand(logits.shape, dtype=torch.float64, device=logits.device, generator=generator)
    gumbel_noise = (-torch.log(noise)) ** temperature
    return logits.exp() / gumbel_noise


def get_num_transfer_tokens(mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    """Upstream schedule: [B, steps] int64, mask count // steps each, the remainder front-loaded."""
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base = mask_num // steps
    remainder = mask_num % steps
    num_transfer_tokens = torch.zeros(mask_num.size(0), steps, device=mask_index.device, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        num_transfer_tokens[i, :remainder[i]] += 1
    return num_transfer_tokens


@dataclass
class StepTrace:
    """Intermediates of one upstream step (for per-step comparisons)."""
    x0: torch.Tensor             # [B, L] proposed tokens (x where not masked)
    x0_p: torch.Tensor           # [B, L] confidence of the proposal (dtype: logits dtype, fp64, or fp32 for random)
    confidence: torch.Tensor     # [B, L] x0_p at masked positions up to the block end, -inf elsewhere
    k: torch.Tensor              # [B] tokens to commit at this step
    transfer_index: torch.Tensor  # [B, L] bool, the positions committed by torch.topk


def llada_step(x: torch.Tensor, logits: torch.Tensor, *, block_end: int, k: torch.Tensor, mask_id: int,
               temperature: float = 0.0, remasking: str = "low_confidence", version: str = CURRENT,
               generator: Optional[torch.Generator] = None, logits_eos_inf: bool = False,
               confidence_eos_eot_inf: bool = False, eos_id: int = LLADA_EOS_ID, eot_id: int = LLADA_EOT_ID,
               topk: Callable = torch.topk, fp64_confidence: Optional[bool] = None) -> StepTrace:
    """The body of upstream's inner loop after the forward (and CFG): mutates `x` (and, like upstream, `logits`
    when the EOS flags are set). k[b] = num_transfer_tokens[b, i]. `topk` can be swapped to study tie-breaking;
    fp64_confidence overrides the version's confidence dtype (Fast-dLLM's fp64 softmax on a batched loop)."""
    v = VERSIONS[version]
    fp64 = v.fp64_confidence if fp64_confidence is None else fp64_confidence
    if (logits_eos_inf or confidence_eos_eot_inf) and not v.eos_flags:
        raise ValueError(f"LLaDA {version} has no EOS/EoT flags")
    mask_index = x == mask_id

    if logits_eos_inf:
        logits[:, :, eos_id] = -torch.inf

    logits_with_noise = add_gumbel_noise(logits, temperature=temperature, t0_shortcut=v.t0_shortcut,
                                         generator=generator)
    x0 = torch.argmax(logits_with_noise, dim=-1)  # b, l

    if confidence_eos_eot_inf:
        # upstream's chained assignment: at T == 0 logits_with_noise IS logits, so both EOS and EoT get -inf in
        # the logits behind the confidence; at T > 0 it is a separate fp64 tensor and only EoT does.
        logits_with_noise[:, :, eos_id] = logits[:, :, eot_id] = -torch.inf

    if remasking == "low_confidence":
        p = F.softmax(logits.to(torch.float64), dim=-1) if fp64 else F.softmax(logits, dim=-1)
        x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)  # b, l
    elif remasking == "random":
        x0_p = torch.rand((x0.shape[0], x0.shape[1]), device=x0.device, generator=generator)
    else:
        raise NotImplementedError(remasking)

    x0_p[:, block_end:] = -np.inf

    x0 = torch.where(mask_index, x0, x)
    confidence = torch.where(mask_index, x0_p, -np.inf)

    transfer_index = torch.zeros_like(x0, dtype=torch.bool, device=x0.device)
    for j in range(confidence.shape[0]):
        _, select_index = topk(confidence[j], k=int(k[j]))
        transfer_index[j, select_index] = True
    x[transfer_index] = x0[transfer_index]
    return StepTrace(x0=x0, x0_p=x0_p, confidence=confidence, k=k.clone(), transfer_index=transfer_index)


def _forward(model, x, attention_mask):
    out = model(x) if attention_mask is None else model(x, attention_mask=attention_mask)
    return out.logits if hasattr(out, "logits") else out


@torch.no_grad()
def generate(model, prompt: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, steps: int = 128,
             gen_length: int = 128, block_length: int = 128, temperature: float = 0.0, cfg_scale: float = 0.0,
             remasking: str = "low_confidence", mask_id: int = LLADA_MASK_ID, *, version: str = CURRENT,
             logits_eos_inf: bool = False, confidence_eos_eot_inf: bool = False,
             generator: Optional[torch.Generator] = None, eos_id: int = LLADA_EOS_ID, eot_id: int = LLADA_EOT_ID,
             on_step: Optional[Callable] = None, topk: Callable = torch.topk,
             fp64_confidence: Optional[bool] = None) -> torch.Tensor:
    """Upstream `generate()`. `model(x[, attention_mask=am])` returns an object with `.logits` (or a tensor).
    on_step(num_block, i, x_before, logits, trace) is called after every step (x_before: the canvas the forward
    saw). `topk` and `fp64_confidence` are passed to llada_step. Returns the canvas [B, P + gen_length]."""
    v = VERSIONS[version]
    if attention_mask is not None and not v.batch:
        raise ValueError(f"LLaDA {version} has no attention_mask")
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), mask_id, dtype=torch.long).to(prompt.device)
    x[:, :prompt.shape[1]] = prompt.clone()

    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, torch.ones((prompt.shape[0], gen_length),
                                                               dtype=attention_mask.dtype,
                                                               device=prompt.device)], dim=-1)

    prompt_index = x != mask_id

    assert gen_length % block_length == 0
    num_blocks = gen_length // block_length

    assert steps % num_blocks == 0
    steps = steps // num_blocks

    for num_block in range(num_blocks):
        lo = prompt.shape[1] + num_block * block_length
        block_mask_index = x[:, lo:lo + block_length] == mask_id
        num_transfer_tokens = get_num_transfer_tokens(block_mask_index, steps)
        for i in range(steps):
            x_before = x.clone()
            if cfg_scale > 0.0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                x_ = torch.cat([x, un_x], dim=0)
                if attention_mask is None:  # upstream: UnboundLocalError on attention_mask_
                    raise UnboundLocalError("LLaDA's generate() needs attention_mask when cfg_scale > 0")
                attention_mask_ = torch.cat([attention_mask, attention_mask], dim=0)
                logits = _forward(model, x_, attention_mask_)
                logits, un_logits = torch.chunk(logits, 2, dim=0)
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            else:
                logits = _forward(model, x, attention_mask)
            trace = llada_step(x, logits, block_end=lo + block_length, k=num_transfer_tokens[:, i],
                               mask_id=mask_id, temperature=temperature, remasking=remasking, version=version,
                               generator=generator, logits_eos_inf=logits_eos_inf,
                               confidence_eos_eot_inf=confidence_eos_eot_inf, eos_id=eos_id, eot_id=eot_id,
                               topk=topk, fp64_confidence=fp64_confidence)
            if on_step is not None:
                on_step(num_block, i, x_before, logits, trace)
    return x
