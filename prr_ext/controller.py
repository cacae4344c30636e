"""PRR's token-wise controller: a small MLP over per-token features -> stability score s in (0, 1).

    x  = (features - in_mean) / in_std                    # [N, F_in], F_in = 13 base features + extra_features
    h  = silu(x @ w0.T + b0)                              # [N, H1]      H1 <= 64
    h  = silu(h @ w1.T + b1)                              # [N, H2]      optional second layer, H2 <= 64
    s  = sigmoid(h @ w_out.T + b_out)                     # [N]
    T  = t_max^(1 - s) * t_min^s                          # temperature map: T(0) = t_max >= 1, T(1) = t_min < 1

The same forward runs in-kernel (csrc/include/prr/controller.h) from `Controller.packed()`, a flat fp32 buffer.
Weights are stored as a directory holding `config.json` and `model.safetensors` (never pickle).
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict, Sequence

import torch

from .constants import MAX_FEATURES, MAX_HIDDEN, NUM_BASE_FEATURES

FORMAT = "prr_ext.controller"
VERSION = 1
MAX_LAYERS = 2

# The base features, in order. docs/semantics.md defines each; reference.controller_features computes them.
BASE_FEATURES = (
    "global_commit_rate",      # (row length - masks in row) / row length; row length = true prompt + G
    "global_step_ratio",       # forwards this row has consumed / steps
    "block_start_ratio",       # (true prompt length + block index * block_length) / row length
    "block_length_ratio",      # block_length / row length
    "block_commit_rate",       # (block_length - masks in block) / block_length
    "position_in_block",       # j / block_length
    "step_in_block_ratio",     # step in block / steps per block
    "since_last_flip_ratio",   # released PRR feature 8; equals step_in_block_ratio for masked tokens
    "top1_prob",               # p(argmax) at T = 1, fp32
    "margin",                  # p(top1) - p(top2)
    "normalized_entropy",      # H / log(V)
    "steps_since_change_ratio",  # (step in block - step at which the argmax last changed) / steps per block
    "prev_top1_prob",          # top1_prob at this position's previous step in the block (0 at its first step)
)


class ControllerFormatError(ValueError):
    """A controller file is missing, corrupt, or does not match the expected format/version/shapes."""


def read_json_config(path: str) -> dict:
    """The JSON object in the file `path`; ControllerFormatError, naming the file, when it cannot be read, is not
    JSON or holds something other than an object."""
    try:
        with open(path) as f:
            cfg = json.load(f)
    except OSError as e:
        raise ControllerFormatError(f"{path}: cannot read ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ControllerFormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ControllerFormatError(f"{path}: holds a JSON {type(cfg).__name__}, not an object")
    return cfg


class Controller:
    """A PRR controller: MLP weights, feature normalisation and the temperature map."""

    def __init__(self, tensors: Dict[str, torch.Tensor], *, extra_features: int = 0, t_max: float = 1.5,
                 t_min: float = 0.25):
        if isinstance(extra_features, bool) or not isinstance(extra_features, int):
            raise TypeError(f"extra_features must be an int, got {extra_features!r}")
        self.extra_features = extra_features
        self.t_max = float(t_max)
        self.t_min = float(t_min)
        self.tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in tensors.items()}
        self._validate()
        self._packed_cache: Dict[torch.device, torch.Tensor] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def init(cls, seed: int = 0, hidden: Sequence[int] = (32, 32), extra_features: int = 0, t_max: float = 1.5,
             t_min: float = 0.25) -> "Controller":
        """An untrained controller with PyTorch-default-like uniform init, drawn from `seed`. `hidden`: the widths
        of its 1 or 2 hidden layers, each in [1, MAX_HIDDEN]."""
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence) or not all(
                isinstance(h, int) and not isinstance(h, bool) for h in hidden):
            raise TypeError(f"hidden must be a sequence of ints (the hidden layers' widths), got {hidden!r}")
        if not 1 <= len(hidden) <= MAX_LAYERS or not all(1 <= h <= MAX_HIDDEN for h in hidden):
            raise ValueError(f"hidden must hold 1 or 2 widths in [1, {MAX_HIDDEN}], got {tuple(hidden)}")
        if isinstance(extra_features, bool) or not isinstance(extra_features, int) or extra_features < 0:
            raise ValueError(f"extra_features must be an int >= 0, got {extra_features!r}")
        hidden = tuple(hidden)
        g = torch.Generator().manual_seed(int(seed))
        dims = (NUM_BASE_FEATURES + extra_features,) + hidden + (1,)
        names = [("w0", "b0"), ("w1", "b1")][: len(hidden)] + [("w_out", "b_out")]
        t = {"in_mean": torch.zeros(dims[0]), "in_std": torch.ones(dims[0])}
        for (wn, bn), fan_in, fan_out in zip(names, dims[:-1], dims[1:]):
            bound = 1.0 / math.sqrt(fan_in)
            t[wn] = (torch.rand(fan_out, fan_in, generator=g) * 2 - 1) * bound
            t[bn] = (torch.rand(fan_out, generator=g) * 2 - 1) * bound
        return cls(t, extra_features=extra_features, t_max=t_max, t_min=t_min)

    @property
    def hidden(self) -> tuple:
        return tuple(self.tensors[w].shape[0] for w in ("w0", "w1") if w in self.tensors)

    @property
    def in_features(self) -> int:
        return NUM_BASE_FEATURES + self.extra_features

    def config(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "in_features": self.in_features,
                "extra_features": self.extra_features, "hidden": list(self.hidden), "activation": "silu",
                "t_max": self.t_max, "t_min": self.t_min, "feature_names": list(BASE_FEATURES)}

    def _validate(self):
        t = self.tensors
        if not (self.t_max >= 1.0 and 0.0 < self.t_min < 1.0) or math.isinf(self.t_max):
            raise ControllerFormatError(f"temperature map needs t_max >= 1 and 0 < t_min < 1, got t_max={self.t_max}"
                                        f", t_min={self.t_min}")
        if not 0 <= self.extra_features <= MAX_FEATURES - NUM_BASE_FEATURES:
            raise ControllerFormatError(f"extra_features must lie in [0, {MAX_FEATURES - NUM_BASE_FEATURES}] (at most "
                                        f"{MAX_FEATURES} inputs in all), got {self.extra_features}")
        layers = [w for w in ("w0", "w1") if w in t]
        if layers not in (["w0"], ["w0", "w1"]):
            raise ControllerFormatError(f"controller needs w0 (and optionally w1), found {sorted(t)}")
        expected = {"in_mean": (self.in_features,), "in_std": (self.in_features,)}
        fan_in = self.in_features
        for w, b in [("w0", "b0"), ("w1", "b1")][: len(layers)]:
            h = t[w].shape[0] if t[w].dim() == 2 else -1
            if not 1 <= h <= MAX_HIDDEN:
                raise ControllerFormatError(f"{w}: hidden width must be in [1, {MAX_HIDDEN}], got shape "
                                            f"{tuple(t[w].shape)}")
            expected[w], expected[b] = (h, fan_in), (h,)
            fan_in = h
        expected["w_out"], expected["b_out"] = (1, fan_in), (1,)
        missing = sorted(set(expected) - set(t))
        if missing:
            raise ControllerFormatError(f"controller tensors missing: {missing}")
        extra = sorted(set(t) - set(expected))
        if extra:
            raise ControllerFormatError(f"unexpected controller tensors: {extra}")
        for name, shape in expected.items():
            if tuple(t[name].shape) != shape:
                raise ControllerFormatError(f"{name}: expected shape {shape}, got {tuple(t[name].shape)}")
            if not torch.isfinite(t[name]).all():
                raise ControllerFormatError(f"{name}: contains NaN or Inf")
        if not (t["in_std"] > 0).all():
            raise ControllerFormatError("in_std must be > 0 everywhere")

    # ------------------------------------------------------------------ math (reference forward)
    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """features [..., in_features] -> stability score s [...] in (0, 1), computed in fp32."""
        t = self.tensors
        if features.shape[-1] != self.in_features:
            raise ValueError(f"features: expected last dim {self.in_features}, got {features.shape[-1]}")
        dev = features.device
        h = (features.float() - t["in_mean"].to(dev)) / t["in_std"].to(dev)
        for w, b in [("w0", "b0"), ("w1", "b1")]:
            if w in t:
                h = torch.nn.functional.silu(h @ t[w].to(dev).T + t[b].to(dev))
        return torch.sigmoid(h @ t["w_out"].to(dev).T + t["b_out"].to(dev)).squeeze(-1)

    def temperature(self, s: torch.Tensor) -> torch.Tensor:
        """The temperature map T(s) = t_max^(1-s) * t_min^s, fp32."""
        s = s.float()
        return torch.exp((1.0 - s) * math.log(self.t_max) + s * math.log(self.t_min))

    # ------------------------------------------------------------------ kernel buffer
    def packed(self, device: torch.device) -> torch.Tensor:
        """Flat fp32 buffer for the kernel: in_mean | in_std | w0^T | b0 | [w1^T | b1] | w_out | b_out | log t_max |
        log t_min, the weight matrices input-major (transposed; see csrc/include/prr/controller.h for why). Cached
        per device."""
        device = torch.device(device)
        buf = self._packed_cache.get(device)
        if buf is None:
            t = self.tensors
            parts = [t["in_mean"], t["in_std"], t["w0"].t(), t["b0"]]
            if "w1" in t:
                parts += [t["w1"].t(), t["b1"]]
            parts += [t["w_out"], t["b_out"], torch.tensor([math.log(self.t_max), math.log(self.t_min)])]
            buf = torch.cat([p.reshape(-1) for p in parts]).to(device)
            self._packed_cache[device] = buf
        return buf

    def dims(self) -> list:
        """[in_features, H1, H2 (0 if one layer)] as passed to the op."""
        h = self.hidden
        return [self.in_features, h[0], h[1] if len(h) > 1 else 0]

    # ------------------------------------------------------------------ files
    def save(self, path: str) -> None:
        """Write `path/config.json` and `path/model.safetensors`."""
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, os.path.join(path, "model.safetensors"))
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(self.config(), f, indent=2)

    @classmethod
    def load(cls, path: str) -> "Controller":
        """Load a controller saved by `save` (a directory with config.json + model.safetensors)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        cfg_path, w_path = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
        for p in (cfg_path, w_path):
            if not os.path.isfile(p):
                raise ControllerFormatError(f"controller file not found: {p}")
        cfg = read_json_config(cfg_path)
        if cfg.get("format") != FORMAT:
            raise ControllerFormatError(f"{cfg_path}: not a prr_ext controller config (format != {FORMAT!r})")
        if cfg.get("version") != VERSION:
            raise ControllerFormatError(f"{cfg_path}: controller version {cfg.get('version')} is not supported "
                                        f"(this prr_ext reads version {VERSION})")
        if cfg.get("activation", "silu") != "silu":
            raise ControllerFormatError(f"{cfg_path}: unsupported activation {cfg.get('activation')!r}")
        try:
            tensors = load_file(w_path)
        except (SafetensorError, OSError, ValueError) as e:
            raise ControllerFormatError(f"{w_path}: cannot read safetensors ({e})") from None
        try:
            ctrl = cls(tensors, extra_features=int(cfg["extra_features"]), t_max=float(cfg["t_max"]),
                       t_min=float(cfg["t_min"]))
        except KeyError as e:
            raise ControllerFormatError(f"{cfg_path}: missing key {e}") from None
        if int(cfg.get("in_features", ctrl.in_features)) != ctrl.in_features or list(cfg.get("hidden", [])) != list(
                ctrl.hidden):
            raise ControllerFormatError(f"{path}: config (in_features={cfg.get('in_features')}, hidden="
                                        f"{cfg.get('hidden')}) does not match the weights (in_features="
                                        f"{ctrl.in_features}, hidden={list(ctrl.hidden)})")
        return ctrl

    def __repr__(self) -> str:
        return (f"Controller(in_features={self.in_features}, hidden={list(self.hidden)}, t_max={self.t_max}, "
                f"t_min={self.t_min})")


# A controller folder may carry the PRR threshold its training run tuned on validation prompts (`{"tau": ...}` plus
# provenance), written by `python -m prr_ext.train` and `python -m prr_testbed.train_controller`.
TUNED_TAU_FILE = "policy.json"


def tuned_tau(path: str) -> "float | None":
    """The tau recorded in the controller folder `path` (its policy.json), or None when it has none.

    Raises ControllerFormatError when the file exists but holds no readable tau.

    Examples
    --------
    >>> import tempfile
    >>> tuned_tau(tempfile.mkdtemp()) is None
    True
    """
    file = os.path.join(path, TUNED_TAU_FILE)
    if not os.path.isfile(file):
        return None
    try:
        with open(file) as f:
            return float(json.load(f)["tau"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ControllerFormatError(f"{file} holds no readable tau ({e!r}): fix it, or delete it and give tau "
                                    "explicitly") from None
