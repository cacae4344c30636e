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
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .controller import Controller

from .constants import (POLICY_ENTROPY_BOUND, POLICY_FACTOR,  # noqa: F401  (the codes, re-exported)
                        POLICY_LOW_CONFIDENCE, POLICY_PRR, POLICY_RANDOM, POLICY_THRESHOLD, SHAPING_POWER,
                        SHAPING_TEMPERATURE, SHAPING_WEIGHTED, SHAPINGS)


def _check_unit_interval(name: str, value: float) -> float:
    value = float(value)
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return value


class Policy:
    """Base class. `code` is the integer the op receives; `adaptive` policies may finish a block early."""

    code: int = -1
    adaptive: bool = False

    @property
    def param(self) -> float:  # the rule's scalar hyper-parameter as passed to the op (tau, f or gamma)
        return 0.0


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
    """Fast-dLLM factor ("dynamic") rule: with the block's masked confidences sorted descending c_1 >= c_2 >= ...,
    commit the largest prefix n such that (m + 1)(1 - c_m) < f for every m <= n; at least max(k_i, 1)."""

    f: float = 1.0
    code = POLICY_FACTOR
    adaptive = True

    def __post_init__(self):
        f = float(self.f)
        if not (f > 0.0) or math.isinf(f):
            raise ValueError(f"f must be a finite number > 0, got {self.f}")
        object.__setattr__(self, "f", f)

    @property
    def param(self) -> float:
        return self.f


@dataclass(frozen=True)
class EntropyBound(Policy):
    """EB-Sampler: with the block's masked positions sorted by entropy ascending, commit the largest prefix U with
    sum(H_U) - max(H_U) <= gamma; at least max(k_i, 1)."""

    gamma: float = 0.1
    code = POLICY_ENTROPY_BOUND
    adaptive = True

    def __post_init__(self):
        g = float(self.gamma)
        if not (g >= 0.0) or math.isinf(g):
            raise ValueError(f"gamma must be a finite number >= 0, got {self.gamma}")
        object.__setattr__(self, "gamma", g)

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
        if self.shaping not in SHAPINGS:
            raise ValueError(f"shaping must be one of {sorted(SHAPINGS)}, got {self.shaping!r}")
        a = float(self.alpha)
        if not (0.0 <= a <= 1.0):
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
        object.__setattr__(self, "alpha", a)
        object.__setattr__(self, "union_schedule", bool(self.union_schedule))

    @property
    def param(self) -> float:
        return self.tau

    @property
    def shaping_code(self) -> int:
        return SHAPINGS[self.shaping]
