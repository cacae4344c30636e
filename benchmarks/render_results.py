"""Render the benchmark JSON under benchmarks/results/ as the tables of benchmarks/RESULTS.md (stdlib only).

    python benchmarks/render_results.py                  # print the rendered markdown
    python benchmarks/render_results.py --write          # rewrite the marked section of benchmarks/RESULTS.md
    python benchmarks/render_results.py --check          # exit 1 when that section is not what the JSON renders
    python benchmarks/render_results.py --compare OLD.json NEW.json   # two step runs side by side (µs, change)
    python benchmarks/render_results.py --compare OLD.json NEW.json --save benchmarks/results/compare_<what>.json \
        --title "the split kernel against kernel-v17, one device call"   # ... kept, and rendered with the tables

Every JSON file directly under the results folder is rendered, grouped by device (the device with the newest run
first), one table per benchmark:
* `step_*.json` (benchmarks/run_bench.py): µs per step and the × floor / eager / compiled ratios;
* `bench_step_*.json` (pytest-benchmark of benchmarks/bench_step.py): µs per step by CUDA events, per shape and policy;
* `model_candidate_*.json`, `policies_*.json` (python -m prr_testbed.sweep): accuracy, NFE and AUP on the test split;
* `controller_rounds_*.json` (python -m prr_testbed.train_controller's rounds.json): the self-evolving rounds;
* `compare_*.json` (--compare --save): two step runs side by side, e.g. a change against the kernel it replaces.
Each table names the command and the commit that produced its JSON; the JSON files carry both.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shlex
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, "results")
RESULTS_MD = os.path.join(HERE, "RESULTS.md")
BEGIN = "<!-- BEGIN rendered by benchmarks/render_results.py: edit the JSON and re-run it, not this section -->"
END = "<!-- END rendered by benchmarks/render_results.py -->"
QUALITY_BAR = 90.0  # vanilla accuracy (%) the shipped model must reach on every task family
WITHIN = 1.0  # "best setting": the fewest NFE within this many accuracy points of vanilla
PARAM_NAMES = {"threshold": "τ", "prr": "τ", "factor": "f", "eb": "γ", "localleap": "τ", "slowfast": "fill",
               "klass": "c", "r2": "τ", "r2prr": "τ"}
POLICY_TITLES = {"lowconf": "LowConfidence", "threshold": "Threshold", "factor": "Factor", "eb": "EntropyBound",
                 "prr": "PRR", "localleap": "LocalLeap", "slowfast": "SlowFast", "klass": "KLASS",
                 "r2": "R2 + Threshold", "r2prr": "R2 + PRR"}


def device_slug(name: str) -> str:
    """'NVIDIA H200' -> 'h200', 'NVIDIA H100 80GB HBM3' -> 'h100': the device part of a result file's name."""
    words = re.sub(r"^nvidia\s+", "", name.strip(), flags=re.I).split()
    return re.sub(r"[^a-z0-9]+", "-", (words[0] if words else "gpu").lower()).strip("-") or "gpu"


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------
def kind_of(d: dict, path: str) -> str:
    if d.get("benchmark") in ("step", "step_comparison"):
        return d["benchmark"]
    if "machine_info" in d and "benchmarks" in d:
        return "bench_step"
    meta = d.get("meta", {})
    if meta.get("benchmark") == "controller_rounds" and "rounds" in d:
        return "controller_rounds"
    if "results" in d and "aup" in d:
        return "model_candidate" if "candidate" in meta else "policies"
    raise SystemExit(f"render_results: cannot tell which benchmark {path} holds (expected run_bench.py, "
                     "pytest-benchmark, prr_testbed.sweep or train_controller output)")


def device_of(kind: str, d: dict) -> str:
    if kind == "step":
        dev = d["device"]
    elif kind == "step_comparison":
        dev = d["new"]["device"]
    elif kind == "bench_step":
        dev = d["benchmarks"][0]["extra_info"]["device"] if d["benchmarks"] else "unknown device"
    else:
        dev = d["meta"]["device"]
    m = re.fullmatch(r"cuda \((.*)\)", dev)  # the harness writes "cuda (<name>)"
    return m.group(1) if m else dev


def date_of(kind: str, d: dict) -> str:
    if kind == "step":
        return d["date"]
    if kind == "step_comparison":
        return d["new"]["date"]
    if kind == "bench_step":
        return d["datetime"]
    return d["meta"].get("date", "")


def load(results_dir: str) -> list:
    runs = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        with open(path) as f:
            d = json.load(f)
        kind = kind_of(d, path)
        runs.append(dict(kind=kind, path=path, data=d, device=device_of(kind, d), date=date_of(kind, d)))
    if not runs:
        raise SystemExit(f"render_results: no JSON file in {results_dir}")
    return runs


# ---------------------------------------------------------------------------------------------------------------
# Formatting helpers
# ---------------------------------------------------------------------------------------------------------------
def rel(path: str) -> str:
    return os.path.relpath(path, os.path.dirname(HERE)).replace(os.sep, "/")


def fmt(v, nd: int) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def ratio(a, b, nd: int) -> str:
    return "–" if a is None or b is None else f"{a / b:.{nd}f}"


def when(iso: str) -> str:
    """'2026-12-04T15:53:35+00:00' or '2026-12-04T15:53Z' -> '2026-12-04 15:53 UTC'; a bare date stays."""
    m = re.match(r"(\d{4}-\d\d-\d\d)(?:T(\d\d:\d\d))?", iso)
    if not m:
        return iso
    return m.group(1) + (f" {m.group(2)} UTC" if m.group(2) else "")


def table(header: list, rows: list, align: list) -> list:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


# ---------------------------------------------------------------------------------------------------------------
# One renderer per benchmark
# ---------------------------------------------------------------------------------------------------------------
def render_step(run: dict, newest_step_commit: str) -> list:
    d = run["data"]
    bw = d["read_bandwidth_bytes_per_s"]
    hw = ", ".join(x for x in (f"{d['sms']} SMs" if d.get("sms") else "",
                               f"L2 {d['l2_mib']:g} MiB" if d.get("l2_mib") else "") if x)
    kern = f" ({d['kernel']})" if d.get("kernel") else ""
    lines = ["### CUDA step: µs per step and speed-ups", ""]
    if d["commit"] != newest_step_commit:
        lines += [f"The last measurement on this device: commit {d['commit']}{kern}. Later kernels have not been "
                  "timed on it.", ""]
    lines += [f"Commit {d['commit']}{kern}, {when(d['date'])}; {d['device']}{' (' + hw + ')' if hw else ''}, "
              f"torch {d['torch']}; read bandwidth {bw / 1e12:.3f} TB/s; {d['logits']['dtype']} logits, "
              f"V = {d['logits']['vocab']}.{(' ' + d['note']) if d.get('note') else ''}",
              f"Command: `{d['command']}`. Data: `{rel(run['path'])}`.", ""]
    rows = []
    for r in d["rows"]:
        pol = r["policy"] + (f" [{r['variant']}]" if r.get("variant") else "")
        us = r["us"]
        rows.append([r["shape"], pol, fmt(us, 2), ratio(us, r["floor_us"], 2), ratio(r["eager_us"], us, 1),
                     ratio(r["eager_fp64_us"], us, 1), ratio(r["compiled_us"], us, 1), fmt(r["floor_us"], 2),
                     fmt(r["eager_us"], 1), fmt(r["eager_fp64_us"], 1), fmt(r["compiled_us"], 1)])
    lines += table(["shape (B, L)", "policy", "µs", "× floor", "× eager", "× eager fp64", "× compiled", "floor µs",
                    "eager µs", "eager fp64 µs", "compiled µs"], rows, ["l", "l"] + ["r"] * 9)
    return lines + [""]


def render_bench_step(run: dict) -> list:
    d = run["data"]
    info = d.get("prr_run", {})
    ci = d.get("commit_info", {})
    first = d["benchmarks"][0]["extra_info"] if d["benchmarks"] else {}
    commit = (info.get("commit") or first.get("commit")
              or ci.get("id", "unknown")[:7] + ("+dirty" if ci.get("dirty") else ""))
    kernel = info.get("kernel") or first.get("kernel")
    shapes, policies, cell = [], [], {}
    for b in d["benchmarks"]:
        shape, pol = b["params"]["shape"][0], b["params"]["policy"]
        shapes += [shape] if shape not in shapes else []
        policies += [pol] if pol not in policies else []
        cell[shape, pol] = b["extra_info"]["us_per_step_cuda_events"]
    command = (info.get("command") or first.get("command")
               or "python -m pytest benchmarks/bench_step.py --benchmark-json=<file>")
    rounds = d["benchmarks"][0]["stats"]["rounds"] if d["benchmarks"] else "?"
    lines = [f"### CUDA step under pytest-benchmark: µs per step (CUDA events, median of {rounds} rounds)", "",
             f"Commit {commit}{' (' + kernel + ')' if kernel else ''}, {when(d['datetime'])}; "
             f"{run['device']}, torch {first.get('torch', '?')}. Each round replays a graph of "
             f"{first.get('steps_per_round', '?')} steps; pytest-benchmark's host-side statistics per round are in "
             "the JSON.", f"Command: `{command}`. Data: `{rel(run['path'])}`.", ""]
    rows = [[s] + [fmt(cell.get((s, p)), 2) for p in policies] for s in shapes]
    lines += table(["shape (B, L)"] + policies, rows, ["l"] + ["r"] * len(policies))
    return lines + [""]


def by_task(results: list) -> dict:
    out = {}
    for r in results:
        out.setdefault(r["task"], []).append(r)
    return out


def vanilla(rs: list) -> dict:
    return next(r for r in rs if r["policy"] == "lowconf" and r["steps_frac"] == 1.0)


def render_candidates(runs: list) -> list:
    runs = sorted(runs, key=lambda r: r["data"]["meta"]["candidate"])
    tasks = list(by_task(runs[0]["data"]["results"]))
    shipped = [r for r in runs if r["data"]["meta"].get("shipped")]
    lines = ["### Model quality: vanilla accuracy of the model candidates (test split)", ""]
    meta = runs[0]["data"]["meta"]
    lines += [f"Commit {meta['commit']}, {meta['date']}; {runs[0]['device']}, torch {meta['torch']}; "
              f"{meta['n']} prompts per task family. Vanilla is LowConfidence committing one token per step. The "
              "shipped model is the candidate chosen by final validation accuracy (recorded with its training "
              "chain in the model's config.json).",
              f"Command, per candidate: `{meta['command'].replace('runs/' + meta['candidate'], 'runs/<candidate>')}`"
              .replace(f"model_candidate_{meta['candidate']}_", "model_candidate_<candidate>_") + "; training: "
              "each JSON's `meta.train_command`. Data: " + ", ".join(f"`{rel(r['path'])}`" for r in runs) + ".", ""]
    rows = []
    for r in runs:
        bt = by_task(r["data"]["results"])
        van = [vanilla(bt[t])["accuracy"] for t in tasks]
        thr = [next((x["accuracy"] for x in bt[t] if x["policy"] == "threshold" and x["param"] == 0.5), None)
               for t in tasks]
        name = r["data"]["meta"]["candidate"] + (" (shipped)" if r["data"]["meta"].get("shipped") else "")
        rows.append([name, " / ".join(fmt(v, 1) for v in van), " / ".join(fmt(v, 1) for v in thr)])
    lines += table(["candidate", "vanilla acc % " + " / ".join(tasks), "Threshold(0.5) acc % " + " / ".join(tasks)],
                   rows, ["l", "r", "r"])
    if shipped:
        bt = by_task(shipped[0]["data"]["results"])
        accs = {t: vanilla(bt[t])["accuracy"] for t in tasks}
        held = all(a >= QUALITY_BAR for a in accs.values())
        lines += ["", "Quality bar (vanilla ≥ {:g} % on every family): {} for the shipped model ({}).".format(
            QUALITY_BAR, "**met**" if held else "**not met**", ", ".join(f"{t} {a:.1f} %" for t, a in accs.items()))]
    return lines + [""]


def best_within(rs: list, van: dict) -> dict | None:
    ok = [r for r in rs if r["accuracy"] >= van["accuracy"] - WITHIN]
    return min(ok, key=lambda r: (r["mean_nfe"], -r["accuracy"])) if ok else None


def setting(r: dict) -> str:
    return f"{PARAM_NAMES.get(r['policy'], 'param')}={r['param']:g}"


def render_policies(run: dict) -> list:
    d = run["data"]
    meta = d["meta"]
    bt = by_task(d["results"])
    tasks = list(bt)
    policies = list(next(iter(d["aup"].values())))
    model = meta.get("model", "prr_testbed/assets/model")
    # runs before the sweep recorded its controller used the shipped one
    controller = meta.get("controller", "prr_testbed/assets/controller")
    shipped = (model, controller) == ("prr_testbed/assets/model", "prr_testbed/assets/controller")
    on = ("the shipped model and controller" if shipped else f"the model `{model}`"
          + (f" and the controller `{controller}`" if controller else ""))
    iv = "accuracy_interval" in d["results"][0]  # runs with bootstrap intervals (sweep --bootstrap > 0)
    lines = [f"### Decoding policies on {on} (test split)", "",
             f"Commit {meta['commit']}, {meta['date']}; {run['device']}, torch {meta['torch']}; {meta['n']} prompts "
             f"per task family, temperature {meta['temperature']:g}; "
             + ("PRR not swept." if not controller else "PRR: the shipped controller."
                if controller == "prr_testbed/assets/controller" else f"PRR: the controller `{controller}`."),
             f"Command: `{meta['command']}`. Data: `{rel(run['path'])}`.", "",
             f"Each policy at its best setting: the fewest forward passes (NFE) within {WITHIN:g} point of vanilla's "
             "accuracy; accuracy %" + (f" [{meta.get('level', 0.95):.0%} bootstrap interval over the prompts]"
                                       if iv else "") + " / mean NFE (setting; NFE reduction against vanilla).", ""]

    def acc(r: dict) -> str:
        a = f"{r['accuracy']:.1f}"
        return a + (f" [{r['accuracy_interval'][0]:.1f}, {r['accuracy_interval'][1]:.1f}]" if iv else "")
    rows = []
    for pol in policies:
        cells = []
        for t in tasks:
            van = vanilla(bt[t])
            if pol == "lowconf":
                cells.append(f"{acc(van)} / {van['mean_nfe']:.2f}")
                continue
            b = best_within([r for r in bt[t] if r["policy"] == pol], van)
            cells.append("–" if b is None else f"{acc(b)} / {b['mean_nfe']:.2f} ({setting(b)}; "
                                                f"{van['mean_nfe'] / b['mean_nfe']:.1f}×)")
        title = POLICY_TITLES.get(pol, pol) + (" (vanilla)" if pol == "lowconf" else "")
        rows.append([title] + cells)
    lines += table(["policy"] + tasks, rows, ["l"] + ["l"] * len(tasks))
    tuned_tau = controller_tau(controller)
    if tuned_tau is not None:
        at = [next((r for r in bt[t] if r["policy"] == "prr" and r["param"] == tuned_tau), None) for t in tasks]
        if all(at):
            parts = [f"{t} {r['accuracy']:.1f} / {r['mean_nfe']:.2f} ({vanilla(bt[t])['mean_nfe'] / r['mean_nfe']:.1f}× "
                     "fewer NFE)" for t, r in zip(tasks, at)]
            lines += ["", f"At its controller's τ = {tuned_tau:g} (tuned on the validation split), PRR "
                          "gives " + ", ".join(parts) + "."]
    lines += ["", "AUP (area under the accuracy-parallelism curve; y_max = the best accuracy on the task: "
                  + ", ".join(f"{t} {d['y_max'][t]:g}" for t in tasks) + "):", ""]
    aup_iv = d.get("aup_interval")
    if aup_iv:
        lines[-2] = lines[-2][:-1] + f"; in brackets its {meta.get('level', 0.95):.0%} bootstrap interval (the " \
            "same resample for every point of a policy, y_max fixed):"
    rows = []
    for t in tasks:
        best = max(d["aup"][t].values())
        rows.append([t] + [(f"**{v:.1f}**" if v == best else f"{v:.1f}")
                           + (f" [{aup_iv[t][p][0]:.1f}, {aup_iv[t][p][1]:.1f}]" if aup_iv else "")
                           for p, v in ((p, d["aup"][t][p]) for p in policies)])
    lines += table(["task"] + [POLICY_TITLES.get(p, p) for p in policies], rows, ["l"] + ["r"] * len(policies))
    m = re.search(r"--plot (\S+)", meta["command"])
    if m and os.path.exists(os.path.join(os.path.dirname(HERE), m.group(1))):
        png = os.path.relpath(os.path.join(os.path.dirname(HERE), m.group(1)), HERE).replace(os.sep, "/")
        lines += ["", f"Accuracy against NFE, one curve per policy (written by the same command): `{m.group(1)}`.", "",
                  f"![accuracy vs NFE]({png})"]
    return lines + [""]


def controller_tau(controller) -> "float | None":
    """The τ a sweep's controller (its path in the repository) was tuned with: its policy.json, when it is here."""
    path = os.path.join(os.path.dirname(HERE), controller or "", "policy.json")
    if not controller or not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f).get("tau")


def render_rounds(runs: list) -> list:
    runs = sorted(runs, key=lambda r: ("--install" not in r["data"]["meta"]["command"].split(),
                                       r["data"]["rounds"][0]["label"]))
    labels = [r["data"]["rounds"][0]["label"] for r in runs]
    tasks = list(runs[0]["data"]["rounds"][0]["test"])
    meta = runs[0]["data"]["meta"]
    lines = ["### PRR controller training: self-evolving rounds, by label kind (test split)", "",
             f"Commit {meta['commit']}, {meta['date']}; {runs[0]['device']}, torch {meta['torch']}. PRR at each "
             "round's controller and validation-chosen (τ, t_max / t_min); accuracy % / mean NFE.", ""]
    for r in runs:
        lines.append(f"- {r['data']['rounds'][0]['label']} labels: `{r['data']['meta']['command']}` "
                     f"(`{r['data']['meta']['output']}`). Data: `{rel(r['path'])}`.")
    lines.append("")
    n = max(len(r["data"]["rounds"]) for r in runs)
    rows = []
    for i in range(n):
        row = [str(i)]
        for r in runs:
            rd = r["data"]["rounds"][i] if i < len(r["data"]["rounds"]) else None
            for t in tasks:
                row.append("–" if rd is None else f"{rd['test'][t]['accuracy']:.1f} / {rd['test'][t]['mean_nfe']:.2f}")
            row.append("–" if rd is None else f"{rd['tau']:g}, {rd['t_max']:g} / {rd['t_min']:g}")
        rows.append(row)
    header = ["round"] + [f"{lab}: {x}" for lab in labels for x in tasks + ["τ, t_max / t_min"]]
    lines += table(header, rows, ["r"] + ["r"] * (len(header) - 1))
    return lines + [""]


# ---------------------------------------------------------------------------------------------------------------
def render(results_dir: str = RESULTS_DIR) -> str:
    runs = load(results_dir)
    steps = sorted((r for r in runs if r["kind"] == "step"), key=lambda r: r["date"])
    newest_step_commit = steps[-1]["data"]["commit"] if steps else None
    devices = {}
    for r in runs:
        devices.setdefault(r["device"], []).append(r)
    order = sorted(devices, key=lambda dev: max(r["date"] for r in devices[dev]), reverse=True)
    out = []
    for dev in order:
        rs = devices[dev]
        out += [f"## {dev}", ""]
        for r in (r for r in rs if r["kind"] == "step"):
            out += render_step(r, newest_step_commit)
        for r in (r for r in rs if r["kind"] == "step_comparison"):
            out += render_comparison(r)
        for r in (r for r in rs if r["kind"] == "bench_step"):
            out += render_bench_step(r)
        cands = [r for r in rs if r["kind"] == "model_candidate"]
        if cands:
            out += render_candidates(cands)
        rounds = [r for r in rs if r["kind"] == "controller_rounds"]
        for r in (r for r in rs if r["kind"] == "policies"):
            out += render_policies(r)
        if rounds:
            out += render_rounds(rounds)
    return "\n".join(out).rstrip("\n") + "\n"


def splice(md: str, body: str) -> str:
    if md.count(BEGIN) != 1 or md.count(END) != 1 or md.index(BEGIN) > md.index(END):
        raise SystemExit(f"render_results: {rel(RESULTS_MD)} must hold the markers once each, in order:\n{BEGIN}\n{END}")
    head, rest = md.split(BEGIN)
    tail = rest.split(END)[1]
    return f"{head}{BEGIN}\n\n{body}\n{END}{tail}"


def load_step(path: str) -> dict:
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"render_results --compare: cannot read {path} ({e})") from None
    if not isinstance(d, dict) or kind_of(d, path) != "step":
        raise SystemExit(f"render_results --compare: {path} is not a run_bench.py (step) result")
    return d


def comparison_lines(old: dict, new: dict, old_name: str, new_name: str) -> list:
    key = lambda r: (r["shape"], r["policy"], r.get("variant"))  # noqa: E731
    o = {key(r): r for r in old["rows"]}
    lines = [f"- {name}: `{p}`: commit {d['commit']}{' (' + d['kernel'] + ')' if d.get('kernel') else ''}, "
             f"{when(d['date'])}, {d['device']}, read bandwidth {d['read_bandwidth_bytes_per_s'] / 1e12:.3f} TB/s"
             for name, p, d in (("old", old_name, old), ("new", new_name, new))] + [""]
    rows = []
    for r in new["rows"]:
        if key(r) not in o:
            continue
        a, b = o[key(r)]["us"], r["us"]
        pol = r["policy"] + (f" [{r['variant']}]" if r.get("variant") else "")
        rows.append([r["shape"], pol, f"{a:.2f}", f"{b:.2f}", f"{(b / a - 1) * 100:+.1f} %"])
    if not rows:
        raise SystemExit(f"render_results: {old_name} and {new_name} share no (shape, policy) row")
    return lines + table(["shape (B, L)", "policy", "old µs", "new µs", "change"], rows, ["l", "l", "r", "r", "r"])


def render_comparison(run: dict) -> list:
    d = run["data"]
    return ([f"### CUDA step, side by side: {d['title']}", "",
             f"Command: `{d['command']}`. Data: `{rel(run['path'])}`.", ""]
            + comparison_lines(d["old"], d["new"], d["old_file"], d["new_file"]) + [""])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help=f"rewrite the marked section of {rel(RESULTS_MD)}")
    g.add_argument("--check", action="store_true", help="exit 1 when the marked section differs from the rendering")
    g.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), help="print two step JSON files side by side")
    ap.add_argument("--save", metavar="JSON", help="with --compare: also write the comparison (both runs) to this file")
    ap.add_argument("--title", default="", help="with --save: what the comparison shows (its table's heading)")
    ap.add_argument("--results", default=RESULTS_DIR, help="folder of the JSON files")
    args = ap.parse_args()
    if (args.save or args.title) and not args.compare:
        ap.error("--save and --title go with --compare")
    if args.save and (os.path.isdir(args.save) or not os.path.isdir(os.path.dirname(os.path.abspath(args.save)))):
        ap.error(f"argument --save: {args.save} is a folder, or its folder does not exist; give a file path")
    if args.compare:
        old_path, new_path = args.compare
        old, new = load_step(old_path), load_step(new_path)
        sys.stdout.write("\n".join(comparison_lines(old, new, old_path, new_path)) + "\n")
        if args.save:
            if not args.title:
                ap.error("--save needs --title (the rendered table's heading)")
            command = " ".join(["python benchmarks/render_results.py"] + [shlex.quote(a) for a in sys.argv[1:]])
            rec = dict(benchmark="step_comparison", title=args.title, command=command, old_file=old_path,
                       new_file=new_path, old=old, new=new)
            with open(args.save, "w") as f:
                json.dump(rec, f, indent=1, ensure_ascii=False)
                f.write("\n")
            print(f"wrote {args.save}")
        return 0
    body = render(args.results)
    if not (args.write or args.check):
        sys.stdout.write(body)
        return 0
    with open(RESULTS_MD) as f:
        md = f.read()
    new = splice(md, body)
    if args.check:
        if new != md:
            print(f"{rel(RESULTS_MD)} is out of date: run python benchmarks/render_results.py --write", file=sys.stderr)
            return 1
        print(f"{rel(RESULTS_MD)} matches {rel(args.results)}")
        return 0
    with open(RESULTS_MD, "w") as f:
        f.write(new)
    print(f"rewrote the rendered section of {rel(RESULTS_MD)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
