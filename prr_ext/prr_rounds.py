"""PRR's self-evolving training rounds: the resumable on-disk layout and the driver that `python -m prr_ext.train` and
`python -m prr_testbed.train_controller` share (docs/prr_training.md).

A run folder holds

    run.json                              the settings (a resumed run must have the same ones)
    round<r>/rollouts_rank<k>.safetensors  rank k's rollouts of round r (written atomically: present = done)
    round<r>/controller/                  the round's controller, with its tuned tau (policy.json)
    round<r>/round.json                   the round's record, written last: present = the round is finished

Round 0 rolls out with LowConfidence (full refinement); round r > 0 with the previous round's PRR(controller, tau).
Under torchrun every rank rolls out its share of the prompts and rank 0 fits on all ranks' shards of rounds 0..r;
the barriers keep the ranks in step, and every rank then loads the round's controller.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch

from .controller import Controller
from .policies import PRR, LowConfidence, Policy
from .prr_training import Rollout, convergence_labels

SHARD_PREFIX = "rollouts_rank"


# ---------------------------------------------------------------------------------------------------------------
# torch.distributed, when the command runs under torchrun
# ---------------------------------------------------------------------------------------------------------------
def _dist():
    return torch.distributed if torch.distributed.is_available() and torch.distributed.is_initialized() else None


def init_distributed(device: torch.device) -> torch.device:
    """Join torchrun's process group (NCCL on GPUs, gloo on the CPU) when WORLD_SIZE > 1; returns this rank's
    device (cuda:LOCAL_RANK on GPUs)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    return device


def rank() -> int:
    d = _dist()
    return d.get_rank() if d else 0


def world_size() -> int:
    d = _dist()
    return d.get_world_size() if d else 1


def barrier() -> None:
    d = _dist()
    if d:
        d.barrier()


def shutdown() -> None:
    if _dist():
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------------------------
def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def write_json(path: str, doc: Dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f, indent=2)
    os.replace(path + ".tmp", path)  # atomic: another rank never reads half a file


def check_run_settings(out: str, settings: Dict, defaults: Optional[Dict] = None) -> Optional[str]:
    """None when `out` holds no run or a run with these settings; else what differs, for the error message.
    `defaults`: the value of a setting that an older run.json lacks (a setting added since, at its default)."""
    path = os.path.join(out, "run.json")
    if not os.path.isfile(path):
        if os.path.isdir(out) and any(n.startswith("round") for n in os.listdir(out)):
            return f"{out} holds rounds but no run.json, so their settings are unknown"
        return None
    old = read_json(path).get("settings", {})
    defaults = defaults or {}
    diff = [f"{k} {old.get(k, defaults.get(k))!r} there, {v!r} now" for k, v in settings.items()
            if old.get(k, defaults.get(k)) != v]
    return f"{out} holds a run with other settings ({'; '.join(diff)})" if diff else None


def shard_path(out: str, r: int, rank_: int) -> str:
    return os.path.join(out, f"round{r}", f"{SHARD_PREFIX}{rank_}.safetensors")


def save_shard(path: str, rollouts: Dict[str, Rollout]) -> None:
    """Save one rank's rollouts of a round, each under its name (a task family, a batch index) as tensor prefix."""
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tensors = {}
    for name, ro in rollouts.items():
        tensors.update(ro.to_tensors(prefix=f"{name}."))
    if not tensors:  # a rank with no prompts: an empty shard still marks it done
        tensors = {"empty": torch.zeros(0)}
    save_file(tensors, path + ".tmp")
    os.replace(path + ".tmp", path)  # atomic: a half-written shard never counts as done


def load_labelled(out: str, rounds: Sequence[int], label: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Features [N, F] and labels [N] ("progress" or "binary") of every record of the given rounds, all ranks'
    shards."""
    from safetensors.torch import load_file

    feats, labels = [], []
    for r in rounds:
        rd = os.path.join(out, f"round{r}")
        for name in sorted(os.listdir(rd)):
            if not (name.startswith(SHARD_PREFIX) and name.endswith(".safetensors")):
                continue
            d = load_file(os.path.join(rd, name))
            for pre in sorted({k.split(".", 1)[0] for k in d if k.endswith(".feats")}):
                ro = Rollout.from_tensors(d, prefix=pre + ".")
                if ro.feats.shape[0] == 0:
                    continue
                progress, binary = convergence_labels(ro)
                feats.append(ro.feats)
                labels.append(progress if label == "progress" else binary)
    if not feats:
        raise RuntimeError(f"no rollout records under {out} for rounds {list(rounds)}")
    return torch.cat(feats), torch.cat(labels)


# ---------------------------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------------------------
def run_rounds(out: str, rounds: int, *, collect: Callable[[int, Policy], Dict[str, Rollout]],
               finish: Callable[[int, str, float], Dict], log: Callable[..., None] = print
               ) -> Tuple[Controller, float]:
    """Rounds 0..`rounds`, each resumed from disk when finished.

    collect(r, policy) -> {name: Rollout}: this rank's rollouts of round r with `policy` (saved as its shard).
    finish(r, controller_dir, t0) -> record, on rank 0 only: fit on the shards of rounds 0..r, tune, save the
    controller and its tuned tau into controller_dir, return the round's record (with "tau"; t0 = the round's
    start, for its seconds), which becomes round<r>/round.json.
    Returns the last round's (controller, tau), on every rank.
    """
    ctrl: Optional[Controller] = None
    tau: Optional[float] = None
    me = rank()
    for r in range(rounds + 1):
        cdir = os.path.join(out, f"round{r}", "controller")
        meta_path = os.path.join(out, f"round{r}", "round.json")
        if os.path.exists(meta_path):
            ctrl, tau = Controller.load(cdir), read_json(meta_path)["tau"]
            log(f"round {r}: loaded (tau={tau})")
            continue
        t0 = time.time()
        shard = shard_path(out, r, me)
        if not os.path.exists(shard):
            save_shard(shard, collect(r, LowConfidence() if r == 0 else PRR(ctrl, tau=tau)))
        barrier()
        if me == 0:
            write_json(meta_path, finish(r, cdir, t0))
        barrier()
        ctrl, tau = Controller.load(cdir), read_json(meta_path)["tau"]
    return ctrl, tau
