"""A small LLaDA-style masked-diffusion language model, the testbed's model (shipped in prr_testbed/assets/model/).

Architecture (LLaDA's, scaled down): token embedding (the vocabulary includes the mask token), N pre-norm blocks of
bidirectional multi-head self-attention with rotary position embeddings (RoPE) and a SwiGLU MLP, RMSNorm, an untied
output head. No causal mask and no time-step input. `model(x).logits` is [B, L, V], as an HF model returns it, so
`prr_ext.generate` and hand-written `prr_ext.step` loops use it unchanged; `config.mask_token_id` and
`config.eos_token_id` (also on `model.tokenizer`) are the ids `prr_ext.generate` takes from the model.

Padding: <pad> tokens (id `config.pad_id`) are never attended to. With RoPE (relative positions) a left-padded row
therefore gets exactly the logits it would get unpadded, which is how batches of prompts of different lengths are
decoded (`make_canvas`, `prr_ext.State(prompt_length=<[B] tensor>)`).

KV cache: `CachedLM(model, "prefix" | "dual")` (Fast-dLLM's prefix / dual cache, approximate by design) for
`prr_ext.generate(..., block_info=True)`, built on `forward_with_kv` / `forward_block`; docs/kv_cache.md.

Files: a directory with `config.json` (architecture, tokenizer vocabulary, training metadata) and
`model.safetensors` (never pickle). `load_default()` (= `prr_testbed.load_model()`) loads the shipped checkpoint.
This module imports nothing from prr_ext: it works without the compiled op.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import MODEL_DIR
from .tokenizer import CharTokenizer, TokenIdNames

FORMAT = "prr_ext.mdlm"  # the "format" key of config.json, as the shipped checkpoint carries it
VERSION = 1


@dataclass
class ModelConfig(TokenIdNames):
    vocab_size: int
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 8
    d_ff: int = 688               # SwiGLU hidden size (~ 8/3 d_model)
    max_seq_len: int = 128        # longest canvas trained on (prompt + generation); RoPE itself has no limit
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    pad_id: int = 0
    eos_id: int = 1
    mask_id: int = 2
    tokenizer: Dict = field(default_factory=lambda: CharTokenizer().to_config())

    def __post_init__(self):
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError("d_model must split into n_heads heads of even size")
        for name in ("pad_id", "eos_id", "mask_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name} must lie in [0, vocab_size)")

    @classmethod
    def for_tokenizer(cls, tokenizer: CharTokenizer, **kw) -> "ModelConfig":
        return cls(vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id,
                   mask_id=tokenizer.mask_id, tokenizer=tokenizer.to_config(), **kw)

    def to_dict(self) -> Dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class ModelOutput:
    """HF-style output: `.logits` [B, L, V]; `.hidden_states` (final normed hidden, [B, L, D]) when asked for."""

    logits: torch.Tensor
    hidden_states: Optional[torch.Tensor] = None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight.to(x.dtype)


def _rope_tables(length: int, head_dim: int, theta: float, device, dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    ang = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv)  # [L, hd/2]
    ang = torch.cat([ang, ang], -1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, self.n_heads = cfg.d_model, cfg.n_heads
        self.attn_norm = RMSNorm(d, cfg.norm_eps)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.mlp_norm = RMSNorm(d, cfg.norm_eps)
        self.gate_up = nn.Linear(d, 2 * cfg.d_ff, bias=False)
        self.down = nn.Linear(cfg.d_ff, d, bias=False)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
        return self.forward_kv(h, cos, sin, attn_mask)[0]

    def forward_kv(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn_mask: Optional[torch.Tensor],
                   past: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                   insert_at: int = 0) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """The block on h [B, Lq, D] (cos / sin: the RoPE tables of h's canvas positions, [Lq, hd]) -> (new h,
        (k, v) of h's columns, [B, H, Lq, hd], RoPE applied).

        past: cached (k, v) [B, H, Lp, hd] of other canvas columns; h's own keys are inserted at key index
        `insert_at` (keys stay in canvas order), and attn_mask [B, 1, 1, Lp + Lq] covers those keys. Without past
        this is the plain bidirectional block (the same ops as always)."""
        B, L, D = h.shape
        q, k, v = self.qkv(self.attn_norm(h)).view(B, L, 3, self.n_heads, D // self.n_heads).unbind(2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, L, hd]
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        kv = (k, v)
        if past is not None:
            pk, pv = past
            k = torch.cat([pk[:, :, :insert_at], k, pk[:, :, insert_at:]], 2)
            v = torch.cat([pv[:, :, :insert_at], v, pv[:, :, insert_at:]], 2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # bidirectional: no causal mask
        h = h + self.attn_out(a.transpose(1, 2).reshape(B, L, D))
        gate, up = self.gate_up(self.mlp_norm(h)).chunk(2, -1)
        return h + self.down(F.silu(gate) * up), kv


class MaskedDiffusionLM(nn.Module):
    """LLaDA-style masked-diffusion transformer. `forward(input_ids)` -> ModelOutput(logits=[B, L, V])."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self._rope: Dict[tuple, Tuple[torch.Tensor, torch.Tensor]] = {}
        self.reset_parameters()

    # ------------------------------------------------------------------ init
    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        std = 0.02
        out_std = std / math.sqrt(2 * self.config.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith("attn_out.weight") or name.endswith("down.weight"):
                nn.init.normal_(p, 0.0, out_std, generator=generator)
            else:
                nn.init.normal_(p, 0.0, std, generator=generator)

    @property
    def mask_id(self) -> int:
        return self.config.mask_id

    @property
    def tokenizer(self) -> CharTokenizer:
        return CharTokenizer.from_config(self.config.tokenizer)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ forward
    def _rope_for(self, length: int, device, dtype):
        key = (device, dtype)
        cached = self._rope.get(key)
        # tables made under torch.inference_mode (an evaluation) cannot enter autograd: a training forward after
        # one rebuilds them
        stale = cached is not None and cached[0].is_inference() and not torch.is_inference_mode_enabled()
        if cached is None or stale or cached[0].shape[0] < length:
            n = max(length, self.config.max_seq_len)
            cached = _rope_tables(n, self.config.d_model // self.config.n_heads, self.config.rope_theta, device, dtype)
            self._rope[key] = cached
        return cached[0][:length], cached[1][:length]

    def _prologue(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]):
        """(embeddings [B, L, D], RoPE cos / sin, key mask [B, 1, 1, L]) of a canvas: every query sees every real
        key; the default mask is `input_ids != pad_id`."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, L], got {tuple(input_ids.shape)}")
        h = self.embed(input_ids)
        dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
        cos, sin = self._rope_for(input_ids.shape[1], h.device, dtype)
        keep = (input_ids != self.config.pad_id) if attention_mask is None else attention_mask.bool()
        return h, cos, sin, keep[:, None, None, :]

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                output_hidden_states: bool = False) -> ModelOutput:
        """input_ids [B, L] int64 (mask_id marks masked slots). attention_mask [B, L] (1 = real token): default
        `input_ids != pad_id`; masked-out keys are never attended to (queries at pads give unused logits)."""
        h, cos, sin, attn_mask = self._prologue(input_ids, attention_mask)
        for blk in self.blocks:
            h = blk(h, cos, sin, attn_mask)
        h = self.norm(h)
        logits = self.lm_head(h)
        return ModelOutput(logits=logits, hidden_states=h if output_hidden_states else None)

    # ------------------------------------------------------------------ KV cache (prr_testbed.model.CachedLM)
    def forward_with_kv(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
                        ) -> Tuple[ModelOutput, List[Tuple[torch.Tensor, torch.Tensor]]]:
        """`forward(input_ids, attention_mask)` (the same logits) and every layer's (k, v) [B, H, L, hd] of the
        canvas (RoPE applied): what a KV cache keeps."""
        h, cos, sin, attn_mask = self._prologue(input_ids, attention_mask)
        kvs = []
        for blk in self.blocks:
            h, kv = blk.forward_kv(h, cos, sin, attn_mask)
            kvs.append(kv)
        h = self.norm(h)
        return ModelOutput(logits=self.lm_head(h)), kvs

    def forward_block(self, block_ids: torch.Tensor, start: int, past_kv: Sequence[Tuple[torch.Tensor, torch.Tensor]],
                      key_mask: torch.Tensor, logits_rows: Optional[int] = None) -> torch.Tensor:
        """Forward the canvas columns [start, start + n) only (block_ids [B, n]), against cached K/V.

        past_kv: per layer (k, v) [B, H, Lp, hd] of the other columns the queries attend to, in canvas order, with
        the columns before `start` first (prefix cache: exactly [0, start); dual cache: [0, start) then the suffix);
        the block's own K/V are inserted at key index `start` (Fast-dLLM's `replace_position`). key_mask [B, Lp + n]
        (1 = attend) in that key order. Returns the logits [B, logits_rows or n, V] of the first rows."""
        B, n = block_ids.shape
        h = self.embed(block_ids)
        dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
        cos, sin = self._rope_for(start + n, h.device, dtype)
        cos, sin = cos[start:start + n], sin[start:start + n]  # the columns' own positions
        attn_mask = key_mask.bool()[:, None, None, :]
        for blk, past in zip(self.blocks, past_kv):
            h = blk.forward_kv(h, cos, sin, attn_mask, past=past, insert_at=start)[0]
        if logits_rows is not None:
            h = h[:, :logits_rows]
        return self.lm_head(self.norm(h))

    # ------------------------------------------------------------------ files
    def save_pretrained(self, path: str, dtype: torch.dtype = torch.float16, metadata: Optional[Dict] = None) -> None:
        """Write `path/config.json` and `path/model.safetensors` (weights cast to `dtype`, fp16 by default)."""
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, os.path.join(path, "model.safetensors"))
        cfg = {"format": FORMAT, "version": VERSION, "model": self.config.to_dict(),
               "weights_dtype": str(dtype).replace("torch.", ""), "num_parameters": self.num_parameters()}
        if metadata:
            cfg["training"] = metadata
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")

    @classmethod
    def from_pretrained(cls, path: str = MODEL_DIR, device: Union[str, torch.device] = "cpu",
                        dtype: torch.dtype = torch.float32) -> "MaskedDiffusionLM":
        """Load a directory written by `save_pretrained`, in eval mode, weights cast to `dtype` (fp32 default)."""
        from safetensors.torch import load_file

        cfg_path, w_path = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
        for p in (cfg_path, w_path):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"model file not found: {p}")
        with open(cfg_path) as f:
            cfg = json.load(f)
        if cfg.get("format") != FORMAT:
            raise ValueError(f"{cfg_path}: not a prr_ext model config (format != {FORMAT!r})")
        if cfg.get("version") != VERSION:
            raise ValueError(f"{cfg_path}: model version {cfg.get('version')} is not supported (reads {VERSION})")
        model = cls(ModelConfig.from_dict(cfg["model"]))
        model.load_state_dict({k: v.to(torch.float32) for k, v in load_file(w_path).items()})
        model.metadata = cfg.get("training", {})
        return model.to(device=device, dtype=dtype).eval()


def load_default(device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32) -> MaskedDiffusionLM:
    """The model shipped in prr_testbed/assets/model/ (`prr_testbed.load_model` is the same)."""
    return MaskedDiffusionLM.from_pretrained(MODEL_DIR, device=device, dtype=dtype)


def load_model_arg(folder: Optional[str], device: Union[str, torch.device] = "cpu") -> MaskedDiffusionLM:
    """The model a command's --model names: the one in `folder` (cli.model_arg has already turned a model's name
    into its folder), or the shipped demo model when it is None."""
    return load_default(device) if folder is None else MaskedDiffusionLM.from_pretrained(folder, device=device)


def default_model_available() -> bool:
    """Whether the shipped model's two files are present."""
    return all(os.path.isfile(os.path.join(MODEL_DIR, f)) for f in ("config.json", "model.safetensors"))


class CachedLM:
    """A prefix or dual KV cache around a MaskedDiffusionLM (Fast-dLLM's PrefixCache / DualCache), for
    `prr_ext.generate(CachedLM(model, mode), ..., block_info=True)`. See docs/kv_cache.md.

    `__call__(x, attention_mask=None, block_start=lo, block_end=hi)`:
      * prefill, at the first call of a block (lo / hi / the canvas shape changed, or a cached column's token or
        attention mask differs from the prefill's, e.g. a new batch): one full forward that also returns every
        layer's K/V (RoPE applied); keeps the K/V of the columns [0, lo) ("prefix") or of every column outside
        [lo, hi) ("dual"); returns the full logits [B, L, V] (exactly the plain forward's).
      * later calls of the same block: "dual" forwards the block's columns [lo, hi) only, attending to the cached
        prefix and suffix K/V plus the block's own; "prefix" forwards the columns [lo, L) (the block and the
        masked suffix are recomputed) against the cached prefix K/V. Both return block-only logits [B, hi - lo, V].
    Keys stay in canvas order and pads (attention_mask 0, or <pad> tokens without a mask) are never attended to.

    Approximate by design: the cached K/V are those of the block's first call and are not updated as tokens get
    committed inside the block (dual: nor as the suffix would change), so later steps' logits differ from a full
    forward's. Without block_start (a plain call) it is the model's own forward. `prefills` and `block_calls` count
    the two kinds of calls; `reset()` drops the cache."""

    MODES = ("prefix", "dual")

    def __init__(self, model: MaskedDiffusionLM, mode: str = "dual"):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.model, self.mode = model, mode
        self.prefills = self.block_calls = 0
        self.reset()

    def reset(self) -> None:
        self._kv: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None
        self._key = None
        self._cached_ids = self._cached_keep = None

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def tokenizer(self) -> CharTokenizer:
        return self.model.tokenizer

    @property
    def mask_id(self) -> int:
        return self.model.mask_id

    def _outside(self, t: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """The cached columns of t [B, L]: [0, lo) (prefix) or every column outside [lo, hi) (dual)."""
        return t[:, :lo] if self.mode == "prefix" else torch.cat([t[:, :lo], t[:, hi:]], 1)

    def __call__(self, x: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                 block_start: Optional[int] = None, block_end: Optional[int] = None) -> ModelOutput:
        if block_start is None:
            return self.model(x, attention_mask=attention_mask)
        B, L = x.shape
        lo = int(block_start)
        hi = L if block_end is None else min(int(block_end), L)
        if not 0 <= lo < hi <= L:
            raise ValueError(f"block [{block_start}, {block_end}) does not lie in a canvas of {L} columns")
        keep = (x != self.config.pad_id) if attention_mask is None else attention_mask.bool()
        ids, kp = self._outside(x, lo, hi), self._outside(keep, lo, hi)
        if (self._kv is None or self._key != (lo, hi, B, L, x.device) or not torch.equal(ids, self._cached_ids)
                or not torch.equal(kp, self._cached_keep)):
            out, kvs = self.model.forward_with_kv(x, attention_mask=keep)
            if self.mode == "prefix":
                self._kv = [(k[:, :, :lo].contiguous(), v[:, :, :lo].contiguous()) for k, v in kvs]
            else:
                self._kv = [(torch.cat([k[:, :, :lo], k[:, :, hi:]], 2), torch.cat([v[:, :, :lo], v[:, :, hi:]], 2))
                            for k, v in kvs]
            self._key, self._cached_ids, self._cached_keep = (lo, hi, B, L, x.device), ids.clone(), kp.clone()
            self.prefills += 1
            return out
        self.block_calls += 1
        if self.mode == "prefix":
            logits = self.model.forward_block(x[:, lo:], lo, self._kv, keep, logits_rows=hi - lo)
        else:
            logits = self.model.forward_block(x[:, lo:hi], lo, self._kv, keep)
        return ModelOutput(logits=logits)


def make_canvas(tokenizer: CharTokenizer, prompts: Sequence[str], gen_length: int,
                device: Union[str, torch.device] = "cpu") -> Tuple[torch.Tensor, torch.Tensor]:
    """Left-padded canvases for a batch of prompts: ([B, P + gen_length] int64, prompt lengths [B] int64).

    Row b is <pad> * (P - len_b), the prompt's ids, then gen_length mask tokens; P = the longest prompt. Pass the
    lengths as `prr_ext.State(prompt_length=...)`."""
    ids: List[List[int]] = [tokenizer.encode(p) for p in prompts]
    P = max((len(i) for i in ids), default=0)
    x = torch.full((len(ids), P + gen_length), tokenizer.mask_id, dtype=torch.int64)
    for b, seq in enumerate(ids):
        x[b, :P - len(seq)] = tokenizer.pad_id
        x[b, P - len(seq):P] = torch.tensor(seq, dtype=torch.int64)
    return x.to(device), torch.tensor([len(i) for i in ids], dtype=torch.int64, device=device)


def decode_responses(tokenizer: CharTokenizer, x: torch.Tensor, gen_start: int) -> List[str]:
    """The text of each row's generation region, up to its first <eos>."""
    return [tokenizer.decode(row) for row in x[:, gen_start:].tolist()]
