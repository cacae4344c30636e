"""Compare two sweeps of the same rules on the same test prompts, e.g. a model before and after fine-tuning.

    python -m prr_testbed.compare_sweeps before.json after.json --out compare.json

Both files are `python -m prr_testbed.sweep` results measured on the same prompts (same --n, the test split). For
every operating point present in both (same task and label) it reports the accuracy change B - A with its paired-
bootstrap interval, the exact McNemar p and a verdict (a change is named only beyond noise), and the mean-NFE change
with its paired-bootstrap interval; for every policy the AUP of both on one scale (y_max = the best accuracy of any
point of either sweep on the task) and the AUP change with a paired-bootstrap interval (each resample of the prompts
applied to every point of both curves). Prints a markdown table; --out also writes everything as JSON.
"""
from __future__ import annotations

import json
from typing import Dict, List, Sequence

import numpy as np

from .cli import check_outputs, parser, write_json
from .stats import BOOTSTRAP_RESAMPLES, aup, bootstrap_counts, bootstrap_interval, paired_comparison

PROG = "python -m prr_testbed.compare_sweeps"
LEVEL = 0.95


def _curve_aups(counts: np.ndarray, rows: Sequence[Dict], y_max: float) -> List[float]:
    """AUP of one policy's points on each resample (rows of `counts`)."""
    C = np.asarray([r["correct"] for r in rows], dtype=np.float64)
    N = np.asarray([r["nfe_per_prompt"] for r in rows], dtype=np.float64)
    G = np.asarray([r["gen_length"] for r in rows], dtype=np.float64)
    n = C.shape[1]
    acc = 100.0 * (counts @ C.T) / n
    rho = G / ((counts @ N.T) / n)
    return [aup(r, a, y_max) for r, a in zip(rho.tolist(), acc.tolist())]


def compare(a: Dict, b: Dict, *, n_boot: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Dict:
    """The comparison of sweep `b` against sweep `a` (differences are b - a).

    Parameters
    ----------
    a, b : dict
        Sweep results (the JSON `python -m prr_testbed.sweep` writes), with per-prompt correctness and NFE.
    n_boot : int
        Bootstrap resamples (>= 1); one seed and one set of resamples per task for every statistic.

    Returns
    -------
    dict
        "points": per matched point accuracy / NFE of both, the paired accuracy comparison and the NFE difference
        with its interval; "aup": per task and policy both AUPs on the common y_max, the difference and its interval.
    """
    if a["meta"].get("split", "test") != b["meta"].get("split", "test"):
        raise ValueError("the sweeps were measured on different splits")
    rows_a = {(r["task"], r["label"]): r for r in a["results"]}
    rows_b = {(r["task"], r["label"]): r for r in b["results"]}
    keys = [k for k in rows_a if k in rows_b]
    if not keys:
        raise ValueError("the sweeps share no (task, label) point")
    points, aups = [], {}
    for task in dict.fromkeys(t for t, _ in keys):
        tk = [k for k in keys if k[0] == task]
        n = len(rows_a[tk[0]]["correct"])
        if any(len(rows_a[k]["correct"]) != n or len(rows_b[k]["correct"]) != n for k in tk):
            raise ValueError(f"task {task}: the sweeps' points were not measured on the same number of prompts")
        for k in tk:
            ra, rb = rows_a[k], rows_b[k]
            c = paired_comparison(ra["correct"], rb["correct"], n_boot=n_boot, level=LEVEL, seed=seed,
                                  names=("before", "after"))
            d_nfe = np.asarray(rb["nfe_per_prompt"], float) - np.asarray(ra["nfe_per_prompt"], float)
            points.append({
                "task": task, "label": k[1], "policy": ra["policy"], "n": n,
                "accuracy_a": ra["accuracy"], "accuracy_b": rb["accuracy"],
                "accuracy_interval_a": ra.get("accuracy_interval"), "accuracy_interval_b": rb.get("accuracy_interval"),
                "accuracy_change": 0.0 - c["difference"],  # 0.0 - x: no "-0.0" for no change
                "accuracy_change_interval": [0.0 - c["interval"][1], 0.0 - c["interval"][0]],
                "a_only": c["a_only"], "b_only": c["b_only"], "p_value": c["p_value"],
                "verdict": c["verdict"], "mean_nfe_a": ra["mean_nfe"], "mean_nfe_b": rb["mean_nfe"],
                "nfe_change": float(d_nfe.mean()),
                "nfe_change_interval": list(bootstrap_interval(d_nfe, n_boot, LEVEL, seed))})
        y_max = max(rows_a[k]["accuracy"] for k in tk) if tk else 0.0
        y_max = max([y_max] + [rows_b[k]["accuracy"] for k in tk])
        aups[task] = {"y_max": y_max}
        for pol in dict.fromkeys(rows_a[k]["policy"] for k in tk):
            pa = [rows_a[k] for k in tk if rows_a[k]["policy"] == pol]
            pb = [rows_b[k] for k in tk if rows_b[k]["policy"] == pol]
            if not y_max > 0:
                continue
            point = [aup([r["tokens_per_forward"] for r in p], [r["accuracy"] for r in p], y_max) for p in (pa, pb)]
            res_a, res_b = [], []
            for counts in bootstrap_counts(n, n_boot, seed):
                res_a += _curve_aups(counts, pa, y_max)
                res_b += _curve_aups(counts, pb, y_max)
            ra_, rb_ = np.asarray(res_a), np.asarray(res_b)
            q = [(1 - LEVEL) / 2, (1 + LEVEL) / 2]
            aups[task][pol] = {"aup_a": point[0], "aup_b": point[1], "change": point[1] - point[0],
                               "interval_a": np.quantile(ra_, q).tolist(), "interval_b": np.quantile(rb_, q).tolist(),
                               "change_interval": np.quantile(rb_ - ra_, q).tolist(), "points": len(pa)}
    return {"points": points, "aup": aups, "n_boot": n_boot, "seed": seed, "level": LEVEL,
            "note": "differences are B - A (after - before); intervals: paired percentile bootstrap over the prompts; "
                    "AUP of both sweeps on one y_max (the best point of either on the task)"}


def markdown(doc: Dict) -> List[str]:
    """The comparison as two markdown tables (points, AUP)."""
    lines = ["| task | point | acc before [95% CI] | acc after [95% CI] | change [95% CI], McNemar p | NFE before | "
             "NFE after | NFE change [95% CI] |", "|---|---|---|---|---|---|---|---|"]
    for p in doc["points"]:
        ia, ib = p["accuracy_interval_a"], p["accuracy_interval_b"]
        fmt = (lambda v, i: f"{v:.1f}" + (f" [{i[0]:.1f}, {i[1]:.1f}]" if i else ""))
        ci, ni = p["accuracy_change_interval"], p["nfe_change_interval"]
        lines.append(f"| {p['task']} | {p['label']} | {fmt(p['accuracy_a'], ia)} | {fmt(p['accuracy_b'], ib)} | "
                     f"{p['accuracy_change']:+.1f} [{ci[0]:+.1f}, {ci[1]:+.1f}], p {p['p_value']:.2g} | "
                     f"{p['mean_nfe_a']:.2f} | {p['mean_nfe_b']:.2f} | {p['nfe_change']:+.2f} "
                     f"[{ni[0]:+.2f}, {ni[1]:+.2f}] |")
    lines += ["", "| task | policy | AUP before [95% CI] | AUP after [95% CI] | change [95% CI] |",
              "|---|---|---|---|---|"]
    for task, d in doc["aup"].items():
        for pol, v in d.items():
            if pol == "y_max":
                continue
            ia, ib, ic = v["interval_a"], v["interval_b"], v["change_interval"]
            lines.append(f"| {task} | {pol} | {v['aup_a']:.0f} [{ia[0]:.0f}, {ia[1]:.0f}] | {v['aup_b']:.0f} "
                         f"[{ib[0]:.0f}, {ib[1]:.0f}] | {v['change']:+.0f} [{ic[0]:+.0f}, {ic[1]:+.0f}] |")
    return lines


def main(argv=None) -> Dict:
    ap = parser(PROG, __doc__)
    ap.add_argument("before", help="sweep results JSON (A)")
    ap.add_argument("after", help="sweep results JSON (B), the same prompts")
    ap.add_argument("--out", default=None, help="write the comparison as JSON here (default: print only)")
    ap.add_argument("--bootstrap", type=int, default=BOOTSTRAP_RESAMPLES, help="bootstrap resamples of the prompts")
    ap.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    args = ap.parse_args(argv)
    if args.bootstrap < 1:
        ap.error("argument --bootstrap: must be >= 1")
    check_outputs(ap, args, files=("out",), inputs=("before", "after"))
    docs = []
    for name in ("before", "after"):
        path = getattr(args, name)
        try:
            with open(path) as f:
                docs.append(json.load(f))
        except (OSError, ValueError) as e:
            ap.error(f"argument {name}: cannot read sweep results from {path}: {e}")
    try:
        doc = compare(*docs, n_boot=args.bootstrap, seed=args.seed)
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # (the last three: JSON of another shape)
        ap.error(f"the sweeps cannot be compared ({type(e).__name__}: {e}); give two sweeps' results JSON "
                 "(python -m prr_testbed.sweep --out) on the same prompts")
    doc["before"], doc["after"] = args.before, args.after
    print("\n".join(markdown(doc)))
    if args.out:
        write_json(args.out, doc, "compare_sweeps")
    return doc


if __name__ == "__main__":
    main()
