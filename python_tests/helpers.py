"""Shared utilities of the prr_ext tests: random inputs, state construction, and the op-vs-reference comparison.

The central helper is `assert_step_matches(op_state, ref_state, logits)`: it runs `prr_ext.step` on one state and
`prr_ext.reference.step` on an identical copy, then checks that both commit exactly the same positions and tokens,
leave identical canvases and counters, and report the same per-token statistics within fp32 tolerance (NaN where
the other has NaN). `run_decode_loop` repeats it until the state is done.

Inputs are never zeros: logits are drawn from a seeded generator (see conftest.py's `rnd` fixture).
"""
from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

import prr_ext
from prr_ext import reference as R

LOGITS_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
CONF_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
LAYOUTS = ("contiguous", "transposed", "sliced")
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}

# per-token statistics: fp32 math in both implementations, different summation orders
STATS_RTOL, STATS_ATOL = 1e-5, 1e-6


# ---------------------------------------------------------------------------------------------------------------
# Random numbers
# ---------------------------------------------------------------------------------------------------------------
class Rand:
    """A seeded source of random draws (a torch.Generator with conveniences)."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.g = torch.Generator().manual_seed(self.seed)

    def int(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi] (inclusive)."""
        return int(torch.randint(lo, hi + 1, (1,), generator=self.g))

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=self.g, dtype=torch.float64))

    def coin(self, p: float = 0.5) -> bool:
        return float(torch.rand((), generator=self.g, dtype=torch.float64)) < p

    def choice(self, seq: Sequence):
        return seq[self.int(0, len(seq) - 1)]

    def randn(self, *shape, dtype=torch.float64) -> torch.Tensor:
        return torch.randn(*shape, generator=self.g, dtype=dtype)

    def rand(self, *shape, dtype=torch.float64) -> torch.Tensor:
        return torch.rand(*shape, generator=self.g, dtype=dtype)

    def randint(self, lo: int, hi: int, shape) -> torch.Tensor:
        """int64 tensor uniform in [lo, hi) (exclusive, like torch.randint)."""
        return torch.randint(lo, hi, tuple(shape), generator=self.g)

    def seed_tensor(self, n: int) -> torch.Tensor:
        return torch.randint(0, 2 ** 62, (n,), generator=self.g, dtype=torch.int64)

    def generator(self) -> torch.Generator:
        """A fresh torch.Generator seeded from this stream."""
        return torch.Generator().manual_seed(self.int(0, 2 ** 62))


def clone_generator(g: Optional[torch.Generator]) -> Optional[torch.Generator]:
    if g is None:
        return None
    new = torch.Generator(device=g.device)
    new.set_state(g.get_state())
    return new


# ---------------------------------------------------------------------------------------------------------------
# Shapes, canvases, states
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Shape:
    B: int
    P: int
    G: int
    BL: int
    steps: int
    V: int
    mask_id: int

    @property
    def L(self) -> int:
        return self.P + self.G

    @property
    def num_blocks(self) -> int:
        return self.G // self.BL


def random_shape(rnd: Rand, *, block_lengths=(1, 3, 8, 32), vocabs=(7, 33, 1000), max_B: int = 5,
                 max_steps: int = 32) -> Shape:
    """Odd, tile-unaligned shapes: B in 1..max_B, odd prompt lengths, block_length in `block_lengths`, steps per
    block with a remainder (or more steps than slots), V from `vocabs`, mask_id anywhere in [0, V)."""
    BL = rnd.choice(block_lengths)
    nb = rnd.int(1, max(1, min(4, 48 // BL)))
    S = rnd.choice([1, BL, BL // 2 + 1, BL + 2, rnd.int(1, BL)])  # remainders, k = 0 steps (S > BL), one-shot
    S = max(1, min(S, max_steps // nb))
    V = rnd.choice(vocabs)
    B = rnd.int(1, max_B if V < 1000 else min(max_B, 3))
    return Shape(B=B, P=rnd.choice([0, 1, 3, 5, 7, 13]), G=BL * nb, BL=BL, steps=S * nb, V=V,
                 mask_id=rnd.int(0, V - 1))


def non_mask_tokens(rnd: Rand, shape, V: int, mask_id: int) -> torch.Tensor:
    """Random token ids in [0, V) other than mask_id."""
    t = rnd.randint(0, V - 1, shape)
    return t + (t >= mask_id).to(torch.int64)


def make_canvas(rnd: Rand, s: Shape, *, ragged: Optional[bool] = None, prefill: Optional[float] = None):
    """(x [B, P+G] int64, prompt_length): prompts of random non-mask tokens, the generation region masked.

    ragged: per-row prompt lengths as a [B] tensor (left padding, the longest = P) instead of an int.
    prefill: fraction of generation slots already filled with non-mask tokens (whole blocks may end up full;
             every row keeps at least one mask).
    """
    ragged = rnd.coin() if ragged is None else ragged
    prefill = (rnd.choice([0.0, 0.0, 0.3, 0.7])) if prefill is None else prefill
    x = non_mask_tokens(rnd, (s.B, s.L), s.V, s.mask_id)
    gen = x[:, s.P:]
    keep = rnd.rand(s.B, s.G) < prefill
    keep[torch.arange(s.B), rnd.randint(0, s.G, (s.B,))] = False  # every row keeps at least one mask
    gen[~keep] = s.mask_id
    if ragged and s.B > 0:
        lens = rnd.randint(0, s.P + 1, (s.B,))
        lens[rnd.int(0, s.B - 1)] = s.P
        return x, lens
    return x, s.P


def make_state(rnd: Rand, x: torch.Tensor, s: Shape, prompt_length, policy, *, temperature: float = 0.0,
               confidence_dtype=torch.float32, rng: str = "philox") -> prr_ext.State:
    """A State with random per-row Philox seeds (rng="philox") or a fresh generator (rng="torch")."""
    kw = dict(temperature=temperature, confidence_dtype=confidence_dtype, rng=rng)
    if rng == "torch":
        kw["generator"] = rnd.generator()
    else:
        kw["seed"] = rnd.seed_tensor(x.shape[0])
    return prr_ext.State(x, s.mask_id, prompt_length, s.BL, s.steps, policy, **kw)


def clone_for_reference(state: prr_ext.State) -> prr_ext.State:
    """A deep copy whose torch generator (rng="torch") is an independent copy at the same position."""
    new = state.clone()
    new.generator = clone_generator(state.generator)
    return new


def block_cap(state) -> int:
    return R.block_cap(state)


# ---------------------------------------------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------------------------------------------
POLICY_NAMES = ("low_confidence", "random", "threshold", "factor", "factor_paper", "entropy_bound",
                "prr_temperature", "prr_temperature_nounion", "prr_power", "prr_power_nounion",
                "prr_weighted", "prr_weighted_nounion", "prr_scores", "prr_extra",
                "local_leap", "slow_fast", "klass", "r2_threshold", "r2_factor", "r2_prr", "r2_slow_fast")
# The rules whose commits are not a prefix of the candidates ranked by key (prr/rules.h).
SET_RULE_NAMES = ("local_leap", "slow_fast", "klass", "r2_threshold", "r2_factor", "r2_prr", "r2_slow_fast")


def random_r2(rnd: "Rand", base) -> "prr_ext.R2":
    """R²'s passes with random settings (each pass on or off) on top of `base`."""
    return prr_ext.R2(base=base, window=rnd.choice([None, 1, 2, 3, 5]), window_unmasked=rnd.choice([None, 0, 1, 2]),
                      spatial_threshold=rnd.uniform(0.05, 0.9),
                      token_cluster=rnd.choice([None, "confidence", "mid", "random"]),
                      token_cluster_size=rnd.int(2, 3), temporal_steps=rnd.choice([None, 1, 2, 3]),
                      temporal_threshold=rnd.uniform(0.05, 0.9), temporal_eval=rnd.choice(["last", "ave", "max"]))


def random_controller(rnd: Rand, extra_features: int = 0, *, position_blind: bool = False) -> prr_ext.Controller:
    """An untrained controller with non-trivial feature normalisation, scores spread over (0, 1) and a random
    temperature map. position_blind: zero input weights for the features that differ between positions holding
    identical logits rows (position in block, steps since the argmax changed, previous top-1 prob, the extra
    features), so such positions get bitwise-identical scores: exact key ties."""
    base = prr_ext.Controller.init(seed=rnd.int(0, 10 ** 6), hidden=rnd.choice([(16,), (32, 32), (8, 5), (64,)]),
                                   extra_features=extra_features)
    t = dict(base.tensors)
    F = base.in_features
    t["in_mean"] = (rnd.randn(F) * 0.3).float()
    t["in_std"] = (rnd.rand(F) * 1.5 + 0.5).float()
    t["w_out"] = t["w_out"] * 6.0
    if position_blind:
        t["w0"] = t["w0"].clone()
        t["w0"][:, [5, 11, 12] + list(range(13, F))] = 0.0
    return prr_ext.Controller(t, extra_features=extra_features, t_max=rnd.uniform(1.0, 2.5),
                              t_min=rnd.uniform(0.1, 0.9))


def make_policy(name: str, rnd: Rand, *, tie_heavy: bool = False):
    """(policy, step_inputs): step_inputs(state, Lr) -> kwargs of prr_ext.step (scores / extra_features) or None.

    tie_heavy: for inputs with exact duplicate logits rows, make PRR's keys exact ties too (rather than keys of
    nearby positions agreeing to within a few ulps, which may order either way between two correct
    implementations): a position-blind controller, external scores drawn from a pool of 3 values, extra features
    equal at every position."""
    if name == "low_confidence":
        return prr_ext.LowConfidence(), None
    if name == "random":
        return prr_ext.RandomRemask(), None
    if name == "threshold":
        return prr_ext.Threshold(tau=rnd.uniform(0.05, 0.95)), None
    if name == "factor":
        return prr_ext.Factor(f=rnd.uniform(0.2, 3.0)), None
    if name == "factor_paper":
        return prr_ext.Factor(f=rnd.uniform(0.2, 3.0), variant="paper"), None
    if name == "local_leap":
        tau = rnd.uniform(0.1, 0.95)
        return prr_ext.LocalLeap(tau=tau, relaxed_tau=tau * rnd.uniform(0.2, 1.0), radius=rnd.int(0, 5)), None
    if name in ("slow_fast", "r2_slow_fast"):
        pol = prr_ext.SlowFast(explore_steps=rnd.int(1, 4), span_threshold=rnd.uniform(0.05, 0.6),
                               stability_window=rnd.int(1, 3), stability_std=rnd.uniform(0.0, 2.0),
                               fill_threshold=rnd.uniform(0.1, 0.95))
        return (pol if name == "slow_fast" else random_r2(rnd, pol)), None
    if name == "klass":
        return prr_ext.KLASS(conf_threshold=rnd.uniform(0.05, 0.9), kl_threshold=rnd.uniform(0.0, 3.0),
                             history=rnd.int(1, 3)), None
    if name == "r2_threshold":
        return random_r2(rnd, prr_ext.Threshold(tau=rnd.uniform(0.3, 0.99))), None
    if name == "r2_factor":
        return random_r2(rnd, prr_ext.Factor(f=rnd.uniform(0.2, 3.0))), None
    if name == "r2_prr":
        return random_r2(rnd, prr_ext.PRR(random_controller(rnd, position_blind=tie_heavy),
                                          tau=rnd.uniform(0.2, 0.9))), None
    if name == "entropy_bound":
        return prr_ext.EntropyBound(gamma=rnd.uniform(0.0, 2.5)), None
    assert name.startswith("prr_"), name
    union = not name.endswith("_nounion")
    shaping = name.split("_")[1]
    if shaping in ("scores", "extra"):
        shaping = rnd.choice(["temperature", "power", "weighted"])
        union = rnd.coin()
    n_extra = rnd.int(1, 4) if name == "prr_extra" else 0
    pol = prr_ext.PRR(random_controller(rnd, n_extra, position_blind=tie_heavy), tau=rnd.uniform(0.2, 0.9),
                      shaping=shaping, union_schedule=union, alpha=rnd.uniform(0.0, 1.0))
    if name == "prr_scores":
        pool = rnd.rand(3).clamp(0.05, 0.95).float()

        def step_inputs(state, Lr):
            if tie_heavy:
                return {"scores": pool[rnd.randint(0, 3, (state.x.shape[0], Lr))]}
            dt = rnd.choice([torch.float32, torch.float64, torch.bfloat16])
            return {"scores": rnd.rand(state.x.shape[0], Lr).clamp(1e-3, 1 - 1e-3).to(dt)}
        return pol, step_inputs
    if name == "prr_extra":
        def step_inputs(state, Lr):
            B = state.x.shape[0]
            if tie_heavy:
                return {"extra_features": rnd.randn(B, 1, n_extra).float().expand(B, Lr, n_extra)}
            return {"extra_features": rnd.randn(B, Lr, n_extra).float()}
        return pol, step_inputs
    return pol, None


# ---------------------------------------------------------------------------------------------------------------
# Logits
# ---------------------------------------------------------------------------------------------------------------
def normal_logits(rnd: Rand, B: int, Lr: int, V: int, mask_id: int, *, mask_mode: str = "any") -> torch.Tensor:
    """fp64 [B, Lr, V]: normal(0, scale) with a peaked token in about half of the rows (so confidences cover the
    whole (0, 1) range). mask_mode: "any" (the mask logit is just another draw), "low" (min - 30: never the argmax,
    never sampled) or "max" (max + 1: the largest logit of every row)."""
    scale = rnd.uniform(0.5, 4.0)
    lg = rnd.randn(B, Lr, V) * scale
    peak = rnd.randint(0, V, (B, Lr))
    bonus = rnd.rand(B, Lr) * 12.0 * (rnd.rand(B, Lr) < 0.5)
    lg.scatter_add_(-1, peak[..., None], bonus[..., None])
    return set_mask_logit(lg, mask_id, mask_mode)


def set_mask_logit(lg: torch.Tensor, mask_id: int, mask_mode: str) -> torch.Tensor:
    if mask_mode == "low":
        lg[..., mask_id] = lg.amin(-1) - 30.0
    elif mask_mode == "max":
        lg[..., mask_id] = lg.amax(-1) + 1.0
    else:
        assert mask_mode == "any", mask_mode
    return lg


def rounding_midpoint_distance(p: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Relative distance of fp64 values p > 0 to the nearest rounding midpoint of `dtype` (bf16 / fp16); +inf for
    other dtypes (no rounding beyond fp32/fp64)."""
    if dtype not in (torch.bfloat16, torch.float16):
        return torch.full_like(p, math.inf)
    mant, emin = (8, -126) if dtype == torch.bfloat16 else (11, -14)
    p = p.double()
    e = torch.floor(torch.log2(p.clamp_min(1e-300))).clamp_min(emin)
    ulp = torch.exp2(e - (mant - 1))
    q = p / ulp
    d = (q - torch.floor(q) - 0.5).abs() * ulp / p
    return torch.where(p > 0, d, torch.full_like(p, math.inf))


def near_rounding_midpoint(p: torch.Tensor, dtype: torch.dtype, rel: float = 1e-5) -> torch.Tensor:
    """True where rounding p (computed in fp32 by two implementations with different summation orders) to `dtype`
    could go either way."""
    return rounding_midpoint_distance(p, dtype) <= rel


def tie_pool(rnd: Rand, n: int, V: int, conf_dtype: torch.dtype = torch.float32, mask_id: int = 0,
             mask_mode: str = "any") -> torch.Tensor:
    """n distinct fp64 logits rows with small-integer values (many equal values within a row: argmax ties).

    Rows are re-drawn until (a) no probability or entropy of one row is within 1e-6 (relative) of a value of another
    row -- distinct rows whose values coincide mathematically (permutations, shifted count vectors) are computed
    in different summation orders by the op and the reference and could then order either way -- and (b) no token
    probability lies within 1e-5 of a rounding midpoint of conf_dtype. Exact duplicates of a row (drawn later from
    the pool) give bitwise-equal statistics in both implementations: exact ties. mask_mode: see set_mask_logit."""
    rows: list = []
    for _ in range(20000):
        if len(rows) == n:
            return torch.stack(rows)
        levels, step = rnd.int(2, 5), rnd.choice([1.0, 2.0, 3.0])
        row = set_mask_logit(rnd.randint(0, levels, (V,)).double() * step, mask_id, mask_mode)
        p = torch.softmax(row, -1)
        if near_rounding_midpoint(p, conf_dtype).any():
            continue
        h = -(p * p.log()).sum()
        pu = p.unique()
        ok = True
        for other in rows:
            po = torch.softmax(other, -1)
            ho = -(po * po.log()).sum()
            close = ((pu[:, None] - po.unique()[None, :]).abs() <= 1e-6 * pu[:, None]).any()
            if close or abs(float(h - ho)) <= 1e-6 * max(1.0, float(h)):
                ok = False
                break
        if ok:
            rows.append(row)
    raise RuntimeError("could not draw a tie pool")


class LogitsMaker:
    """Draws the logits of each step: fp64 master values -> dtype -> memory layout.

    kind:   "normal" (normal_logits) or "ties" (rows drawn from a small pool of distinct small-integer rows).
    layout: "contiguous"; "transposed" (a [B, V, Lr] buffer viewed as [B, Lr, V]: stride 1 not in V, the wrapper
            copies); "sliced" (every other row and an inner column window of a NaN-filled buffer: unit stride in V
            but arbitrary row/batch strides and an offset, which the op reads directly; a read outside the view hits
            NaN and changes the result).
    block_only: logits of the active block only, [B, block_length, V].
    """

    def __init__(self, rnd: Rand, V: int, mask_id: int, dtype=torch.float32, *, kind: str = "normal",
                 layout: str = "contiguous", block_only: bool = False, mask_mode: str = "any",
                 conf_dtype=torch.float32, pool_size: Optional[int] = None):
        self.rnd, self.V, self.mask_id, self.dtype = rnd, V, mask_id, dtype
        self.kind, self.layout, self.block_only, self.mask_mode = kind, layout, block_only, mask_mode
        self.pool = (tie_pool(rnd, pool_size or rnd.int(2, 4), V, conf_dtype, mask_id, mask_mode) if kind == "ties"
                     else None)

    def rows(self, state) -> int:
        return state.block_length if self.block_only else state.x.shape[1]

    def values(self, B: int, Lr: int) -> torch.Tensor:
        if self.kind == "ties":
            idx = self.rnd.randint(0, self.pool.shape[0], (B, Lr))
            return self.pool[idx].clone()
        return normal_logits(self.rnd, B, Lr, self.V, self.mask_id, mask_mode=self.mask_mode)

    def finish(self, master: torch.Tensor) -> torch.Tensor:
        return apply_layout(master.to(self.dtype), self.layout)

    def __call__(self, state) -> torch.Tensor:
        return self.finish(self.values(state.x.shape[0], self.rows(state)))


def apply_layout(lg: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout (see LogitsMaker)."""
    B, Lr, V = lg.shape
    if layout == "contiguous":
        return lg.contiguous()
    if layout == "transposed":
        out = lg.transpose(1, 2).contiguous().transpose(1, 2)
        assert Lr == 1 or out.stride(-1) != 1
        return out
    if layout == "sliced":
        buf = torch.full((B, 2 * Lr + 1, V + 5), math.nan, dtype=lg.dtype)
        view = buf[:, 1::2, 2:V + 2]
        view.copy_(lg)
        assert view.stride(-1) == 1 and view.storage_offset() > 0 and (B * Lr == 1 or not view.is_contiguous())
        return view
    raise ValueError(layout)


# ---------------------------------------------------------------------------------------------------------------
# rng="torch": the wrapper's draws, replayed for the reference from an independent copy of the generator
# ---------------------------------------------------------------------------------------------------------------
def torch_rng_draws(state, logits: torch.Tensor):
    """(candidates, random_conf) that prr_ext.step draws from state.generator when rng="torch" (LLaDA's order: the
    fp64 Gumbel noise rand_like(logits) first, then rand([B, Lr]) for RandomRemask); (None, None) otherwise."""
    if state.rng != "torch":
        return None, None
    cand = rconf = None
    B, Lr = logits.shape[:2]
    if state.temperature > 0:
        u = torch.rand(logits.shape, dtype=torch.float64, generator=state.generator)
        g = logits.to(torch.float64).exp() / (-torch.log(u)) ** state.temperature
        g[..., state.mask_id] = -1.0
        cand = g.argmax(-1)
    if state.policy.code == prr_ext.policies.POLICY_RANDOM:
        rconf = torch.rand((B, Lr), generator=state.generator)
    return cand, rconf


def reference_step(logits, state, **kw):
    """prr_ext.reference.step, with the rng="torch" draws replayed from state.generator."""
    cand, rconf = torch_rng_draws(state, logits)
    return R.step(logits, state, candidates=cand, random_conf=rconf, **kw)


# ---------------------------------------------------------------------------------------------------------------
# Comparisons
# ---------------------------------------------------------------------------------------------------------------
def assert_states_equal(a, b, when: str = "") -> None:
    assert torch.equal(a.x, b.x), f"canvas differs {when}:\n{a.x}\n{b.x}"
    assert torch.equal(a.row_state, b.row_state), f"row_state differs {when}:\n{a.row_state}\n{b.row_state}"
    assert torch.equal(a.traj, b.traj), f"trajectory state differs {when}"
    torch.testing.assert_close(a.prev_p1, b.prev_p1, rtol=STATS_RTOL, atol=STATS_ATOL, msg=f"prev_p1 differs {when}")
    # the rules' memory: streak tokens and counts exactly, the fp32 sums of probabilities within tolerance
    torch.testing.assert_close(a.rule_state, b.rule_state, rtol=STATS_RTOL, atol=STATS_ATOL,
                               msg=f"rule_state differs {when}")
    assert a.prev_logp.shape == b.prev_logp.shape, f"prev_logp shapes differ {when}"
    torch.testing.assert_close(a.prev_logp, b.prev_logp, rtol=STATS_RTOL, atol=STATS_ATOL,
                               msg=f"prev_logp differs {when}")


def active_block_bounds(state):
    """(block index, lo, hi) of the block the next step works on (hi = lo = -1 when done)."""
    blk = state.active_block
    if blk >= state.num_blocks:
        return blk, -1, -1
    lo = state.gen_start + blk * state.block_length
    return blk, lo, lo + state.block_length


def check_commit_invariants(state, x_before: torch.Tensor, commit: torch.Tensor, V: int, lo: int, hi: int) -> None:
    """What every step must satisfy whatever the policy and inputs: only masked positions of the active block
    commit, a committed token is a real token (in [0, V), never mask_id), nothing else in x changes."""
    B, L = x_before.shape
    assert commit.dtype == torch.bool and tuple(commit.shape) == (B, L)
    was_masked = torch.ones_like(commit) if state.uniform else x_before == state.mask_id  # uniform: all open
    assert not (commit & ~was_masked).any(), "committed a position that was not masked"
    cols = torch.arange(L)
    in_block = (cols >= lo) & (cols < hi)
    assert not (commit & ~in_block[None, :]).any(), f"committed outside the active block [{lo}, {hi})"
    new = state.x[commit]
    assert ((new >= 0) & (new < V) & (new != state.mask_id)).all(), f"committed invalid tokens {new.tolist()}"
    assert torch.equal(state.x[~commit], x_before[~commit]), "x changed at a position that was not committed"


def assert_stats_close(stats: torch.Tensor, ref: torch.Tensor, logits: torch.Tensor, ctx: str = "") -> None:
    """Per-token statistics within fp32 tolerance, NaN exactly where the reference has NaN. The entropy's absolute
    tolerance scales with the largest |logit|: an fp32 log-softmax carries an absolute error of about
    ulp(logsumexp), which the reference's -sum p log p inherits."""
    lmax = float(torch.nan_to_num(logits.float(), 0.0, 0.0, 0.0).abs().max()) if logits.numel() else 0.0
    ent_atol = 8 * torch.finfo(torch.float32).eps * max(1.0, lmax)
    H = R.STAT_ENTROPY
    others = [c for c in range(R.NUM_STATS) if c != H]
    torch.testing.assert_close(stats[..., others], ref[..., others], rtol=STATS_RTOL, atol=STATS_ATOL, equal_nan=True,
                               msg=lambda m: f"stats (columns {others}) differ {ctx}: {m}")
    torch.testing.assert_close(stats[..., H], ref[..., H], rtol=STATS_RTOL, atol=ent_atol, equal_nan=True,
                               msg=lambda m: f"entropies differ {ctx}: {m}")


def assert_step_matches(op_state, ref_state, logits: torch.Tensor, *, scores=None, extra_features=None,
                        context: str = "", near_tie_rel: Optional[float] = None):
    """One step of the op on op_state and of the reference on ref_state (identical states): exact equality of the
    commit mask, candidate tokens, canvas and counters; statistics within fp32 tolerance, NaN where NaN.
    Returns the commit mask.

    near_tie_rel: accept commit masks that differ only by positions whose reference keys lie within this relative
    distance of the reference's commit boundary (same count), then copy the op's state into ref_state. For inputs
    with exact key ties where the reference's keys carry ulp noise (see test_step_cpu.py's tie test); never the
    default."""
    assert_states_equal(op_state, ref_state, f"before the step {context}")
    x_before = op_state.x.clone()
    _, lo, hi = active_block_bounds(op_state)
    commit = prr_ext.step(logits, op_state, scores=scores, extra_features=extra_features)
    c_ref, t_ref, s_ref = reference_step(logits, ref_state, scores=scores, extra_features=extra_features)
    ctx = f"{context} [block [{lo}, {hi}), row_state before/after {op_state.row_state.tolist()}]"
    assert torch.equal(op_state.last_tokens, t_ref), f"tokens differ {ctx}:\n{op_state.last_tokens}\n{t_ref}"
    assert_stats_close(op_state.last_stats, s_ref, logits, ctx)
    if not torch.equal(commit, c_ref):
        rows = (commit != c_ref).any(1).nonzero().flatten().tolist()
        detail = "".join(f"\nrow {b}: op key {op_state.last_stats[b, :, R.STAT_KEY].tolist()}\n"
                         f"       ref key {s_ref[b, :, R.STAT_KEY].tolist()}" for b in rows[:2])
        msg = f"commit mask differs {ctx}:\nop  {commit.int()}\nref {c_ref.int()}{detail}"
        if near_tie_rel is None:
            raise AssertionError(msg)
        off = 0 if logits.shape[1] == op_state.x.shape[1] else lo  # canvas column of logits row 0
        for b in rows:
            assert int(commit[b].sum()) == int(c_ref[b].sum()), msg
            keys = s_ref[b, :, R.STAT_KEY].double()
            boundary = float(keys[c_ref[b, off:off + keys.numel()]].min())
            differing = (commit[b] != c_ref[b]).nonzero().flatten() - off
            assert ((keys[differing] - boundary).abs() <= near_tie_rel * abs(boundary)).all(), msg
        for name in ("x", "row_state", "traj", "prev_p1"):
            getattr(ref_state, name).copy_(getattr(op_state, name))
    assert_states_equal(op_state, ref_state, f"after the step {ctx}")
    check_commit_invariants(op_state, x_before, commit, logits.shape[-1], lo, hi)
    return commit


def probe_step(state, logits: torch.Tensor, step_kwargs: Optional[dict] = None):
    """(tokens [B, Lr], stats [B, Lr, 7], fp64 T=1 probabilities of the candidates [B, Lr]) that the next step
    would produce, computed by running the reference on a throw-away copy of the state."""
    probe = clone_for_reference(state)
    _, tokens, stats = reference_step(logits, probe, **(step_kwargs or {}))
    p = torch.softmax(logits.double(), -1).gather(-1, tokens.clamp_min(0)[..., None]).squeeze(-1)
    return tokens, stats, torch.where(tokens >= 0, p, torch.zeros_like(p))


def near_tie_rows(keys: torch.Tensor, valid: torch.Tensor, rel: float = 3e-6) -> torch.Tensor:
    """[B] bool: rows holding two valid keys closer than `rel` (relative) but not equal. (Exact ties, from
    identical inputs, are computed identically by both implementations.)"""
    bad = torch.zeros(keys.shape[0], dtype=torch.bool)
    for b in range(keys.shape[0]):
        k = torch.sort(keys[b][valid[b]].double()).values
        if k.numel() < 2:
            continue
        d = k[1:] - k[:-1]
        close = (d <= rel * torch.maximum(k[1:].abs(), k[:-1].abs())) & (d > 0)
        bad[b] = bool(close.any())
    return bad


def draw_step_logits(maker: LogitsMaker, state, step_kwargs: Optional[dict] = None, *,
                     avoid_near_ties: bool = False) -> torch.Tensor:
    """The next step's logits.

    For bf16/fp16 confidence, rows whose candidate probability lies within 1e-5 (relative) of a rounding midpoint
    of the confidence dtype are re-drawn: the op and the reference compute the fp32 softmax with different summation
    orders (ulp-level differences), so such a value can legitimately round to either neighbour.

    avoid_near_ties: also re-draw the logits of sequences where two candidates' ranking keys are within 3e-6
    (relative; ~25 fp32 ulps) of each other without being equal: keys computed from different inputs that agree
    to a few ulps may order either way between two correct implementations.

    Everywhere else the comparison stays exact."""
    B, Lr = state.x.shape[0], maker.rows(state)
    master = maker.values(B, Lr)
    cdt = state.confidence_dtype
    check_mid = cdt in (torch.bfloat16, torch.float16)
    if not check_mid and not avoid_near_ties:
        return maker.finish(master)
    for _ in range(200):
        lg = maker.finish(master)
        tokens, stats, p = probe_step(state, lg, step_kwargs)
        valid = tokens >= 0
        bad = near_rounding_midpoint(p, cdt) & valid if check_mid else torch.zeros_like(valid)
        if avoid_near_ties:
            rows = near_tie_rows(stats[..., R.STAT_KEY], valid)
            bad |= rows[:, None] & valid
        if not bad.any():
            return lg
        fresh = maker.values(B, Lr)
        master[bad] = fresh[bad]
    detail = ""
    if avoid_near_ties:
        b = int(rows.nonzero()[0]) if rows.any() else 0
        order = torch.sort(stats[b, :, R.STAT_KEY].double()).indices
        detail = f"\nlast attempt, row {b} (key/score/conf/temperature/token) by key: " + ", ".join(
            f"{stats[b, r, R.STAT_KEY].item():.9g}/{stats[b, r, R.STAT_SCORE].item():.9g}/{stats[b, r, 0].item():.9g}/"
            f"{stats[b, r, R.STAT_TEMPERATURE].item():.6g}/{int(tokens[b, r])}" for r in order if valid[b, r])
    raise RuntimeError(f"could not draw logits away from rounding midpoints / near-ties{detail}")


def run_decode_loop(op_state, ref_state, maker: LogitsMaker, *, step_inputs: Optional[Callable] = None,
                    max_iters: Optional[int] = None, on_step: Optional[Callable] = None,
                    avoid_near_ties: bool = False, near_tie_rel: Optional[float] = None) -> int:
    """Step op_state and ref_state side by side until done (asserting equality at every step); returns the number
    of steps. The loop must finish within block_cap * num_blocks steps. on_step(it, x_before, logits, commit, lo)
    runs after each step (lo: first canvas column of the block the step worked on)."""
    bound = block_cap(op_state) * op_state.num_blocks if max_iters is None else max_iters
    it = 0
    while not op_state.done:
        assert it < bound, f"decode loop did not finish within {bound} steps (row_state {op_state.row_state})"
        kw = step_inputs(op_state, maker.rows(op_state)) if step_inputs else {}
        lg = draw_step_logits(maker, op_state, kw, avoid_near_ties=avoid_near_ties)
        x_before = op_state.x.clone()
        _, lo, _ = active_block_bounds(op_state)
        commit = assert_step_matches(op_state, ref_state, lg, context=f"(step {it})", near_tie_rel=near_tie_rel, **kw)
        if on_step is not None:
            on_step(it, x_before, lg, commit, lo)
        it += 1
    assert ref_state.done
    return it


# ---------------------------------------------------------------------------------------------------------------
# Independent oracles
# ---------------------------------------------------------------------------------------------------------------
def canonical_topk(conf: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k largest entries of a 1-D tensor, lowest index first among equal values."""
    order = torch.sort(conf.double(), descending=True, stable=True).indices
    out = torch.zeros(conf.shape, dtype=torch.bool)
    out[order[:k]] = True
    return out


def first_argmax(rows: torch.Tensor, exclude: Optional[int] = None) -> torch.Tensor:
    """First index of the maximum of each row (computed without torch.argmax), optionally excluding one column."""
    r = rows.double().clone()
    if exclude is not None:
        r[..., exclude] = -math.inf
    is_max = r == r.amax(-1, keepdim=True)
    idx = torch.arange(r.shape[-1]).expand_as(r)
    return torch.where(is_max, idx, torch.full_like(idx, r.shape[-1])).amin(-1)


class ToyModel:
    """A deterministic stand-in for a masked-diffusion LM: logits are a fixed function of the canvas (token and
    position embeddings, a masked mean over the sequence as context), so two decode loops fed the same canvases see
    the same logits. The mask token's logit is pushed far down (min - 30): trained models never predict it.
    Call as model(x) or model(x, attention_mask=am) ([B, L], 1 = attend); returns an object with .logits."""

    def __init__(self, rnd: Rand, V: int, L: int, mask_id: int, dtype=torch.float32, d: int = 16,
                 scale: float = 3.0):
        self.V, self.mask_id, self.dtype = V, mask_id, dtype
        self.emb = rnd.randn(V, d)
        self.pos = rnd.randn(L, d)
        self.out = rnd.randn(d, V) * (scale / math.sqrt(d))
        self.calls = 0

    def __call__(self, x: torch.Tensor, attention_mask: Optional[torch.Tensor] = None):
        self.calls += 1
        B, L = x.shape
        h = self.emb[x] + self.pos[:L]
        am = torch.ones(B, L, dtype=torch.float64) if attention_mask is None else attention_mask.double()
        ctx = (h * am[..., None]).sum(1, keepdim=True) / am.sum(1, keepdim=True)[..., None].clamp_min(1.0)
        lg = torch.tanh(h + ctx) @ self.out * 3.0
        lg[..., self.mask_id] = lg.amin(-1) - 30.0
        return types.SimpleNamespace(logits=lg.to(self.dtype))
