"""What the decode loops (`prr_ext.generate`'s LLaDA loop and `prr_ext.dream`) share: the result type, logits
extraction, input checks and device synchronisation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch

if TYPE_CHECKING:
    from .state import State

__all__ = ["GenerateResult", "logits_of", "sync_device", "check_inputs", "make_result"]


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
    state:              the final prr_ext.State (style="llada"), or None (style="dream").
    """

    tokens: torch.Tensor
    prompt_length: int
    nfe: torch.Tensor
    tokens_per_forward: torch.Tensor
    seconds: float
    forwards: int = 0
    state: Optional["State"] = None

    @property
    def generated(self) -> torch.Tensor:
        return self.tokens[:, self.prompt_length:]


def logits_of(out: Any) -> torch.Tensor:
    """The logits tensor of a model's output: the output itself, its `.logits` (HF style), or the first element
    of a tuple / list."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        logits = out[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model must return a logits tensor or an object with .logits, got {type(out).__name__}")
    return logits


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op off CUDA): wall times of asynchronous work start and end here."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_inputs(prompt_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], gen_length: int) -> None:
    """The checks every loop makes on its prompt ([B, P] int64/int32), attention mask ([B, P], same device) and
    gen_length (a positive int)."""
    if not isinstance(prompt_ids, torch.Tensor) or prompt_ids.dim() != 2:
        raise ValueError("prompt_ids must be a [B, P] tensor")
    if prompt_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"prompt_ids must be int64 (or int32), got {prompt_ids.dtype}")
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(prompt_ids.shape):
            raise ValueError(f"attention_mask must be a tensor shaped like prompt_ids {tuple(prompt_ids.shape)}")
        if attention_mask.device != prompt_ids.device:
            raise ValueError("attention_mask and prompt_ids must be on the same device")
    if not isinstance(gen_length, int) or isinstance(gen_length, bool) or gen_length <= 0:
        raise ValueError(f"gen_length must be a positive int, got {gen_length!r}")


def make_result(x: torch.Tensor, prompt_length: int, nfe: torch.Tensor, mask_id: int, seconds: float,
                forwards: int, state: Optional["State"] = None) -> GenerateResult:
    """The GenerateResult of a finished canvas x [B, P + G]; tokens_per_forward counts the non-mask generated
    positions."""
    committed = (x[:, prompt_length:] != mask_id).sum(1).to(torch.float64)
    tpf = committed / nfe.to(torch.float64).clamp_min(1.0)
    return GenerateResult(tokens=x, prompt_length=prompt_length, nfe=nfe.clone(), tokens_per_forward=tpf,
                          seconds=seconds, forwards=forwards, state=state)

