"""Small random-weight bidirectional transformers for decode-loop tests (pure torch, fast on CPU).

* `TinyLM(..., hf_output=True)` returns an object with `.logits` (HF style); `hf_output=False` returns the tensor.
* Both accept the calling conventions of the loops under test:
    model(x)                                          no padding
    model(x, attention_mask=am2d)                     LLaDA: [B, L] 1 = attend, 0 = pad (positions stay 0..L-1)
    model(x, attention_mask=am4d, position_ids=idx)   Dream: [B, 1, L, L] bool and [B, L] position ids
* `BlockOnlyLM` wraps a TinyLM as a KV-cache-style callable: called with `block_start=`/`block_end=` keywords it
  returns the full logits at the first call of a block (the "prefill") and only the block's rows afterwards.
* `DeclaredIdsLM` wraps a model with HF-style `config` / `tokenizer` objects that declare its token ids.

Weights are drawn from a private torch.Generator (the global RNG is untouched). Logits are scaled so that
probabilities are spread over a wide range (ties in bf16 confidences stay rare), the mask token's logit is pushed
far down (trained models never predict it, and LLaDA's loop would "commit" it), and optional biases make EOS/EoT
likely so that the EOS/EoT flags have something to act on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import nn


@dataclass
class LMOutput:
    logits: torch.Tensor


class _Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, h: torch.Tensor, keep: Optional[torch.Tensor]) -> torch.Tensor:
        B, L, d = h.shape
        hd = d // self.heads
        q, k, v = self.qkv(self.ln1(h)).view(B, L, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)  # [B, H, L, L], bidirectional
        if keep is not None:  # finite fill: fully masked (pad) query rows stay finite, never NaN
            s = s.masked_fill(~keep, torch.finfo(s.dtype).min)
        a = torch.softmax(s, -1) @ v
        h = h + self.proj(a.transpose(1, 2).reshape(B, L, d))
        return h + self.down(torch.nn.functional.gelu(self.up(self.ln2(h))))


class TinyLM(nn.Module):
    """A bidirectional transformer LM: embeddings + learned positions, `n_layers` pre-LN blocks, LM head.

    Args: vocab_size, d_model, n_layers, n_heads, max_len; mask_id (its logit gets `mask_logit_bias`);
    logit_scale (spread of the logits); token_bias {token: bias} added to the logits; tail_bias
    {token: (start, slope)} adds slope * (column - start + 1) to the token's logit at columns >= start (an
    "answer, then EOS padding" shape: EOS grows likelier towards the end of the canvas); dtype of the weights
    and logits; seed for the weights; hf_output (return LMOutput or the tensor).
    """

    def __init__(self, vocab_size: int = 128, d_model: int = 32, n_layers: int = 2, n_heads: int = 2,
                 max_len: int = 128, mask_id: Optional[int] = None, logit_scale: float = 6.0,
                 mask_logit_bias: float = -30.0, token_bias: Optional[Dict[int, float]] = None,
                 tail_bias: Optional[Dict[int, Tuple[int, float]]] = None, dtype: torch.dtype = torch.float32,
                 seed: int = 0, hf_output: bool = True):
        super().__init__()
        self.vocab_size, self.hf_output = vocab_size, hf_output
        self.emb = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("ln1.weight") or name.endswith("ln2.weight") or name == "ln_f.weight":
                    p.fill_(1.0)
                elif "ln" in name:
                    p.zero_()
                elif name.endswith("bias"):
                    p.normal_(0.0, 0.02, generator=g)
                else:
                    p.normal_(0.0, 1.0 / math.sqrt(p.shape[-1]), generator=g)
            self.head.weight.mul_(logit_scale)
            self.head.bias.mul_(logit_scale)
            if mask_id is not None:
                self.head.bias[mask_id] += mask_logit_bias
            for tok, b in (token_bias or {}).items():
                self.head.bias[tok] += b
        tb = torch.zeros(max_len, vocab_size)
        for tok, (start, slope) in (tail_bias or {}).items():
            cols = torch.arange(start, max_len)
            tb[cols, tok] += slope * (cols - start + 1).float()
        self.register_buffer("tail", tb)
        self.to(dtype)
        self.eval()
        self.calls = 0

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, **_ignored):
        self.calls += 1
        B, L = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(L, device=input_ids.device).expand(B, L)
        h = self.emb(input_ids) + self.pos(position_ids)
        keep = None
        if isinstance(attention_mask, torch.Tensor):
            if attention_mask.dim() == 2:      # [B, L] key padding mask
                keep = attention_mask.bool()[:, None, None, :]
            elif attention_mask.dim() == 4:    # [B, 1, L, L] boolean (Dream)
                keep = attention_mask.bool()
            else:
                raise ValueError(f"attention_mask must be [B, L] or [B, 1, L, L], got {tuple(attention_mask.shape)}")
        for blk in self.blocks:
            h = blk(h, keep)
        logits = self.head(self.ln_f(h)) + self.tail[:L]
        return LMOutput(logits) if self.hf_output else logits


class BlockOnlyLM:
    """KV-cache-style stand-in: `model(x, attention_mask=..., block_start=lo, block_end=hi)`.

    At the first call of each block (a new `block_start`) it returns the full-canvas logits, as a prefix/dual-cache
    model's prefill does; every later call of the block returns only the block's rows [B, hi - lo, V]. The logits
    are those of the full forward, so tokens must equal the full-logits loop's. `starts` records every call's
    block_start; `shapes` every returned shape.
    """

    def __init__(self, model: TinyLM, prefill_full: bool = True):
        self.model, self.prefill_full = model, prefill_full
        self.starts, self.shapes = [], []
        self._last = None

    def __call__(self, x, attention_mask=None, *, block_start: int, block_end: int):
        out = self.model(x, attention_mask=attention_mask)
        logits = out.logits if hasattr(out, "logits") else out
        self.starts.append(block_start)
        if not (self.prefill_full and block_start != self._last):
            logits = logits[:, block_start:block_end]
        self._last = block_start
        self.shapes.append(tuple(logits.shape))
        return LMOutput(logits)


class DeclaredIdsLM:
    """A model that declares its token ids as HF models do: `config` and / or `tokenizer` objects (e.g.
    SimpleNamespace) carrying mask_token_id / eos_token_id / eot_token_id / vocab_size. Calls go to `model`."""

    def __init__(self, model, config=None, tokenizer=None):
        self.model = model
        if config is not None:
            self.config = config
        if tokenizer is not None:
            self.tokenizer = tokenizer

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)


def tiny_lm(**kw) -> TinyLM:
    """HF-style tiny LM (returns `.logits`)."""
    kw.setdefault("hf_output", True)
    return TinyLM(**kw)


def tiny_tensor_lm(**kw) -> TinyLM:
    """Tiny LM whose forward returns the logits tensor itself."""
    kw["hf_output"] = False
    return TinyLM(**kw)
