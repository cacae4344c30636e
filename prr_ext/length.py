"""Predict-then-Diffuse's length predictor: a response length from the query, enlarged by a data-driven margin.

A diffusion LM decodes a canvas whose length is fixed before the first step; a canvas too long wastes forwards on
padding, one too short truncates the answer. `LengthPredictor` maps a query's feature vector (e.g. the model's
hidden states of the prompt, mean-pooled over its tokens: `pooled_features`) to the log of the response length with
a ridge regression (lengths are heavy-tailed; on the log scale the errors are closer to symmetric), and keeps the
residuals of a held-out calibration split. The budget for a target truncation rate alpha is exp(prediction + q),
with q the split-conformal quantile of those residuals (the ceil((n + 1)(1 - alpha))-th smallest): for a query
exchangeable with the calibration split, P(length > budget) <= alpha. The target is a per-call argument because the
residuals, not a fixed margin, are stored.

    lp = LengthPredictor.fit(features, lengths, fingerprint="my-model@abc123")   # [N, F] float, [N] >= 1
    lp.save("length_predictor")                                                   # config.json + model.safetensors
    lp = LengthPredictor.load("length_predictor", fingerprint="my-model@abc123")
    budgets = lp.budget(query_features, target_truncation=0.02, multiple=32, maximum=1024)   # [M] int64
"""
from __future__ import annotations

import json
import math
import os
from typing import Optional

import torch

__all__ = ["LengthPredictor", "LengthPredictorFormatError", "pooled_features"]

FORMAT = "prr_ext.length_predictor"
VERSION = 1


class LengthPredictorFormatError(ValueError):
    """A length-predictor folder is missing, corrupt, or made for another model."""


def pooled_features(hidden: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean of the hidden states [B, P, D] over each row's prompt tokens (attention_mask [B, P], 1 = token), as
    float32 [B, D]: the query features of one forward of the prompt."""
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, P, D], got shape {tuple(hidden.shape)}")
    h = hidden.float()
    if attention_mask is None:
        return h.mean(1)
    if tuple(attention_mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"attention_mask must be [B, P] = {tuple(hidden.shape[:2])}, got "
                         f"{tuple(attention_mask.shape)}")
    m = attention_mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


def _features(x, n_features: Optional[int] = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"features must be a float [N, F] tensor, got {tuple(x.shape)} {x.dtype}")
    if n_features is not None and x.shape[1] != n_features:
        raise ValueError(f"features have {x.shape[1]} columns; this predictor was fitted on {n_features}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("features hold NaN or Inf")
    return x.detach().to("cpu", torch.float64)


class LengthPredictor:
    """Ridge regression of log(length) on standardised features, plus the calibration residuals (sorted)."""

    def __init__(self, weight: torch.Tensor, bias: float, mean: torch.Tensor, std: torch.Tensor,
                 residuals: torch.Tensor, *, fingerprint: str = "", meta: Optional[dict] = None):
        self.weight = weight.to(torch.float64)
        self.bias = float(bias)
        self.mean, self.std = mean.to(torch.float64), std.to(torch.float64)
        self.residuals = residuals.to(torch.float64).sort().values
        self.fingerprint = str(fingerprint)
        self.meta = dict(meta or {})
        if self.residuals.numel() == 0:
            raise ValueError("a length predictor needs at least one calibration residual")

    @property
    def n_features(self) -> int:
        return self.weight.numel()

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, features, lengths, *, ridge: float = 1.0, calibration_fraction: float = 0.25, seed: int = 0,
            fingerprint: str = "", meta: Optional[dict] = None) -> "LengthPredictor":
        """Fit on (features [N, F], lengths [N]): the regression on a random (1 - calibration_fraction) of the
        pairs, the residuals on the rest (split conformal: the margin must come from pairs the fit did not see)."""
        x = _features(features)
        y = torch.as_tensor(lengths, dtype=torch.float64).flatten()
        if y.numel() != x.shape[0]:
            raise ValueError(f"lengths has {y.numel()} values for {x.shape[0]} feature rows")
        if not bool((y >= 1).all()):
            raise ValueError("lengths must be >= 1 (a response of at least one token, its EOS)")
        if not 0.0 < calibration_fraction < 1.0:
            raise ValueError(f"calibration_fraction must lie in (0, 1), got {calibration_fraction}")
        if not ridge >= 0.0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        n = y.numel()
        n_cal = int(round(n * calibration_fraction))
        if n_cal < 1 or n - n_cal < 2:
            raise ValueError(f"{n} pairs are too few to fit on and calibrate with (fraction {calibration_fraction})")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        cal, tr = perm[:n_cal], perm[n_cal:]
        mean, std = x[tr].mean(0), x[tr].std(0, unbiased=False).clamp_min(1e-12)
        z, t = (x[tr] - mean) / std, y[tr].log()
        bias = float(t.mean())
        gram = z.T @ z + ridge * torch.eye(z.shape[1], dtype=torch.float64)
        weight = torch.linalg.solve(gram, z.T @ (t - bias))
        residuals = y[cal].log() - (bias + ((x[cal] - mean) / std) @ weight)
        return cls(weight, bias, mean, std, residuals, fingerprint=fingerprint,
                   meta=dict(meta or {}, pairs=n, calibration_pairs=n_cal, ridge=ridge, seed=seed))

    # ------------------------------------------------------------------ prediction
    def predict_log(self, features) -> torch.Tensor:
        """The predicted log length, [N] float64."""
        x = _features(features, self.n_features)
        return self.bias + ((x - self.mean) / self.std) @ self.weight

    def margin(self, target_truncation: float = 0.02) -> float:
        """The split-conformal quantile of the calibration residuals for `target_truncation` (log scale); +inf
        when the calibration split is too small to promise that rate."""
        a = float(target_truncation)
        if not 0.0 < a < 1.0:
            raise ValueError(f"target_truncation must lie in (0, 1), got {target_truncation}")
        n = self.residuals.numel()
        k = math.ceil((n + 1) * (1.0 - a))
        return math.inf if k > n else float(self.residuals[k - 1])

    def budget(self, features, target_truncation: float = 0.02, *, multiple: int = 1,
               maximum: Optional[int] = None) -> torch.Tensor:
        """Canvas lengths [N] int64: exp(prediction + margin), rounded up to a multiple of `multiple` (e.g. the
        block length) and capped at `maximum` (which a too-small calibration split's infinite margin gives)."""
        if not (isinstance(multiple, int) and multiple >= 1):
            raise ValueError(f"multiple must be a positive int, got {multiple!r}")
        if maximum is not None and not (isinstance(maximum, int) and maximum >= multiple):
            raise ValueError(f"maximum must be an int >= multiple ({multiple}), got {maximum!r}")
        m = self.margin(target_truncation)
        if math.isinf(m) and maximum is None:
            raise ValueError(f"{self.residuals.numel()} calibration residuals cannot promise a truncation rate of "
                             f"{target_truncation}; pass maximum= (the longest canvas) or calibrate on more pairs")
        raw = torch.exp(self.predict_log(features) + (0.0 if math.isinf(m) else m))
        if math.isinf(m):
            raw = torch.full_like(raw, float(maximum))
        out = (torch.ceil(raw / multiple) * multiple).to(torch.int64).clamp_min(multiple)
        return out if maximum is None else out.clamp_max(maximum // multiple * multiple)

    # ------------------------------------------------------------------ storage (safetensors + JSON, no pickle)
    def save(self, path: str) -> None:
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        save_file({"weight": self.weight.contiguous(), "mean": self.mean.contiguous(), "std": self.std.contiguous(),
                   "residuals": self.residuals.contiguous()}, os.path.join(path, "model.safetensors"))
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump({"format": FORMAT, "version": VERSION, "n_features": self.n_features, "bias": self.bias,
                       "fingerprint": self.fingerprint, "meta": self.meta}, f, indent=1)

    @classmethod
    def load(cls, path: str, *, fingerprint: Optional[str] = None) -> "LengthPredictor":
        """Read a folder written by `save`. With `fingerprint` (the model and tokenizer it is used with), a
        predictor fitted for another model is a LengthPredictorFormatError."""
        cfg_path, st_path = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
        if not (os.path.isfile(cfg_path) and os.path.isfile(st_path)):
            raise LengthPredictorFormatError(f"{path} is not a length-predictor folder (config.json and "
                                             "model.safetensors)")
        try:
            with open(cfg_path) as f:
                cfg = json.load(f)
            from safetensors.torch import load_file

            t = load_file(st_path)
        except Exception as e:  # JSON or safetensors that do not parse
            raise LengthPredictorFormatError(f"{path}: unreadable ({e})") from None
        if cfg.get("format") != FORMAT or cfg.get("version") != VERSION:
            raise LengthPredictorFormatError(f"{path}: format {cfg.get('format')!r} version {cfg.get('version')!r}, "
                                             f"expected {FORMAT!r} version {VERSION}")
        missing = {"weight", "mean", "std", "residuals"} - set(t)
        if missing or not (t["weight"].numel() == t["mean"].numel() == t["std"].numel() == cfg.get("n_features")):
            raise LengthPredictorFormatError(f"{path}: tensors missing or of the wrong sizes ({sorted(missing)})")
        if fingerprint is not None and cfg.get("fingerprint") != fingerprint:
            raise LengthPredictorFormatError(f"{path} was fitted for {cfg.get('fingerprint')!r}, not for "
                                             f"{fingerprint!r}: fit one for this model and tokenizer")
        return cls(t["weight"], cfg["bias"], t["mean"], t["std"], t["residuals"],
                   fingerprint=cfg.get("fingerprint", ""), meta=cfg.get("meta"))

    def __repr__(self) -> str:
        return (f"LengthPredictor(n_features={self.n_features}, calibration={self.residuals.numel()}, "
                f"fingerprint={self.fingerprint!r})")
