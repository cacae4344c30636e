"""prr_ext commit rules inside transformers' DiffusionGemma `generate` (uniform canvas, no mask token).

DiffusionGemma (`transformers.DiffusionGemmaForBlockDiffusion`) decodes canvases of `config.canvas_length` tokens
one after another. Each canvas starts as uniform random tokens; every denoising step samples a denoiser canvas from
the processed logits, a *sampler* accepts some of its positions and renoises the others, and the canvas output is
the last step's argmax. Upstream's sampler is `EntropyBoundSampler`; this module swaps in any prr_ext policy that
works on a uniform canvas (Threshold, Factor, EntropyBound, PRR, LocalLeap), keeping everything else of
transformers' loop (logits processors, temperature schedule, early stopping, cache, streamer) as it is.

    import prr_ext
    from prr_ext.integrations.diffusion_gemma import PolicyDiffusionGemma, with_policy

    model = PolicyDiffusionGemma.from_pretrained("google/diffusiongemma-26B-A4B-it",
                                                 prr_policy=prr_ext.Threshold(tau=0.9))
    # or, for a model you already loaded: with_policy(model, prr_ext.Threshold(tau=0.9))
    out = model.generate(input_ids, max_new_tokens=256)
    out = model.generate(input_ids, prr_policy=prr_ext.EntropyBound(gamma=0.1))   # this call only
    model.prr_policy = None                                                        # upstream's sampler again

`PolicySampler` is the sampler itself (transformers' duck-typed sampler interface: `initialize_canvas`,
`accept_canvas`, `renoise_canvas`, `accepted_token_mask`), usable in any loop of the same shape.
"""
from __future__ import annotations

import types
from typing import Dict, Optional, Union

import torch
from transformers import DiffusionGemmaForBlockDiffusion

from ..ops import step
from ..policies import PRR, Policy
from ..state import UNIFORM_POLICIES, State, check_confidence_dtype, check_generator, uniform_canvas_refusal

__all__ = ["PolicySampler", "PolicyDiffusionGemmaMixin", "PolicyDiffusionGemma", "with_policy", "check_policy"]

_UNSET = object()
_SUPPORTED = ", ".join(c.__name__ for c in UNIFORM_POLICIES)


def _no_seed(batch_size: int) -> torch.Tensor:
    """Explicit Philox seeds for a State. The sampler hands the op its candidates and runs it at temperature 0, so the
    seeds are never read; passing them keeps State from drawing them from torch's global generator, which would
    shift every later draw of transformers' loop (multinomial, renoise) and break parity with upstream."""
    return torch.zeros(batch_size, dtype=torch.int64)


def check_policy(policy: Policy, argument: str = "policy") -> Policy:
    """Check that `policy` can drive a DiffusionGemma canvas; return it unchanged.

    Parameters
    ----------
    policy : prr_ext.Policy
        Threshold, Factor, EntropyBound, PRR (a controller without extra features) or LocalLeap.
    argument : str
        The name the error messages give the argument (``"prr_policy"`` on the model).

    Returns
    -------
    prr_ext.Policy
        `policy`.

    Raises
    ------
    TypeError
        `policy` is not a prr_ext policy.
    ValueError
        The rule needs positions that stay masked across steps (LowConfidence, RandomRemask, SlowFast, KLASS, R2),
        which a uniform canvas does not have, or it is a PRR whose controller wants extra features, which
        transformers' loop has no source for.

    Examples
    --------
    >>> import prr_ext
    >>> check_policy(prr_ext.Threshold(0.9))
    Threshold(tau=0.9)
    >>> check_policy(prr_ext.LowConfidence(), "prr_policy")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: prr_policy=LowConfidence() cannot drive DiffusionGemma: ...
    """
    if not isinstance(policy, Policy):
        raise TypeError(f"{argument} must be a prr_ext policy ({_SUPPORTED}) or None for transformers' own "
                        f"EntropyBoundSampler, got {type(policy).__name__}")
    why = uniform_canvas_refusal(policy)
    if why is not None:
        raise ValueError(f"{argument}={policy} cannot drive DiffusionGemma: {why}. Use one of {_SUPPORTED} "
                         "(prr_ext.EntropyBound(gamma) is transformers' own EntropyBoundSampler rule).")
    base = policy.base_rule
    if isinstance(base, PRR) and base.controller.extra_features:
        raise ValueError(f"{argument}: this PRR controller expects {base.controller.extra_features} extra features "
                         "per token, which transformers' DiffusionGemma loop does not provide; use a controller "
                         "trained on the base features only (extra_features=0)")
    return policy


class PolicySampler:
    """A DiffusionGemma sampler whose accept rule is a prr_ext policy.

    It implements transformers' duck-typed sampler interface (that of `EntropyBoundSampler`): `initialize_canvas`,
    `accept_canvas` (sets `accepted_token_mask`), `renoise_canvas`. Each canvas gets its own `prr_ext.State` with
    `mask_id=None` (every canvas position is a candidate at every step), created at the canvas's first step, when
    `cur_step` (which counts down N..1 per canvas) equals `max_denoising_steps`; a canvas that stops early simply
    abandons its State. Each step calls `prr_ext.step` on the processed logits with the denoiser canvas as the
    candidates, so an accepted position keeps exactly the token transformers sampled for it.

    The State's canvas is ``[B, context + canvas_length]``: `context_length` placeholder columns (the op never reads
    them on a uniform canvas) before the canvas, so that PRR's length features (row length, block start) see the
    prompt and the canvases already decoded, as they see the prompt in prr_ext's own loops. `PolicyDiffusionGemma`
    sets `context_length` before every canvas; used on its own the sampler assumes no context (0).

    Random draws: `initialize_canvas` and `renoise_canvas` draw exactly what upstream draws (one
    ``randint(0, vocab_size, [B, canvas_length])`` each) from `generator`, which is torch's global generator when
    None, as upstream; the op itself draws nothing. With the default generator, upstream's sampler and
    ``PolicySampler(prr_ext.EntropyBound(gamma))`` therefore consume torch's global stream identically, and one
    seed gives both the same run.

    Parameters
    ----------
    policy : prr_ext.Policy
        Threshold, Factor, EntropyBound, PRR or LocalLeap (checked here, see `check_policy`).
    canvas_length : int
        Tokens per canvas (``model.config.canvas_length``).
    vocab_size : int
        The vocabulary the noise is drawn from (``model.config.text_config.vocab_size``).
    max_denoising_steps : int
        N, the steps per canvas (``generation_config.max_denoising_steps``).
    confidence_dtype : torch.dtype
        The dtype of the softmax behind the candidates' confidence (see `prr_ext.State`); fp32 by default.
    generator : torch.Generator, optional
        The generator of the canvas noise (initial and renoise); None = torch's global generator (upstream's draws).
        transformers' denoiser canvas (`torch.multinomial`) always comes from the global generator.

    Attributes
    ----------
    accepted_token_mask : torch.BoolTensor or None
        [B, canvas_length], the positions the last `accept_canvas` accepted.
    state : prr_ext.State or None
        The current canvas's State (its ``last_stats`` hold the last step's per-token statistics).
    context_length : int or torch.Tensor
        Tokens before the current canvas: an int, or a [B] tensor of per-row true lengths (left padding excluded).
    context_width : int or None
        Columns before the canvas when `context_length` is a tensor (its padded width); None = ``max(context_length)``.

    Examples
    --------
    >>> import torch, prr_ext
    >>> sampler = PolicySampler(prr_ext.Threshold(0.5), canvas_length=4, vocab_size=10, max_denoising_steps=2)
    >>> canvas = sampler.initialize_canvas(1, torch.device("cpu"))
    >>> logits = torch.full((1, 4, 10), -9.0); logits[..., 3] = 9.0     # every position sure of token 3
    >>> accepted = sampler.accept_canvas(canvas, torch.full((1, 4), 3), logits, cur_step=2)
    >>> sampler.accepted_token_mask, accepted
    (tensor([[True, True, True, True]]), tensor([[3, 3, 3, 3]]))
    >>> canvas = sampler.renoise_canvas(accepted, cur_step=2)           # nothing to renoise
    """

    def __init__(self, policy: Policy, canvas_length: int, vocab_size: int, max_denoising_steps: int, *,
                 confidence_dtype: torch.dtype = torch.float32, generator: Optional[torch.Generator] = None):
        self.policy = check_policy(policy)
        for name, v in (("canvas_length", canvas_length), ("vocab_size", vocab_size),
                        ("max_denoising_steps", max_denoising_steps)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.canvas_length, self.vocab_size = canvas_length, vocab_size
        self.max_denoising_steps = max_denoising_steps
        self.confidence_dtype = check_confidence_dtype(confidence_dtype, "confidence_dtype")
        self.generator = check_generator(generator, "generator")
        self.context_length: Union[int, torch.Tensor] = 0
        self.context_width: Optional[int] = None
        self.state: Optional[State] = None
        self.accepted_token_mask: Optional[torch.Tensor] = None
        self._steps_in_canvas = 0

    def __repr__(self) -> str:
        return (f"PolicySampler(policy={self.policy}, canvas_length={self.canvas_length}, "
                f"vocab_size={self.vocab_size}, max_denoising_steps={self.max_denoising_steps})")

    def initialize_canvas(self, batch_size: int, device: torch.device) -> torch.LongTensor:
        """A canvas of uniform random tokens, [batch_size, canvas_length] (upstream's draw, from `generator`)."""
        return torch.randint(0, self.vocab_size, (batch_size, self.canvas_length), device=device,
                             generator=self.generator)

    def _new_state(self, current_canvas: torch.Tensor) -> State:
        B, C = current_canvas.shape
        ctx = self.context_length
        if isinstance(ctx, torch.Tensor):
            lengths = ctx.to(torch.int64)
            width = self.context_width if self.context_width is not None else int(lengths.max()) if B else 0
        else:
            lengths = width = int(ctx)
        x = torch.zeros(B, width + C, dtype=torch.int64, device=current_canvas.device)
        return State(x, None, lengths, C, self.max_denoising_steps, self.policy,
                     confidence_dtype=self.confidence_dtype, seed=_no_seed(B), gen_start=width)

    def accept_canvas(self, current_canvas: torch.LongTensor, denoiser_canvas: torch.LongTensor,
                      logits: torch.Tensor, cur_step: Union[int, torch.Tensor]) -> torch.LongTensor:
        """Accept the policy's positions of `denoiser_canvas`; the others keep `current_canvas`'s tokens.

        Parameters
        ----------
        current_canvas : torch.LongTensor
            [B, canvas_length], the canvas the model saw at this step.
        denoiser_canvas : torch.LongTensor
            [B, canvas_length], the tokens sampled from `logits`: the candidates.
        logits : torch.Tensor
            [B, canvas_length, V], the processed logits (after transformers' logits processors and temperature), the
            ones the denoiser canvas was sampled from. Every rule's statistics are computed from them.
        cur_step : int or torch.Tensor
            Steps remaining in this canvas, N..1; N starts a fresh State.

        Returns
        -------
        torch.LongTensor
            [B, canvas_length], the accepted canvas; `accepted_token_mask` holds which positions were accepted.

        Raises
        ------
        ValueError
            `logits` do not have `vocab_size` entries per position (the noise would hold ids the model does not
            have, or miss some it has), or a candidate lies outside [0, vocab_size).
        """
        self._check_vocabulary(denoiser_canvas, logits)
        if int(cur_step) == self.max_denoising_steps or self.state is None:
            self.state = self._new_state(current_canvas)
            self._steps_in_canvas = 0
        elif tuple(current_canvas.shape) != (self.state.x.shape[0], self.canvas_length):
            raise ValueError(f"current_canvas has shape {tuple(current_canvas.shape)} but this canvas started with "
                             f"{(self.state.x.shape[0], self.canvas_length)}; a new canvas must start at "
                             f"cur_step == max_denoising_steps ({self.max_denoising_steps})")
        if self._steps_in_canvas >= self.max_denoising_steps:
            # The State's block lasts exactly N steps; one more would accept nothing and silently renoise everything.
            raise RuntimeError(f"accept_canvas was called more than max_denoising_steps={self.max_denoising_steps} "
                               "times for one canvas: cur_step must count down from max_denoising_steps to 1 and "
                               "restart at max_denoising_steps for the next canvas")
        st = self.state
        canvas = st.x[:, st.gen_start:]
        canvas.copy_(current_canvas)  # the caller renoised the positions this State did not accept
        commit = step(logits, st, candidates=denoiser_canvas)
        self._steps_in_canvas += 1
        self.accepted_token_mask = commit[:, st.gen_start:]
        return canvas.clone()

    def _check_vocabulary(self, denoiser_canvas: torch.Tensor, logits: torch.Tensor) -> None:
        """The logits and candidates must be of the vocabulary the noise is drawn from (their shapes and dtypes are
        the op's to check)."""
        if isinstance(logits, torch.Tensor) and logits.dim() > 0 and logits.shape[-1] != self.vocab_size:
            raise ValueError(f"logits have {logits.shape[-1]} entries per position but this sampler draws its noise "
                             f"from vocab_size={self.vocab_size} ids: build it with the model's vocabulary size "
                             "(model.config.text_config.vocab_size)")
        if not isinstance(denoiser_canvas, torch.Tensor):
            return
        # one host read per step beside int(cur_step)'s: an out-of-range candidate would otherwise be accepted into
        # the canvas, where only the model's embedding would notice it
        stray = (denoiser_canvas < 0) | (denoiser_canvas >= self.vocab_size)
        if bool(stray.any()):
            raise ValueError(f"denoiser_canvas holds token ids outside [0, vocab_size={self.vocab_size}), e.g. "
                             f"{denoiser_canvas[stray][0].item()}: the candidates must be ids of the logits' "
                             "vocabulary")

    def renoise_canvas(self, accepted_canvas: torch.LongTensor, cur_step: Union[int, torch.Tensor]
                       ) -> torch.LongTensor:
        """Replace every position not in `accepted_token_mask` by a uniform random token (one full-canvas draw, as
        upstream, so the generator advances by the same amount whatever was accepted)."""
        if self.accepted_token_mask is None:
            raise RuntimeError("renoise_canvas needs accept_canvas to have run first (it renoises what that step did "
                               "not accept)")
        noise = self.initialize_canvas(accepted_canvas.shape[0], accepted_canvas.device)
        return torch.where(self.accepted_token_mask, accepted_canvas, noise)


# Names under which transformers' `_compile_functions` caches compiled sampler methods on the model.
_COMPILED_SAMPLER_ATTRS = ("_compiled_accept_canvas", "_compiled_renoise_canvas")


class PolicyDiffusionGemmaMixin:
    """Adds a prr_ext commit rule to a `DiffusionGemmaForBlockDiffusion` (subclass): see `PolicyDiffusionGemma`."""

    _prr_policy: Optional[Policy] = None
    _prr_sampler: Optional[PolicySampler] = None
    _prr_generator: Optional[torch.Generator] = None
    _prr_confidence_dtype: torch.dtype = torch.float32

    @property
    def prr_policy(self) -> Optional[Policy]:
        """The prr_ext policy `generate` accepts with, or None for transformers' own EntropyBoundSampler."""
        return self._prr_policy

    @prr_policy.setter
    def prr_policy(self, policy: Optional[Policy]) -> None:
        # checked here, so a rule the uniform canvas cannot take fails where it is set, not in the middle of generate
        self._prr_policy = None if policy is None else check_policy(policy, "prr_policy")

    # properties, so that a bad value fails where it is set, as prr_policy does, not after the prompt's forwards
    @property
    def prr_generator(self) -> Optional[torch.Generator]:
        """The generator of the canvas noise (see `PolicySampler`); None = torch's global generator, as upstream."""
        return self._prr_generator

    @prr_generator.setter
    def prr_generator(self, generator: Optional[torch.Generator]) -> None:
        self._prr_generator = check_generator(generator, "prr_generator")

    @property
    def prr_confidence_dtype(self) -> torch.dtype:
        """The softmax dtype behind the candidates' confidence (fp32 by default)."""
        return self._prr_confidence_dtype

    @prr_confidence_dtype.setter
    def prr_confidence_dtype(self, dtype: torch.dtype) -> None:
        self._prr_confidence_dtype = check_confidence_dtype(dtype, "prr_confidence_dtype")

    @classmethod
    def from_pretrained(cls, *args, prr_policy: Optional[Policy] = None, **kwargs):
        """transformers' `from_pretrained`, then ``model.prr_policy = prr_policy`` (checked before loading).
        (Taken out of the keywords: transformers would hand it to the generation config, which refuses it.)"""
        if prr_policy is not None:
            check_policy(prr_policy, "prr_policy")
        model = super().from_pretrained(*args, **kwargs)
        model.prr_policy = prr_policy
        return model

    def generate(self, *args, prr_policy=_UNSET, **kwargs):
        """transformers' `generate`; ``prr_policy=`` overrides the model's `prr_policy` for this call only.

        Any other ``prr_*`` keyword is a TypeError: transformers' generate takes unknown keywords without a word, so a
        misspelt ``prr_policy`` would otherwise run a call with the model's policy."""
        unknown = sorted(k for k in kwargs if k.startswith("prr_"))
        if unknown:
            raise TypeError(f"generate() got unknown prr_ext keyword(s) {unknown}: the only one it takes is "
                            "prr_policy (prr_generator and prr_confidence_dtype are set on the model: "
                            "model.prr_generator = ...)")
        saved = self._prr_policy
        if prr_policy is not _UNSET:
            self.prr_policy = prr_policy
        try:
            return super().generate(*args, **kwargs)
        finally:
            self._prr_policy = saved
            self._prr_sampler = None  # the call's sampler (and its State) is not kept past the call

    def _prepare_sampler(self, generation_config):
        """The plug point: a `PolicySampler` when `prr_policy` is set (generation_config.sampler_config is then
        unused), else upstream's sampler, unchanged."""
        self._prr_sampler = None
        if self._prr_policy is None:
            return super()._prepare_sampler(generation_config)
        # kept for this call, so that the per-canvas hooks below reach it even through a wrapper around the sampler
        self._prr_sampler = PolicySampler(self._prr_policy, canvas_length=self.config.canvas_length,
                                          vocab_size=self.config.text_config.vocab_size,
                                          max_denoising_steps=generation_config.max_denoising_steps,
                                          confidence_dtype=self.prr_confidence_dtype, generator=self.prr_generator)
        return self._prr_sampler

    def _policy_sampler(self, sampler) -> Optional[PolicySampler]:
        """The PolicySampler behind `sampler` in this call (None: upstream's sampler)."""
        return sampler if isinstance(sampler, PolicySampler) else self.__dict__.get("_prr_sampler")

    def _prepare_denoiser_inputs(self, *args, **kwargs):
        # Called once per canvas before its first step, with the decoder mask over [everything before the canvas,
        # the canvas]: tell the sampler how long each row is so far (PRR's length features).
        sampler, mask = self._policy_sampler(kwargs.get("sampler")), kwargs.get("decoder_attention_mask")
        if sampler is not None and isinstance(mask, torch.Tensor) and mask.dim() == 2:
            width = mask.shape[1] - self.config.canvas_length
            sampler.context_length = mask[:, :width].sum(-1, dtype=torch.int64)
            sampler.context_width = width
        return super()._prepare_denoiser_inputs(*args, **kwargs)

    def _compile_functions(self, sampler, diffusion_stopping_criteria):
        # With a compileable (static) cache transformers compiles the sampler's methods with fullgraph=True and caches
        # them on the model. A PolicySampler stays eager (its State lives in Python between steps; the op is opaque
        # to the compiler), and nothing of it may be cached on the model, or a later upstream sampler would run ours.
        if self._policy_sampler(sampler) is None:
            return super()._compile_functions(sampler, diffusion_stopping_criteria)
        kept: Dict[str, object] = {k: self.__dict__[k] for k in _COMPILED_SAMPLER_ATTRS if k in self.__dict__}
        stand_in = types.SimpleNamespace(accept_canvas=sampler.accept_canvas, renoise_canvas=sampler.renoise_canvas)
        encoder, decoder, _, stopping = super()._compile_functions(stand_in, diffusion_stopping_criteria)
        for k in _COMPILED_SAMPLER_ATTRS:
            self.__dict__.pop(k, None)
        self.__dict__.update(kept)
        return encoder, decoder, sampler, stopping


class PolicyDiffusionGemma(PolicyDiffusionGemmaMixin, DiffusionGemmaForBlockDiffusion):
    """`DiffusionGemmaForBlockDiffusion` whose `generate` accepts canvas tokens with a prr_ext policy.

    Everything is transformers' loop except the sampler (`_prepare_sampler` returns a `PolicySampler` while
    `prr_policy` is set). The output is still transformers': each canvas's tokens are the argmax of its last
    step's processed logits; the policy decides which sampled tokens the canvas keeps between steps, and so the
    trajectory, the early stop and the speed.

    Parameters
    ----------
    config : DiffusionGemmaConfig
        As for `DiffusionGemmaForBlockDiffusion`.
    prr_policy : prr_ext.Policy, optional
        Threshold, Factor, EntropyBound, PRR or LocalLeap; None (default) = upstream's EntropyBoundSampler built from
        ``generation_config.sampler_config``. Settable later (``model.prr_policy = ...``, checked when set) and
        per call (``model.generate(..., prr_policy=...)``).

    Attributes
    ----------
    prr_generator : torch.Generator or None
        Generator of the canvas noise (see `PolicySampler`); None = torch's global generator, as upstream.
    prr_confidence_dtype : torch.dtype
        Softmax dtype behind the candidates' confidence (fp32).

    Examples
    --------
    >>> import prr_ext
    >>> model = PolicyDiffusionGemma.from_pretrained("google/diffusiongemma-26B-A4B-it", device_map="auto",
    ...                                              prr_policy=prr_ext.Threshold(tau=0.9))   # doctest: +SKIP
    >>> out = model.generate(input_ids, max_new_tokens=256)                                   # doctest: +SKIP
    >>> out.sequences, out.tokens_per_forward                                                  # doctest: +SKIP
    """

    def __init__(self, config, prr_policy: Optional[Policy] = None):
        super().__init__(config)
        self.prr_policy = prr_policy


_POLICY_CLASSES: Dict[type, type] = {DiffusionGemmaForBlockDiffusion: PolicyDiffusionGemma}


def with_policy(model: DiffusionGemmaForBlockDiffusion, policy: Optional[Policy]) -> DiffusionGemmaForBlockDiffusion:
    """Give an already-loaded DiffusionGemma model a prr_ext policy, in place (no weights are copied).

    The model's class becomes `PolicyDiffusionGemma` (for a subclass of `DiffusionGemmaForBlockDiffusion`: a class
    that puts `PolicyDiffusionGemmaMixin` before it, so the subclass's own overrides stay), and its `prr_policy`
    is set. The policy is checked before anything changes.

    Parameters
    ----------
    model : transformers.DiffusionGemmaForBlockDiffusion
        The model (modified in place and returned).
    policy : prr_ext.Policy or None
        Threshold, Factor, EntropyBound, PRR or LocalLeap; None = upstream's EntropyBoundSampler.

    Returns
    -------
    transformers.DiffusionGemmaForBlockDiffusion
        `model`, now also an instance of `PolicyDiffusionGemmaMixin`.

    Examples
    --------
    >>> import prr_ext
    >>> from transformers import DiffusionGemmaForBlockDiffusion
    >>> model = DiffusionGemmaForBlockDiffusion.from_pretrained("google/diffusiongemma-26B-A4B-it")  # doctest: +SKIP
    >>> model = with_policy(model, prr_ext.PRR(prr_ext.Controller.load("controller.safetensors"),
    ...                                        tau=0.9))                                          # doctest: +SKIP
    >>> out = model.generate(input_ids, max_new_tokens=256)                                     # doctest: +SKIP
    """
    if not isinstance(model, DiffusionGemmaForBlockDiffusion):
        raise TypeError(f"model must be a transformers DiffusionGemmaForBlockDiffusion, got {type(model).__name__}")
    if policy is not None:
        check_policy(policy, "policy")
    cls = type(model)
    if not isinstance(model, PolicyDiffusionGemmaMixin):
        if cls not in _POLICY_CLASSES:
            _POLICY_CLASSES[cls] = type(f"Policy{cls.__name__}", (PolicyDiffusionGemmaMixin, cls),
                                        {"__module__": __name__, "__doc__": PolicyDiffusionGemma.__doc__})
        model.__class__ = _POLICY_CLASSES[cls]
    model.prr_policy = policy
    return model
