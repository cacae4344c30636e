"""Decode state: the canvas plus the device-side counters that `prr_ext.step` reads and updates.

Everything the step needs between calls lives in tensors on x's device, so a loop of steps runs with no host
synchronisation (only `State.done` synchronises) and can be captured in a CUDA graph.
"""
from __future__ import annotations

import math
import numbers
import operator
import warnings
from typing import NamedTuple, Optional, Union

import torch

from .constants import CONFIDENCE_DTYPES, RS_BLOCK, RS_COLS, RS_NFE, RULE_STATE_COLS, workspace_words
from .decode_common import is_int
from .policies import KLASS, PRR, EntropyBound, Factor, LocalLeap, Policy, Threshold
from .reference import advance_block

RNGS = ("philox", "torch")
MAX_STEPS = 2 ** 31 - 1  # keeps the schedule's products (positions x steps) inside int64
# The rules that decide a step from that step's candidates alone (and PRR's per-position trajectory), and so also
# accept on a uniform canvas.
UNIFORM_POLICIES = (Threshold, Factor, EntropyBound, PRR, LocalLeap)


def uniform_canvas_refusal(policy: Policy) -> Optional[str]:
    """Why `policy` cannot run on a uniform canvas (State(mask_id=None)), or None when it can. The one place that
    decides it: State itself and the DiffusionGemma integrations ask here."""
    if isinstance(policy, UNIFORM_POLICIES):
        return None
    return (f"a uniform canvas (mask_id=None) takes one of {', '.join(c.__name__ for c in UNIFORM_POLICIES)} as "
            f"policy, got {policy}: the others follow positions that stay masked across steps, which a uniform "
            "canvas does not have")


def check_confidence_dtype(dtype, argument: str = "confidence_dtype") -> torch.dtype:
    """A softmax dtype the op computes confidences in; else a ValueError naming `argument` (State, and the adapters
    that hold one before their State exists)."""
    if not isinstance(dtype, torch.dtype) or dtype not in CONFIDENCE_DTYPES:  # (a dtype first: a list is unhashable)
        raise ValueError(f"{argument} must be one of {list(CONFIDENCE_DTYPES)}, got {dtype!r}")
    return dtype


def check_generator(generator, argument: str = "generator") -> Optional[torch.Generator]:
    """A torch.Generator or None; else a TypeError naming `argument` (State, and the adapters that hold one)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{argument} must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


class _Checked(NamedTuple):
    """State's arguments after the checks, in the forms it keeps."""
    uniform: bool
    mask_id: Optional[int]
    prompt_lens: torch.Tensor  # [B] int64, on the CPU
    gen_start: int
    G: int
    block_length: int
    num_blocks: int
    steps: int
    temperature: float


def _check_arguments(x, mask_id, prompt_length, block_length, steps, policy, temperature, generator,
                     confidence_dtype, rng, seed, gen_start) -> _Checked:
    """Every check of State's arguments (the one place: State, and generate before its first forward)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"x must be a [B, L] tensor, got shape {tuple(x.shape)}")
    if x.dtype != torch.int64:
        raise TypeError(f"x must be int64, got {x.dtype}")
    if not x.is_contiguous():
        raise ValueError("x must be contiguous (it is updated in place)")
    B, L = x.shape
    uniform, mask_id_arg = mask_id is None, mask_id
    if not uniform:
        try:  # ints and NumPy integers, as generate's mask_id; not bools, not floats
            mask_id = None if isinstance(mask_id, bool) else operator.index(mask_id)
        except TypeError:
            mask_id = None
        if mask_id is None or mask_id < 0:
            raise ValueError("mask_id must be a non-negative int (or None for a uniform canvas), got "
                             f"{mask_id_arg!r}")
    if is_int(prompt_length):
        prompt_lens = torch.full((B,), prompt_length, dtype=torch.int64, device="cpu")
    elif isinstance(prompt_length, torch.Tensor):
        if prompt_length.dim() != 1 or prompt_length.shape[0] != B or prompt_length.dtype not in (
                torch.int32, torch.int64):
            raise ValueError(f"prompt_length tensor must be [B]={B} int32/int64, got {tuple(prompt_length.shape)} "
                             f"{prompt_length.dtype}")
        prompt_lens = prompt_length.detach().to("cpu", torch.int64)
    else:
        raise TypeError(f"prompt_length must be an int or a [B] tensor, got {type(prompt_length).__name__}")
    longest = int(prompt_lens.max()) if B > 0 else int(prompt_length) if is_int(prompt_length) else 0
    if B > 0 and int(prompt_lens.min()) < 0:
        raise ValueError("prompt_length must be >= 0")
    name = "prompt_length"
    if gen_start is None:
        gen_start = longest
    elif not is_int(gen_start) or gen_start < longest:
        raise ValueError(f"gen_start must be an int >= max(prompt_length)={longest}, got {gen_start!r}")
    else:
        name = "gen_start"
    gen_start = int(gen_start)
    if not 0 <= gen_start < L:
        raise ValueError(f"{name} must be < the canvas length L={L} (G must be > 0), got {gen_start}")
    G = L - gen_start
    if not is_int(block_length) or block_length <= 0:
        raise ValueError(f"block_length must be a positive int, got {block_length!r}")
    block_length = int(block_length)
    if G % block_length:
        raise ValueError(f"block_length={block_length} must divide the generation length G={G} (L - gen_start, "
                         f"gen_start={gen_start}: max(prompt_length) unless given; a batch in which every row is "
                         "left-padded passes gen_start=P)")
    num_blocks = G // block_length
    if not is_int(steps) or not 0 < steps <= MAX_STEPS:
        raise ValueError(f"steps must be a positive int (at most {MAX_STEPS}), got {steps!r}")
    steps = int(steps)
    if steps % num_blocks:
        raise ValueError(f"steps={steps} must be divisible by the number of blocks {num_blocks} "
                         f"(G={G} / block_length={block_length})")
    if not isinstance(policy, Policy):
        raise TypeError(f"policy must be a prr_ext policy, got {type(policy).__name__}")
    refusal = uniform_canvas_refusal(policy) if uniform else None
    if refusal:
        raise ValueError(refusal)
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a number, got {temperature!r}")
    temperature = float(temperature)
    if not (temperature >= 0.0) or math.isinf(temperature):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    check_confidence_dtype(confidence_dtype)
    if rng not in RNGS:
        raise ValueError(f"rng must be one of {RNGS}, got {rng!r}")
    check_generator(generator)
    if seed is not None and not (isinstance(seed, torch.Tensor) and seed.shape == (B,) and seed.dtype == torch.int64):
        raise ValueError(f"seed must be a [B]={B} int64 tensor")
    return _Checked(uniform, mask_id, prompt_lens, gen_start, G, block_length, num_blocks, steps, temperature)


class State:
    """Per-batch decode state for `prr_ext.step`.

    Args:
      x:               [B, P+G] int64 canvas, prompt then G generation slots (mask_id where still masked). It is
                       updated in place by every step.
      mask_id:         the mask token id (LLaDA: 126336), or None for a uniform canvas (DiffusionGemma), which has no
                       mask token: every position of the active block is a candidate at every step, a step writes
                       the tokens it accepts and returns them as its mask, and the caller renoises the others. Each
                       block then lasts exactly steps_per_block steps, every rule's floor is one token per step, and
                       the policy is Threshold, Factor, EntropyBound, PRR or LocalLeap.
      prompt_length:   int P, or a [B] int64 tensor of per-row prompt lengths for a left-padded batch: the
                       generation region is then the last G = L - max(prompt_length) columns of every row, and the
                       per-row lengths only enter PRR's length-normalised features (pads do not count).
      block_length:    generation runs in G // block_length blocks, left to right.
      steps:           total step budget; steps // num_blocks per block (LLaDA's schedule).
      policy:          a prr_ext policy (LowConfidence, RandomRemask, Threshold, Factor, EntropyBound, PRR, LocalLeap,
                       SlowFast, KLASS, or R2 wrapping one of them).
      temperature:     0 = greedy; > 0 samples the candidate by Gumbel-max on logits / temperature.
      generator:       torch.Generator for the random draws (rng="torch"), or for deriving per-row seeds.
      confidence_dtype: dtype of the softmax behind the confidence (fp32 default; bf16 = LLaDA >= 2025-06 with bf16
                       logits; fp64 = older LLaDA / Fast-dLLM; fp16 also accepted).
      rng:             "philox" (default): stateless counter-based noise keyed by (seed[b], column, row step,
                       vocab index); reproducible, batch-invariant and graph-safe; identical on CPU and CUDA.
                       "torch": LLaDA's exact draws (one fp64 rand_like(logits) per step at T > 0, one
                       rand([B, Lr]) for RandomRemask) from `generator`; not graph-safe, and costs a full-vocab
                       fp64 tensor per step, exactly as the reference loop does.
      seed:            [B] int64 per-row Philox seeds; default: drawn once from `generator` (or torch's default
                       generator) at construction.
      gen_start:       first column of the generation region (default: max(prompt_length)). A left-padded batch in
                       which every row is padded passes its padded width P here, with the true per-row lengths in
                       prompt_length, so that pads do not count in PRR's features. Must be >= max(prompt_length).
    """

    @staticmethod
    def check_arguments(x: torch.Tensor, mask_id: Optional[int], prompt_length: Union[int, torch.Tensor],
                        block_length: int, steps: int, policy: Policy, temperature: float = 0.0,
                        generator: Optional[torch.Generator] = None, confidence_dtype: torch.dtype = torch.float32,
                        rng: str = "philox", seed: Optional[torch.Tensor] = None,
                        gen_start: Optional[int] = None) -> None:
        """Raise what `State(...)` with these arguments would raise, without building it (no allocation, no draw
        from the generator): a loop checks its options before its first forward."""
        _check_arguments(x, mask_id, prompt_length, block_length, steps, policy, temperature, generator,
                         confidence_dtype, rng, seed, gen_start)

    def __init__(self, x: torch.Tensor, mask_id: Optional[int], prompt_length: Union[int, torch.Tensor],
                 block_length: int, steps: int, policy: Policy, temperature: float = 0.0,
                 generator: Optional[torch.Generator] = None,
                 confidence_dtype: torch.dtype = torch.float32, rng: str = "philox",
                 seed: Optional[torch.Tensor] = None, gen_start: Optional[int] = None):
        uniform, mask_id, prompt_lens, gen_start, G, block_length, num_blocks, steps, temperature = _check_arguments(
            x, mask_id, prompt_length, block_length, steps, policy, temperature, generator, confidence_dtype, rng,
            seed, gen_start)
        B = x.shape[0]
        dev = x.device
        self.x = x
        self.uniform = uniform
        self.mask_id = -1 if uniform else mask_id  # the op's code for "no mask token"
        self.prompt_lens = prompt_lens.to(dev)
        self.gen_start, self.gen_length = gen_start, G
        self.block_length, self.num_blocks = block_length, num_blocks
        self.steps, self.steps_per_block = steps, steps // num_blocks
        self.policy = policy
        self.temperature = temperature
        self.generator = generator
        self.confidence_dtype = confidence_dtype
        self.rng = rng
        if seed is None:  # rng="torch" must not consume the generator's stream here
            # (on the CPU whatever the default device, e.g. inside `with torch.device("meta")`)
            seed = (torch.zeros(B, dtype=torch.int64, device="cpu") if rng == "torch" else
                    torch.randint(0, 2 ** 62, (B,), generator=generator, dtype=torch.int64, device="cpu"))
        self.seed = seed.to(dev)
        # Device-side counters (prr_ext.constants.RS_*): block index, step in block, n of the schedule, NFE.
        self.row_state = torch.zeros(B, RS_COLS, dtype=torch.int64, device=dev)
        # Per block position: (argmax at the previous step, step in block at which the argmax last changed).
        self.traj = torch.zeros(B, block_length, 2, dtype=torch.int64, device=dev)
        self.prev_p1 = torch.zeros(B, block_length, dtype=torch.float32, device=dev)
        # Per block position, the newer rules' memory (prr_ext.constants RULE_*): R²'s temporal streak, KLASS's count.
        self.rule_state = torch.zeros(B, block_length, RULE_STATE_COLS, dtype=torch.float64, device=dev)
        # KLASS only: the previous step's log-probabilities of the active block's positions (fp32, [B, block_length,
        # V], allocated at the first step, when V is known); an empty tensor otherwise.
        self.prev_logp = torch.empty(0, dtype=torch.float32, device=dev)
        # Scratch of the CUDA kernel (arrival counters, per-token keys; layout: csrc/include/prr/params.h
        # workspace_words); every launch leaves its counters zeroed, so one State can be replayed in a CUDA graph.
        self.workspace = torch.zeros(workspace_words(B, block_length), dtype=torch.int64, device=dev)
        base = policy.base_rule
        self.controller_buf = base.controller.packed(dev) if isinstance(base, PRR) else None
        self.needs_prev_logp = isinstance(base, KLASS)
        self.last_tokens: Optional[torch.Tensor] = None
        self.last_stats: Optional[torch.Tensor] = None
        if B > 0 and not uniform and not bool((x[:, gen_start:] == mask_id).any()):
            warnings.warn(f"the canvas holds no mask token (mask_id={mask_id}) after column gen_start={gen_start}: "
                          "the step has nothing to decode. Fill the generation slots with mask_id (check that "
                          "mask_id is your model's mask token).", stacklevel=2)
        if policy.adaptive and not uniform:  # start each row at its first block that holds a mask
            for b in range(B):
                lo = gen_start
                if not bool((x[b, lo:lo + block_length] == mask_id).any()):
                    self.row_state[b, RS_BLOCK] = 0
                    advance_block(self, b)

    # ------------------------------------------------------------------ views
    @property
    def done(self) -> bool:
        """True once every row has left its last block (synchronises with the device)."""
        return self.x.shape[0] == 0 or bool((self.row_state[:, RS_BLOCK] >= self.num_blocks).all())

    @property
    def nfe(self) -> torch.Tensor:
        """Forwards consumed per row, [B] int64 (a row that waits for the batch to finish a block does not count)."""
        return self.row_state[:, RS_NFE]

    @property
    def active_block(self) -> int:
        """Index of the block the next step works on (synchronises)."""
        return int(self.row_state[:, RS_BLOCK].min()) if self.x.shape[0] else self.num_blocks

    @property
    def block_start(self) -> int:
        """Canvas column where the active block starts (synchronises); for block-only logits."""
        return self.gen_start + self.active_block * self.block_length

    def clone(self) -> "State":
        """A deep copy (canvas and counters), e.g. to run the reference and the op side by side."""
        new = object.__new__(State)
        new.__dict__.update(self.__dict__)
        for name in ("x", "prompt_lens", "seed", "row_state", "traj", "prev_p1", "workspace", "rule_state",
                     "prev_logp"):
            setattr(new, name, getattr(self, name).clone())
        return new

    def __repr__(self) -> str:
        return (f"State(B={self.x.shape[0]}, L={self.x.shape[1]}, gen_start={self.gen_start}, G={self.gen_length}, "
                f"block_length={self.block_length}, steps={self.steps}, policy={self.policy}, "
                f"temperature={self.temperature}, confidence_dtype={self.confidence_dtype}, rng={self.rng!r})")
