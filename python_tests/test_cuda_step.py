"""CUDA op == CPU op == reference (prr_ext.step on CUDA; csrc/cuda/step_cuda.cu).

Skips cleanly where there is no GPU or the build has no CUDA kernel (CI). On a GPU machine:
    python -m pytest python_tests/test_cuda_step.py -q
Discrete outputs (committed tokens, commit mask, canvas, counters, trajectory argmax, the rules' streak tokens and
counts) must be identical; the per-token statistics, the streaks' probability sums and KLASS's kept
log-probabilities agree within fp32 tolerance (the CUDA kernel accumulates in fp32 over a fixed tree with the
hardware exp, the CPU in fp64).
"""
import math
import zlib

import pytest
import torch

import prr_ext
from prr_ext import constants as K
from prr_ext import reference as R
from prr_ext.ops import op_arguments

from helpers import SET_RULE_NAMES, Rand, make_policy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or not prr_ext.has_cuda_kernels(),
                                reason="needs a GPU and a build with the CUDA kernels")

CONF = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}


@pytest.fixture
def launch_override(monkeypatch):
    """Sets PRR_CUDA_* launch overrides for one test. The launcher reads them once, so every change is followed by
    prr_ext._C.reload_launch_overrides(), and so is their removal when the test ends."""
    def set_override(name, value):
        monkeypatch.setenv(name, value)
        prr_ext._C.reload_launch_overrides()

    yield set_override
    monkeypatch.undo()
    prr_ext._C.reload_launch_overrides()


def policies():
    return {
        "lowconf": prr_ext.LowConfidence(),
        "random": prr_ext.RandomRemask(),
        "threshold": prr_ext.Threshold(0.3),
        "factor": prr_ext.Factor(1.0),
        "eb": prr_ext.EntropyBound(0.5),
        "prr_temp": prr_ext.PRR(prr_ext.Controller.init(0), tau=0.5),
        "prr_power": prr_ext.PRR(prr_ext.Controller.init(1), tau=0.5, shaping="power"),
        "prr_weighted": prr_ext.PRR(prr_ext.Controller.init(2, hidden=(16,)), tau=0.5, shaping="weighted",
                                    union_schedule=False),
    }


def make_states(policy, B, P, G, BL, steps, mask, V, *, T=0.0, cdt=torch.float32, seed=0, x=None):
    g = torch.Generator().manual_seed(seed)
    if x is None:
        x = torch.randint(0, max(V - 1, 1), (B, P + G), generator=g)
        if mask is not None:  # (None: a uniform canvas of random tokens)
            x[:, P:] = mask
    kw = dict(temperature=T, confidence_dtype=cdt, seed=torch.arange(B, dtype=torch.int64) * 7919 + 13 + seed)
    s_cpu = prr_ext.State(x.clone(), mask, P, BL, steps, policy, **kw)
    s_gpu = prr_ext.State(x.clone().cuda(), mask, P, BL, steps, policy, **kw)
    return s_cpu, s_gpu


def stats_close(a, b, cdt=torch.float32):
    """Statistics within fp32 tolerance; the confidence column within one unit of its dtype."""
    a, b = a.cpu(), b.cpu()
    assert torch.equal(torch.isnan(a), torch.isnan(b)), "NaN pattern differs"
    rtol = {torch.bfloat16: 8e-3, torch.float16: 1e-3}.get(cdt, 3e-5)
    torch.testing.assert_close(a[..., R.STAT_CONF], b[..., R.STAT_CONF], rtol=rtol, atol=2e-6, equal_nan=True)
    torch.testing.assert_close(a[..., 1:], b[..., 1:], rtol=3e-5, atol=3e-6, equal_nan=True)


def rule_state_close(s_cpu, s_gpu):
    """The rules' state (prr/rules.h): streak tokens and counts and KLASS's counts exactly, the streaks' fp32 sums and
    maxima of p(argmax) within fp32 tolerance; KLASS's kept log-probabilities (fp32, from an fp64 normaliser on the
    CPU and an fp32 one on the GPU) within a few fp32 units."""
    a, b = s_cpu.rule_state, s_gpu.rule_state.cpu()
    exact = [K.RULE_STREAK_TOKEN, K.RULE_STREAK_COUNT, K.RULE_KL_COUNT]
    assert torch.equal(a[..., exact], b[..., exact]), "rule_state (tokens / counts) differs"
    prob = [K.RULE_STREAK_SUM, K.RULE_STREAK_MAX]
    torch.testing.assert_close(a[..., prob], b[..., prob], rtol=3e-5, atol=3e-6)
    assert s_cpu.prev_logp.shape == s_gpu.prev_logp.shape
    if s_cpu.prev_logp.numel():
        torch.testing.assert_close(s_cpu.prev_logp, s_gpu.prev_logp.cpu(), rtol=1e-5, atol=2e-5)


def check_same(s_cpu, s_gpu, c_cpu, c_gpu, cdt=torch.float32, gpu_rows=None):
    """gpu_rows: the slice of the CUDA op's logits rows that the CPU op's (block-only) logits cover."""
    assert torch.equal(c_cpu, c_gpu.cpu()), "commit mask differs"
    assert torch.equal(s_cpu.x, s_gpu.x.cpu()), "canvas differs"
    assert torch.equal(s_cpu.row_state, s_gpu.row_state.cpu()), (s_cpu.row_state, s_gpu.row_state.cpu())
    assert torch.equal(s_cpu.traj, s_gpu.traj.cpu()), "trajectory differs"
    torch.testing.assert_close(s_cpu.prev_p1, s_gpu.prev_p1.cpu(), rtol=3e-5, atol=3e-6)
    rule_state_close(s_cpu, s_gpu)
    tok, st = s_gpu.last_tokens, s_gpu.last_stats
    if gpu_rows is not None:
        assert bool((tok[:, : gpu_rows.start] == -1).all()) and bool((tok[:, gpu_rows.stop:] == -1).all())
        assert bool(st[:, : gpu_rows.start].isnan().all()) and bool(st[:, gpu_rows.stop:].isnan().all())
        tok, st = tok[:, gpu_rows], st[:, gpu_rows]
    assert torch.equal(s_cpu.last_tokens, tok.cpu()), "tokens differ"
    stats_close(s_cpu.last_stats, st, cdt)
    assert int(s_gpu.workspace[: 1 + s_gpu.x.shape[0]].abs().sum()) == 0, "arrival counters not reset"


def gen_logits(B, L, V, dt, g, scale=3.0):
    return (torch.randn(B, L, V, generator=g) * scale).to(dt)


def decode_compare(policy, *, B=3, P=5, G=16, BL=8, steps=8, V=300, dt=torch.float32, T=0.0, cdt=torch.float32,
                   full=True, loops=24, with_reference=False, seed=0, logits_fn=None, on_step=None, uniform=False):
    """on_step(before, commit): called after each step with the CPU state as it was before it and its commit mask.
    uniform: a uniform canvas (mask_id None), whose unaccepted block positions are renoised after each step."""
    mask = None if uniform else V - 1
    s_cpu, s_gpu = make_states(policy, B, P, G, BL, steps, mask, V, T=T, cdt=cdt, seed=seed)
    s_ref = s_cpu.clone() if with_reference else None
    g = torch.Generator().manual_seed(1000 + seed)
    for _ in range(loops):
        if s_cpu.done:
            break
        lg = logits_fn(B, P + G, V, dt, g) if logits_fn else gen_logits(B, P + G, V, dt, g)
        if not full:
            lo = s_cpu.block_start
            lg = lg[:, lo:lo + BL].contiguous()
        before = s_cpu.clone() if on_step else None
        c_cpu = prr_ext.step(lg, s_cpu)
        c_gpu = prr_ext.step(lg.cuda(), s_gpu)
        check_same(s_cpu, s_gpu, c_cpu, c_gpu, cdt)
        if on_step:
            on_step(before, c_cpu)
        if s_ref is not None:
            c_ref, t_ref, st_ref = R.step(lg, s_ref)
            assert torch.equal(c_ref, c_gpu.cpu())
            assert torch.equal(s_ref.x, s_gpu.x.cpu())
            assert torch.equal(t_ref, s_gpu.last_tokens.cpu())
            stats_close(st_ref, s_gpu.last_stats, cdt)
        if uniform:  # renoise what the step did not accept, alike in every state
            noise = torch.randint(0, V, s_cpu.x.shape, generator=g)
            keep = c_cpu | (s_cpu.x.new_ones(s_cpu.x.shape, dtype=torch.bool).cumsum(1) <= P)
            for st in (s_cpu, s_gpu, s_ref):
                if st is not None:
                    st.x.copy_(torch.where(keep.to(st.x.device), st.x, noise.to(st.x.device)))
    assert s_cpu.done == bool(s_gpu.done)
    return s_gpu


@pytest.mark.parametrize("pol", list(policies()))
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("T", [0.0, 0.7])
@pytest.mark.parametrize("full", [True, False])
def test_matches_cpu(pol, dt, T, full):
    decode_compare(policies()[pol], dt=dt, T=T, full=full)


@pytest.mark.parametrize("pol", ["lowconf", "threshold", "eb", "prr_temp"])
def test_matches_reference(pol):
    decode_compare(policies()[pol], with_reference=True, V=257, dt=torch.bfloat16)
    decode_compare(policies()[pol], with_reference=True, V=257, T=0.9, full=False)


@pytest.mark.parametrize("cdt", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("pol", ["lowconf", "threshold", "factor", "prr_temp"])
def test_confidence_dtypes(pol, cdt):
    decode_compare(policies()[pol], cdt=cdt, dt=torch.bfloat16)
    decode_compare(policies()[pol], cdt=cdt, dt=torch.float32, T=0.5)


@pytest.mark.parametrize("V", [1, 2, 7, 1000, 1001, 126464])
def test_odd_vocab(V):
    loops = 24 if V < 5000 else 6
    for pol in ["lowconf", "threshold", "prr_temp"]:
        s = decode_compare(policies()[pol], V=V, B=2, G=16, BL=8, steps=8 if V < 5000 else 2, loops=loops,
                           dt=torch.bfloat16)
        assert s.done


def test_big_vocab_every_policy():
    """The benchmark vocabulary (several CTAs per row), every policy, sampling too."""
    V = 126464
    for name, pol in policies().items():
        for T in (0.0, 1.0):
            decode_compare(pol, V=V, B=2, P=3, G=32, BL=32, steps=2, dt=torch.bfloat16, T=T, loops=3, seed=5)
    decode_compare(policies()["prr_temp"], V=V, B=1, P=3, G=32, BL=32, steps=2, dt=torch.float32, loops=3)
    decode_compare(policies()["lowconf"], V=V, B=1, P=3, G=32, BL=32, steps=2, dt=torch.float64, loops=3,
                   cdt=torch.float64)


@pytest.mark.parametrize("name", ["lowconf", "threshold", "eb", "prr_temp"])
def test_one_block_of_32_rows(name):
    """One sequence, a 32-position block, the benchmark vocabulary: the launcher's 8-CTA clusters of 4 warps (not
    for PRR temperature shaping, which keeps 4 CTAs of 8 warps), greedy and sampled, random and tie-heavy rows."""
    V = 126464
    pol = policies()[name]
    decode_compare(pol, V=V, B=1, P=3, G=32, BL=32, steps=2, dt=torch.bfloat16, loops=2, seed=21)
    decode_compare(pol, V=V, B=1, P=3, G=32, BL=32, steps=2, dt=torch.bfloat16, T=1.0, loops=2, seed=22)
    decode_compare(pol, logits_fn=tie_logits, V=V, B=1, P=3, G=32, BL=32, steps=2, dt=torch.bfloat16, loops=2)


@pytest.mark.parametrize("packed", ["0", "1"])
@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16])
def test_16bit_tile_paths(launch_override, packed, dt):
    """16-bit logits take the packed-pair tile statistics (PRR_CUDA_PACKED=1, the default) or prr::tile_stats2 (0):
    both give the CPU op's results, on random and tie-heavy rows, one CTA per row (several tiles per thread) and
    the small-row cluster split."""
    launch_override("PRR_CUDA_PACKED", packed)
    V = 126464
    for name in ("lowconf", "prr_temp", "eb"):
        decode_compare(policies()[name], V=V, B=2, P=3, G=32, BL=32, steps=2, dt=dt, loops=2, seed=11)
    launch_override("PRR_CUDA_CS", "1")
    decode_compare(policies()["lowconf"], V=V, B=2, P=3, G=32, BL=32, steps=2, dt=dt, loops=2, seed=12)
    decode_compare(policies()["threshold"], V=V, B=1, P=3, G=32, BL=32, steps=2, dt=dt, T=1.0, loops=2)
    for name in ("lowconf", "eb"):
        decode_compare(policies()[name], logits_fn=tie_logits, dt=dt, V=5000, loops=6)
    # the many-rows launch shape (2-warp CTAs: 31 tiles per thread at V = 126464), forced on a small problem
    launch_override("PRR_CUDA_NT", "64")
    for name in ("lowconf", "prr_temp", "eb"):
        decode_compare(policies()[name], V=V, B=2, P=3, G=32, BL=32, steps=2, dt=dt, loops=2, seed=13)


def late_max_logits(B, L, V, dt, g):
    """Tie-heavy rows (values -3..0) whose maximum first appears past the row's first quarter (with one CTA per row
    always in a later register tile of its thread; with a row split over a cluster, in half of the rows or more): twice
    inside one 16-byte vector (not at its first element) and once two vectors on."""
    lg = torch.randint(-3, 1, (B, L, V), generator=g).float()
    k = torch.randint(V // 4, V - 32, (B, L), generator=g)
    k = k - k % 8 + torch.randint(1, 4, (B, L), generator=g)
    top = torch.randint(2, 5, (B, L), generator=g).float().unsqueeze(-1)
    for d in (0, 2, 16):
        lg.scatter_(2, (k + d).unsqueeze(-1), top)
    return lg.to(dt)


@pytest.mark.parametrize("shape", ["B1", "B2", "nt64"])
@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16])
def test_argmax_in_a_later_tile(launch_override, shape, dt):
    """The packed path's argmax key (a vector key, resolved to the first index of the maximum; csrc/cuda/tile.cuh) on rows
    of several tiles per thread whose maximum first appears in a later tile, tied inside its vector and with a later
    copy. Launch shapes: one 32-row block (8-CTA clusters, 2 tiles), 64 rows (2-CTA clusters, 4 tiles), one 2-warp
    CTA per row (31 tiles)."""
    if shape == "nt64":
        launch_override("PRR_CUDA_CS", "1")
        launch_override("PRR_CUDA_NT", "64")
    B = 1 if shape == "B1" else 2
    for name, T in (("lowconf", 0.0), ("eb", 0.0), ("prr_temp", 0.0), ("lowconf", 1.0)):
        decode_compare(policies()[name], logits_fn=late_max_logits, V=126464, B=B, P=3, G=32, BL=32, steps=2, dt=dt,
                       T=T, loops=2, seed=31)


@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16, torch.float32])
def test_prr_one_cta_per_row(launch_override, dt):
    """PRR temperature shaping with one CTA per row (the many-rows launch shape): several register tiles per thread,
    the tempered second sweep re-reading all but the last; with more rows than SMs the CTAs walk several rows; a larger
    controller, odd V (the per-element load path) on tie-heavy rows, and sampling."""
    launch_override("PRR_CUDA_CS", "1")
    V = 126464
    decode_compare(policies()["prr_temp"], V=V, B=2, P=3, G=32, BL=32, steps=2, dt=dt, loops=2, seed=21)
    if dt == torch.bfloat16:
        big = prr_ext.PRR(prr_ext.Controller.init(3, hidden=(64, 64)), tau=0.5)  # a larger controller
        decode_compare(big, V=V, B=9, P=3, G=32, BL=32, steps=2, dt=dt, loops=2, seed=22)  # 288 rows: > 1 per CTA
        decode_compare(policies()["prr_temp"], logits_fn=tie_logits, V=V + 1, B=2, P=3, G=32, BL=32, steps=2,
                       dt=dt, loops=2, seed=23)  # odd V: the per-element load path, tie-heavy rows
        decode_compare(policies()["prr_temp"], V=V, B=2, P=3, G=32, BL=32, steps=2, dt=dt, T=0.8, loops=2, seed=24)


@pytest.mark.parametrize("dyn", ["0", "1"])
@pytest.mark.parametrize("B", [1, 3])
def test_persistent_rows(launch_override, dyn, B):
    """More rows than co-resident CTAs (forced: one 8-warp CTA per row, 2 per SM), so each CTA walks several rows:
    statically (PRR_CUDA_DYNROWS=0) or claiming each next row from the workspace counter (1, the default). Rows of
    one register tile (the claim and the next row's prefetch in the same call) and of many (the claim one tile ahead);
    the counter is back at zero after every step (check_same), after a step on a finished sequence, and across CUDA
    graph replays."""
    launch_override("PRR_CUDA_CS", "1")
    launch_override("PRR_CUDA_NT", "256")
    launch_override("PRR_CUDA_DYNROWS", dyn)
    BL = 600 // B  # 600 rows against at most 2 * 132 CTAs
    for name in ("lowconf", "eb", "prr_temp"):
        s = decode_compare(policies()[name], V=700, B=B, P=3, G=BL, BL=BL, steps=3, dt=torch.bfloat16, loops=4,
                           seed=41)
        assert s.done
        x_done = s.x.clone()
        c = prr_ext.step(gen_logits(B, 3 + BL, 700, torch.bfloat16, torch.Generator().manual_seed(44)).cuda(), s)
        assert not bool(c.any()) and torch.equal(s.x, x_done)  # nothing left to decode
        assert int(s.workspace[: 1 + B].abs().sum()) == 0
    decode_compare(policies()["lowconf"], V=126464, B=B, P=3, G=BL, BL=BL, steps=2, dt=torch.bfloat16, loops=1,
                   seed=42)
    # graph replay: the counter left at zero by each step is what the next replay starts from
    graph_replay_compare(policies()["threshold"], B=B, P=3, G=BL, BL=BL, steps=4, V=700, N=3, trials=3,
                         dt=torch.bfloat16, seed=43)


def tie_logits(B, L, V, dt, g):
    lg = torch.randint(-3, 3, (B, L, V), generator=g).float()
    lg[:, 1::2] = lg[:, 0::2][:, : lg[:, 1::2].shape[1]]  # duplicated rows: equal confidences across positions
    lg[0] = lg[-1]  # and across sequences
    return lg.to(dt)


@pytest.mark.parametrize("pol", list(policies()))
@pytest.mark.parametrize("cdt", [torch.float32, torch.bfloat16])
def test_tie_heavy(pol, cdt):
    decode_compare(policies()[pol], logits_fn=tie_logits, cdt=cdt, dt=torch.bfloat16, V=64)
    decode_compare(policies()[pol], logits_fn=tie_logits, cdt=cdt, dt=torch.float32, V=1000, full=False)


@pytest.mark.parametrize("select", ["", "sort"])
@pytest.mark.parametrize("BL", [33, 64, 100, 256, 1000, 1024])
@pytest.mark.parametrize("nt", ["", "32", "64", "128"])
def test_block_sort_paths(launch_override, BL, nt, select):
    """The selection for 32 < block_length <= 1024, on CTAs of 32 to 256 threads: the radix select (LowConfidence,
    Threshold, PRR; Factor and EntropyBound while their floor checks hold) and the shared-memory bitonic sort
    (non-powers of two padded) of the fallbacks, or of every rule with PRR_CUDA_SELECT_SORT=1. Tie-heavy keys
    (integer logits over 40 tokens) check the position tie-break at the boundary of the committed prefix."""
    if nt:
        launch_override("PRR_CUDA_NT", nt)
    if select:
        launch_override("PRR_CUDA_SELECT_SORT", "1")
    for pol in ["lowconf", "threshold", "factor", "eb", "prr_temp"]:
        decode_compare(policies()[pol], B=2, P=3, G=BL, BL=BL, steps=4, V=40, loops=5, logits_fn=tie_logits)
    decode_compare(policies()["lowconf"], B=1, P=3, G=BL, BL=BL, steps=3, V=300, loops=4, seed=3)


def peaked_tie_logits(B, L, V, dt, g):
    """tie_logits with a share of rows (0, 10, 30 or 70 %, drawn per call) given one dominant token (+8, +12 or +40:
    confidences about 0.99, 0.9999 and exactly 1), so that Factor's and EntropyBound's floor checks both pass and
    fail."""
    lg = tie_logits(B, L, V, torch.float32, g)
    share = [0.0, 0.1, 0.3, 0.7][int(torch.randint(0, 4, (1,), generator=g))]
    rows = torch.rand(B, L, generator=g) < share
    col = torch.randint(0, V, (B, L), generator=g)
    peak = torch.tensor([8.0, 12.0, 40.0])[torch.randint(0, 3, (B, L), generator=g)]
    lg.scatter_add_(2, col.unsqueeze(-1), (peak * rows).unsqueeze(-1))
    return lg.to(dt)


@pytest.mark.parametrize("select", ["", "sort"])
@pytest.mark.parametrize("BL", [33, 64, 256, 1000])
@pytest.mark.parametrize("rule", ["factor", "eb"])
def test_floor_check(launch_override, rule, BL, select):
    """Factor and EntropyBound on blocks of 33..1024: the radix select of their floor when their check shows that
    nothing past it commits (Factor: a count of keys passing the test at the floor's rank; EntropyBound: the sum of
    the floor's entropies, clear of gamma), and the sort they fall back to otherwise (peaked rows), against the CPU
    op; with PRR_CUDA_SELECT_SORT=1, the sort alone. The CPU op's commit counts show that both outcomes occurred."""
    if select:
        launch_override("PRR_CUDA_SELECT_SORT", "1")
    V, mask = 40, 39
    counts = {"beyond_floor": 0, "at_floor": 0}  # sequence-steps committing more than the floor / the floor, of more

    def tally(before, commit):
        lo = before.block_start
        for b in range(commit.shape[0]):
            n_masked = int((before.x[b, lo:lo + BL] == mask).sum())
            step = int(before.row_state[b, R.RS_STEP])
            k = R.schedule_k(n_masked if step == 0 else int(before.row_state[b, R.RS_SCHED_N]), steps, step)
            floor = min(max(k, 1), n_masked)
            n = int(commit[b].sum())
            counts["beyond_floor"] += n > floor
            counts["at_floor"] += n == floor < n_masked

    params = [(1.0, 4), (3.0, 8), (0.05, 2)] if rule == "factor" else [(0.5, 4), (4.0, 8), (0.02, 2)]
    for param, steps in params:
        pol = prr_ext.Factor(param) if rule == "factor" else prr_ext.EntropyBound(param)
        decode_compare(pol, B=3, P=3, G=BL, BL=BL, steps=steps, V=V, loops=8, logits_fn=peaked_tie_logits,
                       seed=BL + steps, on_step=tally)
    assert counts["beyond_floor"] > 0 and counts["at_floor"] > 0, counts


def test_large_block_global_sort():
    """block_length above the in-SMEM sort (1024): the workspace rank sort."""
    for pol in ["lowconf", "threshold", "eb", "prr_power"]:
        decode_compare(policies()[pol], B=2, P=3, G=1100, BL=1100, steps=4, V=40, loops=6)


def test_noncontiguous_logits():
    V, B, P, G, BL, steps = 333, 3, 4, 16, 8, 8
    mask = V - 1
    pol = policies()["prr_temp"]
    s_cpu, s_gpu = make_states(pol, B, P, G, BL, steps, mask, V)
    g = torch.Generator().manual_seed(3)
    while not s_cpu.done:
        big = torch.randn(B, 2 * (P + G), V + 5, generator=g) * 3
        lg = big[:, ::2, 3:3 + V]  # odd strides, rows not 16-byte aligned
        assert not lg.is_contiguous()
        c_cpu = prr_ext.step(lg, s_cpu)
        c_gpu = prr_ext.step(big.cuda()[:, ::2, 3:3 + V], s_gpu)
        check_same(s_cpu, s_gpu, c_cpu, c_gpu)
    # batch-strided block-only logits (a view into a bigger buffer)
    s_cpu, s_gpu = make_states(policies()["eb"], B, P, G, BL, steps, mask, V, seed=4)
    while not s_cpu.done:
        big = torch.randn(B, 3 * BL, V, generator=g) * 3
        lo = s_cpu.block_start
        c_cpu = prr_ext.step(big[:, BL:2 * BL], s_cpu)
        c_gpu = prr_ext.step(big.cuda()[:, BL:2 * BL], s_gpu)
        check_same(s_cpu, s_gpu, c_cpu, c_gpu)
        assert lo >= 0


def nan_logits(B, L, V, dt, g):
    lg = torch.randn(B, L, V, generator=g) * 3
    lg[0, -1, 5] = math.nan
    lg[0, -2, 7] = math.inf
    lg[0, -3, :] = -math.inf  # no finite logit
    lg[0, -4, :] = -math.inf
    lg[0, -4, V - 1] = 2.0  # only the mask token finite
    lg[1, -5, : V // 2] = -math.inf  # -inf mixed in: fine
    lg[1, -6, V - 1] = 50.0  # the mask token is the maximum
    lg[2, -7, 3] = -math.nan
    return lg.to(dt)


@pytest.mark.parametrize("pol", ["lowconf", "threshold", "eb", "prr_temp", "prr_power"])
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
def test_nan_and_inf_rows(pol, dt):
    decode_compare(policies()[pol], logits_fn=nan_logits, dt=dt, V=100)
    decode_compare(policies()[pol], logits_fn=nan_logits, dt=dt, V=100, T=0.8, full=False)


def near_clamp_logits(B, L, V, dt, g):
    """Every other position: a row whose maximum is at or below the packed path's finite stand-in for -inf (bf16
    about -1e30, fp16 -65504, plus 200), with -inf entries mixed in, so the tile takes the exact per-logit clamp
    (csrc/cuda/tile.cuh, tile_stats_packed). The other positions are ordinary rows."""
    lg = torch.randn(B, L, V, generator=g) * 3
    lo, spread = (-1e31, 5e29) if dt == torch.bfloat16 else (-65450.0, 50.0)
    for j in range(0, L, 2):
        lg[:, j] = lo - torch.rand(B, V, generator=g) * spread
        lg[:, j, ::3] = -math.inf
    return lg.to(dt)


@pytest.mark.parametrize("pol", ["lowconf", "eb", "prr_temp"])
@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16])
def test_16bit_rows_near_the_clamp(pol, dt):
    decode_compare(policies()[pol], logits_fn=near_clamp_logits, dt=dt, V=1000)


def op_step_cpu_and_cuda(pol, s_cpu, s_gpu, lg, mask, BL, steps, cand, rconf):
    """The raw op on the CPU state and on the CUDA state with external candidates / random_conf (None: absent)."""
    outs = []
    for s, dev in ((s_cpu, "cpu"), (s_gpu, "cuda")):
        assert (s.policy, s.mask_id, s.block_length, s.steps) == (pol, mask, BL, steps)
        outs.append(torch.ops.prr_ext.step(**op_arguments(
            lg.to(dev), s, candidates=None if cand is None else cand.to(dev),
            random_conf=None if rconf is None else rconf.to(dev))))
    return outs


def test_external_inputs():
    """scores / extra_features (PRR) and candidates / random_conf (rng="torch") through the op directly."""
    V, B, P, G, BL, steps = 200, 2, 3, 16, 8, 8
    mask = V - 1
    ctrl = prr_ext.Controller.init(3, hidden=(8, 8), extra_features=2)
    for pol in [prr_ext.PRR(ctrl, tau=0.4), prr_ext.PRR(ctrl, tau=0.4, shaping="power"), prr_ext.RandomRemask()]:
        s_cpu, s_gpu = make_states(pol, B, P, G, BL, steps, mask, V)
        g = torch.Generator().manual_seed(11)
        while not s_cpu.done:
            lg = gen_logits(B, P + G, V, torch.float32, g)
            if isinstance(pol, prr_ext.PRR):
                extra = torch.randn(B, P + G, 2, generator=g)
                c_cpu = prr_ext.step(lg, s_cpu, extra_features=extra)
                c_gpu = prr_ext.step(lg.cuda(), s_gpu, extra_features=extra.cuda())
                check_same(s_cpu, s_gpu, c_cpu, c_gpu)
                sc = torch.rand(B, P + G, generator=g)
                c_cpu = prr_ext.step(lg, s_cpu, scores=sc) if not s_cpu.done else None
                if c_cpu is not None:
                    c_gpu = prr_ext.step(lg.cuda(), s_gpu, scores=sc.cuda())
                    check_same(s_cpu, s_gpu, c_cpu, c_gpu)
            else:
                cand = torch.randint(-1, V, (B, P + G), generator=g)
                rconf = torch.rand(B, P + G, generator=g)
                outs = op_step_cpu_and_cuda(pol, s_cpu, s_gpu, lg, mask, BL, steps, cand, rconf)
                assert torch.equal(outs[0][0], outs[1][0].cpu())
                assert torch.equal(outs[0][1], outs[1][1].cpu())
                stats_close(outs[0][2], outs[1][2])
                assert torch.equal(s_cpu.x, s_gpu.x.cpu()) and torch.equal(s_cpu.row_state, s_gpu.row_state.cpu())


@pytest.mark.parametrize("BL", [64, 256, 1000])
def test_radix_select_external_keys(BL):
    """The radix select on keys the op is given: RandomRemask's random_conf drawn from small pools and PRR's external
    scores with NaNs (ranked last, usable) and repeats, against the CPU op. The pools: {-0.0, +0.0, 0.25, 0.5} (the
    signed zeros tie, lowest position first; every prefix RandomRemask commits ends inside a run of equal keys), one
    value (every key equal: the radix select's first digit is its last 8 bits), two values one fp32 ulp apart (they
    differ from bit 29 of the fp64 key: its digits end in a narrower one), and keys of both signs (they differ in the
    top bit)."""
    V, B, P, steps = 50, 2, 3, 4
    G, mask = 2 * BL, V - 1
    ctrl = prr_ext.Controller.init(3, hidden=(8, 8))
    pools = [[-0.0, 0.0, 0.25, 0.5], [0.375], [0.5, 0.5 + 2.0 ** -24], [-0.25, -0.0, 0.125, 0.25]]
    cases = [(prr_ext.RandomRemask(), torch.tensor(pool)) for pool in pools]
    cases += [(prr_ext.PRR(ctrl, tau=0.6, shaping="power"), None), (prr_ext.PRR(ctrl, tau=1.0), None)]
    for pol, pool in cases:
        s_cpu, s_gpu = make_states(pol, B, P, G, BL, steps, mask, V)
        g = torch.Generator().manual_seed(BL)
        while not s_cpu.done:
            lg = gen_logits(B, P + G, V, torch.float32, g)
            if isinstance(pol, prr_ext.PRR):
                sc = torch.randint(0, 4, (B, P + G), generator=g).float() / 4
                sc[torch.rand(B, P + G, generator=g) < 0.2] = float("nan")
                c_cpu = prr_ext.step(lg, s_cpu, scores=sc)
                c_gpu = prr_ext.step(lg.cuda(), s_gpu, scores=sc.cuda())
                check_same(s_cpu, s_gpu, c_cpu, c_gpu)
                continue
            rconf = pool[torch.randint(0, len(pool), (B, P + G), generator=g)]
            outs = op_step_cpu_and_cuda(pol, s_cpu, s_gpu, lg, mask, BL, steps, None, rconf)
            assert torch.equal(outs[0][0], outs[1][0].cpu())
            assert torch.equal(s_cpu.x, s_gpu.x.cpu()) and torch.equal(s_cpu.row_state, s_gpu.row_state.cpu())


def test_deterministic():
    V, B, P, G, BL, steps = 126464, 2, 3, 32, 32, 4
    pol = policies()["prr_temp"]
    outs = []
    for _ in range(2):
        _, s = make_states(pol, B, P, G, BL, steps, V - 1, V, T=0.6)
        g = torch.Generator().manual_seed(9)
        lg = gen_logits(B, P + G, V, torch.bfloat16, g).cuda()
        prr_ext.step(lg, s)
        outs.append((s.x.clone(), s.last_stats.clone()))
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.equal(torch.nan_to_num(outs[0][1], nan=-7.0), torch.nan_to_num(outs[1][1], nan=-7.0))


@pytest.mark.parametrize("B", [1, 3])
def test_large_offsets(B):
    """B * L * V > 2^31: int64 row offsets (the active block sits at the end of a long canvas)."""
    V, BL = 126464, 32
    L = (2 ** 31) // (B * V) + 64
    L = L - (L % BL) + BL
    P = L - 2 * BL
    mask = V - 1
    x = torch.randint(0, V - 1, (B, L))
    x[:, P:] = mask
    pol = policies()["prr_temp"]
    s_cpu, s_gpu = make_states(pol, B, P, 2 * BL, BL, 4, mask, V, x=x)
    try:
        big = torch.full((B, L, V), -4.0, dtype=torch.bfloat16, device="cuda")
    except torch.OutOfMemoryError:
        pytest.skip("not enough GPU memory")
    assert big.numel() > 2 ** 31
    g = torch.Generator().manual_seed(21)
    while not s_cpu.done:
        lo = s_cpu.block_start
        blk = gen_logits(B, BL, V, torch.bfloat16, g)
        big[:, lo:lo + BL] = blk.cuda()
        c_cpu = prr_ext.step(blk, s_cpu)  # block-only logits on the CPU: same rows
        c_gpu = prr_ext.step(big, s_gpu)
        check_same(s_cpu, s_gpu, c_cpu, c_gpu, gpu_rows=slice(lo, lo + BL))
    del big
    torch.cuda.empty_cache()


@pytest.mark.parametrize("col,value", [(0, -10**12), (0, 99), (1, -1), (1, 10**6), (2, -3), (2, 10**6), (3, -1)])
def test_corrupt_row_state_sequence_is_inert(rnd, col, value):
    """The CUDA op cannot raise on a corrupt row_state without a host synchronisation (the CPU op raises): such a
    sequence takes no part in the step (nothing read or written through its entries, default outputs), while the
    other sequences step exactly as the CPU op steps them with that sequence finished."""
    V, B, P, G, BL, steps = 300, 3, 5, 16, 8, 8
    mask, bad = V - 1, rnd.int(0, B - 1)
    s_cpu, s_gpu = make_states(policies()[rnd.choice(["lowconf", "eb", "prr_temp"])], B, P, G, BL, steps, mask, V,
                               seed=rnd.int(0, 10**6))
    s_gpu.row_state[bad, col] = value
    s_cpu.row_state[bad, 0] = s_cpu.num_blocks  # the CPU twin: that sequence is finished
    x_bad, rs_bad = s_gpu.x[bad].clone(), s_gpu.row_state[bad].clone()
    for _ in range(3):
        lg = rnd.randn(B, P + G, V, dtype=torch.float32) * 3
        c_cpu, c_gpu = prr_ext.step(lg, s_cpu), prr_ext.step(lg.cuda(), s_gpu)
        torch.cuda.synchronize()
        assert not bool(c_gpu[bad].any()), "a corrupt sequence committed"
        assert torch.equal(s_gpu.x[bad], x_bad) and torch.equal(s_gpu.row_state[bad], rs_bad)
        ok = [b for b in range(B) if b != bad]
        assert torch.equal(c_cpu, c_gpu.cpu())
        assert torch.equal(s_cpu.x, s_gpu.x.cpu())
        assert torch.equal(s_cpu.row_state[ok], s_gpu.row_state.cpu()[ok])
        assert torch.equal(s_cpu.last_tokens, s_gpu.last_tokens.cpu())
        stats_close(s_cpu.last_stats, s_gpu.last_stats)
        assert int(s_gpu.workspace[: 1 + B].abs().sum()) == 0, "arrival counters not reset"


def _fresh(state, x0, rs0):
    state.x.copy_(x0)
    state.row_state.copy_(rs0)
    state.traj.zero_()
    state.prev_p1.zero_()
    state.rule_state.zero_()
    state.prev_logp.zero_()  # KLASS: allocated by the eager warm-up (same shape, same address)


@pytest.mark.parametrize("pol", ["lowconf", "threshold", "prr_temp"])
@pytest.mark.parametrize("B", [1, 3])
def test_cuda_graph_replay(pol, B):
    """Capture a fixed decode loop, mutate the inputs in place, replay several times: same as eager every time."""
    graph_replay_compare(policies()[pol], B=B, P=4, G=16, BL=8, steps=8, V=500, N=6, trials=4)


def graph_replay_compare(policy, *, B, P, G, BL, steps, V, N, trials, dt=torch.float32, seed=7):
    """N steps captured in one CUDA graph on one State, then per trial: a new canvas and new logits written in place,
    one replay, and the CPU op stepped on the same inputs. Commits, canvas and row_state match every time, the
    outputs keep their addresses, and the counters are back at zero."""
    mask = V - 1
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, V - 1, (B, P + G), generator=g)
    x0[:, P:] = mask
    _, s = make_states(policy, B, P, G, BL, steps, mask, V, x=x0)
    rs0 = s.row_state.clone()
    lg_buf = torch.zeros(N, B, P + G, V, dtype=dt, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture
        for i in range(N):
            prr_ext.step(lg_buf[i], s)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    _fresh(s, x0.cuda(), rs0)
    graph = torch.cuda.CUDAGraph()
    commits = []
    with torch.cuda.graph(graph):
        for i in range(N):
            commits.append(prr_ext.step(lg_buf[i], s))
    ptrs = [c.data_ptr() for c in commits]
    for trial in range(trials):
        xt = torch.randint(0, V - 1, (B, P + G), generator=g)
        xt[:, P:] = mask
        xt[:, P + trial] = 3  # a different canvas each replay
        lg = (torch.randn(N, B, P + G, V, generator=g) * 3).to(dt)
        lg_buf.copy_(lg.cuda())
        s_cpu, _ = make_states(policy, B, P, G, BL, steps, mask, V, x=xt)
        _fresh(s, xt.cuda(), s_cpu.row_state.cuda())
        graph.replay()
        torch.cuda.synchronize()
        for i in range(N):
            c_cpu = prr_ext.step(lg[i], s_cpu)
            assert torch.equal(c_cpu, commits[i].cpu()), (trial, i)
        assert torch.equal(s_cpu.x, s.x.cpu()) and torch.equal(s_cpu.row_state, s.row_state.cpu())
        rule_state_close(s_cpu, s)
        assert [c.data_ptr() for c in commits] == ptrs
        assert int(s.workspace[: 1 + B].abs().sum()) == 0


def _op_fn(mask, gen_start, BL, steps, pol):
    code, rule_params = pol.code, pol.rule_params()

    def fn(logits, x, rs, traj, prev, ws, rule_state, prev_logp, seed, plen):
        return torch.ops.prr_ext.step(logits, x, rs, traj, prev, ws, rule_state, prev_logp, seed, plen, None, None,
                                      None, None, None, mask, gen_start, BL, steps, code, 0, 0, True, 0.0, pol.param,
                                      1.0, [0, 0, 0], rule_params)
    return fn


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_torch_compile(mode):
    V, B, P, G, BL, steps = 300, 2, 4, 16, 8, 8
    mask = V - 1
    pol = prr_ext.Threshold(0.3)
    fn = _op_fn(mask, P, BL, steps, pol)
    cfn = torch.compile(fn, fullgraph=True, mode=mode)
    _, s1 = make_states(pol, B, P, G, BL, steps, mask, V)
    _, s2 = make_states(pol, B, P, G, BL, steps, mask, V)
    g = torch.Generator().manual_seed(5)
    for _ in range(6):
        lg = gen_logits(B, P + G, V, torch.float32, g).cuda()
        args = lambda s: (lg, s.x, s.row_state, s.traj, s.prev_p1, s.workspace, s.rule_state, s.prev_logp,  # noqa
                          s.seed, s.prompt_lens)
        c1, t1, st1 = cfn(*args(s1))
        c2, t2, st2 = fn(*args(s2))
        assert torch.equal(c1, c2) and torch.equal(t1, t2)
        assert torch.equal(s1.x, s2.x) and torch.equal(s1.row_state, s2.row_state)
        torch.testing.assert_close(st1, st2, equal_nan=True)


def test_opcheck_cuda():
    """Schema, fake tensor and AOT dispatch. The AOT check compares outputs with assert_close, for which NaN != NaN,
    so it runs where every statistic is finite: block-only logits, every position masked, PRR (all 7 columns)."""
    V, B, P, G, BL, steps = 100, 2, 3, 8, 4, 4
    mask = V - 1
    for pol in [prr_ext.LowConfidence(), prr_ext.PRR(prr_ext.Controller.init(0), tau=0.5)]:
        _, s = make_states(pol, B, P, G, BL, steps, mask, V)
        is_prr = isinstance(pol, prr_ext.PRR)
        lg = torch.randn(B, BL if is_prr else P + G, V, device="cuda")
        args = (lg, s.x, s.row_state, s.traj, s.prev_p1, s.workspace, s.rule_state, s.prev_logp, s.seed,
                s.prompt_lens, s.controller_buf, None, None, None, None, mask, s.gen_start, BL, steps, pol.code, 0, 0,
                True, 0.0, pol.param, 1.0, pol.controller.dims() if is_prr else [0, 0, 0], pol.rule_params())
        utils = ("test_schema", "test_autograd_registration", "test_faketensor") + (
            ("test_aot_dispatch_dynamic",) if is_prr else ())
        torch.library.opcheck(torch.ops.prr_ext.step.default, args, test_utils=utils)


# ---------------------------------------------------------------------------------------------------------------
# The rules of prr/rules.h (LocalLeap, SlowFast, KLASS, R2's passes over any base rule): the selecting CTA runs them
# after the base rule's prefix, a thread per position (rules_cta.cuh); KLASS's KL is a second sweep over every row.
# ---------------------------------------------------------------------------------------------------------------
def rule_policy(name, salt=0):
    """helpers.make_policy's random settings for one of SET_RULE_NAMES, seeded by the name (and salt)."""
    pol, step_inputs = make_policy(name, Rand(zlib.crc32(name.encode()) + 7919 * salt))
    assert step_inputs is None
    return pol


@pytest.mark.parametrize("name", SET_RULE_NAMES)
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T", [0.0, 0.7])
@pytest.mark.parametrize("full", [True, False])
def test_rules_match_cpu(name, dt, T, full):
    """Every new rule, full and block-only logits, greedy and sampled, B > 1, an odd vocabulary; several random
    settings per rule (R2's passes each on or off)."""
    for salt in range(3):
        decode_compare(rule_policy(name, salt), B=3, P=5, G=24, BL=8, steps=12, V=301, dt=dt, T=T, full=full,
                       loops=40, seed=salt)


@pytest.mark.parametrize("name", ["local_leap", "klass", "r2_threshold", "r2_slow_fast"])
def test_rules_match_reference(name):
    decode_compare(rule_policy(name), with_reference=True, V=257, dt=torch.bfloat16, loops=30)
    decode_compare(rule_policy(name, 1), with_reference=True, V=257, T=0.9, full=False, loops=30)


@pytest.mark.parametrize("name", SET_RULE_NAMES)
@pytest.mark.parametrize("BL", [32, 33, 100, 600, 1100])
def test_rules_block_lengths(launch_override, name, BL):
    """Blocks of one warp's sort (32), of the shared-memory bitonic sort (33, 100: the radix select is off for these
    rules; 600: several positions per thread of the rules' CTA passes) and beyond kSortCap (1100: the workspace rank
    sort, order() read from the workspace, the rules' serial drivers in one thread); tie-heavy rows
    (duplicated rows: equal confidences, runs of one argmax for R2's token clusters) and random ones."""
    steps = 4
    for salt in range(2):
        decode_compare(rule_policy(name, salt), B=2, P=3, G=BL, BL=BL, steps=steps, V=40, loops=6,
                       logits_fn=tie_logits, seed=salt)
    decode_compare(rule_policy(name, 2), B=1, P=3, G=2 * BL, BL=BL, steps=2 * steps, V=300, loops=6, seed=3)
    if BL == 100:  # CTAs of one warp select too
        launch_override("PRR_CUDA_NT", "32")
        decode_compare(rule_policy(name, 3), B=2, P=3, G=BL, BL=BL, steps=steps, V=40, loops=5, logits_fn=tie_logits)


@pytest.mark.parametrize("name", ["klass", "local_leap", "r2_threshold", "r2_slow_fast"])
@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float32])
def test_rules_big_vocab(launch_override, name, dt):
    """The benchmark vocabulary: a 32-row block split over clusters of CTAs (KLASS: the KL summed over the cluster
    in the leader), then one CTA per row with many register tiles per thread (KLASS's sweep reads every tile
    again), and an odd V (the per-element loads; KLASS's prev_logp rows not 16-byte aligned)."""
    V = 126464
    pol = rule_policy(name)
    decode_compare(pol, V=V, B=1, P=3, G=32, BL=32, steps=2, dt=dt, loops=3, seed=51)
    decode_compare(pol, V=V, B=2, P=3, G=64, BL=32, steps=4, dt=dt, T=1.0, loops=3, seed=52)
    decode_compare(pol, V=V + 1, B=2, P=3, G=32, BL=32, steps=2, dt=dt, loops=3, seed=53)
    launch_override("PRR_CUDA_CS", "1")
    launch_override("PRR_CUDA_NT", "64")
    decode_compare(pol, V=V, B=2, P=3, G=32, BL=32, steps=2, dt=dt, loops=3, seed=54)


@pytest.mark.parametrize("name", ["klass", "local_leap", "r2_factor"])
@pytest.mark.parametrize("cdt", [torch.bfloat16, torch.float64])
def test_rules_confidence_dtypes(name, cdt):
    decode_compare(rule_policy(name), cdt=cdt, dt=torch.bfloat16, V=301, loops=30)
    decode_compare(rule_policy(name, 1), cdt=cdt, dt=torch.float32, T=0.5, V=301, loops=30)
    decode_compare(rule_policy(name, 2), cdt=cdt, dt=torch.float64, V=301, loops=30, full=False)


@pytest.mark.parametrize("name", ["klass", "local_leap", "r2_threshold", "slow_fast"])
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
def test_rules_nan_and_inf_rows(name, dt):
    """Unusable rows (NaN, +inf, no finite non-mask logit: KLASS keeps no distribution, count -1) and -inf entries
    (kept as -inf log-probabilities)."""
    decode_compare(rule_policy(name), logits_fn=nan_logits, dt=dt, V=100, loops=30)
    decode_compare(rule_policy(name, 1), logits_fn=nan_logits, dt=dt, V=100, T=0.8, full=False, loops=30)


def test_klass_commits_through_the_kl_test():
    """KLASS on logits that change little between steps (half the rows peaked): the counts of steps with KL < kappa
    grow past the history, so steps commit more than the schedule's floor of one through the KL test, identically on
    both backends."""
    V, B, P, G, BL, steps = 500, 2, 3, 16, 16, 16
    pol = prr_ext.KLASS(conf_threshold=0.3, kl_threshold=0.05, history=2)
    g = torch.Generator().manual_seed(61)
    base = torch.randn(B, P + G, V, generator=g) * 2
    peaked = torch.rand(B, P + G, generator=g) < 0.5
    base.scatter_add_(2, torch.randint(0, V - 1, (B, P + G, 1), generator=g), 9.0 * peaked[..., None].float())
    most = []

    def logits_fn(B_, L, V_, dt, g_):
        return (base + 0.01 * torch.randn(B_, L, V_, generator=g_)).to(dt)

    def on_step(before, commit):
        most.append(int(commit.sum(1).max()))

    decode_compare(pol, B=B, P=P, G=G, BL=BL, steps=steps, V=V, loops=20, logits_fn=logits_fn, on_step=on_step)
    assert max(most) > 1, most


@pytest.mark.parametrize("name", ["klass", "r2_threshold", "r2_slow_fast", "local_leap"])
@pytest.mark.parametrize("B", [1, 3])
def test_rules_cuda_graph_replay(name, B):
    """A decode loop of the new rules captured in one CUDA graph (KLASS's prev_logp is allocated by the eager warm-up
    before the capture), replayed on fresh canvases and logits: the CPU op's commits, canvas, row_state, rule_state
    and prev_logp every time."""
    graph_replay_compare(rule_policy(name), B=B, P=4, G=16, BL=8, steps=8, V=500, N=6, trials=3)
    graph_replay_compare(rule_policy(name, 1), B=B, P=3, G=64, BL=64, steps=4, V=300, N=4, trials=2,
                         dt=torch.bfloat16)


UNIFORM_POLICIES = ["threshold", "factor", "eb", "prr_temp", "prr_power", "prr_weighted"]


@pytest.mark.parametrize("pol", UNIFORM_POLICIES)
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T", [0.0, 0.7])
@pytest.mark.parametrize("full", [True, False])
def test_uniform_canvas_matches_cpu(pol, dt, T, full):
    """A uniform canvas (mask_id None, DiffusionGemma): every block position is read at every step, blocks last
    exactly their steps, and the unaccepted positions are renoised between steps."""
    s_gpu = decode_compare(policies()[pol], B=3, P=5, G=24, BL=8, steps=12, V=301, dt=dt, T=T, full=full, loops=40,
                           uniform=True)
    assert bool((s_gpu.nfe == 12).all())


@pytest.mark.parametrize("name", ["local_leap", "eb"])
def test_uniform_canvas_matches_reference(name):
    pol = rule_policy("local_leap") if name == "local_leap" else policies()[name]
    decode_compare(pol, with_reference=True, V=257, dt=torch.bfloat16, loops=30, uniform=True)
    decode_compare(pol, V=126464, B=2, P=3, G=64, BL=32, steps=4, dt=torch.bfloat16, T=1.0, loops=4, uniform=True)
