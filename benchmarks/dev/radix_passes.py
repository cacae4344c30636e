"""How many histogram passes the CUDA selection's radix select (`radix_cut`) makes, replayed on the host.

The kernel's MSD radix select takes 8 bits of the keys' order bits per pass and stops once the bucket that holds the
c-th key is taken whole. Its first digit starts at the highest bit where the usable keys differ (the min / max of
their order bits), since every key shares the bits above it. This script replays that and, for comparison, a start at
bit 63, on LowConfidence keys (the argmax's probability) of random rows, and prints the mean number of passes:

    python benchmarks/dev/radix_passes.py [blocks]

Rows are normal(0, 3) logits over V = 126464 as in the benchmark, or, for "peaked", with one token raised by 20 or
24 (a confident model's rows: probabilities of about 0.99 and 0.9999, which share many leading bits). Rows whose
probability rounds to exactly 1 tie, and a tie across the boundary is resolved to the exact key (8 passes from bit 63)
either way.
"""
import sys

import numpy as np


def order_bits(keys: np.ndarray) -> list:
    """The kernel's order_bits: unsigned ints that order as the fp64 keys do (-0.0 == +0.0)."""
    u = np.where(keys == 0.0, 0.0, keys).astype(np.float64).view(np.uint64)
    neg = (u >> np.uint64(63)) == 1
    return [int(x) for x in np.where(neg, ~u, u | np.uint64(1 << 63))]


def passes(bits: list, c: int, from_differing_bit: bool) -> int:
    """Passes of radix_cut until the c-th largest key's bucket is taken whole (or every bit is resolved)."""
    top = 63
    if from_differing_bit:
        top = max((min(bits) ^ max(bits)).bit_length() - 1, 7)
    mask = 0 if top == 63 else ((1 << 64) - 1) & ~((1 << (top + 1)) - 1)
    prefix, need, n = min(bits) & mask, c, 0
    for shift in range(top - 7, -8, -8):
        low = max(shift, 0)
        digit_mask = (1 << (shift + 8 - low)) - 1
        hist = np.zeros(256, dtype=np.int64)
        for u in bits:
            if u & mask == prefix:
                hist[(u >> low) & digit_mask] += 1
        n += 1
        above = 0
        for d in range(255, -1, -1):
            if above + hist[d] >= need:
                break
            above += hist[d]
        need, equal = need - above, hist[d]
        prefix |= d << low
        mask |= digit_mask << low
        if need == equal:
            break
    return n


def main() -> None:
    blocks = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    rng = np.random.default_rng(0)
    V = 126464
    for kind in ("random", "peaked"):
        for L in (1024, 256):
            c = L // 4  # the benchmark's k per step (block_length / 4)
            old, new = [], []
            for _ in range(blocks):
                lg = rng.normal(0.0, 3.0, (L, V)).astype(np.float32)
                if kind == "peaked":
                    lg[np.arange(L), rng.integers(0, V, L)] += rng.choice([20.0, 24.0], L).astype(np.float32)
                p1 = 1.0 / np.exp(lg - lg.max(axis=1, keepdims=True)).sum(axis=1)
                bits = order_bits(p1.astype(np.float64))
                old.append(passes(bits, c, False))
                new.append(passes(bits, c, True))
            print(f"{kind:6s} {L:5d} positions, c = {c:3d}: passes from bit 63 {np.mean(old):.2f} (max {max(old)}), "
                  f"from the highest differing bit {np.mean(new):.2f} (max {max(new)})")


if __name__ == "__main__":
    main()
