"""Any prr_ext commit rule as the scheduler of diffusers' `LLaDA2Pipeline` (diffusers >= 0.42).

    import prr_ext
    from diffusers import LLaDA2Pipeline
    from prr_ext.integrations.diffusers import PolicyScheduler

    scheduler = PolicyScheduler(prr_ext.Threshold(tau=0.9), block_length=32)
    pipe = LLaDA2Pipeline(model=model, scheduler=scheduler, tokenizer=tokenizer)
    out = pipe(prompt="What is 7 * 8?", gen_length=256, num_inference_steps=32, threshold=0.9,
               editing_threshold=None)           # prr_ext never edits committed tokens
    out.texts[0], scheduler.nfe, scheduler.forwards

`PolicyScheduler` has the interface of diffusers' `BlockRefinementScheduler` (`set_timesteps`, `step`,
`check_eos_finished`, `check_block_should_continue`, `config.block_length`, `timesteps`, `order`), so the pipeline
drives it unchanged; its `step` commits with `prr_ext.step` on the block's logits. docs/engines.md ("diffusers")
lists every difference from `BlockRefinementScheduler`; the class docstring gives the argument mapping.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Union

import torch

try:
    from diffusers.configuration_utils import FrozenDict
    from diffusers.schedulers.scheduling_block_refinement import BlockRefinementSchedulerOutput
except ImportError as exc:  # pragma: no cover - exercised only without diffusers
    raise ImportError("prr_ext.integrations.diffusers needs diffusers >= 0.42 (BlockRefinementScheduler and "
                      "LLaDA2Pipeline): pip install 'prr_ext[diffusers]'") from exc

from ..constants import CONFIDENCE_DTYPES
from ..ops import step as prr_step
from ..policies import PRR, R2, Policy, RandomRemask
from ..reference import block_cap
from ..state import State

__all__ = ["PolicyScheduler"]

SAMPLING_METHODS = ("auto", "greedy", "multinomial")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _positive_int(name: str, v) -> int:
    if not _is_int(v) or v <= 0:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def _draws_noise(policy: Policy) -> bool:
    """Whether the rule itself draws random numbers (the State's Philox seeds then come from the generator)."""
    return isinstance(policy.base_rule, RandomRemask) or (isinstance(policy, R2) and policy.token_cluster == "random")


def _policy_threshold(policy: Policy) -> Optional[float]:
    """The confidence threshold the rule commits at (Threshold, PRR, LocalLeap: tau), or None."""
    return getattr(policy.base_rule, "tau", None)


def sample_tokens(logits: torch.Tensor, *, temperature: float, top_k: Optional[int], top_p: Optional[float],
                  generator: Optional[torch.Generator]) -> torch.Tensor:
    """Multinomial draws [B, L] from softmax(filter(logits / temperature)), with top-k then top-p (nucleus)
    filtering: the distribution, filters and draw order of diffusers' `BlockRefinementScheduler`, so the same
    `generator` state yields the same tokens (one `torch.multinomial` over all B * L rows).

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> sample_tokens(torch.randn(2, 4, 10), temperature=0.7, top_k=5, top_p=0.9, generator=g).shape
    torch.Size([2, 4])
    """
    V = logits.shape[-1]
    scaled = logits.reshape(-1, V)
    if temperature != 1.0:
        scaled = scaled / temperature
    if top_k is not None and 0 < top_k < V:
        kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, -math.inf)  # ties with the k-th value stay in
    if top_p is not None and top_p < 1.0:
        ordered, order = torch.sort(scaled, dim=-1, descending=True)
        mass = torch.softmax(ordered, dim=-1).cumsum(-1)
        # keep the smallest prefix whose mass exceeds top_p: drop a token once the mass *before* it exceeds top_p
        drop = torch.zeros_like(mass, dtype=torch.bool)
        drop[:, 1:] = mass[:, :-1] > top_p
        scaled = scaled.scatter(-1, order, ordered.masked_fill(drop, -math.inf))
    probs = torch.softmax(scaled.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).view(logits.shape[:-1])


class PolicyScheduler:
    """A `BlockRefinementScheduler` stand-in whose step commits with a prr_ext policy (`prr_ext.step`).

    Pass it as `LLaDA2Pipeline(model=..., scheduler=PolicyScheduler(policy), tokenizer=...)`; the pipeline calls
    `set_timesteps` once per call, then per block `step` once per forward, `check_eos_finished` and
    `check_block_should_continue`.

    Parameters
    ----------
    policy : prr_ext.Policy
        The commit rule: LowConfidence, RandomRemask, Threshold, Factor, EntropyBound, PRR, LocalLeap, SlowFast,
        KLASS or R2(base=...). Its own hyper-parameters decide (e.g. `Threshold(tau)`'s tau, not the pipeline's
        `threshold`). A PRR controller with `extra_features` is refused (the pipeline has no way to supply them).
    block_length : int, default 32
        `config.block_length`: the pipeline's block when its call names none.
    num_inference_steps : int, default 32
        `config.num_inference_steps` (the pipeline passes its own to `set_timesteps`).
    confidence_dtype : torch.dtype, default torch.float32
        Dtype of the softmax behind the confidence (prr_ext.State); fp32 is what BlockRefinementScheduler uses.

    Notes
    -----
    State lifetime: `set_timesteps` (once per pipeline call) clears everything; each block (`timestep == 0`) gets a
    fresh `prr_ext.State` over the block alone (prompt_length 0, one block, `steps` = the call's
    num_inference_steps), so the rule's schedule, PRR's trajectory features, KLASS's kept distributions, R2's
    streaks and SlowFast's span restart per block. `nfe` ([B], forwards in which the row had masks) and `forwards`
    (step calls) count over the whole call. The block on entry to every step is taken from `sample` (the pipeline's
    canvas is the truth: it drops commits for rows it has marked finished).

    PRR: the scheduler sees one block, never the row, so the controller's four row-level features (global commit
    rate, global step ratio, block start ratio, block length ratio) are those of a one-block generation without a
    prompt; its token- and block-level features (probabilities, entropy, position and step in the block, argmax
    history) are exact. A controller trained with `prr_ext.generate` on multi-block canvases thus sees slightly
    different inputs here.

    Step arguments, and what becomes of them:

    * `mask_token_id`: required; None (diffusers' uniform-corruption mode, DiffusionGemma) is a ValueError.
    * `temperature`, `sampling_method`, `top_k`, `top_p`, `generator`: greedy (temperature 0 or "greedy") lets the
      op take the argmax over the non-mask tokens; otherwise the candidates are drawn exactly as
      BlockRefinementScheduler draws them (`sample_tokens`: temperature, top-k, top-p, `torch.multinomial` with
      `generator`) and passed to `prr_ext.step(candidates=...)`. The rule ranks them by prr_ext's confidence, the
      *untempered* probability of the drawn token (LLaDA's, and what PRR's controller was trained on);
      BlockRefinementScheduler ranks by the tempered, filtered probability. `generator` also seeds the Philox
      noise of RandomRemask and R2's random token cluster (one draw of B seeds per block).
    * `threshold`: not used; the policy's own threshold decides (a warning says so when a policy with a tau
      receives a different one). `minimal_topk`: not used by the step (as in BlockRefinementScheduler; the pipeline
      caps its num_inference_steps with it).
    * `editing_threshold`: > 0 is a ValueError (prr_ext's commits are final); LLaDA2Pipeline's default is 0.5, so
      call it with `editing_threshold=None`.
    * `prompt_mask`: checked ([block_length] bool) and otherwise unused: prompt positions hold no mask token, so no
      rule touches them.

    Differences from BlockRefinementScheduler at matching settings (LowConfidence with `threshold > 1`, Threshold
    with `threshold=tau`, greedy): none in the tokens when the prompt length is a multiple of the block length.
    Otherwise the first block also holds prompt tokens, and prr_ext's schedule spreads the block's *masks* over the
    steps (LLaDA's `get_num_transfer_tokens`) where diffusers spreads `block_length`. The mask token is never a
    candidate. A block ends as soon as no unfinished row holds a mask (diffusers spends one more forward on a block
    that an adaptive rule filled early), or after the rule's step cap (num_inference_steps, or block_length for the
    rules that may commit fewer than the schedule: PRR without the union, SlowFast, KLASS).

    Examples
    --------
    >>> import prr_ext
    >>> from prr_ext.integrations.diffusers import PolicyScheduler
    >>> scheduler = PolicyScheduler(prr_ext.Threshold(tau=0.9), block_length=32)
    >>> scheduler.config.block_length
    32
    >>> # pipe = LLaDA2Pipeline(model=model, scheduler=scheduler, tokenizer=tokenizer)
    >>> # out = pipe(prompt="...", gen_length=256, threshold=0.9, editing_threshold=None)
    >>> # out.texts, scheduler.nfe, scheduler.forwards
    """

    order = 1  # as diffusers' schedulers: one model call per step

    def __init__(self, policy: Policy, block_length: int = 32, *, num_inference_steps: int = 32,
                 confidence_dtype: torch.dtype = torch.float32):
        if not isinstance(policy, Policy):
            raise TypeError(f"policy must be a prr_ext policy (e.g. prr_ext.Threshold(tau=0.9)), got "
                            f"{type(policy).__name__}")
        base = policy.base_rule
        if isinstance(base, PRR) and base.controller.extra_features:
            raise ValueError(f"policy: the PRR controller expects {base.controller.extra_features} extra_features "
                             "per token, which LLaDA2Pipeline cannot supply; use a controller without extra features")
        block_length = _positive_int("block_length", block_length)
        num_inference_steps = _positive_int("num_inference_steps", num_inference_steps)
        if confidence_dtype not in CONFIDENCE_DTYPES:
            raise ValueError(f"confidence_dtype must be one of {list(CONFIDENCE_DTYPES)}, got {confidence_dtype}")
        self.policy = policy
        self.confidence_dtype = confidence_dtype
        # what LLaDA2Pipeline reads (config.block_length), plus BlockRefinementScheduler's other keys where they mean
        # something here
        self.config = FrozenDict(block_length=block_length, num_inference_steps=num_inference_steps,
                                 editing_threshold=None, minimal_topk=1, policy=repr(policy))
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.arange(num_inference_steps - 1, -1, -1, dtype=torch.long)
        self.block_length: Optional[int] = None  # set by set_timesteps
        self._warned_thresholds = set()
        self._reset()

    # ------------------------------------------------------------------ per-call state
    def _reset(self) -> None:
        self.state: Optional[State] = None  # the active block's prr_ext.State
        self.forwards = 0                    # step calls (= model forwards) in this pipeline call
        self.blocks = 0                      # blocks started in this call
        self._nfe_before: Optional[torch.Tensor] = None  # [B] NFE of the call's earlier blocks
        self._masks_left: Optional[torch.Tensor] = None  # [B] bool: the block holds a mask after the last step

    @property
    def nfe(self) -> Optional[torch.Tensor]:
        """[B] int64 forwards per row in the current pipeline call (steps in which the row's block held a mask and
        the rule had not finished it); None before the first step."""
        if self.state is None:
            return self._nfe_before
        return self.state.nfe.clone() if self._nfe_before is None else self._nfe_before + self.state.nfe

    def set_timesteps(self, num_inference_steps: int, device: Union[str, torch.device, None] = None,
                      block_length: Optional[int] = None) -> None:
        """Start a pipeline call: `num_inference_steps` steps per block (the rule's schedule), blocks of
        `block_length` (default `config.block_length`). Clears every per-call state (block State, NFE).

        Examples
        --------
        >>> import prr_ext
        >>> s = PolicyScheduler(prr_ext.LowConfidence(), block_length=8)
        >>> s.set_timesteps(4, device="cpu")
        >>> s.timesteps.tolist()
        [3, 2, 1, 0]
        """
        num_inference_steps = _positive_int("num_inference_steps", num_inference_steps)
        block_length = self.config.block_length if block_length is None else _positive_int("block_length",
                                                                                           block_length)
        self.num_inference_steps = num_inference_steps
        self.block_length = block_length
        self.timesteps = torch.arange(num_inference_steps - 1, -1, -1, device=device, dtype=torch.long)
        self._reset()

    # ------------------------------------------------------------------ the step
    def step(self, model_output: torch.Tensor, timestep: Union[int, torch.Tensor], sample: torch.LongTensor, *,
             mask_token_id: Optional[int] = None, temperature: float = 0.0, top_p: Optional[float] = None,
             top_k: Optional[int] = None, sampling_method: str = "auto", threshold: Optional[float] = None,
             editing_threshold: Optional[float] = None, minimal_topk: Optional[int] = None,
             prompt_mask: Optional[torch.BoolTensor] = None, generator: Optional[torch.Generator] = None,
             return_dict: bool = True):
        """One refinement step of the active block: choose candidates, commit with the policy.

        Parameters
        ----------
        model_output : torch.Tensor
            [B, block_length, V] logits of the block (any float dtype the op takes).
        timestep : int or torch.Tensor
            Step index within the block; 0 starts a new block (a fresh prr_ext.State).
        sample : torch.LongTensor
            [B, block_length] block tokens, `mask_token_id` where still masked.
        mask_token_id, temperature, top_p, top_k, sampling_method, threshold, editing_threshold, minimal_topk,
        prompt_mask, generator
            As BlockRefinementScheduler's; the class docstring says what each becomes.
        return_dict : bool, default True
            Return a diffusers `BlockRefinementSchedulerOutput`, else the tuple `(prev_sample, transfer_index,
            editing_transfer_index, sampled_tokens, sampled_probs, pred_logits)`.

        Returns
        -------
        BlockRefinementSchedulerOutput or tuple
            `prev_sample` [B, block_length] (the block after the commits), `transfer_index` (committed positions),
            `editing_transfer_index` (all False), `sampled_tokens` (the candidate of every position: the argmax
            over non-mask tokens, or the draw), `sampled_probs` (their untempered fp32 probability: the confidence
            prr_ext's rules rank by), `pred_logits` (= model_output).

        Examples
        --------
        >>> import torch, prr_ext
        >>> s = PolicyScheduler(prr_ext.LowConfidence(), block_length=4)
        >>> s.set_timesteps(2)
        >>> out = s.step(torch.randn(1, 4, 10), 0, torch.full((1, 4), 9), mask_token_id=9)
        >>> int(out.transfer_index.sum())   # 4 masks over 2 steps: 2 now
        2
        """
        if self.block_length is None:
            raise RuntimeError("call set_timesteps(num_inference_steps, device, block_length) before step() "
                               "(LLaDA2Pipeline does so at the start of every call)")
        step_index = self._check_step_arguments(model_output, timestep, sample, mask_token_id, temperature, top_p,
                                                top_k, sampling_method, threshold, editing_threshold, minimal_topk,
                                                prompt_mask, generator)
        B, L = sample.shape
        multinomial = temperature > 0 and sampling_method != "greedy"  # BlockRefinementScheduler's rule
        with torch.no_grad():
            lf = model_output.float()
            if multinomial:
                tokens = sample_tokens(model_output, temperature=float(temperature), top_k=top_k, top_p=top_p,
                                       generator=generator)
            else:  # the op's own candidate: first index of the largest non-mask logit
                tokens = lf.index_fill(-1, torch.tensor([mask_token_id], device=lf.device), -math.inf).argmax(-1)
            probs = torch.exp(lf.gather(-1, tokens[..., None]).squeeze(-1) - torch.logsumexp(lf, -1))

            masked = sample == mask_token_id
            new_block = step_index == 0 or self.state is None or tuple(self.state.x.shape) != (B, L)
            if not bool(masked.any()):  # nothing to decode (e.g. the pipeline's check step after a filled block)
                commit = torch.zeros_like(masked)
                prev_sample = sample.clone()
                if new_block:
                    self._end_block()
            else:
                if new_block:
                    self._start_block(sample, mask_token_id, generator)
                else:
                    self.state.x.copy_(sample)  # the pipeline's block is the truth (it may have dropped commits)
                commit = prr_step(model_output, self.state, candidates=tokens if multinomial else None)
                prev_sample = self.state.x.clone()
            self._masks_left = (prev_sample == mask_token_id).any(-1)
            self.forwards += 1
        editing = torch.zeros_like(commit)
        if not return_dict:
            return prev_sample, commit, editing, tokens, probs, model_output
        return BlockRefinementSchedulerOutput(prev_sample=prev_sample, transfer_index=commit,
                                              editing_transfer_index=editing, sampled_tokens=tokens,
                                              sampled_probs=probs, pred_logits=model_output)

    def _end_block(self) -> None:
        """Fold the finished block's NFE into the call's count and drop its State."""
        if self.state is not None:
            nfe = self.state.nfe
            same = self._nfe_before is not None and self._nfe_before.shape == nfe.shape
            self._nfe_before = self._nfe_before + nfe if same else nfe.clone()
        self.state = None

    def _start_block(self, sample: torch.Tensor, mask_token_id: int, generator: Optional[torch.Generator]) -> None:
        self._end_block()
        B, L = sample.shape
        if _draws_noise(self.policy):
            gen_device = generator.device if generator is not None else "cpu"
            seed = torch.randint(0, 2 ** 62, (B,), generator=generator, device=gen_device, dtype=torch.int64).cpu()
        else:  # no draw: the generator's stream stays the one BlockRefinementScheduler would see
            seed = torch.zeros(B, dtype=torch.int64)
        x = sample.detach().to(torch.int64).contiguous().clone()
        # the block alone is the State's canvas: no prompt, one block of the block's length
        self.state = State(x, mask_id=mask_token_id, prompt_length=0, block_length=L, steps=self.num_inference_steps,
                           policy=self.policy, confidence_dtype=self.confidence_dtype, seed=seed)
        self.blocks += 1

    def _check_step_arguments(self, model_output, timestep, sample, mask_token_id, temperature, top_p, top_k,
                              sampling_method, threshold, editing_threshold, minimal_topk, prompt_mask,
                              generator) -> int:
        """Validate step()'s arguments (errors name the argument); returns the step index."""
        if mask_token_id is None:
            raise ValueError("mask_token_id=None selects diffusers' uniform-corruption mode (DiffusionGemma), which "
                             "PolicyScheduler does not implement: it decodes masked canvases. Pass mask_token_id "
                             "(LLaDA2Pipeline takes it from its mask_token_id argument or the tokenizer)")
        if not _is_int(mask_token_id) or mask_token_id < 0:
            raise ValueError(f"mask_token_id must be a non-negative int, got {mask_token_id!r}")
        if not isinstance(sample, torch.Tensor) or sample.dim() != 2 or sample.dtype != torch.long:
            raise ValueError(f"sample must be a [B, block_length] int64 tensor, got "
                             f"{tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample).__name__}"
                             f"{' ' + str(sample.dtype) if isinstance(sample, torch.Tensor) else ''}")
        B, L = sample.shape
        if L != self.block_length:
            raise ValueError(f"sample has {L} positions but set_timesteps set block_length={self.block_length}")
        if not isinstance(model_output, torch.Tensor) or model_output.dim() != 3 \
                or tuple(model_output.shape[:2]) != (B, L):
            got = tuple(model_output.shape) if isinstance(model_output, torch.Tensor) else type(model_output).__name__
            raise ValueError(f"model_output must be the block's logits [B, block_length, V] = [{B}, {L}, V], got {got}")
        if model_output.shape[2] <= mask_token_id:
            raise ValueError(f"model_output's vocabulary size {model_output.shape[2]} must be larger than "
                             f"mask_token_id={mask_token_id}")
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() != 1:
                raise ValueError(f"timestep must be an int or a one-element tensor, got shape {tuple(timestep.shape)}")
            timestep = int(timestep.item())
        if not _is_int(timestep) or timestep < 0:
            raise ValueError(f"timestep must be an int >= 0 (the step index within the block), got {timestep!r}")
        if editing_threshold is not None:
            if not _is_number(editing_threshold):
                raise TypeError(f"editing_threshold must be a number or None, got {type(editing_threshold).__name__}")
            if editing_threshold > 0:
                raise ValueError(f"editing_threshold={editing_threshold}: PolicyScheduler does not edit committed "
                                 "tokens (prr_ext's commits are final). Call the pipeline with editing_threshold=None "
                                 "(LLaDA2Pipeline's default is 0.5)")
        if sampling_method not in SAMPLING_METHODS:
            raise ValueError(f"sampling_method must be one of {SAMPLING_METHODS}, got {sampling_method!r}")
        if not _is_number(temperature) or not (temperature >= 0) or math.isinf(temperature):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if top_k is not None and (not _is_int(top_k) or top_k < 0):
            raise ValueError(f"top_k must be None or an int >= 0 (0 = no top-k filtering), got {top_k!r}")
        if top_p is not None and (not _is_number(top_p) or not (0.0 < top_p <= 1.0)):
            raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")
        if minimal_topk is not None and (not _is_int(minimal_topk) or minimal_topk <= 0):
            raise ValueError(f"minimal_topk must be None or a positive int, got {minimal_topk!r}")
        if prompt_mask is not None and (not isinstance(prompt_mask, torch.Tensor) or prompt_mask.dtype != torch.bool
                                        or tuple(prompt_mask.shape) != (L,)):
            got = (f"{tuple(prompt_mask.shape)} {prompt_mask.dtype}" if isinstance(prompt_mask, torch.Tensor)
                   else type(prompt_mask).__name__)
            raise ValueError(f"prompt_mask must be None or a [block_length]=[{L}] bool tensor, got {got}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if threshold is not None:
            if not _is_number(threshold):
                raise TypeError(f"threshold must be a number or None, got {type(threshold).__name__}")
            tau = _policy_threshold(self.policy)
            if tau is not None and float(threshold) != tau and float(threshold) not in self._warned_thresholds:
                self._warned_thresholds.add(float(threshold))
                warnings.warn(f"threshold={threshold} is not used: the policy {self.policy!r} commits at its own "
                              f"tau={tau}. Pass threshold={tau} to the pipeline to silence this warning.",
                              stacklevel=3)
        return timestep

    # ------------------------------------------------------------------ the pipeline's loop control
    @staticmethod
    def check_eos_finished(cur_x: torch.LongTensor, sampled_tokens: torch.LongTensor,
                           final_transfer: torch.BoolTensor, finished: torch.BoolTensor, eos_token_id: int,
                           mask_token_id: int, prompt_length: int) -> torch.BoolTensor:
        """Mark rows finished (in place; also returned) that committed an EOS at this step and have every generated
        position before their first generated EOS committed.

        The EOS is searched from `prompt_length` on (BlockRefinementScheduler takes the row's first EOS, so an EOS
        inside the prompt keeps the row from ever finishing).

        Examples
        --------
        >>> x = torch.tensor([[5, 1, 2, 0, 9]])          # prompt [5], then 1 2 EOS(0) mask(9)
        >>> PolicyScheduler.check_eos_finished(x, torch.tensor([[0, 0]]), torch.tensor([[True, False]]),
        ...                                    torch.zeros(1, dtype=torch.bool), 0, 9, 1).tolist()
        [True]
        """
        gen = cur_x[:, prompt_length:]
        is_eos = gen == eos_token_id
        cols = torch.arange(gen.shape[1], device=gen.device)
        first = torch.where(is_eos, cols, torch.full_like(cols, gen.shape[1])).amin(-1, keepdim=True)
        masked_before = ((gen == mask_token_id) & (cols < first)).any(-1)
        committed_eos = ((sampled_tokens == eos_token_id) & final_transfer).any(-1)
        finished |= committed_eos & is_eos.any(-1) & ~masked_before
        return finished

    def check_block_should_continue(self, step_idx: int, masks_remaining: bool, editing_enabled: bool,
                                    editing_transfer_index: torch.BoolTensor, post_steps: int, max_post_steps: int,
                                    finished: torch.BoolTensor) -> bool:
        """Whether the pipeline runs another step on this block: some unfinished row still holds a mask after the
        last step, and the rule's step cap (`step_idx` steps taken) is not reached. The editing arguments are
        accepted for the interface and unused (step refuses editing).

        Examples
        --------
        >>> import prr_ext
        >>> s = PolicyScheduler(prr_ext.LowConfidence(), block_length=4)
        >>> s.set_timesteps(2)
        >>> _ = s.step(torch.randn(1, 4, 10), 0, torch.full((1, 4), 9), mask_token_id=9)
        >>> s.check_block_should_continue(1, True, False, None, 0, 0, torch.zeros(1, dtype=torch.bool))
        True
        """
        if bool(finished.all()):
            return False
        if self._masks_left is None:  # no step yet in this call
            return bool(masks_remaining) and step_idx < self.num_inference_steps
        if not bool((self._masks_left & ~finished.to(self._masks_left.device)).any()):
            return False
        return self.state is not None and step_idx < block_cap(self.state)

    def __repr__(self) -> str:
        return (f"PolicyScheduler(policy={self.policy!r}, block_length={self.config.block_length}, "
                f"confidence_dtype={self.confidence_dtype})")
