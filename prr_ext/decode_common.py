"""What the decode loops (`prr_ext.generate`'s LLaDA loop and `prr_ext.dream`) share: the result type, logits
extraction, input checks, device synchronisation and the resolution of token ids from the model."""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple, TypeVar

import torch

if TYPE_CHECKING:
    from .state import State

T = TypeVar("T")

__all__ = ["GenerateResult", "logits_of", "sync_device", "check_inputs", "make_result", "model_token_id",
           "resolve_token_id", "model_vocab_size", "check_mask_id", "resolve_mask_id", "first_forward", "is_int"]


@dataclass
class GenerateResult:
    """What `prr_ext.generate` returns.

    tokens:             [B, P + G] int64, the whole canvas as LLaDA's / Dream's loops return it: the prompt columns
                        (left pads included) followed by the G generated tokens. Positions a policy could not fill
                        (only with non-finite logits) still hold mask_id.
    prompt_length:      P, the (padded) prompt width; `generated` = tokens[:, P:].
    nfe:                [B] int64, forwards consumed per row: the steps in which the row was active (a row that
                        waits for the batch to finish a block, or is retired by eos_fill, is not charged).
    tokens_per_forward: [B] float64, committed generated positions / nfe (EOS-filled positions count).
    seconds:            wall time of the decode loop (device-synchronised).
    forwards:           model calls the loop made for the batch (>= max(nfe) with adaptive policies, whose rows
                        finish blocks at different steps; a CFG call with 2B rows counts once; with cuda_graph,
                        every captured step of every replay counts).
    state:              the final prr_ext.State (style="llada"), or None (style="dream", gen_length="auto").
    token_forwards:     [B] float64, the compute of each row as token-forwards: the sum over its forwards of the
                        canvas length each covered (a fixed-length loop: (P + G) * nfe).
    gen_lengths:        [B] int64, each row's final canvas length (gen_length="auto"; None otherwise).
    truncated:          [B] bool, rows whose first canvas ended without EOS (gen_length="auto"; None otherwise).
    """

    tokens: torch.Tensor
    prompt_length: int
    nfe: torch.Tensor
    tokens_per_forward: torch.Tensor
    seconds: float
    forwards: int = 0
    state: Optional["State"] = None
    token_forwards: Optional[torch.Tensor] = None
    gen_lengths: Optional[torch.Tensor] = None
    truncated: Optional[torch.Tensor] = None

    @property
    def generated(self) -> torch.Tensor:
        return self.tokens[:, self.prompt_length:]


def logits_of(out: Any) -> torch.Tensor:
    """The logits tensor of a model's output: the output itself, its `.logits` (HF style), or the first element
    of a tuple / list."""
    logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    if logits is None and isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        logits = out[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model must return a logits tensor or an object with .logits, got {type(out).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"the model returned {logits.dtype} logits; it must return floating-point logits")
    return logits


def hidden_states_of(out: Any, who: str = "this feature") -> torch.Tensor:
    """The last hidden states [B, L, D] of a model output asked for them (`output_hidden_states=True`): its
    `.hidden_states`, the last layer's when that is a tuple / list of layers (Hugging Face); else a ValueError that
    names `who` needs them."""
    hidden = getattr(out, "hidden_states", None)
    if isinstance(hidden, (tuple, list)):  # Hugging Face: one tensor per layer (embeddings first), the last one last
        hidden = hidden[-1] if hidden else None
    if not isinstance(hidden, torch.Tensor):
        raise ValueError(f"{who} reads the model's hidden states: called with output_hidden_states=True, the model "
                         f"must return an object with .hidden_states ([B, L, D] or a tuple of them); it returned "
                         f"{type(out).__name__} without them")
    return hidden


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op off CUDA): wall times of asynchronous work start and end here."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_inputs(prompt_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], gen_length: int) -> None:
    """The checks every loop makes on its prompt ([B, P] int64/int32), attention mask ([B, P] of 0/1, same device,
    left-padded) and gen_length (a positive int)."""
    if not isinstance(prompt_ids, torch.Tensor) or prompt_ids.dim() != 2:
        raise ValueError("prompt_ids must be a [B, P] tensor")
    if prompt_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"prompt_ids must be int64 (or int32), got {prompt_ids.dtype}")
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(prompt_ids.shape):
            raise ValueError(f"attention_mask must be a tensor shaped like prompt_ids {tuple(prompt_ids.shape)}")
        if attention_mask.device != prompt_ids.device:
            raise ValueError("attention_mask and prompt_ids must be on the same device")
        am = attention_mask.to(torch.int64)
        if not bool(((am == 0) | (am == 1)).all()) or not bool((am[:, 1:] >= am[:, :-1]).all()):
            # the loops put the generation slots right after the last prompt column: pads must come first
            raise ValueError("attention_mask must be a left-padded 0/1 mask (each row 0 ... 0 1 ... 1); pad on the "
                             "left (Hugging Face tokenizers: tokenizer.padding_side = 'left')")
    if not isinstance(gen_length, int) or isinstance(gen_length, bool) or gen_length <= 0:
        raise ValueError(f"gen_length must be a positive int, got {gen_length!r}")


def make_result(x: torch.Tensor, prompt_length: int, nfe: torch.Tensor, mask_id: int, seconds: float,
                forwards: int, state: Optional["State"] = None) -> GenerateResult:
    """The GenerateResult of a finished canvas x [B, P + G]; tokens_per_forward counts the non-mask generated
    positions."""
    committed = (x[:, prompt_length:] != mask_id).sum(1).to(torch.float64)
    tpf = committed / nfe.to(torch.float64).clamp_min(1.0)
    return GenerateResult(tokens=x, prompt_length=prompt_length, nfe=nfe.clone(), tokens_per_forward=tpf,
                          seconds=seconds, forwards=forwards, state=state,
                          token_forwards=nfe.to(torch.float64) * x.shape[1])


# ---------------------------------------------------------------------------------------------------------------
# token ids
# ---------------------------------------------------------------------------------------------------------------
def is_int(v: Any) -> bool:
    """Whether v is a Python int and not a bool (argument checks: True is not a length)."""
    return isinstance(v, int) and not isinstance(v, bool)


def model_token_id(model: Any, attr: str) -> Tuple[Optional[int], str]:
    """The token id `attr` (e.g. "mask_token_id") the model declares: `model.config.<attr>`, else
    `model.tokenizer.<attr>`; (None, "") when neither is set. Returns (id, where it was found). A list of ids (HF
    configs list several EOS ids) gives its first."""
    for owner_name in ("config", "tokenizer"):
        owner = getattr(model, owner_name, None)
        value = getattr(owner, attr, None) if owner is not None else None
        if value is None:
            continue
        where = f"model.{owner_name}.{attr}"
        if isinstance(value, (list, tuple)) and value and all(is_int(v) for v in value):
            value = value[0]
        if not is_int(value) or value < 0:
            raise TypeError(f"{where} is {value!r}, not a token id (a non-negative int); pass the id explicitly")
        return value, where
    return None, ""


def resolve_token_id(name: str, explicit: Optional[int], model: Any, attr: str, default: int,
                     default_name: str) -> Tuple[int, str]:
    """The id for argument `name`: `explicit` when given, else the model's `attr` (`model_token_id`), else
    `default`. Returns (id, where it came from) for error messages."""
    if explicit is not None:
        try:  # ints, NumPy integers and one-element integer tensors; not bools, not floats
            value = None if isinstance(explicit, bool) else operator.index(explicit)
        except TypeError:
            value = None
        if value is None or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {explicit!r}")
        return value, f"passed as {name}="
    value, where = model_token_id(model, attr)
    if value is not None:
        return value, where
    return default, f"{default_name}, the default: the model has no config.{attr} or tokenizer.{attr}"


def model_vocab_size(model: Any) -> Optional[int]:
    """`model.config.vocab_size` when the model declares it (HF models, the testbed model), else None."""
    v = getattr(getattr(model, "config", None), "vocab_size", None)
    return v if is_int(v) and v > 0 else None


def check_mask_id(mask_id: int, where: str, vocab_size: int, vocab_from: str) -> None:
    """mask_id must lie in [0, vocab_size); the error names where the id and the size came from. Checked before
    the model sees the id wherever the size is known: an embedding raises a bare IndexError on CPU for it, and a
    device-side assert on CUDA."""
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id={mask_id} ({where}) is outside the model's vocabulary ({vocab_from} = "
                         f"{vocab_size}): pass mask_id=, the model's mask token id (e.g. its tokenizer's)")


def resolve_mask_id(explicit: Optional[int], model: Any, default: int, default_name: str) -> Tuple[int, str]:
    """`resolve_token_id` for mask_id, checked against `model.config.vocab_size` when the model declares it (the
    loops check it against the logits' V at the first forward too). Returns (id, where it came from)."""
    mask_id, where = resolve_token_id("mask_id", explicit, model, "mask_token_id", default, default_name)
    vocab_size = model_vocab_size(model)
    if vocab_size is not None:
        check_mask_id(mask_id, where, vocab_size, "model.config.vocab_size")
    return mask_id, where


def first_forward(call: Callable[[], T], model: Any, mask_id: int, where: str, x: torch.Tensor) -> T:
    """call(), the loop's first model call on the canvas x. When the model declares no vocabulary size (so
    `resolve_mask_id` could not check mask_id), an IndexError (what an embedding lookup raises on CPU for an
    id >= V) becomes a ValueError naming mask_id if mask_id is the largest id in x: any out-of-range id in x then
    implies that mask_id is out of range too. The model's own error stays attached as the cause."""
    try:
        return call()
    except IndexError as err:
        if model_vocab_size(model) is not None:
            raise
        others = x[x != mask_id]
        if others.numel() == 0 or int(others.max()) < mask_id:
            raise ValueError(f"the model's first forward raised IndexError ({err}); mask_id={mask_id} ({where}) is "
                             f"the largest id in the canvas, so an id out of the model's vocabulary means mask_id "
                             f"is: pass mask_id=, the model's mask token id (e.g. its tokenizer's)") from err
        raise
