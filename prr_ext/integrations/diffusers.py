"""Any prr_ext commit rule as the scheduler of diffusers' `LLaDA2Pipeline` and `DiffusionGemmaPipeline`
(diffusers >= 0.42).

    import prr_ext
    from diffusers import DiffusionGemmaPipeline, LLaDA2Pipeline
    from prr_ext.integrations.diffusers import PolicyScheduler

    scheduler = PolicyScheduler(prr_ext.Threshold(tau=0.9), block_length=32)
    pipe = LLaDA2Pipeline(model=model, scheduler=scheduler, tokenizer=tokenizer)
    out = pipe(prompt="What is 7 * 8?", gen_length=256, num_inference_steps=32, threshold=0.9,
               editing_threshold=None)           # prr_ext never edits committed tokens
    out.texts[0], scheduler.nfe, scheduler.forwards

    # DiffusionGemma's uniform canvas (no mask token): the rule picks which sampled tokens a step accepts
    pipe = DiffusionGemmaPipeline(model=dg_model, scheduler=PolicyScheduler(prr_ext.EntropyBound(gamma=0.1)),
                                  processor=processor)
    out = pipe(prompt="Why is the sky blue?", gen_length=256, num_inference_steps=48, generator=generator)

`PolicyScheduler` has the interface of diffusers' `BlockRefinementScheduler` (`set_timesteps`, `step`,
`check_eos_finished`, `check_block_should_continue`, `config.block_length`, `timesteps`, `order`), so both
pipelines drive it unchanged. As in `BlockRefinementScheduler`, the step's `mask_token_id` picks the mode: an int
(LLaDA2Pipeline) commits with `prr_ext.step` on a masked block; None (DiffusionGemmaPipeline) runs prr_ext's
uniform-canvas mode (`prr_ext.State(mask_id=None)`): the rule accepts some sampled tokens and the scheduler renoises
the others, as diffusers' `EntropyBoundScheduler`. docs/engines.md ("diffusers") lists every difference from
diffusers' schedulers; the class docstring gives the argument mapping.
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

from ..decode_common import is_int
from ..ops import step as prr_step
from ..policies import PRR, R2, Policy, RandomRemask
from ..reference import STAT_CONF, block_cap
from ..state import UNIFORM_POLICIES, State, check_confidence_dtype, check_generator, uniform_canvas_refusal

__all__ = ["PolicyScheduler"]

SAMPLING_METHODS = ("auto", "greedy", "multinomial")
CANVASES = ("auto", "masked", "uniform")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _positive_int(name: str, v) -> int:
    if not is_int(v) or v <= 0:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def _draws_noise(policy: Policy) -> bool:
    """Whether the rule itself draws random numbers (the State's Philox seeds then come from the generator)."""
    return isinstance(policy.base_rule, RandomRemask) or (isinstance(policy, R2) and policy.token_cluster == "random")


def _uniform_refusal(policy: Policy) -> Optional[str]:
    """Why `policy` cannot drive a uniform canvas (DiffusionGemmaPipeline), or None if it can.

    prr_ext.state.uniform_canvas_refusal decides; this adds what the pipeline's user needs to know."""
    why = uniform_canvas_refusal(policy)
    if why is None:
        return None
    names = ", ".join(c.__name__ for c in UNIFORM_POLICIES)
    return (f"policy={policy!r} cannot drive a uniform canvas (mask_token_id=None, as DiffusionGemmaPipeline "
            f"passes): {why}. Use one of {names} (prr_ext.EntropyBound(gamma) is diffusers' EntropyBoundScheduler "
            f"rule)")


def _policy_threshold(policy: Policy) -> Optional[float]:
    """The confidence threshold the rule commits at (Threshold, PRR, LocalLeap: tau), or None."""
    return getattr(policy.base_rule, "tau", None)


def _output(prev_sample, transfer, tokens, probs, pred_logits, return_dict: bool):
    """BlockRefinementScheduler's step output (or its tuple); prr_ext never edits committed tokens."""
    editing = torch.zeros_like(transfer)
    if not return_dict:
        return prev_sample, transfer, editing, tokens, probs, pred_logits
    return BlockRefinementSchedulerOutput(prev_sample=prev_sample, transfer_index=transfer,
                                          editing_transfer_index=editing, sampled_tokens=tokens, sampled_probs=probs,
                                          pred_logits=pred_logits)


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
    `check_block_should_continue`. Or as `DiffusionGemmaPipeline(model=..., scheduler=PolicyScheduler(policy),
    processor=...)`: that pipeline calls `set_timesteps` once per call, then per canvas `step(..., mask_token_id=None)`
    once per forward, and reads `prev_sample` and `pred_logits` (see "Uniform canvas" below).

    Parameters
    ----------
    policy : prr_ext.Policy
        The commit rule: LowConfidence, RandomRemask, Threshold, Factor, EntropyBound, PRR, LocalLeap, SlowFast,
        KLASS or R2(base=...). Its own hyper-parameters decide (e.g. `Threshold(tau)`'s tau, not the pipeline's
        `threshold`). A PRR controller with `extra_features` is refused (the pipelines have no way to supply them).
        A uniform canvas (DiffusionGemmaPipeline) takes Threshold, Factor, EntropyBound, PRR or LocalLeap only.
    block_length : int, default 32
        `config.block_length`: the pipeline's block when its call names none.
    num_inference_steps : int, default 32
        `config.num_inference_steps` (the pipeline passes its own to `set_timesteps`).
    confidence_dtype : torch.dtype, default torch.float32
        Dtype of the softmax behind the confidence (prr_ext.State); fp32 is what BlockRefinementScheduler uses.
    t_max, t_min : float or None, default 0.8 and 0.4
        Uniform canvas only: the sampling temperature, annealed linearly over the canvas's steps from `t_max` at
        step 0 towards `t_min` (`t_min + (t_max - t_min) * (N - t) / N` at step t of N), applied to the logits
        before both the candidates' draw and the rule's statistics: diffusers' `EntropyBoundScheduler` and the
        released checkpoint's sampler, with the same defaults; t_max >= t_min (equal: a constant temperature). The
        pipeline's `temperature` is then unused (a warning says so when it is not 0). Both None: the step's
        `temperature` decides, as in BlockRefinementScheduler (0 = argmax candidates, the statistics on the raw
        logits).
    canvas : {"auto", "masked", "uniform"}, default "auto"
        Which canvases the scheduler serves. "auto": the step's `mask_token_id` decides (an int: masked, None:
        uniform), as in BlockRefinementScheduler, so a policy a uniform canvas refuses fails at the first uniform
        step. "uniform" checks the policy here, at construction; "masked" refuses `mask_token_id=None`.

    Raises
    ------
    TypeError
        `policy` is not a prr_ext policy.
    ValueError
        A bad argument (the message names it); with ``canvas="uniform"``, a policy a uniform canvas does not take
        (LowConfidence, RandomRemask, SlowFast, KLASS, R2).

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

    Uniform canvas (`mask_token_id=None`, DiffusionGemmaPipeline; docs/semantics.md "Uniform canvas"): there is no
    mask token and nothing is frozen. Each canvas (`timestep == 0`) gets a fresh `prr_ext.State(mask_id=None)` over
    the canvas alone (`steps` = the call's num_inference_steps, the steps of one canvas). Every step, on the
    pipeline's canvas (`sample`): the temperature-shaped logits (see `t_max`), one candidate per position drawn
    from them with `generator` (`torch.multinomial`, one draw over all B * L rows), `prr_ext.step(logits, state,
    candidates=...)` returns the accepted positions, which keep their candidate, and every other position gets a
    uniform random token (one ``randint(0, V, [B, L])`` with `generator`, whatever was accepted). These are the
    draws of diffusers' `EntropyBoundScheduler`, in its order, so ``PolicyScheduler(prr_ext.EntropyBound(gamma))``
    reproduces ``EntropyBoundScheduler(entropy_bound=gamma)`` under the same generator (up to fp32 rounding of an
    entropy prefix sum that falls on gamma, and with fp32 logits: diffusers takes bf16 logits' entropies in bf16).
    `pred_logits` is the temperature-shaped logits (what the pipeline self-conditions on and measures its adaptive
    stop with), `transfer_index` the accepted positions, `sampled_probs` the candidates' probability under the
    shaped logits (the confidence the rule ranks by). Unlike BlockRefinementScheduler's uniform mode (which keeps a
    commit for the rest of the canvas and commits a cumulative quota), an accepted position is open again at the
    next step. PRR's row-level features are those of a one-canvas generation without a prompt (the scheduler never
    sees the context), as for LLaDA2 blocks.

    Step arguments, and what becomes of them:

    * `mask_token_id`: the mask token (LLaDA2Pipeline); None selects the uniform canvas (DiffusionGemmaPipeline).
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
    * On a uniform canvas, `temperature` and `sampling_method` are used only with ``t_max = t_min = None`` (greedy:
      the argmax over every token; otherwise drawn by `sample_tokens` and ranked by the untempered probability, as
      on a masked canvas); `top_k` / `top_p` filter the draw (DiffusionGemmaPipeline passes neither);
      `editing_threshold` > 0 is refused as on a masked canvas.

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
                 confidence_dtype: torch.dtype = torch.float32, t_max: Optional[float] = 0.8,
                 t_min: Optional[float] = 0.4, canvas: str = "auto"):
        if not isinstance(policy, Policy):
            raise TypeError(f"policy must be a prr_ext policy (e.g. prr_ext.Threshold(tau=0.9)), got "
                            f"{type(policy).__name__}")
        base = policy.base_rule
        if isinstance(base, PRR) and base.controller.extra_features:
            raise ValueError(f"policy: the PRR controller expects {base.controller.extra_features} extra_features "
                             "per token, which the diffusers pipelines cannot supply; use a controller without extra "
                             "features")
        block_length = _positive_int("block_length", block_length)
        num_inference_steps = _positive_int("num_inference_steps", num_inference_steps)
        check_confidence_dtype(confidence_dtype)
        if (t_max is None) != (t_min is None):
            raise ValueError(f"t_max and t_min must both be numbers (the annealed temperature of a uniform canvas) or "
                             f"both None (use the pipeline's temperature), got t_max={t_max!r}, t_min={t_min!r}")
        for name, t in (("t_max", t_max), ("t_min", t_min)):
            if t is not None and (not _is_number(t) or not (0 < t < math.inf)):
                raise ValueError(f"{name} must be a finite number > 0 or None, got {t!r}")
        if t_max is not None and t_max < t_min:
            # the anneal starts a canvas at t_max and ends it near t_min: swapped, the temperature would rise
            raise ValueError(f"t_max must be >= t_min (the temperature falls from t_max to t_min over a canvas's "
                             f"steps), got t_max={t_max!r}, t_min={t_min!r}")
        if canvas not in CANVASES:
            raise ValueError(f"canvas must be one of {CANVASES}, got {canvas!r}")
        # the uniform canvas takes fewer rules: known now, raised here (canvas="uniform") or at the first uniform step
        self._uniform_refusal = _uniform_refusal(policy)
        if canvas == "uniform" and self._uniform_refusal is not None:
            raise ValueError(self._uniform_refusal)
        self.policy = policy
        self.confidence_dtype = confidence_dtype
        # what LLaDA2Pipeline reads (config.block_length), plus BlockRefinementScheduler's other keys where they mean
        # something here
        self.config = FrozenDict(block_length=block_length, num_inference_steps=num_inference_steps,
                                 editing_threshold=None, minimal_topk=1, policy=repr(policy),
                                 t_max=None if t_max is None else float(t_max),
                                 t_min=None if t_min is None else float(t_min), canvas=canvas)
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.arange(num_inference_steps - 1, -1, -1, dtype=torch.long)
        self.block_length: Optional[int] = None  # set by set_timesteps
        self._warned_thresholds = set()
        self._warned_temperatures = set()
        self._reset()

    # ------------------------------------------------------------------ per-call state
    def _reset(self) -> None:
        self.state: Optional[State] = None  # the active block's prr_ext.State
        self.forwards = 0                    # step calls (= model forwards) in this pipeline call
        self.blocks = 0                      # blocks started in this call
        self._nfe_before: Optional[torch.Tensor] = None  # [B] NFE of the call's earlier blocks
        self._masks_left: Optional[torch.Tensor] = None  # [B] bool: the block holds a mask after the last step
        self._canvas_steps = 0                           # steps taken on the current uniform canvas

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
        """One refinement step of the active block: choose candidates, commit with the policy (on a uniform canvas,
        `mask_token_id=None`: accept with the policy and renoise the rest).

        Parameters
        ----------
        model_output : torch.Tensor
            [B, block_length, V] logits of the block (any float dtype the op takes).
        timestep : int or torch.Tensor
            Step index within the block; 0 starts a new block (a fresh prr_ext.State). A uniform canvas takes
            steps 0 .. num_inference_steps - 1.
        sample : torch.LongTensor
            [B, block_length] block tokens, `mask_token_id` where still masked (any tokens on a uniform canvas).
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
            `editing_transfer_index` (all False), `sampled_tokens` (the candidate of every masked position: the
            argmax over non-mask tokens, or the draw; elsewhere the block's token, or the draw), `sampled_probs` (the
            candidates' untempered probability in `confidence_dtype`, from the op's own pass: the confidence
            prr_ext's rules rank by; NaN at positions that were not masked or drew the mask token), `pred_logits`
            (= model_output). On a uniform canvas: `prev_sample` is the canvas after accepting and renoising,
            `transfer_index` the accepted positions, `sampled_probs` the candidates' probability under the logits
            the rule saw, `pred_logits` the temperature-shaped logits (= model_output with
            ``t_max = t_min = None``).

        Examples
        --------
        >>> import torch, prr_ext
        >>> s = PolicyScheduler(prr_ext.LowConfidence(), block_length=4)
        >>> s.set_timesteps(2)
        >>> out = s.step(torch.randn(1, 4, 10), 0, torch.full((1, 4), 9), mask_token_id=9)
        >>> int(out.transfer_index.sum())   # 4 masks over 2 steps: 2 now
        2
        >>> s = PolicyScheduler(prr_ext.Threshold(0.5), block_length=4)
        >>> s.set_timesteps(2)
        >>> logits = torch.full((1, 4, 10), -9.0); logits[0, :2, 3] = 9.0     # positions 0, 1 sure of token 3
        >>> out = s.step(logits, 0, torch.zeros(1, 4, dtype=torch.long), mask_token_id=None,
        ...              generator=torch.Generator().manual_seed(0))
        >>> out.transfer_index, out.prev_sample[:, :2]                       # the others are renoised
        (tensor([[ True,  True, False, False]]), tensor([[3, 3]]))
        """
        if self.block_length is None:
            raise RuntimeError("call set_timesteps(num_inference_steps, device, block_length) before step() "
                               "(LLaDA2Pipeline does so at the start of every call)")
        step_index = self._check_step_arguments(model_output, timestep, sample, mask_token_id, temperature, top_p,
                                                top_k, sampling_method, threshold, editing_threshold, minimal_topk,
                                                prompt_mask, generator, return_dict)
        if mask_token_id is None:
            return self._uniform_step(model_output, step_index, sample, temperature=temperature, top_p=top_p,
                                      top_k=top_k, sampling_method=sampling_method, generator=generator,
                                      return_dict=return_dict)
        B, L = sample.shape
        multinomial = temperature > 0 and sampling_method != "greedy"  # BlockRefinementScheduler's rule
        with torch.no_grad():
            drawn = (sample_tokens(model_output, temperature=float(temperature), top_k=top_k, top_p=top_p,
                                   generator=generator) if multinomial else None)
            masked = sample == mask_token_id
            new_block = (step_index == 0 or self.state is None or self.state.uniform
                         or tuple(self.state.x.shape) != (B, L))
            if not bool(masked.any()):  # nothing to decode (e.g. the pipeline's check step after a filled block)
                commit = torch.zeros_like(masked)
                prev_sample = sample.clone()
                tokens = sample.clone() if drawn is None else drawn
                probs = torch.full(sample.shape, math.nan, device=sample.device)
                if new_block:
                    self._end_block()
            else:
                if new_block:
                    self._start_block(sample, mask_token_id, generator)
                else:
                    self.state.x.copy_(sample)  # the pipeline's block is the truth (it may have dropped commits)
                commit = prr_step(model_output, self.state, candidates=drawn)
                prev_sample = self.state.x.clone()
                # the candidates and their probability come from the op's own pass over the logits (no second
                # read): at the masked positions; the others keep their token (or the draw) and a NaN probability
                cand = self.state.last_tokens
                tokens = torch.where(cand >= 0, cand, sample if drawn is None else drawn)
                probs = self.state.last_stats[..., STAT_CONF].float()
            self._masks_left = (prev_sample == mask_token_id).any(-1)
            self.forwards += 1
        return _output(prev_sample, commit, tokens, probs, model_output, return_dict)

    def temperature_at(self, timestep: int) -> Optional[float]:
        """The annealed temperature of a uniform canvas at step `timestep` of the call's num_inference_steps N:
        ``t_min + (t_max - t_min) * (N - timestep) / N`` (t_max at step 0), or None when ``t_max = t_min = None``.

        Examples
        --------
        >>> import prr_ext
        >>> s = PolicyScheduler(prr_ext.EntropyBound(0.1))
        >>> s.set_timesteps(4)
        >>> [round(s.temperature_at(t), 3) for t in range(4)]
        [0.8, 0.7, 0.6, 0.5]
        """
        t_max, t_min = self.config.t_max, self.config.t_min
        if t_max is None:
            return None
        # EntropyBoundScheduler's expression, in its order (the same float, so the same shaped logits)
        fraction = (self.num_inference_steps - int(timestep)) / self.num_inference_steps
        return t_min + (t_max - t_min) * fraction

    def _uniform_step(self, model_output: torch.Tensor, step_index: int, sample: torch.Tensor, *, temperature: float,
                      top_p: Optional[float], top_k: Optional[int], sampling_method: str,
                      generator: Optional[torch.Generator], return_dict: bool):
        """step() on a uniform canvas (mask_token_id=None): draw, accept with the policy, renoise the rest."""
        N = self.num_inference_steps
        if step_index >= N:
            raise ValueError(f"timestep={step_index}: a uniform canvas takes num_inference_steps={N} steps, timesteps "
                             f"0 .. {N - 1} (set_timesteps sets N); timestep 0 starts the next canvas")
        B, L = sample.shape
        V = model_output.shape[-1]
        shaped_t = self.temperature_at(step_index)
        with torch.no_grad():
            if shaped_t is not None:
                if temperature != 0 and float(temperature) not in self._warned_temperatures:
                    self._warned_temperatures.add(float(temperature))
                    warnings.warn(f"temperature={temperature} is not used: PolicyScheduler anneals a uniform "
                                  f"canvas's temperature from t_max={self.config.t_max} to t_min={self.config.t_min} "
                                  "(as EntropyBoundScheduler). Construct it with t_max=None, t_min=None to use the "
                                  "pipeline's temperature.", stacklevel=3)
                pred_logits = model_output / shaped_t
                tokens = sample_tokens(pred_logits, temperature=1.0, top_k=top_k, top_p=top_p, generator=generator)
            else:
                pred_logits = model_output
                if temperature > 0 and sampling_method != "greedy":
                    tokens = sample_tokens(model_output, temperature=float(temperature), top_k=top_k, top_p=top_p,
                                           generator=generator)
                else:  # every token may win: there is no mask token to exclude
                    tokens = model_output.argmax(-1)
            probs = torch.softmax(pred_logits.reshape(-1, V).float(), dim=-1).gather(-1, tokens.reshape(-1, 1))
            probs = probs.view(B, L)

            new_canvas = (step_index == 0 or self.state is None or not self.state.uniform
                          or tuple(self.state.x.shape) != (B, L))
            if new_canvas:
                self._start_canvas(sample)
            elif self._canvas_steps >= N:  # timesteps repeated within one canvas: the State's N steps are spent
                raise RuntimeError(f"step() ran {N} times on this canvas without timestep 0 starting a new one: a "
                                   f"uniform canvas takes num_inference_steps={N} steps")
            else:
                self.state.x.copy_(sample)  # the pipeline's canvas is the truth (renoised, or frozen by its stop)
            accepted = prr_step(pred_logits, self.state, candidates=tokens)
            self._canvas_steps += 1
            # one full-canvas draw whatever was accepted, after the candidates' (EntropyBoundScheduler's order)
            noise = torch.randint(0, V, (B, L), device=sample.device, generator=generator)
            prev_sample = torch.where(accepted, tokens, noise)
            self._masks_left = None
            self.forwards += 1
        return _output(prev_sample, accepted, tokens, probs, pred_logits, return_dict)

    def _start_canvas(self, sample: torch.Tensor) -> None:
        """A fresh uniform-canvas State over the canvas alone (no prompt, one block, the call's N steps)."""
        self._end_block()
        B, L = sample.shape
        x = sample.detach().to(torch.int64).contiguous().clone()
        # explicit seeds: the op draws nothing here (it is handed its candidates, at temperature 0), and a State
        # drawing its own would consume the generator's stream
        self.state = State(x, mask_id=None, prompt_length=0, block_length=L, steps=self.num_inference_steps,
                           policy=self.policy, confidence_dtype=self.confidence_dtype,
                           seed=torch.zeros(B, dtype=torch.int64))
        self._canvas_steps = 0
        self.blocks += 1

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
                              generator, return_dict) -> int:
        """Validate step()'s arguments (errors name the argument); returns the step index."""
        canvas = self.config.canvas
        if mask_token_id is None:
            if canvas == "masked":
                raise ValueError("mask_token_id=None selects a uniform canvas (DiffusionGemmaPipeline), but this "
                                 "scheduler was built with canvas='masked'. Pass mask_token_id (LLaDA2Pipeline takes "
                                 "it from its mask_token_id argument or the tokenizer), or build it with "
                                 "canvas='auto' or 'uniform'")
            if self._uniform_refusal is not None:
                raise ValueError(self._uniform_refusal)
        elif canvas == "uniform":
            raise ValueError(f"mask_token_id={mask_token_id!r}: this scheduler was built with canvas='uniform' "
                             "(DiffusionGemmaPipeline, which passes mask_token_id=None); build it with "
                             "canvas='auto' or 'masked' for a masked canvas (LLaDA2Pipeline)")
        elif not is_int(mask_token_id) or mask_token_id < 0:
            raise ValueError(f"mask_token_id must be a non-negative int (or None for a uniform canvas), got "
                             f"{mask_token_id!r}")
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
        if mask_token_id is not None and model_output.shape[2] <= mask_token_id:
            raise ValueError(f"model_output's vocabulary size {model_output.shape[2]} must be larger than "
                             f"mask_token_id={mask_token_id}")
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() != 1:
                raise ValueError(f"timestep must be an int or a one-element tensor, got shape {tuple(timestep.shape)}")
            timestep = int(timestep.item())
        if not is_int(timestep) or timestep < 0:
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
        if top_k is not None and (not is_int(top_k) or top_k < 0):
            raise ValueError(f"top_k must be None or an int >= 0 (0 = no top-k filtering), got {top_k!r}")
        if top_p is not None and (not _is_number(top_p) or not (0.0 < top_p <= 1.0)):
            raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")
        if minimal_topk is not None and (not is_int(minimal_topk) or minimal_topk <= 0):
            raise ValueError(f"minimal_topk must be None or a positive int, got {minimal_topk!r}")
        if prompt_mask is not None and (not isinstance(prompt_mask, torch.Tensor) or prompt_mask.dtype != torch.bool
                                        or tuple(prompt_mask.shape) != (L,)):
            got = (f"{tuple(prompt_mask.shape)} {prompt_mask.dtype}" if isinstance(prompt_mask, torch.Tensor)
                   else type(prompt_mask).__name__)
            raise ValueError(f"prompt_mask must be None or a [block_length]=[{L}] bool tensor, got {got}")
        check_generator(generator)
        if not isinstance(return_dict, bool):  # a string such as "no" would otherwise read as True
            raise TypeError(f"return_dict must be True or False, got {type(return_dict).__name__} {return_dict!r}")
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
                f"confidence_dtype={self.confidence_dtype}, t_max={self.config.t_max}, t_min={self.config.t_min}, "
                f"canvas={self.config.canvas!r})")
