"""Compare two PTX files function by function (development tool; needs no torch, no GPU).

A refactoring of the CUDA sources that must not change the kernel (moving code between headers, renaming, comments)
should leave every function's PTX as it was. This script says, per function, whether two builds' PTX is the same once
what a refactoring may legitimately change is set aside:

  * line info (.loc, .file, the -lineinfo debug sections) and comments;
  * symbol spelling: mangled names are demangled (c++filt), the translation unit's internal prefixes
    (`_INTERNAL_<hash>::`, `(anonymous namespace)::`) dropped, plus the namespaces given with --strip and the
    identifiers mapped with --rename (types, functions, function-local shared variables) or --raw (unmangled
    symbols, e.g. an extern __shared__ array);
  * virtual register numbers and label names (renumbered in order of appearance within each function).

Everything else counts, including linkage (.visible): ptxas compiles an externally visible kernel differently.
Equal PTX gives equal SASS, hence equal registers and spills (benchmarks/dev/ptxas_report.py checks those too).

    nvcc <the flags setup.py passes> -ptx csrc/cuda/step_cuda.cu -o new.ptx     (and old.ptx from the old tree)
    python benchmarks/dev/ptx_compare.py old.ptx new.ptx --strip prr::gpu:: --rename KParams=KernelArgs

Exit status 0 when every function is the same, 1 otherwise; --show prints the differing lines.
"""
import argparse
import os
import difflib
import re
import sys

from ptxas_report import demangle  # (same folder: this tool runs by path)

FUNC = re.compile(r"^(?:\.visible |\.weak )?\.(?:func|entry)\b[^\n]*?(@\{[^\n]*?\})\(\n.*?^}\n", re.M | re.S)


def canonical(path, strip, renames, raw):
    """(function name -> normalised body, the text outside the functions), both normalised."""
    with open(path) as f:
        s = f.read()
    i = s.find(".section\t.debug")  # -lineinfo: inlined-function names as bytes
    if i >= 0:
        s = s[:i]
    s = re.sub(r"^\s*(?:\.loc|\.file)\b.*\n", "", s, flags=re.M)
    s = re.sub(r"^\s*//.*\n", "", s, flags=re.M)
    tokens = set(re.findall(r"_Z\w+", s))
    base = {t: re.sub(r"_param_\d+$", "", t) for t in tokens}  # <mangled>_param_N
    names = {}
    for m, d in demangle(set(base.values())).items():
        d = re.sub(r"_INTERNAL_\w+?::", "", d).replace("(anonymous namespace)::", "")
        for ns in strip:
            d = d.replace(ns, "")
        for old, new in renames:
            d = re.sub(r"\b" + re.escape(old) + r"\b", new, d)
        names[m] = "@{" + d + "}"
    s = re.sub(r"_Z\w+", lambda t: names[base[t.group(0)]] + t.group(0)[len(base[t.group(0)]):], s)
    for old, new in raw:
        s = re.sub(r"(?<![\w%$])" + re.escape(old) + r"\b", new, s)
    functions = {}
    for m in FUNC.finditer(s):
        body = re.sub(r"\n\s*\n", "\n", m.group(0))
        regs, labels = {}, {}
        body = re.sub(r"%(rd|r|p|f|fd|rs|h|hh|SP|SPL)\d+",
                      lambda t: regs.setdefault(t.group(0), f"%{t.group(1)}#{len(regs)}"), body)
        body = re.sub(r"\$L__\w+", lambda t: labels.setdefault(t.group(0), f"$L#{len(labels)}"), body)
        functions[m.group(1)] = body
    outside = re.sub(r"\n\s*\n", "\n", FUNC.sub("", s))
    return functions, outside


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--strip", action="append", default=[], metavar="NS::", help="namespace prefix to drop")
    ap.add_argument("--rename", action="append", default=[], metavar="OLD=NEW", help="identifier in a mangled name")
    ap.add_argument("--raw", action="append", default=[], metavar="OLD=NEW", help="unmangled symbol")
    ap.add_argument("--show", action="store_true", help="print the differing lines")
    args = ap.parse_args(argv)
    for name, values in (("--rename", args.rename), ("--raw", args.raw)):
        if any("=" not in r for r in values):
            ap.error(f"argument {name}: give OLD=NEW")
    for name in ("old", "new"):
        if not os.path.isfile(getattr(args, name)):
            ap.error(f"argument {name}: {getattr(args, name)} is not a file")
    renames = [tuple(r.split("=", 1)) for r in args.rename]
    raw = [tuple(r.split("=", 1)) for r in args.raw]
    a, a_out = canonical(args.old, args.strip, renames, raw)
    b, b_out = canonical(args.new, args.strip, renames, raw)
    differ = 0
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            status = "only in " + ("old" if name in a else "new")
        else:
            status = "same" if a[name] == b[name] else "DIFFERENT"
        differ += status != "same"
        print(f"{status:10} {name[2:-1]}")
        if args.show and status == "DIFFERENT":
            sys.stdout.writelines(difflib.unified_diff(a[name].splitlines(True), b[name].splitlines(True), n=2))
    if a_out != b_out:
        differ += 1
        print("DIFFERENT  (declarations and globals outside the functions)")
        if args.show:
            sys.stdout.writelines(difflib.unified_diff(a_out.splitlines(True), b_out.splitlines(True), n=2))
    print(f"{len(set(a) | set(b))} functions: " + ("all the same" if not differ else f"{differ} differences"))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
