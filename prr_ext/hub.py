"""`prr_ext.load`: a model directory on disk to text-in / text-out decoding with any prr_ext policy.

    import prr_ext
    dec = prr_ext.load("/models/LLaDA-8B-Instruct", device="cuda", dtype=torch.bfloat16, trust_remote_code=True)
    results = dec.generate(["What is 7 * 8?", "Name a prime."], policy=prr_ext.Threshold(tau=0.9),
                           gen_length=128, block_length=32, chat=True)
    results[0].text, results[0].nfe, results[0].tokens_per_forward, results[0].seconds

Supported kinds (detected from the directory's config.json, or forced with `kind=`):

* "llada"     LLaDA-style remote-code models (model_type "llada*", e.g. LLaDAModelLM): loaded with
              transformers.AutoModel and `trust_remote_code=True`; logits position j predicts token j.
* "dream"     Dream-style remote-code models (model_type "Dream"): logits at position j predict token j + 1, so
              the decoder calls the model through `DreamShiftedLogits`, which shifts the logits right by one
              (position 0 keeps its own) and turns the loop's [B, L] attention mask into Dream's [B, 1, L, L]
              mask and position ids. Every prr_ext policy then runs on Dream. Dream's own sampler is
              `generate(..., style="dream", alg="entropy")` (prr_ext.dream, no policy).
* "masked_lm" native transformers masked LMs (BERT, RoBERTa, ModernBERT, ...: AutoModelForMaskedLM) used as
              masked-diffusion models: the tokenizer's mask token is the mask token; the loop's attention mask
              is passed, with position ids counted from each row's first real token when the model takes them
              (left padding then does not move absolute positions).
* "testbed"   prr_testbed checkpoints (config.json with "format": "prr_ext.mdlm"; its character tokenizer).

Token ids: mask = config.mask_token_id, else the tokenizer's mask token, else (LLaDA-type only) LLaDA's 126336 when
the vocabulary holds it; no mask token is a ValueError. EOS = config.eos_token_id (the first of a list), else the
tokenizer's (masked LMs: else the [SEP] token). EoT = config.eot_token_id, else a known end-of-turn token in the
tokenizer's vocabulary (<|eot_id|>, <|im_end|>, <|end|>, <end_of_turn>, <|eot|>). Pad = the tokenizer's, else the
config's, else EOS. A response's text ends at its first EOS or EoT (those a generate call passes as eos_id= /
eot_id=, when it does).

Nothing is downloaded: `path` must be a local directory (transformers is imported only when an HF model is loaded;
`pip install "prr_ext[hf]"`).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
from collections.abc import Iterable, Mapping, Set as AbstractSet
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch

from .decode_common import hidden_states_of, is_int, logits_of, resolve_token_id
from .dream import dream_model_kwargs
from .generate import LLADA_MASK_ID, generate as _generate
from .policies import Policy, _check_bool

__all__ = ["load", "Decoder", "DecodeResult", "TokenIds", "DreamShiftedLogits", "MaskedLMCall", "KINDS"]

KINDS = ("llada", "dream", "masked_lm", "testbed")
TESTBED_FORMAT = "prr_ext.mdlm"  # prr_testbed.model.FORMAT (not imported: prr_testbed is optional here)
EOT_TOKENS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|eot|>")
LLADA_MASK_TOKEN = "<|mdm_mask|>"

Message = Dict[str, str]
Prompt = Union[str, List[Message]]
# keywords Decoder.generate sets itself for every batch: a user's value would collide with them
RESERVED_KEYWORDS = ("model", "prompt_ids", "attention_mask")
# keywords holding one entry per row: Decoder.generate takes one per prompt and hands each batch its rows'
PER_ROW_KEYWORDS = ("seed",)


# ---------------------------------------------------------------------------------------------------------------
# results and ids
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class DecodeResult:
    """One prompt's response from `Decoder.generate`.

    text:               the response, decoded up to (not including) its first EOS / EoT (the ids the loop used:
                        the Decoder's, or those passed as eos_id= / eot_id=), special tokens skipped.
    tokens:             [G] int64 (CPU), every generated token of the row (EOS / EoT padding included).
    nfe:                forwards the row consumed.
    tokens_per_forward: committed generated tokens / nfe.
    seconds:            wall time of the decode loop of the batch this prompt ran in (shared by its rows).
    finished:           whether the response ended with EOS / EoT (False: cut off at gen_length).
    prompt_tokens:      [P_b] int64 (CPU), the prompt's ids as the model saw them (chat template applied), no pads.
    """

    text: str
    tokens: torch.Tensor
    nfe: int
    tokens_per_forward: float
    seconds: float
    finished: bool = False
    prompt_tokens: Optional[torch.Tensor] = None


@dataclasses.dataclass(frozen=True)
class TokenIds:
    """The special ids a Decoder uses, with where each came from (`sources`, for messages)."""

    mask: int
    eos: Optional[int] = None
    eot: Optional[int] = None
    pad: int = 0
    sources: Dict[str, str] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def stop(self) -> tuple:
        """The ids that end a response's text (EOS, EoT)."""
        return tuple(i for i in (self.eos, self.eot) if i is not None)


# ---------------------------------------------------------------------------------------------------------------
# model call adapters
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class CallOutput:
    """What an adapter returns when asked for hidden states: logits [B, L, V] and the last hidden states [B, L, D],
    both aligned with the canvas positions they serve."""

    logits: torch.Tensor
    hidden_states: torch.Tensor


def _adapter_output(out: Any, output_hidden_states: bool, align: Callable[[torch.Tensor], torch.Tensor]):
    """The logits of a model output (aligned), or a CallOutput with the aligned last hidden states too."""
    logits = align(logits_of(out))
    if not output_hidden_states:
        return logits
    return CallOutput(logits, align(hidden_states_of(out, "output_hidden_states=True")))


class DreamShiftedLogits:
    """A Dream-style model as the LLaDA loop expects it: logits aligned with the positions they fill.

    Dream predicts token j from hidden state j - 1, so `logits[:, j]` of this callable is the model's
    `logits[:, j - 1]` (j >= 1) and position 0 keeps its own (as Dream's `_sample` does). A [B, L] attention mask
    with zeros (left padding) becomes Dream's [B, 1, L, L] boolean mask and position ids counted from each row's
    first real token; an unpadded batch calls `model(x)`. `config` and `tokenizer` are the wrapped model's. With
    output_hidden_states=True it returns a CallOutput whose hidden states are shifted the same way (position j gets
    the state that predicts it), e.g. for prr_ext.HiddenFeatures.

    Examples
    --------
    >>> call = DreamShiftedLogits(dream_model)
    >>> out = prr_ext.generate(call, prompt_ids, gen_length=64, steps=64, policy=prr_ext.Threshold(tau=0.9))
    """

    def __init__(self, model: Callable):
        self.model = model
        self.config = getattr(model, "config", None)

    def __call__(self, x: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                 output_hidden_states: bool = False):
        kwargs = dream_model_kwargs(attention_mask, 0) if attention_mask is not None else {}
        if output_hidden_states:
            kwargs["output_hidden_states"] = True
        shift = lambda t: torch.cat([t[:, :1], t[:, :-1]], dim=1)  # noqa: E731  (Dream: j is read from j - 1)
        return _adapter_output(self.model(x, **kwargs), output_hidden_states, shift)


class MaskedLMCall:
    """A transformers masked LM as the LLaDA loop expects it: `model(x, attention_mask=am)` returning the logits;
    with an attention mask, position ids count from each row's first real token (pads get 0) when the model's
    forward takes `position_ids`, so that a left-padded row sees the positions it would see unpadded. With
    output_hidden_states=True it returns a CallOutput (logits and the last layer's hidden states).

    Examples
    --------
    >>> call = MaskedLMCall(AutoModelForMaskedLM.from_pretrained(path))
    >>> logits = call(x, attention_mask=am)      # [B, L, V]
    """

    def __init__(self, model: Callable):
        self.model = model
        self.config = getattr(model, "config", None)
        try:
            params = inspect.signature(model.forward).parameters
        except (AttributeError, TypeError, ValueError):
            params = {}
        self.takes_position_ids = "position_ids" in params

    def __call__(self, x: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                 output_hidden_states: bool = False):
        kwargs = {"output_hidden_states": True} if output_hidden_states else {}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask.long()
            if self.takes_position_ids:
                kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        return _adapter_output(self.model(input_ids=x, **kwargs), output_hidden_states, lambda t: t)


# ---------------------------------------------------------------------------------------------------------------
# tokenizer adapters: one interface over an HF tokenizer and the testbed's CharTokenizer
# ---------------------------------------------------------------------------------------------------------------
class _HFText:
    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode(self, text: str, templated: bool) -> List[int]:
        # a chat template writes its own special tokens (BOS ...); plain text gets the tokenizer's usual ones
        return list(self.tokenizer(text, add_special_tokens=not templated)["input_ids"])

    def apply_chat_template(self, messages: List[Message]) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def decode(self, ids: List[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class _CharText:
    has_chat_template = False

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def encode(self, text: str, templated: bool) -> List[int]:
        return self.tokenizer.encode(text)

    def apply_chat_template(self, messages: List[Message]) -> str:  # pragma: no cover (has_chat_template is False)
        raise NotImplementedError

    def decode(self, ids: List[int]) -> str:
        return self.tokenizer.decode(ids, stop_at_eos=False)


# ---------------------------------------------------------------------------------------------------------------
# the decoder
# ---------------------------------------------------------------------------------------------------------------
class Decoder:
    """A loaded model, its tokenizer and token ids: text in, text out. Made by `prr_ext.load`.

    Attributes: `model` (the loaded module), `tokenizer`, `kind` (one of KINDS), `style` ("llada" or "dream": how
    the model's logits line up), `ids` (TokenIds), `device`, `path`, `call` (the callable the decode loop runs:
    the model itself, or its DreamShiftedLogits / MaskedLMCall adapter).

    Examples
    --------
    >>> dec = prr_ext.load(prr_testbed.MODEL_DIR)
    >>> [r.text for r in dec.generate(["4821+7395="], gen_length=24, block_length=12)]
    ['c:1110 s:12216']
    """

    def __init__(self, model: Any, tokenizer: Any, *, kind: str, ids: TokenIds, device: Union[str, torch.device],
                 path: Optional[str] = None):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.model, self.tokenizer, self.kind, self.ids, self.path = model, tokenizer, kind, ids, path
        self.device = torch.device(device)
        self.style = "dream" if kind == "dream" else "llada"
        self._text = _CharText(tokenizer) if kind == "testbed" else _HFText(tokenizer)
        if kind == "dream":
            self.call: Callable = DreamShiftedLogits(model)
        elif kind == "masked_lm":
            self.call = MaskedLMCall(model)
        else:
            self.call = model

    def __repr__(self) -> str:
        return (f"Decoder(kind={self.kind!r}, path={self.path!r}, device={str(self.device)!r}, mask={self.ids.mask}, "
                f"eos={self.ids.eos}, eot={self.ids.eot}, pad={self.ids.pad})")

    # ------------------------------------------------------------------ text
    def encode_prompt(self, prompt: Prompt, *, chat: bool = False) -> List[int]:
        """The ids of one prompt: a string (with chat=True wrapped as one user message and templated) or a list of
        {"role", "content"} messages (always templated). The chat template is the tokenizer's, with the assistant
        turn opened (add_generation_prompt=True); a tokenizer without one is a ValueError. A malformed prompt is a
        TypeError / ValueError naming the message that is wrong."""
        return self._encode(prompt, _check_bool("chat", chat), "the prompt")

    def _encode(self, prompt: Prompt, chat: bool, where: str) -> List[int]:
        messages = _chat_messages(prompt, where)
        if messages is None:
            if not chat:
                return self._text.encode(prompt, templated=False)
            messages = [{"role": "user", "content": prompt}]
        if not self._text.has_chat_template:
            raise ValueError(f"chat=True (or a list of messages) needs a chat template, and the tokenizer of "
                             f"{self.path or 'this model'} has none: pass plain strings with chat=False, or set "
                             f"tokenizer.chat_template")
        return self._text.encode(self._text.apply_chat_template(messages), templated=True)

    def decode_response(self, tokens: Sequence[int], stop: Optional[Sequence[int]] = None) -> tuple:
        """(text, finished): the text of generated `tokens` up to the first stop id, and whether one was found.
        `stop` defaults to the Decoder's EOS / EoT (`ids.stop`)."""
        tokens = [int(t) for t in tokens]
        stop = set(self.ids.stop if stop is None else stop)
        end = next((i for i, t in enumerate(tokens) if t in stop), None)
        return self._text.decode(tokens if end is None else tokens[:end]), end is not None

    # ------------------------------------------------------------------ decoding
    def generate(self, prompts: Union[Prompt, Sequence[Prompt]], *, policy: Optional[Policy] = None,
                 gen_length: int = 128, block_length: Optional[int] = None, steps: Optional[int] = None,
                 chat: bool = False, temperature: float = 0.0, batch_size: int = 16, **kw) -> List[DecodeResult]:
        """Decode a response to each prompt; one DecodeResult per prompt, in order.

        Parameters
        ----------
        prompts : a list of strings or chats (lists of {"role", "content"} messages); a single string or chat is
            one prompt. Anything else (a dict, bytes, None) is a TypeError: wrap a single message as [message].
        policy : any prr_ext policy (default LowConfidence(), LLaDA's rule).
        gen_length, block_length, steps : the canvas (default block_length = gen_length, steps = gen_length).
            gen_length is a positive int, or "auto" with steps= (see prr_ext.generate). A masked LM's canvas
            (longest prompt + gen_length) must fit its config.max_position_embeddings.
        chat : True or False: apply the tokenizer's chat template to string prompts (a ValueError when it has
            none).
        temperature : 0 = greedy.
        batch_size : prompts decoded together; each batch is left-padded to its longest prompt.
        **kw : passed to prr_ext.generate (cfg_scale, eos_fill, logits_eos_inf, confidence_eos_eot_inf, generator,
            confidence_dtype, ...). The ids (mask_id, eos_id, eot_id) default to the Decoder's (None: the
            Decoder's); an eos_id / eot_id given here is also where the response's text ends and what `finished`
            looks for, as in the loop. `seed` holds one seed per prompt ([N] int64), each batch takes its
            prompts'. `model`, `prompt_ids` and `attention_mask` are the Decoder's to set, and block_info=True
            needs a KV-cache model (call prr_ext.generate for either). For a Dream-style model, `style="dream"`
            (with `alg=`, `eps=`, ...) runs Dream's own sampler on the unshifted model instead of a policy.

        Returns
        -------
        list of DecodeResult

        Examples
        --------
        >>> dec = prr_ext.load("/models/LLaDA-8B-Instruct", device="cuda", dtype=torch.bfloat16,
        ...                    trust_remote_code=True)
        >>> r = dec.generate(["Hi!"], policy=prr_ext.Threshold(tau=0.9), gen_length=64, block_length=32,
        ...                  chat=True)[0]
        >>> r.text, r.nfe, r.tokens_per_forward
        """
        prompts = _prompt_list(prompts)
        if not is_int(batch_size) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        chat = _check_bool("chat", chat)
        auto = isinstance(gen_length, str) and gen_length == "auto"
        if not (auto or (is_int(gen_length) and gen_length > 0)):
            raise ValueError(f"gen_length must be a positive int or 'auto', got {gen_length!r}")
        if steps is None:
            if auto:
                raise ValueError("steps= is required with gen_length='auto' (the step budget at max_gen_length)")
            steps = gen_length
        for key in RESERVED_KEYWORDS:
            if key in kw:
                raise TypeError(f"{key}= is set by Decoder.generate for each batch (the model call, the left-padded "
                                "prompt ids and their attention mask); to pass your own, call "
                                "prr_ext.generate(decoder.call, prompt_ids, ...)")
        if kw.get("block_info"):
            raise ValueError("block_info=True needs a KV-cache model that takes block_start= / block_end=, and a "
                             "Decoder calls the model (or its adapter) without them: wrap the model in a cache model "
                             "and call prr_ext.generate(cache_model, prompt_ids, block_info=True, ...)")
        style = kw.pop("style", "llada")
        if style == "dream":
            if self.kind != "dream":
                raise ValueError(f"style='dream' (Dream's own sampler, which shifts the logits itself) is for "
                                 f"Dream-style models; this model's kind is {self.kind!r}")
            if policy is not None:
                raise ValueError("style='dream' selects tokens with `alg`, not a prr_ext policy")
            call = self.model
        elif style == "llada":
            call = self.call
        else:
            raise ValueError(f"style must be 'llada' or 'dream', got {style!r}")
        ids = self._call_ids(kw)
        # every prompt checked before any decoding
        encoded = [self._encode(p, chat, f"prompt {i}") for i, p in enumerate(prompts)]
        for i, prompt_ids in enumerate(encoded):
            if not prompt_ids:
                raise ValueError(f"prompt {i} encodes to no tokens")
        if not auto:
            self._check_positions(encoded, gen_length)
        per_row = _per_row_keywords(kw, len(encoded), batch_size)
        options = dict(mask_id=self.ids.mask, eos_id=ids.eos, eot_id=ids.eot)
        options.update(kw)
        if style == "llada":
            options.update(policy=policy, block_length=block_length)
        elif block_length is not None:
            options.update(block_length=block_length)
        results: List[DecodeResult] = []
        for lo in range(0, len(encoded), batch_size):
            chunk = encoded[lo:lo + batch_size]
            rows = {k: v if len(encoded) <= batch_size else v[lo:lo + batch_size] for k, v in per_row.items()}
            prompt_ids, attention_mask = self._left_pad(chunk)
            out = _generate(call, prompt_ids, gen_length=gen_length, steps=steps,
                            temperature=temperature, attention_mask=attention_mask, style=style, **options, **rows)
            results.extend(self._results(out, chunk, ids.stop))
        return results

    def _call_ids(self, kw: Dict[str, Any]) -> TokenIds:
        """The Decoder's ids with a call's eos_id= / eot_id= (popped from kw; None keeps the Decoder's): the loop
        gets them, and the text cut and `finished` use the same ones, so a response ends where the loop saw it
        end."""
        overrides = {}
        for key, field in (("eos_id", "eos"), ("eot_id", "eot")):
            value = kw.pop(key, None)
            if value is not None:
                overrides[field] = resolve_token_id(key, value, None, "", 0, "")[0]  # the loop's check of the id
        return dataclasses.replace(self.ids, **overrides)

    def _check_positions(self, encoded: List[List[int]], gen_length: int) -> None:
        """A masked LM has config.max_position_embeddings absolute positions: the longest prompt + gen_length
        must fit them, or the embedding fails deep inside transformers after earlier batches have decoded."""
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        if self.kind != "masked_lm" or not is_int(limit) or not encoded:
            return
        longest = max(range(len(encoded)), key=lambda i: len(encoded[i]))
        P = len(encoded[longest])
        if P + gen_length > limit:
            fix = f"pass gen_length <= {limit - P}" if P < limit else f"shorten prompt {longest}"
            raise ValueError(f"gen_length={gen_length} after prompt {longest} ({P} tokens) makes a "
                             f"{P + gen_length}-token canvas, longer than the model's {limit} positions "
                             f"(config.max_position_embeddings): {fix}")

    def _left_pad(self, chunk: List[List[int]]) -> tuple:
        """([B, P] prompt ids left-padded with the pad id, [B, P] attention mask, or None when no row is padded)."""
        P = max(len(ids) for ids in chunk)
        x = torch.full((len(chunk), P), self.ids.pad, dtype=torch.int64)
        am = torch.zeros((len(chunk), P), dtype=torch.int64)
        for b, ids in enumerate(chunk):
            x[b, P - len(ids):] = torch.tensor(ids, dtype=torch.int64)
            am[b, P - len(ids):] = 1
        padded = any(len(ids) < P for ids in chunk)
        return x.to(self.device), (am.to(self.device) if padded else None)

    def _results(self, out, chunk: List[List[int]], stop: Sequence[int]) -> List[DecodeResult]:
        generated = out.generated.cpu()
        nfe, tpf = out.nfe.cpu().tolist(), out.tokens_per_forward.cpu().tolist()
        lengths = out.gen_lengths.cpu().tolist() if out.gen_lengths is not None else None
        results = []
        for b, prompt_ids in enumerate(chunk):
            tokens = generated[b] if lengths is None else generated[b, :lengths[b]]
            text, finished = self.decode_response(tokens.tolist(), stop)
            results.append(DecodeResult(text=text, tokens=tokens.clone(), nfe=int(nfe[b]),
                                        tokens_per_forward=float(tpf[b]), seconds=float(out.seconds),
                                        finished=finished,
                                        prompt_tokens=torch.tensor(prompt_ids, dtype=torch.int64)))
        return results


def _prompt_list(prompts: Any) -> list:
    """`prompts` as a list of prompts: a single string or chat becomes a list of one. A dict (e.g. one message, or a
    JSONL record), bytes, a set or a non-iterable is a TypeError: iterating it would decode its keys or bytes."""
    if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], dict)):
        return [prompts]
    if isinstance(prompts, (Mapping, bytes, bytearray, memoryview, AbstractSet)) or not isinstance(prompts, Iterable):
        raise TypeError(f"prompts must be a list of strings or a list of chats (lists of {{'role', 'content'}} "
                        f"messages), got {type(prompts).__name__}; wrap a single message as [message]")
    return list(prompts)


def _chat_messages(prompt: Any, where: str) -> Optional[List[Message]]:
    """None for a string prompt, else the chat's messages; a TypeError / ValueError naming `where` and the message
    that is not a {"role": str, "content": str} dict."""
    if isinstance(prompt, str):
        return None
    if not isinstance(prompt, list):
        raise TypeError(f"{where} must be a string or a chat (a list of {{'role', 'content'}} messages), got "
                        f"{type(prompt).__name__}")
    if not prompt:
        raise ValueError(f"{where} is an empty chat: a chat needs at least one {{'role', 'content'}} message")
    for j, message in enumerate(prompt):
        if not isinstance(message, dict):
            raise TypeError(f"{where}, message {j} must be a dict with 'role' and 'content' strings, got "
                            f"{type(message).__name__}")
        for key in ("role", "content"):
            if key not in message:
                raise ValueError(f"{where}, message {j} has no {key!r} (a message is {{'role': ..., 'content': ...}})")
            if not isinstance(message[key], str):
                raise TypeError(f"{where}, message {j}: {key!r} must be a string, got {type(message[key]).__name__}")
    return prompt


def _per_row_keywords(kw: Dict[str, Any], n: int, batch_size: int) -> Dict[str, Any]:
    """The per-row keywords (PER_ROW_KEYWORDS), popped from kw. Over several batches each must be a [n] tensor, one
    entry per prompt, since every batch takes its own prompts' rows; one batch hands it to the loop unchanged."""
    rows = {}
    for key in PER_ROW_KEYWORDS:
        value = kw.pop(key, None)
        if value is None:
            continue
        if n > batch_size and not (isinstance(value, torch.Tensor) and tuple(value.shape) == (n,)):
            got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{key} must hold one entry per prompt, a [{n}] tensor: the {n} prompts run in batches "
                             f"of batch_size={batch_size} and each batch takes its prompts' entries; got {got}")
        rows[key] = value
    return rows


# ---------------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------------
def load(path: Union[str, os.PathLike], *, device: Union[str, torch.device] = "cpu",
         dtype: Optional[torch.dtype] = None, trust_remote_code: bool = False, kind: Optional[str] = None) -> Decoder:
    """Load a masked-diffusion LM and its tokenizer from a local directory, ready for `Decoder.generate`.

    Parameters
    ----------
    path : a local model directory (config.json, weights, tokenizer files). Nothing is downloaded.
    device : where the model runs: a torch.device or what torch.device takes ("cpu", "cuda", "cuda:1", ...); a
        device torch cannot use here is a ValueError before anything loads.
    dtype : the weights' dtype: a floating-point torch.dtype or its name ("bfloat16", "float16", "float32", ...);
        None or "auto" (default) = the checkpoint's own for transformers models, float32 for testbed models.
    trust_remote_code : True or False: run the modeling code shipped in the directory (LLaDA, Dream); required for
        such models.
    kind : "llada", "dream", "masked_lm" or "testbed" (default: detected from config.json, see the module
        docstring). Forcing a kind is for models config.json does not identify; one that contradicts the kind
        config.json describes is a ValueError.

    Returns
    -------
    Decoder

    Raises
    ------
    FileNotFoundError : `path` (or its config.json) does not exist.
    TypeError : trust_remote_code not a bool; device or dtype of the wrong type.
    ValueError : unknown kind, or one that contradicts config.json; a device or dtype torch cannot use; remote code
        without trust_remote_code; no mask token; a tokenizer larger than the model's vocabulary (the wrong
        tokenizer), or a mask / EOS id outside it.
    ImportError : transformers is not installed (a transformers model).

    Examples
    --------
    >>> dec = prr_ext.load("/models/LLaDA-8B-Instruct", device="cuda", dtype=torch.bfloat16, trust_remote_code=True)
    >>> dec.generate(["What is 7 * 8?"], policy=prr_ext.PRR(controller, tau=0.9), gen_length=128, chat=True)[0].text
    """
    # every argument is checked before anything loads (or runs: trust_remote_code="false" is not consent)
    trust_remote_code = _check_bool("trust_remote_code", trust_remote_code)
    device, dtype = _check_device(device), _check_dtype(dtype)
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    path = os.path.expanduser(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"model path does not exist: {path} (prr_ext.load reads local directories only; "
                                "download the model first, e.g. with `huggingface-cli download`)")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model path is not a directory: {path} (expected a model directory with "
                                "config.json)")
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"no config.json in {path}: not a model directory")
    with open(config_path) as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{config_path} is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{config_path} does not hold a JSON object")
    try:
        detected = detect_kind(raw, config_path)
    except ValueError:
        if kind is None:
            raise
        detected = kind  # config.json does not say: the forced kind stands
    if kind is not None and kind != detected:
        # e.g. a Dream model run as "llada" reads every logit one position off and still looks plausible
        raise ValueError(f"kind={kind!r} contradicts {config_path}, which describes a {detected!r} model: leave "
                         f"kind out (or pass kind={detected!r}); kind= is for models config.json does not identify")
    kind = detected
    if kind == "testbed":
        return _load_testbed(path, device, dtype)
    return _load_transformers(path, raw, kind, device, dtype, trust_remote_code)


def _check_device(device: Any) -> torch.device:
    """`device` as a torch.device that torch can use here; a TypeError / ValueError naming `device` otherwise."""
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise TypeError(f"device must be a torch.device or a string such as 'cpu' or 'cuda', got {device!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as err:
        raise ValueError(f"device must be a device torch knows, such as 'cpu', 'cuda' or 'cuda:1', got {device!r} "
                         f"({err})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r}, but torch sees no CUDA GPU (torch.cuda.is_available() is False: a "
                             "CPU-only torch, no GPU or driver, or CUDA_VISIBLE_DEVICES hides it); use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}, but torch sees {torch.cuda.device_count()} GPU(s) (cuda:0 to "
                             f"cuda:{torch.cuda.device_count() - 1})")
    elif dev.type not in ("cpu", "meta"):
        try:  # other backends (mps, xpu, ...): an empty tensor tells whether this build and machine have it
            torch.empty(0, device=dev)
        except (RuntimeError, AssertionError) as err:
            raise ValueError(f"device={device!r} cannot be used here: {err}") from None
    return dev


def _check_dtype(dtype: Any) -> Optional[torch.dtype]:
    """`dtype` as a floating-point torch.dtype, or None (the default) for None / "auto"; its name ("bfloat16",
    "half", ...) works for every kind, as transformers takes it. A TypeError / ValueError naming `dtype` otherwise."""
    if dtype is None or (isinstance(dtype, str) and dtype == "auto"):
        return None
    if isinstance(dtype, str):
        named = getattr(torch, dtype, None)
        if not isinstance(named, torch.dtype):
            raise ValueError(f"dtype must be a torch.dtype, 'auto' or a dtype's name such as 'bfloat16', 'float16' "
                             f"or 'float32', got {dtype!r}")
        dtype = named
    elif not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype (e.g. torch.bfloat16), its name or 'auto', got {dtype!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype for the weights, got {dtype}")
    return dtype


def detect_kind(raw: Dict[str, Any], where: str = "config.json") -> str:
    """The kind of model a config.json (as a dict) describes; ValueError when it is none of KINDS."""
    if raw.get("format") == TESTBED_FORMAT:
        return "testbed"
    model_type = str(raw.get("model_type", "")).lower()
    architectures = [str(a) for a in raw.get("architectures") or []]
    if model_type.startswith("llada") or any(a.lower().startswith("llada") for a in architectures):
        return "llada"
    if model_type.startswith("dream") or any(a.lower().startswith("dream") for a in architectures):
        return "dream"
    if any(a.endswith("ForMaskedLM") for a in architectures) or "AutoModelForMaskedLM" in (raw.get("auto_map") or {}):
        return "masked_lm"
    if model_type:
        try:
            from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES
        except ImportError:
            MODEL_FOR_MASKED_LM_MAPPING_NAMES = {}
        if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
            return "masked_lm"
    raise ValueError(f"{where}: cannot tell what kind of model this is (model_type={raw.get('model_type')!r}, "
                     f"architectures={architectures}); supported: LLaDA- and Dream-style models, transformers "
                     f"masked LMs and prr_testbed checkpoints. Pass kind= one of {KINDS} if it follows one of them")


def _load_testbed(path: str, device, dtype) -> Decoder:
    from prr_testbed.model import MaskedDiffusionLM

    model = MaskedDiffusionLM.from_pretrained(path, device=device, dtype=torch.float32 if dtype is None else dtype)
    cfg = model.config
    ids = TokenIds(mask=cfg.mask_id, eos=cfg.eos_id, eot=None, pad=cfg.pad_id,
                   sources={"mask": "config mask_id", "eos": "config eos_id", "pad": "config pad_id"})
    return Decoder(model, model.tokenizer, kind="testbed", ids=ids, device=device, path=path)


def _dtype_keyword(transformers: Any) -> str:
    """from_pretrained's dtype keyword: `dtype` from transformers 4.56 on, `torch_dtype` before."""
    try:
        major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    except ValueError:
        return "dtype"
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def _load_transformers(path: str, raw: Dict[str, Any], kind: str, device, dtype, trust_remote_code: bool) -> Decoder:
    try:
        import transformers
    except ImportError as err:
        raise ImportError(f"loading {path} ({kind}) needs transformers: pip install transformers tokenizers "
                          "(or pip install \"prr_ext[hf]\")") from err
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    auto_map = raw.get("auto_map") or {}
    model_type = raw.get("model_type")
    if auto_map and not trust_remote_code and model_type not in CONFIG_MAPPING_NAMES:
        raise ValueError(f"{path} ships its own modeling code (config.json auto_map, model_type={model_type!r}): "
                         "pass trust_remote_code=True to run it")
    if kind == "masked_lm":
        auto_class = transformers.AutoModelForMaskedLM
    else:  # LLaDA / Dream: the class their auto_map registers (AutoModel first)
        name = next((n for n in ("AutoModel", "AutoModelForMaskedLM", "AutoModelForCausalLM") if n in auto_map),
                    "AutoModel")
        auto_class = getattr(transformers, name)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"could not load a tokenizer from {path} ({err}); the directory needs the model's "
                         "tokenizer files (tokenizer.json / tokenizer_config.json)") from err
    loading = {"trust_remote_code": trust_remote_code, _dtype_keyword(transformers): "auto" if dtype is None else dtype}
    model = auto_class.from_pretrained(path, **loading)
    model = model.to(device).eval()
    ids = resolve_ids(model, tokenizer, kind, path)
    return Decoder(model, tokenizer, kind=kind, ids=ids, device=device, path=path)


def _as_id(value: Any) -> Optional[int]:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _vocab_token_id(tokenizer: Any, token: str) -> Optional[int]:
    vocab = tokenizer.get_vocab()
    return vocab.get(token)


def model_vocab_size(model: Any) -> Optional[int]:
    """The model's vocabulary as its logits see it: the output embedding's rows, else config.vocab_size."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[0])
    return _as_id(getattr(getattr(model, "config", None), "vocab_size", None))


def resolve_ids(model: Any, tokenizer: Any, kind: str, path: str = "the model") -> TokenIds:
    """The mask / EOS / EoT / pad ids of a transformers model and its tokenizer (rules in the module docstring),
    checked against the model's vocabulary."""
    config = model.config
    sources: Dict[str, str] = {}

    def first(name: str, candidates) -> Optional[int]:
        for where, value in candidates:
            value = _as_id(value)
            if value is not None:
                sources[name] = where
                return value
        return None

    vocab = model_vocab_size(model)
    n_tokenizer = len(tokenizer)
    if vocab is not None and n_tokenizer > vocab:
        raise ValueError(f"the tokenizer in {path} has {n_tokenizer} tokens but the model's vocabulary has {vocab}: "
                         "the tokenizer does not belong to this model")
    llada_default = []
    if kind == "llada":
        llada_default = [(f"the tokenizer's {LLADA_MASK_TOKEN}", _vocab_token_id(tokenizer, LLADA_MASK_TOKEN))]
        if vocab is None or LLADA_MASK_ID < vocab:
            llada_default.append(("LLaDA's default mask id", LLADA_MASK_ID))
    mask = first("mask", [("config.mask_token_id", getattr(config, "mask_token_id", None)),
                          ("tokenizer.mask_token_id", getattr(tokenizer, "mask_token_id", None))] + llada_default)
    if mask is None:
        raise ValueError(f"{path} has no mask token: neither config.mask_token_id nor the tokenizer's mask token is "
                         "set; a masked-diffusion model needs one (set mask_token_id in config.json, or the "
                         "tokenizer's mask_token)")
    eos_candidates = [("config.eos_token_id", getattr(config, "eos_token_id", None)),
                      ("tokenizer.eos_token_id", getattr(tokenizer, "eos_token_id", None))]
    if kind == "masked_lm":
        eos_candidates.append(("tokenizer.sep_token_id", getattr(tokenizer, "sep_token_id", None)))
    eos = first("eos", eos_candidates)
    eot = first("eot", [("config.eot_token_id", getattr(config, "eot_token_id", None))]
                + [(f"the tokenizer's {t}", _vocab_token_id(tokenizer, t)) for t in EOT_TOKENS])
    if eot is not None and eot == eos:
        eot = None
    pad = first("pad", [("tokenizer.pad_token_id", getattr(tokenizer, "pad_token_id", None)),
                        ("config.pad_token_id", getattr(config, "pad_token_id", None)),
                        ("eos", eos), ("mask", mask)])
    if vocab is not None:
        for name, value in (("mask", mask), ("eos", eos), ("eot", eot), ("pad", pad)):
            if value is not None and value >= vocab:
                raise ValueError(f"the {name} id {value} ({sources[name]}) of {path} is outside the model's "
                                 f"vocabulary ({vocab} tokens)")
    return TokenIds(mask=mask, eos=eos, eot=eot, pad=pad, sources=sources)
