"""Statistics of the testbed's results: AUP, and how much of a difference between rules is noise.

`aup` is d3LLM's area under the accuracy-parallelism curve. `bootstrap_interval` gives a percentile-bootstrap
interval of a mean over prompts; `aup_interval` the same for a policy's AUP, every point of its curve resampled on the
same prompts; `paired_comparison` / `verdict` compare two rules on the same prompts (the accuracy difference, its
paired-bootstrap interval and an exact McNemar test), so that "better" is claimed only beyond the noise of the prompt
sample. numpy only.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np


# ---------------------------------------------------------------------------------------------------------------
# AUP: the area under the accuracy-parallelism curve, as d3LLM defines it
# ---------------------------------------------------------------------------------------------------------------
def aup_weight(y: float, y_max: float) -> float:
    """W(y) = min(exp(-3 (1 - y / y_max)), 1)."""
    return min(math.exp(-3.0 * (1.0 - y / y_max)), 1.0)


def aup(rho: Sequence[float], y: Sequence[float], y_max: float) -> float:
    """Area under the accuracy-parallelism curve of one method on one task.

    rho: tokens per forward of each point; y: accuracy in percent; y_max: best accuracy of any method on the task.
    Points are sorted by rho; only those with y >= y_1 - 5 are kept (y_1: the accuracy of the lowest-rho point), so
    y_1 - y_last <= 5; then AUP = rho_1 y_1 + sum_{i>=2} (rho_i - rho_{i-1}) (y_i W(y_i) + y_{i-1} W(y_{i-1})) / 2.
    """
    if len(rho) != len(y) or not rho:
        raise ValueError("rho and y must be non-empty and of equal length")
    if not y_max > 0:
        raise ValueError("y_max must be > 0")
    pts = sorted(zip(map(float, rho), map(float, y)), key=lambda p: p[0])
    y1 = pts[0][1]
    pts = [p for p in pts if p[1] >= y1 - 5.0]
    assert pts[0][1] - pts[-1][1] <= 5.0
    total = pts[0][0] * pts[0][1]
    for (r0, a0), (r1, a1) in zip(pts, pts[1:]):
        total += 0.5 * (r1 - r0) * (a1 * aup_weight(a1, y_max) + a0 * aup_weight(a0, y_max))
    return total


# ---------------------------------------------------------------------------------------------------------------
# noise: bootstrap intervals over prompts, paired comparisons of two rules on the same prompts
# ---------------------------------------------------------------------------------------------------------------
BOOTSTRAP_RESAMPLES = 2000
# Resamples are drawn in chunks of at most this many (resample, prompt) entries, so that memory stays a few tens of
# MB for any number of prompts.
_CHUNK_ENTRIES = 1 << 21


def _check_bootstrap_args(n_boot: int, level: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")


def _vector(values, name: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {tuple(v.shape)}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} holds non-finite values")
    return v


def _binary(values, name: str) -> np.ndarray:
    v = _vector(values, name)
    if not np.all((v == 0.0) | (v == 1.0)):
        raise ValueError(f"{name} must hold per-prompt correctness as 0/1 (or booleans)")
    return v


def bootstrap_counts(n: int, n_boot: int, seed: int = 0):
    """Bootstrap resamples of `n` prompts, as count matrices.

    Parameters
    ----------
    n : int
        Number of prompts (>= 1).
    n_boot : int
        Number of resamples (>= 1).
    seed : int
        Seed of the numpy generator: the same (n, n_boot, seed) gives the same resamples, so statistics of
        different rules on the same prompts computed with one seed share their resamples.

    Yields
    ------
    numpy.ndarray
        int64 arrays of shape [k, n], k <= n_boot, n_boot rows in all: entry [r, i] is how often prompt i is drawn
        (with replacement) in resample r; every row sums to n.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _check_bootstrap_args(n_boot, 0.5)
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ENTRIES // n)
    done = 0
    while done < n_boot:
        k = min(rows, n_boot - done)
        idx = rng.integers(0, n, size=(k, n))
        # one bincount for the whole chunk: row r's draws are offset into its own slice [r n, (r + 1) n)
        flat = (idx + n * np.arange(k)[:, None]).ravel()
        yield np.bincount(flat, minlength=k * n).reshape(k, n)
        done += k


def _percentiles(stats: np.ndarray, level: float) -> Tuple[float, float]:
    lo, hi = np.quantile(stats, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def bootstrap_interval(values: Sequence[float], n_boot: int = BOOTSTRAP_RESAMPLES, level: float = 0.95,
                       seed: int = 0) -> Tuple[float, float]:
    """Percentile-bootstrap interval of the mean of `values` over prompts.

    Parameters
    ----------
    values : sequence of float
        One value per prompt (e.g. 100 * correct for accuracy in percent); non-empty, finite.
    n_boot : int
        Number of resamples of the prompts (with replacement).
    level : float
        Coverage of the interval, in (0, 1).
    seed : int
        Seed of the resampling (see `bootstrap_counts`).

    Returns
    -------
    (low, high) : tuple of float
        The (1 - level) / 2 and (1 + level) / 2 quantiles of the resampled means, in the units of `values`.
    """
    v = _vector(values, "values")
    _check_bootstrap_args(n_boot, level)
    means = np.concatenate([c @ v for c in bootstrap_counts(v.size, n_boot, seed)]) / v.size
    return _percentiles(means, level)


def aup_interval(correct: Sequence[Sequence[float]], nfe: Sequence[Sequence[float]], gen_length, y_max: float, *,
                 n_boot: int = BOOTSTRAP_RESAMPLES, level: float = 0.95, seed: int = 0) -> Tuple[float, float]:
    """Percentile-bootstrap interval of one policy's AUP on one task.

    Every resample draws one set of prompt indices and applies it to every operating point of the curve (the points
    were measured on the same prompts, and a harder resample lowers all of them together); on it each point's
    accuracy (percent) and mean NFE are recomputed, its tokens per forward is gen_length / mean NFE, and `aup` gives
    the resample's AUP.

    y_max stays fixed at the value the point estimate uses (summarize(): the best accuracy of any point on the task).
    It is the scale AUP is measured on, shared by every policy of the task, and it is a maximum over many points:
    the bootstrap distribution of a maximum is biased upward and unreliable, so resampling it would widen the
    intervals with an artefact rather than with the policy's own noise.

    Parameters
    ----------
    correct : [points][prompts] array-like of 0/1
        Per-prompt correctness of each operating point (`evaluate(...)["correct"]`), prompts in the same order.
    nfe : [points][prompts] array-like
        Per-prompt forwards of each point (`evaluate(...)["nfe_per_prompt"]`), every value > 0.
    gen_length : int or sequence of int
        The generation length of every point, or one per point.
    y_max : float
        Best accuracy (percent) of any point on the task, > 0.
    n_boot, level, seed
        As in `bootstrap_interval`.

    Returns
    -------
    (low, high) : tuple of float
    """
    _check_bootstrap_args(n_boot, level)
    C = np.asarray(correct, dtype=np.float64)
    N = np.asarray(nfe, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] == 0 or C.shape[1] == 0:
        raise ValueError(f"correct must be [points][prompts], non-empty and rectangular, got shape {tuple(C.shape)}")
    if N.shape != C.shape:
        raise ValueError(f"nfe must have the shape of correct {tuple(C.shape)}, got {tuple(N.shape)} (every point "
                         "must be measured on the same prompts)")
    if not np.all((C == 0.0) | (C == 1.0)):
        raise ValueError("correct must hold per-prompt correctness as 0/1")
    if not np.all(np.isfinite(N)) or not np.all(N > 0):
        raise ValueError("nfe must hold finite per-prompt forwards > 0")
    G = np.broadcast_to(np.asarray(gen_length, dtype=np.float64), (C.shape[0],))
    if not y_max > 0:
        raise ValueError(f"y_max must be > 0, got {y_max!r}")
    n = C.shape[1]
    stats = []
    for counts in bootstrap_counts(n, n_boot, seed):
        acc = 100.0 * (counts @ C.T) / n      # [k, points]
        rho = G / ((counts @ N.T) / n)
        stats += [aup(r, a, y_max) for r, a in zip(rho.tolist(), acc.tolist())]
    return _percentiles(np.asarray(stats), level)


def mcnemar_p(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar (sign) test on the discordant pairs of a paired comparison.

    Under "no difference" each of the n = a_only + b_only discordant prompts is A's or B's with probability 1/2;
    p = min(1, 2 P(Binomial(n, 1/2) <= min(a_only, b_only))), computed with exact integers.

    Parameters
    ----------
    a_only, b_only : int
        Prompts only A solves, prompts only B solves (>= 0).

    Returns
    -------
    float
        The p-value; 1.0 when there are no discordant prompts.
    """
    if a_only < 0 or b_only < 0 or int(a_only) != a_only or int(b_only) != b_only:
        raise ValueError(f"discordant counts must be integers >= 0, got {a_only!r}, {b_only!r}")
    a_only, b_only = int(a_only), int(b_only)
    n = a_only + b_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(a_only, b_only) + 1))
    return min(1.0, 2 * tail / 2 ** n)     # int / int: a correctly rounded float for any n


def verdict(difference: float, interval: Optional[Sequence[float]] = None, p_value: Optional[float] = None, *,
            level: float = 0.95, names: Tuple[str, str] = ("A", "B")) -> str:
    """Say which of two rules is better, or that the data cannot tell.

    A rule is called better only when every piece of evidence given agrees: the paired interval of the difference
    (A - B) excludes 0 on its side, and the exact test's p-value is below 1 - level. The percentile bootstrap alone
    is too narrow when only a handful of prompts are discordant (among 60 prompts, 4 that only A solves give an
    interval above 0, yet p = 0.125), so the exact test guards that case.

    Parameters
    ----------
    difference : float
        The observed accuracy difference A - B (gives the direction when no interval is given).
    interval : (low, high), optional
        Paired-bootstrap interval of the difference.
    p_value : float, optional
        Exact McNemar p-value (`mcnemar_p`).
    level : float
        The interval's coverage; the test's threshold is 1 - level.
    names : (str, str)
        How the answer names A and B.

    Returns
    -------
    str
        "<A> better", "<B> better" or "no difference beyond noise".
    """
    if interval is None and p_value is None:
        raise ValueError("verdict needs an interval, a p-value or both")
    if interval is not None:
        lo, hi = float(interval[0]), float(interval[1])
        if lo > hi:
            raise ValueError(f"interval must be (low, high) with low <= high, got {tuple(interval)}")
        side = 1 if lo > 0 else (-1 if hi < 0 else 0)
    else:
        side = (difference > 0) - (difference < 0)
    # 1 - level rounded: 1 - 0.95 is 0.05000000000000004 in floats, which would let p = 0.05 pass
    if p_value is not None and not p_value < round(1.0 - level, 12):
        side = 0
    return {1: f"{names[0]} better", -1: f"{names[1]} better", 0: "no difference beyond noise"}[side]


def paired_comparison(a: Sequence[float], b: Sequence[float], *, n_boot: int = BOOTSTRAP_RESAMPLES,
                      level: float = 0.95, seed: int = 0, names: Tuple[str, str] = ("A", "B")) -> Dict:
    """Compare two rules on the same prompts from their per-prompt correctness.

    Pairing removes the prompts' own difficulty from the comparison: only prompts one rule solves and the other
    does not carry information, which makes it far more sensitive than comparing two independent intervals.

    Parameters
    ----------
    a, b : sequence of 0/1
        Per-prompt correctness of rule A and rule B, the same prompts in the same order.
    n_boot : int
        Resamples of the paired-bootstrap interval; 0: no interval (the verdict rests on the exact test alone).
    level, seed
        As in `bootstrap_interval`.
    names : (str, str)
        How the verdict names A and B.

    Returns
    -------
    dict
        n; accuracy_a, accuracy_b and difference (A - B), in percent / percentage points; interval ([low, high] of
        the difference, or None when n_boot == 0); a_only, b_only (discordant prompts); p_value (exact McNemar);
        level; verdict (see `verdict`).
    """
    va, vb = _binary(a, "a"), _binary(b, "b")
    if va.size != vb.size:
        raise ValueError(f"a and b must score the same prompts: {va.size} vs {vb.size} values")
    if n_boot != 0:
        _check_bootstrap_args(n_boot, level)
    elif not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    d = 100.0 * (va - vb)
    diff = float(d.mean())
    interval = list(bootstrap_interval(d, n_boot, level, seed)) if n_boot else None
    a_only, b_only = int((va > vb).sum()), int((vb > va).sum())
    p = mcnemar_p(a_only, b_only)
    return {"n": int(va.size), "accuracy_a": 100.0 * float(va.mean()), "accuracy_b": 100.0 * float(vb.mean()),
            "difference": diff, "interval": interval, "a_only": a_only, "b_only": b_only, "p_value": p,
            "level": level, "verdict": verdict(diff, interval, p, level=level, names=names)}
