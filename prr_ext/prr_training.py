"""PRR training, model-agnostic pieces: rollouts, empirical-convergence-progress labels, controller fitting.

A rollout decodes a batch with any policy through `prr_ext.step` and records, for every step and every candidate
(masked position of the active block), the controller's 13 base features, the candidate token and whether it was
committed. Labels then compare each position's candidate trajectory with the *target* tokens that full refinement
produces (docs/prr_training.md):

    progress(t) = |{u in [t, t_c] : a_u == y}| / (t_c - t + 1)        (1 iff the candidate never changes again)
    binary(t)   = [a_t == y]                                         (Learn2PD's EGP label, for the ablation)

with a_u the position's candidate at its u-th step, t_c the step at which it was committed and y its target token.
The controller (prr_ext.Controller) is fit to these labels by binary cross-entropy on soft targets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch

from . import reference as R
from .constants import NUM_BASE_FEATURES
from .controller import Controller
from .decode_common import hidden_states_of, logits_of
from .generate import fill_after_eos
from .ops import step
from .policies import PRR, LowConfidence, Policy
from .state import State


@dataclass
class Rollout:
    """Records of one batch's decode. N records (one per step and candidate), R rows, L canvas columns."""

    feats: torch.Tensor      # [N, 13 + r] fp32 controller features (13 base, then r hidden-state features)
    row: torch.Tensor        # [N] int64 row index (into `final`)
    col: torch.Tensor        # [N] int64 canvas column
    t: torch.Tensor          # [N] int64 the row's step count at the record
    cand: torch.Tensor       # [N] int64 candidate token
    committed: torch.Tensor  # [N] bool committed at this step
    final: torch.Tensor      # [R, L] int64 final canvases
    target: torch.Tensor     # [R, L] int64 full-refinement target tokens (the labels' y)
    nfe: torch.Tensor        # [R] int64

    def to_tensors(self, prefix: str = "") -> Dict[str, torch.Tensor]:
        return {prefix + k: getattr(self, k).contiguous().cpu() for k in self.__dataclass_fields__}

    @classmethod
    def from_tensors(cls, d: Dict[str, torch.Tensor], prefix: str = "") -> "Rollout":
        return cls(**{k: d[prefix + k] for k in cls.__dataclass_fields__})

    @staticmethod
    def concat(parts: Sequence["Rollout"]) -> "Rollout":
        """Concatenate rollouts, renumbering rows."""
        offs, out = 0, {k: [] for k in Rollout.__dataclass_fields__}
        for p in parts:
            for k in out:
                v = getattr(p, k)
                out[k].append(v + offs if k == "row" else v)
            offs += p.final.shape[0]
        return Rollout(**{k: torch.cat(v) for k, v in out.items()})


def _features_after_step(state: State, snap_x, snap_rs, snap_prev, lo: int, vocab: int):
    """Controller features of the candidates of the step just taken (reconstructed from snapshots taken before
    the step and the op's statistics), as reference.controller_features defines them. Returns (feats [B, BL, 13],
    candidate mask [B, BL])."""
    BL = state.block_length
    hi = lo + BL
    Lr = state.last_tokens.shape[1]
    r0 = 0 if Lr == BL else lo
    tokens, stats = state.last_tokens[:, r0:r0 + BL], state.last_stats[:, r0:r0 + BL]
    cand_mask = tokens >= 0
    col = lambda v: v[:, None]  # noqa: E731  per-row value against [B, BL]
    step_in_block = snap_rs[:, R.RS_STEP]
    prev_p1 = torch.where(col(step_in_block) == 0, torch.zeros_like(snap_prev), snap_prev)
    active_block = (lo - state.gen_start) // BL
    feats = R.controller_features(
        row_len=col(state.prompt_lens + state.gen_length),
        masks_in_row=col((snap_x[:, state.gen_start:] == state.mask_id).sum(1)), nfe=col(snap_rs[:, R.RS_NFE]),
        steps=state.steps, block_start_true=col(state.prompt_lens + active_block * BL), block_length=BL,
        masks_in_block=col((snap_x[:, lo:hi] == state.mask_id).sum(1)),
        positions=torch.arange(BL, device=snap_x.device).expand(snap_x.shape[0], BL), step_in_block=col(step_in_block),
        steps_per_block=state.steps_per_block, p1=stats[..., R.STAT_P1], p2=stats[..., R.STAT_P2],
        entropy=stats[..., R.STAT_ENTROPY], vocab=vocab, last_change=state.traj[:, :, 1], prev_p1=prev_p1)
    return feats, cand_mask


@torch.no_grad()
def rollout(model: Callable, x: torch.Tensor, prompt_length, *, policy: Policy, block_length: int, steps: int,
            mask_id: int, max_steps: Optional[int] = None, block_continuation: bool = False,
            hidden_features=None, eos_id: Optional[int] = None) -> Rollout:
    """Decode canvas `x` [R, L] with `policy` and record every candidate of every step.

    block_continuation: the labels' targets are what full refinement (LowConfidence, one schedule per block) makes
    of each block from the state in which this policy entered it; otherwise the targets are this rollout's own
    final tokens (right when `policy` is itself full refinement).
    hidden_features: a prr_ext.HiddenFeatures: the model is called as model(x, output_hidden_states=True), the r
    features of each candidate's last hidden state (same forward as its logits) follow its 13 base features in the
    records, and a PRR policy whose controller takes r extra features gets them as `step`'s extra_features.
    eos_id: EOS early exit, as generate(eos_fill=True): after every step a row whose answer and EOS are committed
    gets the rest of its canvas as EOS and takes no more steps, so the records cover what such a decode decides
    (the answer, its EOS), not the padding after it."""
    n_extra = policy.base_rule.controller.extra_features if isinstance(policy.base_rule, PRR) else 0
    if hidden_features is not None and n_extra not in (0, hidden_features.r):
        raise ValueError(f"the policy's controller takes {n_extra} extra features but hidden_features gives "
                         f"{hidden_features.r}")
    if hidden_features is None and n_extra:
        raise ValueError(f"the policy's controller takes {n_extra} extra features: pass hidden_features= (the "
                         "HiddenFeatures it was trained with)")
    state = State(x.clone(), mask_id, prompt_length, block_length, steps, policy)
    recs: Dict[str, List[torch.Tensor]] = {k: [] for k in ("feats", "row", "col", "t", "cand", "committed")}
    entries: List[tuple] = []  # (block index, rows, canvases at block entry)
    BL = block_length
    limit = max_steps or 4 * steps + 8
    for _ in range(limit):
        if state.done:
            break
        snap_x, snap_rs, snap_prev = state.x.clone(), state.row_state.clone(), state.prev_p1.clone()
        active = int(snap_rs[:, R.RS_BLOCK].min())
        lo = state.gen_start + active * BL
        if block_continuation:
            entering = (snap_rs[:, R.RS_BLOCK] == active) & (snap_rs[:, R.RS_STEP] == 0)
            if bool(entering.any()):
                rows = entering.nonzero().squeeze(-1)
                entries.append((active, rows, snap_x[rows]))
        extra = None
        if hidden_features is None:
            logits = logits_of(model(state.x))
        else:
            out = model(state.x, output_hidden_states=True)
            logits = logits_of(out)
            hidden = hidden_states_of(out, "hidden_features")
            if hidden.shape[:2] != logits.shape[:2]:
                raise ValueError(f"the model's hidden states {tuple(hidden.shape)} do not cover the logits' rows "
                                 f"{tuple(logits.shape[:2])}")
            extra = hidden_features(hidden)  # [R, Lr, r]
        commit = step(logits, state, extra_features=extra if n_extra else None)
        feats, cand_mask = _features_after_step(state, snap_x, snap_rs, snap_prev, lo, logits.shape[-1])
        if eos_id is not None:  # after the features: they read the step's own commits
            fill_after_eos(state, eos_id)
        if extra is not None:  # the candidates' rows of the logits: the block's columns of a whole-canvas forward
            r0 = 0 if logits.shape[1] == BL else lo
            feats = torch.cat([feats.float(), extra[:, r0:r0 + BL].to(feats.device)], -1)
        b_idx, j_idx = cand_mask.nonzero(as_tuple=True)
        recs["feats"].append(feats[b_idx, j_idx])
        recs["row"].append(b_idx)
        recs["col"].append(j_idx + lo)
        recs["t"].append(snap_rs[b_idx, R.RS_NFE])
        recs["cand"].append(state.last_tokens[:, (0 if state.last_tokens.shape[1] == BL else lo):][b_idx, j_idx])
        recs["committed"].append(commit[b_idx, j_idx + lo])
    else:
        if not state.done:
            raise RuntimeError("rollout did not finish within its step limit")
    final = state.x
    target = final.clone()
    if block_continuation:
        for blk, rows, canvas in entries:
            cont = _continue_block(model, canvas, state, blk)
            a, b = state.gen_start + blk * BL, state.gen_start + (blk + 1) * BL
            target[rows, a:b] = cont[:, a:b]
    out = {k: torch.cat(v) if v else torch.empty(0) for k, v in recs.items()}
    if not recs["feats"]:
        out["feats"] = torch.empty(0, NUM_BASE_FEATURES + (hidden_features.r if hidden_features is not None else 0))
    return Rollout(feats=out["feats"].float().cpu(), row=out["row"].long().cpu(), col=out["col"].long().cpu(),
                   t=out["t"].long().cpu(), cand=out["cand"].long().cpu(), committed=out["committed"].bool().cpu(),
                   final=final.cpu(), target=target.cpu(), nfe=state.nfe.clone().cpu())


@torch.no_grad()
def _continue_block(model: Callable, canvas: torch.Tensor, like: State, block: int) -> torch.Tensor:
    """Full refinement (LowConfidence, LLaDA schedule) of one block from the given canvases."""
    st = State(canvas.clone(), like.mask_id, like.gen_start, like.block_length, like.steps, LowConfidence())
    st.row_state[:, R.RS_BLOCK] = block
    for _ in range(like.steps_per_block):
        step(logits_of(model(st.x)), st)
    return st.x


def convergence_labels(ro: Rollout):
    """(progress [N], binary [N]) labels of every record, against ro.target (see the module docstring).

    A position's trajectory is its records in step order up to and including the step that committed it."""
    L = ro.final.shape[1]
    key = ro.row * L + ro.col
    order = torch.argsort(ro.t, stable=True)
    order = order[torch.argsort(key[order], stable=True)]  # by position, then step
    y = ro.target[ro.row, ro.col]
    eq = (ro.cand == y)[order].double()
    k = key[order]
    seg_start = torch.ones_like(k, dtype=torch.bool)
    seg_start[1:] = k[1:] != k[:-1]
    seg_id = torch.cumsum(seg_start.long(), 0) - 1
    first = seg_start.nonzero().squeeze(-1)  # first record of each position
    n_seg = first.numel()
    tot_eq = torch.zeros(n_seg, dtype=torch.float64).index_add_(0, seg_id, eq)
    tot_n = torch.zeros(n_seg, dtype=torch.float64).index_add_(0, seg_id, torch.ones_like(eq))
    pre_eq = torch.cumsum(eq, 0) - eq  # exclusive prefix over the whole array ...
    pre_eq = pre_eq - pre_eq[first][seg_id]  # ... restarted at each position
    pre_n = (torch.arange(k.numel()) - first[seg_id]).double()
    progress_sorted = (tot_eq[seg_id] - pre_eq) / (tot_n[seg_id] - pre_n)  # suffix mean, current step included
    progress = torch.empty_like(progress_sorted)
    progress[order] = progress_sorted
    return progress.float(), (ro.cand == y).float()


class ControllerNet(torch.nn.Module):
    """Trainable twin of prr_ext.Controller (same parameter names and forward)."""

    def __init__(self, in_features: int, hidden: Sequence[int], mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        dims = [in_features] + list(hidden)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = torch.nn.Linear(dims[-1], 1)
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())

    def forward(self, feats: torch.Tensor) -> torch.Tensor:  # -> logit of s
        h = (feats - self.mean) / self.std
        for layer in self.layers:
            h = torch.nn.functional.silu(layer(h))
        return self.out(h).squeeze(-1)

    def to_controller(self, t_max: float, t_min: float) -> Controller:
        t = {"in_mean": self.mean, "in_std": self.std, "w_out": self.out.weight, "b_out": self.out.bias}
        for i, layer in enumerate(self.layers):
            t[f"w{i}"], t[f"b{i}"] = layer.weight, layer.bias
        return Controller(t, extra_features=self.mean.numel() - NUM_BASE_FEATURES, t_max=t_max, t_min=t_min)


def fit_controller(feats: torch.Tensor, labels: torch.Tensor, *, hidden=(32, 32), epochs: int = 8,
                   batch_size: int = 4096, lr: float = 3e-3, seed: int = 0, t_max: float = 1.5, t_min: float = 0.25,
                   device: str = "cpu", progress: bool = False) -> Controller:
    """Fit the controller MLP to soft labels in [0, 1] by binary cross-entropy (Adam, cosine decay)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mean = feats.mean(0)
    std = feats.std(0)
    std = torch.where(std > 1e-4, std, torch.ones_like(std))  # constant features pass through unscaled
    net = ControllerNet(feats.shape[1], hidden, mean, std).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    n = feats.shape[0]
    total = max(1, epochs * ((n + batch_size - 1) // batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    fd, ld = feats.to(device), labels.to(device)
    it = range(epochs)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="fit controller", leave=False)
    for _ in it:
        perm = torch.randperm(n, generator=g).to(device)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(fd[idx]), ld[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.cpu().to_controller(t_max, t_min)
