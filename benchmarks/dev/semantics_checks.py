"""Two facts docs/semantics.md states about torch, measured here (they are torch's behaviour, not prr_ext's):

1. bf16 confidence: torch's softmax of bf16 logits equals the fp32 softmax of the same logits rounded to bf16
   (round-to-nearest-even), which is how the op computes a bf16 confidence. Counted over every value of random rows.
2. ties in torch.topk: LLaDA selects with topk; on tied confidences, does topk return the lowest-index set (what a
   stable sort, and prr_ext, return)? Counted over random tie-heavy cases.

    python benchmarks/dev/semantics_checks.py [--device cpu|cuda] [--rows 64] [--cases 2000] [--seed 0]

Prints one line per check; docs/semantics.md quotes them with the device they ran on.
"""
from __future__ import annotations

import argparse

import torch


def bf16_softmax_mismatches(rows: int, vocab: int, device: str, gen: torch.Generator) -> tuple:
    """(mismatching values, values) between softmax(bf16 logits) and softmax(fp32 of them) rounded to bf16."""
    logits = (torch.randn(rows, vocab, generator=gen) * 4).to(device=device, dtype=torch.bfloat16)
    ours = torch.softmax(logits.float(), dim=-1).to(torch.bfloat16)
    theirs = torch.softmax(logits, dim=-1)
    return int((ours.view(torch.int16) != theirs.view(torch.int16)).sum()), ours.numel()


def topk_tie_cases(cases: int, device: str, gen: torch.Generator) -> tuple:
    """(cases where topk's set differs from the lowest-index set of the k largest, cases with a tie at the cut)."""
    differ = tied = 0
    for _ in range(cases):
        n = int(torch.randint(8, 65, (1,), generator=gen))
        k = int(torch.randint(1, n, (1,), generator=gen))
        conf = torch.randint(0, 4, (n,), generator=gen).float().div(4).to(device)  # 4 distinct values: many ties
        ranked = torch.sort(conf, descending=True, stable=True).indices  # ties: lowest index first
        tied += bool(conf[ranked[k - 1]] == conf[ranked[k]])
        differ += set(torch.topk(conf, k).indices.tolist()) != set(ranked[:k].tolist())
    return differ, tied


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rows", type=int, default=64, help="rows of V = 126464 bf16 logits for check 1")
    ap.add_argument("--cases", type=int, default=2000, help="random tie cases for check 2")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(args.seed)
    bad, total = bf16_softmax_mismatches(args.rows, 126464, args.device, gen)
    print(f"bf16 softmax ({args.device}, torch {torch.__version__}): {bad} of {total} values differ from the fp32 "
          "softmax rounded to bf16")
    differ, tied = topk_tie_cases(args.cases, args.device, gen)
    print(f"topk ties ({args.device}): in {differ} of {args.cases} cases ({tied} with a tie at the cut) topk did not "
          "pick the lowest-index set")


if __name__ == "__main__":
    main()
