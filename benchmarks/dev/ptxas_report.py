"""Per-kernel resource table from an nvcc `-Xptxas -v` log (development tool; needs no torch, no GPU).

A change that must leave the kernel's code as it is (a file split, renames, host-side edits) should leave every
kernel instantiation's registers, spills, stack frame and shared memory exactly as they were. This script turns the
ptxas log into a sorted table, one line per kernel and one per out-of-line function it calls, so that two builds
compare with `diff`:

    NVCC_APPEND_FLAGS='-Xptxas -v' python setup.py build_ext --inplace --force > new.log 2>&1
    python benchmarks/dev/ptxas_report.py new.log > new.txt
    python benchmarks/dev/ptxas_report.py old.log > old.txt && diff old.txt new.txt

(or nvcc with the flags setup.py passes plus -Xptxas -v on csrc/cuda/step_cuda.cu alone).

Names are demangled with c++filt when it is on the PATH. The table keeps a function's name and template arguments
and drops its return type, its parameter list and the translation unit's internal prefixes (`_INTERNAL_<hash>::`,
`(anonymous namespace)::`), which change with the file name and the layout. `--strip-ns NS` (repeatable) also drops
namespace qualifiers, for comparing builds whose code moved between namespaces. `--rename OLD=NEW` (repeatable)
maps a renamed function's name before comparing.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys

ENTRY = re.compile(r"Compiling entry function '([^']+)' for '([^']+)'")
PROPS = re.compile(r"Function properties for (\S+)")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"Used (\d+) registers(?:, used (\d+) barriers)?.*?(?:, (\d+) bytes smem)?$")
GMEM = re.compile(r"ptxas info\s*: (\d+) bytes gmem")


def demangle(names):
    """mangled name -> demangled (itself when c++filt is missing)."""
    names = sorted(set(names))
    if not names or shutil.which("c++filt") is None:
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines()))


def short_name(name, strip_ns=(), renames=None):
    """`void ns::f<T, U>(args)` -> `f<T, U>` with the TU-internal prefixes and the given namespaces removed."""
    s = name.strip()
    if s.endswith(")"):  # drop the parameter list: the '(' matching the final ')'
        depth = 0
        for i in range(len(s) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(s[i], 0)
            if depth == 0:
                s = s[:i]
                break
    s = re.sub(r"_INTERNAL_[A-Za-z0-9_]+::", "", s)
    s = s.replace("(anonymous namespace)::", "")
    depth, cut = 0, 0  # drop the return type: everything up to the last space outside <...> and (...)
    for i, ch in enumerate(s):
        depth += {"<": 1, ">": -1, "(": 1, ")": -1}.get(ch, 0)
        if ch == " " and depth == 0:
            cut = i + 1
    s = s[cut:]
    for ns in strip_ns:
        s = s.replace(ns.rstrip(":") + "::", "")
    for old, new in (renames or {}).items():
        s = re.sub(rf"\b{re.escape(old)}\b", new, s)
    return s


def parse(text):
    """[(kernel, function or '', regs, barriers, stack, spill stores, spill loads, smem)] in log order (mangled)."""
    rows, kernel, current = [], None, None
    for line in text.splitlines():
        m = ENTRY.search(line)
        if m:
            kernel = m.group(1)
            continue
        m = PROPS.search(line)
        if m:
            current = {"fn": m.group(1)}
            continue
        m = FRAME.search(line)
        if m and current is not None:
            current.update(stack=int(m.group(1)), st=int(m.group(2)), ld=int(m.group(3)))
            if kernel is not None and current["fn"] != kernel:
                rows.append([kernel, current["fn"], "", "", current["stack"], current["st"], current["ld"], ""])
            continue
        m = USED.search(line)
        if m and kernel is not None and current is not None and current["fn"] == kernel:
            rows.append([kernel, "", int(m.group(1)), int(m.group(2) or 0), current["stack"], current["st"],
                         current["ld"], int(m.group(3) or 0)])
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("log", help="the output of nvcc ... -Xptxas -v (stderr)")
    ap.add_argument("--strip-ns", action="append", default=[], metavar="NS",
                    help="namespace qualifier to drop from every name, e.g. prr_ext (repeatable)")
    ap.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                    help="map a function name before comparing (repeatable)")
    args = ap.parse_args(argv)
    if any("=" not in r for r in args.rename):
        ap.error("argument --rename: give OLD=NEW")
    renames = dict(r.split("=", 1) for r in args.rename)
    if not os.path.isfile(args.log):
        ap.error(f"argument log: {args.log} is not a file")
    with open(args.log) as f:
        text = f.read()
    rows = parse(text)
    if not rows:
        sys.exit(f"{args.log}: no ptxas resource lines (was it compiled with -Xptxas -v?)")
    names = demangle([r[0] for r in rows] + [r[1] for r in rows if r[1]])
    table = []
    for r in rows:
        kernel = short_name(names[r[0]], args.strip_ns, renames)
        fn = short_name(names[r[1]], args.strip_ns, renames) if r[1] else ""
        table.append([kernel, fn] + r[2:])
    table.sort(key=lambda r: (r[0], r[1]))
    head = ["kernel", "function (out of line)", "regs", "barriers", "stack", "spill st", "spill ld", "smem"]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table)]
    for r in [head] + table:
        print("  ".join(str(x).ljust(w) if i < 2 else str(x).rjust(w) for i, (x, w) in enumerate(zip(r, widths)))
              .rstrip())
    gmem = GMEM.findall(text)
    if gmem:
        print(f"global memory (__device__ variables): {' + '.join(gmem)} bytes")


if __name__ == "__main__":
    main()
