"""Sampling at temperature T > 0 draws candidates from softmax(logits / T) over the non-mask tokens.

The CPU op, the CUDA op and the reference share one Philox + Gumbel-max construction, so the parity tests would
pass a mistake all three make (a wrong temperature, a biased uniform, the mask token drawn). These tests compare
the drawn candidates' frequencies with the target distribution itself: a chi-square statistic over many independent
draws (every block position of every row has its own Philox counter and seed) against a bound that a correct
sampler exceeds with probability below 1e-6, and the same statistic against a wrong distribution (the temperature
off by 30%), which must exceed the bound: the test can tell them apart.
"""
from __future__ import annotations

import math

import pytest
import torch

import prr_ext
from prr_ext import reference as R

CUDA = torch.cuda.is_available() and prr_ext.has_cuda_kernels()
DRAWS_PER_STEP = (64, 256)  # B rows x G masked block positions: 16384 draws per step


def chi2_bound(df: int, z: float = 5.0) -> float:
    """Wilson-Hilferty upper quantile of chi-square(df) at z standard deviations (z = 5: p ~ 3e-7)."""
    h = 2.0 / (9.0 * df)
    return df * (1.0 - h + z * math.sqrt(h)) ** 3


def chi2(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    assert bool((expected >= 5).all()), "bins too small for the chi-square approximation"
    return float(((counts - expected) ** 2 / expected).sum())


def target(row: torch.Tensor, mask_id: int, T: float, bins: torch.Tensor) -> torch.Tensor:
    """softmax(row / T) without the mask token (never a candidate), summed into `bins` (a bin index per token)."""
    scaled = row.double() / T
    scaled[mask_id] = -math.inf
    p = torch.softmax(scaled, 0)
    return torch.zeros(int(bins.max()) + 1, dtype=torch.float64).index_add_(0, bins, p)


def draw(row: torch.Tensor, mask_id: int, T: float, steps: int, seed_gen: torch.Generator, device: str,
         backend: str) -> torch.Tensor:
    """Candidates drawn at T from the same logits row at every masked position, one fresh State per step (fresh
    per-row seeds): [steps * B * G] tokens."""
    B, G = DRAWS_PER_STEP
    out = []
    for _ in range(steps):
        x = torch.full((B, 1 + G), mask_id, dtype=torch.int64)
        x[:, 0] = (mask_id + 1) % row.numel()
        seed = torch.randint(0, 2 ** 62, (B,), generator=seed_gen, dtype=torch.int64)
        st = prr_ext.State(x.to(device), mask_id=mask_id, prompt_length=1, block_length=G, steps=G,
                           policy=prr_ext.LowConfidence(), temperature=T, seed=seed)
        logits = row.to(device).expand(B, 1 + G, row.numel())
        if backend == "reference":
            _, tokens, _ = R.step(logits, st)
        else:
            prr_ext.step(logits, st)
            tokens = st.last_tokens
        out.append(tokens[:, 1:].reshape(-1).cpu())
    return torch.cat(out)


def frequency_case(rnd, V: int, dtype: torch.dtype):
    """A logits row, its mask id and the bins: tokens one by one for a small vocabulary; for a large one, the 12
    likeliest tokens one by one and the rest in one bin."""
    mask_id = rnd.int(0, V - 1)
    row = rnd.randn(V).float()
    if V > 64:  # a peaked row: 12 tokens carry most of the mass, each far more than the rest together / 12
        row = row * 0.5
        # 12 distinct tokens other than the mask: a repeated or masked one would leave a near-empty bin among the
        # 12 likeliest (the chi-square approximation's precondition then fails)
        others = torch.randperm(V - 1, generator=rnd.generator())[:12]
        top = others + (others >= mask_id).to(torch.int64)
        row[top] = math.log(V) + 1.0 + rnd.rand(12).float()
    row = row.to(dtype)
    bins = torch.full((V,), 0, dtype=torch.int64)
    if V <= 64:
        bins = torch.arange(V)
    else:
        order = row.float().argsort(descending=True)
        order = order[order != mask_id]
        bins[order[:12]] = torch.arange(1, 13)
    return row, mask_id, bins


CASES = [(12, torch.float32, 0.7), (12, torch.bfloat16, 1.6), (5000, torch.float32, 1.3), (5000, torch.bfloat16, 0.8)]


def pool_rare_bins(counts: torch.Tensor, right: torch.Tensor, wrong: torch.Tensor):
    """Merge the least likely bins (under `right`) into one until it expects >= 5 draws, the chi-square
    approximation's precondition: a random small-vocabulary row can hold a token too unlikely to bin alone."""
    n = float(counts.sum())
    order = right.argsort()
    rare = int((torch.cumsum(right[order], 0) * n < 5).sum()) + 1  # the smallest prefix that reaches 5
    if rare <= 1:
        return counts, right, wrong
    pool, rest = order[:rare], order[rare:]
    return tuple(torch.cat([t[rest], t[pool].sum().reshape(1)]) for t in (counts, right, wrong))


def check_frequencies(rnd, V, dtype, T, device, backend, steps=4):
    row, mask_id, bins = frequency_case(rnd, V, dtype)
    tokens = draw(row, mask_id, T, steps, rnd.generator(), device, backend)
    assert not bool((tokens == mask_id).any()), "the mask token was drawn"
    assert bool(((tokens >= 0) & (tokens < V)).all())
    counts = torch.bincount(bins[tokens], minlength=int(bins.max()) + 1).to(torch.float64)
    right = target(row.float(), mask_id, T, bins)  # the logits as the op reads them (bf16 values widened exactly)
    wrong = target(row.float(), mask_id, 1.3 * T, bins)
    keep = right > 0
    counts, right, wrong = pool_rare_bins(counts[keep], right[keep], wrong[keep])
    df = counts.numel() - 1
    bound = chi2_bound(df)
    stat = chi2(counts, right)
    assert stat < bound, f"{backend} on {device}: chi2 {stat:.1f} >= {bound:.1f} (df {df}), V={V} {dtype} T={T}"
    # power: the same draws are far from the distribution at 1.3 T
    assert chi2(counts, wrong / wrong.sum()) > bound, "the test cannot tell T from 1.3 T"


@pytest.mark.parametrize("V,dtype,T", CASES)
def test_cpu_op_samples_softmax_over_temperature(rnd, V, dtype, T):
    check_frequencies(rnd, V, dtype, T, "cpu", "op")


@pytest.mark.parametrize("V,dtype,T", CASES[:2])
def test_reference_samples_softmax_over_temperature(rnd, V, dtype, T):
    check_frequencies(rnd, V, dtype, T, "cpu", "reference", steps=2)


@pytest.mark.skipif(not CUDA, reason="needs a GPU and the CUDA kernels")
@pytest.mark.parametrize("V,dtype,T", CASES + [(126464, torch.bfloat16, 1.0)])
def test_cuda_op_samples_softmax_over_temperature(rnd, V, dtype, T):
    check_frequencies(rnd, V, dtype, T, "cuda", "op")
