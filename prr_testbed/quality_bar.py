"""The quality bar a testbed model must reach before its numbers can rank commit rules (issue 21's criteria).

    python -m prr_testbed.quality_bar runs/sweep/results.json      # a sweep of the model on >= 500 test prompts

Three criteria, on every family of the sweep:
  1. vanilla (LowConfidence, one token per step) reaches >= 90% accuracy;
  2. parallelism pays but is not free: the best training-free rule (Threshold, Factor, EntropyBound) within 1 point
     of vanilla's accuracy needs between 1/8 and 1/2 of vanilla's NFE (its fewest-NFE such point; printed with the
     answer tokens, <eos> excluded, that it settles per forward);
  3. the rules separate: Threshold(0.7) loses at least 3 points against vanilla on at least two families.
The sweep needs the vanilla point, Threshold with tau 0.7 among its taus, and enough points of the other rules to
find their cheapest point within 1 point of vanilla (the sweep's defaults hold all of these). Exit status 0 when
every criterion holds, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from .cli import parser

PROG = "python -m prr_testbed.quality_bar"
VANILLA_MIN_ACCURACY = 90.0
WITHIN_POINTS = 1.0
NFE_RATIO_RANGE = (1.0 / 8.0, 1.0 / 2.0)
SEPARATING_TAU, SEPARATING_LOSS, SEPARATING_FAMILIES = 0.7, 3.0, 2
TRAINING_FREE = ("threshold", "factor", "eb")


def _vanilla(rows: Sequence[Dict], task: str) -> Dict:
    for r in rows:
        if r["task"] == task and r["policy"] == "lowconf" and float(r["steps_frac"]) == 1.0:
            return r
    raise ValueError(f"the sweep has no vanilla point (lowconf, steps_frac 1) for {task!r}")


def cheapest_within(rows: Sequence[Dict], task: str, accuracy: float, points: float = WITHIN_POINTS) -> Optional[Dict]:
    """The training-free point of `task` with the fewest mean NFE among those within `points` of `accuracy`."""
    ok = [r for r in rows if r["task"] == task and r["policy"] in TRAINING_FREE and r["accuracy"] >= accuracy - points]
    return min(ok, key=lambda r: r["mean_nfe"]) if ok else None


def check(results: Sequence[Dict]) -> List[Tuple[str, bool, str]]:
    """(criterion, holds, detail) for each criterion and family of a sweep's `results` list."""
    tasks = list(dict.fromkeys(r["task"] for r in results))
    if not tasks:
        raise ValueError("the sweep holds no results")
    out: List[Tuple[str, bool, str]] = []
    losses = {}
    for task in tasks:
        van = _vanilla(results, task)
        out.append((f"{task}: vanilla >= {VANILLA_MIN_ACCURACY:g}%", van["accuracy"] >= VANILLA_MIN_ACCURACY,
                    f"{van['accuracy']:.1f}% (n={van['n']})"))
        best = cheapest_within(results, task, van["accuracy"])
        lo, hi = NFE_RATIO_RANGE
        if best is None:
            out.append((f"{task}: best training-free rule within {WITHIN_POINTS:g} point at 1/8..1/2 of vanilla NFE",
                        False, "no training-free point within 1 point of vanilla"))
        else:
            ratio = best["mean_nfe"] / van["mean_nfe"]
            # vanilla's NFE also counts the <eos> slots of the answer's last block; the answer tokens the point
            # settles per forward say what the ratio would be against one forward per answer token
            per_forward = best.get("answer_tokens_per_forward")
            out.append((f"{task}: best training-free rule within {WITHIN_POINTS:g} point at 1/8..1/2 of vanilla NFE",
                        lo <= ratio <= hi, f"{best['label']}: {best['accuracy']:.1f}%, NFE {best['mean_nfe']:.2f} = "
                        f"1/{1 / ratio:.1f} of vanilla's {van['mean_nfe']:.2f}"
                        + ("" if per_forward is None else f"; {per_forward:.2f} answer tokens per forward")))
        th = [r for r in results if r["task"] == task and r["policy"] == "threshold"
              and r["param"] is not None and abs(float(r["param"]) - SEPARATING_TAU) < 1e-9]
        if th:
            losses[task] = van["accuracy"] - min(r["accuracy"] for r in th)
    separated = [t for t, loss in losses.items() if loss >= SEPARATING_LOSS]
    detail = ", ".join(f"{t} -{loss:.1f}" for t, loss in losses.items()) or "no Threshold(0.7) point in the sweep"
    out.append((f"Threshold({SEPARATING_TAU:g}) loses >= {SEPARATING_LOSS:g} points on >= {SEPARATING_FAMILIES} "
                "families", len(separated) >= SEPARATING_FAMILIES, detail))
    return out


def main(argv=None) -> int:
    ap: argparse.ArgumentParser = parser(PROG, __doc__)
    ap.add_argument("results", help="a JSON file written by python -m prr_testbed.sweep")
    args = ap.parse_args(argv)
    try:
        with open(args.results) as f:
            doc = json.load(f)
        rows = check(doc["results"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # (the last two: JSON of another shape)
        ap.error(f"argument results: {args.results} is not a sweep's results JSON ({type(e).__name__}: {e})")
    eos_exit = bool(doc.get("meta", {}).get("eos_exit"))
    print(f"[quality_bar] NFE {'with EOS early exit (--eos-exit)' if eos_exit else 'over every slot of the canvas'}")
    for name, holds, detail in rows:
        print(f"{'PASS' if holds else 'FAIL'}  {name}: {detail}")
    ok = all(h for _, h, _ in rows)
    print(f"[quality_bar] {'every criterion holds' if ok else 'the bar is not reached'} ({args.results})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
