"""Commit rules ("policies") for masked-diffusion decoding.

A policy decides, for each sequence at each denoising step, which masked positions of the active block get their
candidate token committed. Every policy is a small frozen dataclass: hyper-parameters only, no state. The math of
each rule lives twice, once in `prr_ext.reference` (pure PyTorch, the specification) and once in
`csrc/include/prr/select.h` (shared by the CPU and CUDA kernels); docs/semantics.md states it in prose.

Policy codes (`POLICY_*`, prr_ext.constants) are the integers the C++ op receives.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional

if TYPE_CHECKING:  # pragma: no cover
    from .controller import Controller

from . import constants as K
from .constants import (POLICY_ENTROPY_BOUND, POLICY_FACTOR,  # noqa: F401  (the codes, re-exported)
                        POLICY_KLASS, POLICY_LOCAL_LEAP, POLICY_LOW_CONFIDENCE, POLICY_PRR, POLICY_RANDOM,
                        POLICY_SLOW_FAST, POLICY_THRESHOLD, SHAPING_POWER, SHAPING_TEMPERATURE, SHAPING_WEIGHTED,
                        SHAPINGS)


def _check_unit_interval(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(value).__name__}")
    value = float(value)
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return value


def _check_finite_nonnegative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not (value >= 0.0) or math.isinf(value):  # also rejects NaN
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def _check_int(name: str, value, lo: int, hi: int = K.MAX_RULE_INT, allow_none: bool = False) -> Optional[int]:
    """An int in [lo, hi]. The op receives rule parameters as doubles and casts them back, so every bound is at
    most MAX_RULE_INT (2**31 - 1): far past any block, and exact in a double."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        none = " or None" if allow_none else ""
        raise TypeError(f"{name} must be an int{none}, got {value!r}")
    if not lo <= value <= hi:
        bound = f">= {lo}" if value < lo and hi == K.MAX_RULE_INT else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be an int {bound}, got {value}")
    return int(value)


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):  # bool("False") is True: a string from a config must not pass
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _check_choice(name: str, value, choices) -> None:
    try:
        known = value in choices
    except TypeError:  # unhashable, e.g. a list
        known = False
    if not known:
        raise ValueError(f"{name} must be one of {sorted(choices, key=str)}, got {value!r}")


class Policy:
    """Base class. `code` is the integer the op receives; `adaptive` policies may finish a block early."""

    code: int = -1
    adaptive: bool = False

    @property
    def param(self) -> float:  # the rule's scalar hyper-parameter as passed to the op (tau, f or gamma)
        return 0.0

    @property
    def base_rule(self) -> "Policy":
        """The rule that ranks and commits first: the policy itself, or the base of an `R2` wrapper."""
        return self

    def rule_params(self) -> List[float]:
        """The op's `rule_params` list (layout: prr_ext.constants RP_*): hyper-parameters beyond `param`."""
        params = [0.0] * K.NUM_RULE_PARAMS
        params[K.RP_R2_WINDOW_UNMASKED] = -1.0
        params[K.RP_R2_CLUSTER_SIZE] = 2.0
        return params


@dataclass(frozen=True)
class LowConfidence(Policy):
    """LLaDA 'low_confidence': commit exactly k_i positions per step, the highest-confidence masked positions of
    the block, where k_i is LLaDA's per-block schedule (remainder front-loaded). NFE == steps."""

    code = POLICY_LOW_CONFIDENCE


@dataclass(frozen=True)
class RandomRemask(Policy):
    """LLaDA 'random': like LowConfidence but the ranking key is a uniform random number per position."""

    code = POLICY_RANDOM


@dataclass(frozen=True)
class Threshold(Policy):
    """Fast-dLLM threshold rule: every masked block position with confidence >= tau, and never fewer than the
    schedule's k_i (at least one). With steps == gen_length, k_i == 1: Fast-dLLM's "at least the top-1"."""

    tau: float = 0.9
    code = POLICY_THRESHOLD
    adaptive = True

    def __post_init__(self):
        object.__setattr__(self, "tau", _check_unit_interval("tau", self.tau))

    @property
    def param(self) -> float:
        return self.tau


@dataclass(frozen=True)
class Factor(Policy):
    """Fast-dLLM's factor ("dynamic") rule, with the block's masked confidences sorted descending c_1 >= c_2 >= ...
    (1-indexed); at least max(k_i, 1).

    variant="fast-dllm" (default): Fast-dLLM's `get_transfer_index_dynamic`, token for token: thresholds
        t_1 = -1, t_m = 1 - f / (m + 1); scan to the first m with c_m < t_m and commit the m - 1 before it, all n
        when none fails, and also all n when the first to fail is the last one (upstream's edge case).
    variant="paper": the rule as the paper states it: the largest prefix n with (m + 1)(1 - c_m) < f for every
        m <= n.
    """

    f: float = 1.0
    variant: str = "fast-dllm"
    code = POLICY_FACTOR
    adaptive = True

    def __post_init__(self):
        if isinstance(self.f, bool) or not isinstance(self.f, (int, float)):
            raise TypeError(f"f must be a number, got {type(self.f).__name__}")
        f = float(self.f)
        if not (f > 0.0) or math.isinf(f):
            raise ValueError(f"f must be a finite number > 0, got {self.f}")
        object.__setattr__(self, "f", f)
        _check_choice("variant", self.variant, K.FACTOR_VARIANTS)

    @property
    def param(self) -> float:
        return self.f

    def rule_params(self) -> List[float]:
        params = super().rule_params()
        params[K.RP_FACTOR_VARIANT] = float(K.FACTOR_VARIANTS[self.variant])
        return params


@dataclass(frozen=True)
class EntropyBound(Policy):
    """EB-Sampler: with the block's masked positions sorted by entropy ascending, commit the largest prefix U with
    sum(H_U) - max(H_U) <= gamma; at least max(k_i, 1)."""

    gamma: float = 0.1
    code = POLICY_ENTROPY_BOUND
    adaptive = True

    def __post_init__(self):
        object.__setattr__(self, "gamma", _check_finite_nonnegative("gamma", self.gamma))

    @property
    def param(self) -> float:
        return self.gamma


@dataclass(frozen=True)
class PRR(Policy):
    """Progressive Refinement Regulation (arXiv 2603.04514).

    A token-wise controller maps per-token features to a stability score s in (0, 1); the score shapes the
    candidate's confidence, and every masked block position whose shaped confidence is >= tau commits.

    shaping:
      "temperature" (default): T(s) = t_max^(1-s) * t_min^s from the controller; the shaped confidence is the
                     exact probability of the candidate under softmax(logits / T(s)).
      "power":       p^(1 - alpha*s)                                   (released PRR code)
      "weighted":    clamp(p + alpha*max(0, s - 1/2)*p*(1 - p), 0, 1)  (released PRR code)
    union_schedule: also commit the schedule's top-k_i by shaped confidence (never slower than the schedule);
                    otherwise at least one per step, and a block may take up to max(steps_per_block, block_length)
                    steps.
    """

    controller: "Controller" = field(repr=False, default=None)
    tau: float = 0.9
    shaping: str = "temperature"
    union_schedule: bool = True
    alpha: float = 1.0
    code = POLICY_PRR
    adaptive = True

    def __post_init__(self):
        from .controller import Controller

        if not isinstance(self.controller, Controller):
            raise TypeError(f"controller must be a prr_ext.Controller, got {type(self.controller).__name__}")
        object.__setattr__(self, "tau", _check_unit_interval("tau", self.tau))
        _check_choice("shaping", self.shaping, SHAPINGS)
        object.__setattr__(self, "alpha", _check_unit_interval("alpha", self.alpha))
        object.__setattr__(self, "union_schedule", _check_bool("union_schedule", self.union_schedule))

    @property
    def param(self) -> float:
        return self.tau

    @property
    def shaping_code(self) -> int:
        return SHAPINGS[self.shaping]


@dataclass(frozen=True)
class LocalLeap(Policy):
    """LocalLeap (arXiv 2510.07081): anchors are the masked block positions with confidence >= tau; a position within
    `radius` block positions of an anchor commits at the relaxed threshold, any other at tau; at least max(k_i, 1)
    (the top-1 at steps == gen_length). Stateless. Without anchors it is Threshold(tau)."""

    tau: float = 0.9
    relaxed_tau: float = 0.75
    radius: int = 4
    code = POLICY_LOCAL_LEAP
    adaptive = True

    def __post_init__(self):
        object.__setattr__(self, "tau", _check_unit_interval("tau", self.tau))
        object.__setattr__(self, "relaxed_tau", _check_unit_interval("relaxed_tau", self.relaxed_tau))
        if self.relaxed_tau > self.tau:
            raise ValueError(f"relaxed_tau ({self.relaxed_tau}) must be <= tau ({self.tau}): it relaxes tau near an "
                             "anchor")
        _check_int("radius", self.radius, 0)

    @property
    def param(self) -> float:
        return self.tau

    def rule_params(self) -> List[float]:
        params = super().rule_params()
        params[K.RP_RELAXED_TAU] = self.relaxed_tau
        params[K.RP_RADIUS] = float(self.radius)
        return params


@dataclass(frozen=True)
class SlowFast(Policy):
    """SlowFast sampling (arXiv 2506.10848), per block in sub-cycles over a span [start, end) of block positions
    (start = 0 on entering a block, then the previous span's end).

    Slow phase, exactly `explore_steps` steps: each step estimates the span's end as start + 1 + the farthest masked
    position at or after start with confidence >= span_threshold (start + 1 if none), clipped to [1, block_length];
    once the last `stability_window` estimates have a population std < stability_std the span is determined (end =
    the last estimate), otherwise end = int(mean) (and determined at the last exploration step). Each slow step
    commits, among the masked positions at or after start, all with confidence >= fill_threshold if more than one
    qualify, else the most confident one.
    Fast phase: the same commit within [start, end) until the span holds no mask; then the next sub-cycle.
    The rule ignores the step schedule; a block takes at most max(steps_per_block, block_length) steps.
    """

    explore_steps: int = 6
    span_threshold: float = 0.3
    stability_window: int = 2
    stability_std: float = 1.0
    fill_threshold: float = 0.9
    code = POLICY_SLOW_FAST
    adaptive = True

    def __post_init__(self):
        _check_int("explore_steps", self.explore_steps, 1)
        object.__setattr__(self, "span_threshold", _check_unit_interval("span_threshold", self.span_threshold))
        _check_int("stability_window", self.stability_window, 1, K.MAX_STABILITY_WINDOW)
        object.__setattr__(self, "stability_std", _check_finite_nonnegative("stability_std", self.stability_std))
        object.__setattr__(self, "fill_threshold", _check_unit_interval("fill_threshold", self.fill_threshold))

    @property
    def param(self) -> float:
        return self.fill_threshold

    def rule_params(self) -> List[float]:
        params = super().rule_params()
        params[K.RP_EXPLORE_STEPS] = float(self.explore_steps)
        params[K.RP_SPAN_THRESHOLD] = self.span_threshold
        params[K.RP_STABILITY_WINDOW] = float(self.stability_window)
        params[K.RP_STABILITY_STD] = self.stability_std
        return params


@dataclass(frozen=True)
class KLASS(Policy):
    """KLASS (arXiv 2511.05664): a masked block position is ready when its confidence > conf_threshold and the KL
    divergence KL(p_t || p_{t-1}) of its distribution between consecutive steps stayed < kl_threshold for the last
    `history` steps; every ready position commits, and when none is ready the schedule's top max(k_i, 1).
    The previous distribution is kept for the active block's positions only (State.prev_logp, fp32 log-probabilities
    [B, block_length, V]): on entering a block no position has one, so none is ready before the block's
    `history`-th step. A block takes at most max(steps_per_block, block_length) steps."""

    conf_threshold: float = 0.9
    kl_threshold: float = 0.01
    history: int = 2
    code = POLICY_KLASS
    adaptive = True

    def __post_init__(self):
        object.__setattr__(self, "conf_threshold", _check_unit_interval("conf_threshold", self.conf_threshold))
        object.__setattr__(self, "kl_threshold", _check_finite_nonnegative("kl_threshold", self.kl_threshold))
        _check_int("history", self.history, 1)

    @property
    def param(self) -> float:
        return self.conf_threshold

    def rule_params(self) -> List[float]:
        params = super().rule_params()
        params[K.RP_KL_THRESHOLD] = self.kl_threshold
        params[K.RP_KL_HISTORY] = float(self.history)
        return params


@dataclass(frozen=True)
class R2(Policy):
    """R²-dLLM's redundancy-removing passes (arXiv 2604.18995) on top of a base rule, in upstream's order, on the same
    logits and in the same step:

    1. spatial window (window=W in [1, 64], None: off): every window of W block positions holding at most
       `window_unmasked` unmasked tokens after the base commit (None: no limit) whose still-masked positions have
       mean confidence >= spatial_threshold commits all of them (windows judged on the same canvas, then unioned);
    2. token cluster (token_cluster, None: off): a maximal run of >= token_cluster_size adjacent still-masked positions
       with the same top-1 token whose largest p(top-1) > spatial_threshold commits one of them: the most confident
       ("confidence"), the middle ("mid") or a random one ("random", Philox-drawn);
    3. temporal streak (temporal_steps=S, None: off): a still-masked position whose top-1 stayed the same for S
       consecutive steps, with the aggregate p(top-1) (temporal_eval: "last" this step's, "ave" the streak's mean,
       "max" its max) >= temporal_threshold, commits; a new top-1 restarts the streak, a commit resets it.
    Passes 2 and 3 commit the top-1 (argmax) token, pass 1 the base rule's candidate. Always adaptive.
    """

    base: Policy = field(default_factory=lambda: Threshold(0.9))
    window: Optional[int] = 3
    window_unmasked: Optional[int] = 1
    spatial_threshold: float = 0.8
    token_cluster: Optional[str] = "confidence"
    token_cluster_size: int = 2
    temporal_steps: Optional[int] = 3
    temporal_threshold: float = 0.8
    temporal_eval: str = "last"
    adaptive = True

    def __post_init__(self):
        if not isinstance(self.base, Policy):
            raise TypeError(f"base must be a prr_ext policy, got {type(self.base).__name__}")
        if isinstance(self.base, R2):
            raise TypeError("base must not itself be an R2 policy (its passes would run twice)")
        _check_int("window", self.window, 1, K.MAX_R2_WINDOW, allow_none=True)
        _check_int("window_unmasked", self.window_unmasked, 0, allow_none=True)
        object.__setattr__(self, "spatial_threshold", _check_unit_interval("spatial_threshold",
                                                                           self.spatial_threshold))
        _check_choice("token_cluster", self.token_cluster, K.CLUSTER_CHOICES)
        _check_int("token_cluster_size", self.token_cluster_size, 2)
        _check_int("temporal_steps", self.temporal_steps, 1, allow_none=True)
        object.__setattr__(self, "temporal_threshold", _check_unit_interval("temporal_threshold",
                                                                            self.temporal_threshold))
        _check_choice("temporal_eval", self.temporal_eval, K.TEMPORAL_EVALS)

    @property
    def code(self) -> int:  # the op ranks and commits by the base rule first
        return self.base.code

    @property
    def base_rule(self) -> Policy:
        return self.base

    @property
    def param(self) -> float:
        return self.base.param

    def rule_params(self) -> List[float]:
        params = self.base.rule_params()
        params[K.RP_R2_WINDOW] = float(self.window or 0)
        params[K.RP_R2_WINDOW_UNMASKED] = -1.0 if self.window_unmasked is None else float(self.window_unmasked)
        params[K.RP_R2_SPATIAL_THRESHOLD] = self.spatial_threshold
        params[K.RP_R2_CLUSTER] = float(K.CLUSTER_CHOICES[self.token_cluster])
        params[K.RP_R2_CLUSTER_SIZE] = float(self.token_cluster_size)
        params[K.RP_R2_TEMPORAL_STEPS] = float(self.temporal_steps or 0)
        params[K.RP_R2_TEMPORAL_THRESHOLD] = self.temporal_threshold
        params[K.RP_R2_TEMPORAL_EVAL] = float(K.TEMPORAL_EVALS[self.temporal_eval])
        return params
