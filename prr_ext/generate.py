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
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

import torch

from . import ops
from . import reference as R
from .decode_common import GenerateResult, check_inputs, logits_of, make_result, sync_device
from .dream import dream_generate
from .policies import LowConfidence, Policy
from .state import State

__all__ = ["generate", "GenerateResult", "LLADA_EOS_ID", "LLADA_EOT_ID"]

LLADA_EOS_ID = 126081  # <|endoftext|>
LLADA_EOT_ID = 126348  # <|eot_id|>
STYLES = ("llada", "dream")
BACKENDS = ("op", "reference")


# ---------------------------------------------------------------------------------------------------------------
# one commit step, with the overrides the LLaDA flags and rng="torch" need
# ---------------------------------------------------------------------------------------------------------------
def _step(logits, state, backend, candidates=None, random_conf=None) -> torch.Tensor:
    if backend == "reference":
        commit, tokens, stats = R.step(logits, state, candidates=candidates, random_conf=random_conf)
        state.last_tokens, state.last_stats = tokens, stats
        return commit
    return ops.step(logits, state, candidates=candidates, random_conf=random_conf)


def _commit(logits: torch.Tensor, state: State, backend: str, eos_eot_conf: Optional[tuple]) -> torch.Tensor:
    """One step of the loop on already-combined logits. `eos_eot_conf` = (eos_id, eot_id) for LLaDA's
    confidence_eos_eot_inf: the candidate is chosen from the logits as given, then the confidence is taken from a
    softmax in which EoT (and, at T == 0, EOS too: LLaDA's chained assignment aliases the noisy logits to the
    logits) is -inf. The op supports exactly that through its `candidates` input."""
    cand = rconf = None
    if state.rng == "torch" and (backend == "reference" or eos_eot_conf is not None):
        cand, rconf = ops.llada_draws(logits, state, want_candidates=eos_eot_conf is not None)
    elif eos_eot_conf is not None:
        # Philox candidates: a throw-away copy of the state draws exactly the noise the real step would (same
        # seed, column and step counters) from the unmodified logits.
        probe = state.clone()
        _step(logits, probe, backend)
        cand = probe.last_tokens
    if eos_eot_conf is not None:
        eos_id, eot_id = eos_eot_conf
        if state.temperature == 0:
            logits[..., eos_id] = -math.inf
        logits[..., eot_id] = -math.inf
    return _step(logits, state, backend, cand, rconf)


def _eos_fill(state: State, eos_id: int) -> None:
    """EOS work saving, on device, no host synchronisation (graph-safe): in every row whose generation region
    holds a committed EOS with everything before it committed, fill every later masked position with EOS and
    retire the row (it needs no more forwards)."""
    x, mask_id = state.x, state.mask_id
    gen = x[:, state.gen_start:]
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


# ---------------------------------------------------------------------------------------------------------------
# the API
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def generate(model: Callable, prompt_ids: torch.Tensor, *, gen_length: int, block_length: Optional[int] = None,
             steps: int, policy: Optional[Policy] = None, temperature: float = 0.0, cfg_scale: float = 0.0,
             attention_mask: Optional[torch.Tensor] = None, eos_id: Optional[int] = None,
             logits_eos_inf: bool = False, confidence_eos_eot_inf: bool = False, eot_id: Optional[int] = None,
             mask_id: int = 126336, confidence_dtype: Optional[torch.dtype] = None,
             generator: Optional[torch.Generator] = None, rng: str = "philox", style: str = "llada",
             alg: str = "entropy", eps: float = 1e-3, top_p: Optional[float] = None, top_k: Optional[int] = None,
             alg_temp: Optional[float] = None, eos_fill: bool = False, cuda_graph: bool = False,
             block_info: bool = False, backend: str = "op", seed: Optional[torch.Tensor] = None,
             logits_hook: Optional[Callable] = None, tokens_hook: Optional[Callable] = None) -> GenerateResult:
    """Generate `gen_length` tokens after `prompt_ids` [B, P] with a masked-diffusion LM.

    Common:
      model:          callable (see the module docstring for the calling convention); returns logits or `.logits`.
      prompt_ids:     [B, P] int64 on the device to decode on; left-padded batches come with `attention_mask`.
      gen_length:     G, generated tokens per row.
      steps:          denoising steps (LLaDA: total over all blocks, steps % num_blocks == 0; Dream: NFE).
      temperature:    0 = greedy.  mask_id: the mask token (LLaDA 126336; Dream 151666).
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
      eos_id, eot_id: defaults LLaDA's 126081 / 126348 (needed by the EOS flags and eos_fill only).
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

    style="dream" (Dream _sample, prr_ext/dream.py): alg in "origin", "maskgit_plus", "topk_margin", "entropy";
      eps, top_p, top_k, alg_temp as in Dream; logits_hook(i, x, logits) / tokens_hook(i, x, logits) are Dream's
      generation_logits_hook_func / generation_tokens_hook_func. block_length must be None or gen_length;
      policy, cfg_scale, the EOS flags, eos_fill, cuda_graph and rng do not apply.

    Returns a GenerateResult.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    check_inputs(prompt_ids, attention_mask, gen_length)
    if style == "dream":
        if block_length not in (None, gen_length):
            raise ValueError("style='dream' has no blocks: block_length must be None or gen_length")
        if policy is not None:
            raise ValueError("style='dream' selects tokens with `alg`, not a prr_ext policy")
        if cfg_scale or logits_eos_inf or confidence_eos_eot_inf or eos_fill or cuda_graph or block_info:
            raise ValueError("cfg_scale, the EOS flags, eos_fill, cuda_graph and block_info apply to style='llada'")
        return dream_generate(model, prompt_ids, gen_length=gen_length, steps=steps, alg=alg, temperature=temperature,
                              top_p=top_p, top_k=top_k, alg_temp=alg_temp, eps=eps, mask_id=mask_id,
                              attention_mask=attention_mask, generator=generator, logits_hook=logits_hook,
                              tokens_hook=tokens_hook)
    if logits_hook is not None or tokens_hook is not None or alg_temp is not None or top_p is not None \
            or top_k is not None:
        raise ValueError("logits_hook, tokens_hook, alg_temp, top_p and top_k apply to style='dream'")
    return _llada_generate(model, prompt_ids, gen_length=gen_length, block_length=block_length or gen_length,
                           steps=steps, policy=policy if policy is not None else LowConfidence(),
                           temperature=temperature, cfg_scale=cfg_scale, attention_mask=attention_mask,
                           eos_id=eos_id, logits_eos_inf=logits_eos_inf,
                           confidence_eos_eot_inf=confidence_eos_eot_inf, eot_id=eot_id, mask_id=mask_id,
                           confidence_dtype=confidence_dtype, generator=generator, rng=rng, eos_fill=eos_fill,
                           cuda_graph=cuda_graph, block_info=block_info, backend=backend, seed=seed)


def _llada_generate(model, prompt_ids, *, gen_length, block_length, steps, policy, temperature, cfg_scale,
                    attention_mask, eos_id, logits_eos_inf, confidence_eos_eot_inf, eot_id, mask_id,
                    confidence_dtype, generator, rng, eos_fill, cuda_graph, block_info, backend, seed):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    cfg_scale = float(cfg_scale)
    if not (cfg_scale >= 0.0) or math.isinf(cfg_scale):
        raise ValueError(f"cfg_scale must be a finite number >= 0, got {cfg_scale}")
    eos_id = LLADA_EOS_ID if eos_id is None else int(eos_id)
    eot_id = LLADA_EOT_ID if eot_id is None else int(eot_id)
    if cuda_graph:
        if prompt_ids.device.type != "cuda" and _GRAPH_IMPL[0] is _cuda_warmup:
            raise ValueError("cuda_graph=True needs CUDA tensors")
        if rng != "philox":
            raise ValueError("cuda_graph=True needs rng='philox' (rng='torch' draws on the host's generator state)")
        if block_info:
            raise ValueError("cuda_graph=True cannot pass host-side block_start/block_end to the model")
        if backend != "op":
            raise ValueError("cuda_graph=True needs backend='op'")
    dev = prompt_ids.device
    B, P = prompt_ids.shape
    G = gen_length
    x = torch.full((B, P + G), mask_id, dtype=torch.int64, device=dev)
    x[:, :P] = prompt_ids
    am = None
    prompt_length: Any = P
    if attention_mask is not None:
        am = torch.cat([attention_mask, torch.ones((B, G), dtype=attention_mask.dtype, device=dev)], dim=-1)
        # the true per-row lengths (PRR's length features do not count pads); the generation region starts at P
        prompt_length = attention_mask.to(torch.int64).sum(1)
    prompt_index = x != mask_id  # LLaDA: prompt columns, left pads included
    am2 = torch.cat([am, am], 0) if (am is not None and cfg_scale > 0) else am
    pi2 = prompt_index

    def call(inp, mask, lo):
        kw = {}
        if mask is not None:
            kw["attention_mask"] = mask
        if block_info:
            kw["block_start"], kw["block_end"] = lo, lo + block_length
        return logits_of(model(inp, **kw))

    forwards = [0]

    def forward(lo: int) -> torch.Tensor:
        forwards[0] += 1
        if cfg_scale > 0:
            un_x = torch.where(pi2, torch.full_like(x, mask_id), x)
            out = call(torch.cat([x, un_x], 0), am2, lo)
            logits, un_logits = torch.chunk(out, 2, dim=0)
            logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
        else:
            logits = call(x, am, lo)
        if logits.dim() != 3 or logits.shape[0] != B:
            raise ValueError(f"the model returned logits of shape {tuple(logits.shape)}; expected [{B}, L, V]")
        V = logits.shape[-1]
        for name, tok, used in (("eos_id", eos_id, logits_eos_inf or confidence_eos_eot_inf or eos_fill),
                                ("eot_id", eot_id, confidence_eos_eot_inf)):
            if used and not 0 <= tok < V:
                raise ValueError(f"{name}={tok} is outside the vocabulary (V={V}); pass {name}=")
        if logits_eos_inf:
            logits[:, :, eos_id] = -math.inf
        return logits

    flags = (eos_id, eot_id) if confidence_eos_eot_inf else None

    def body(state: State, lo: int) -> None:
        logits = forward(lo)
        _commit(logits, state, backend, flags)
        if eos_fill:
            _eos_fill(state, eos_id)

    sync_device(dev)
    t0 = time.perf_counter()
    # The first forward runs before the State exists: its logits' dtype is the default confidence dtype.
    logits = forward(P)
    cdt = confidence_dtype if confidence_dtype is not None else logits.dtype
    state = State(x, mask_id=mask_id, prompt_length=prompt_length, gen_start=P, block_length=block_length,
                  steps=steps, policy=policy, temperature=temperature, generator=generator, confidence_dtype=cdt,
                  rng=rng, seed=seed)
    _commit(logits, state, backend, flags)
    del logits
    if eos_fill:
        _eos_fill(state, eos_id)
    if cuda_graph:
        _graph_loop(body, state, forwards)
    else:
        while not state.done:
            body(state, state.block_start if block_info else P)
    sync_device(dev)
    return make_result(x, P, state.nfe, mask_id, time.perf_counter() - t0, forwards[0], state)


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


# (warm-up, capture). Tests swap in eager stand-ins (capture = return fn) to check the loop's logic on CPU.
_GRAPH_IMPL = (_cuda_warmup, _cuda_capture)


def _graph_loop(body: Callable, state: State, forwards: list) -> None:
    """Warm up with one real (eager) step, capture steps_per_block iterations of `body` once, replay until every
    row is done (one host synchronisation per replay). `forwards[0]` counts forwards run: body increments it when
    its Python runs (warm-up, capture), a graph replay runs S forwards without Python."""
    warmup, capture = _GRAPH_IMPL
    if state.done:
        return
    warmup(lambda: body(state, state.gen_start))
    if state.done:
        return
    S = state.steps_per_block

    def block_of_steps():
        for _ in range(S):
            body(state, state.gen_start)

    before = forwards[0]
    replay = capture(block_of_steps)
    forwards[0] = before  # capturing runs nothing
    while not state.done:
        seen = forwards[0]
        replay()
        if forwards[0] == seen:  # a real graph replay (no Python ran)
            forwards[0] += S
