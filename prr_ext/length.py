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
import numbers
import os
from typing import Optional

import torch

__all__ = ["LengthPredictor", "LengthPredictorFormatError", "pooled_features"]

FORMAT = "prr_ext.length_predictor"
VERSION = 1
MAX_BUDGET = 2**31  # the longest canvas `budget` gives without `maximum`; far beyond any real response


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


def _real(name: str, value) -> float:
    """`value` as a float; TypeError naming `name` for anything but a real number (a str or bool included)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    return float(value)


def _int(name: str, value) -> int:
    """`value` as an int; TypeError naming `name` for anything but an integer (a float, str or bool included)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


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
        # Every part is checked here, once: a NaN or a misshapen tensor would otherwise surface as a garbage budget.
        parts = {"weight": weight, "mean": mean, "std": std, "residuals": residuals}
        for name, t in parts.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 1 or not t.is_floating_point():
                raise ValueError(f"{name} must be a 1-D float tensor, got {tuple(t.shape)} {t.dtype}")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} holds NaN or Inf")
        if not weight.shape == mean.shape == std.shape:
            raise ValueError(f"weight, mean and std must have one shape, got {tuple(weight.shape)}, "
                             f"{tuple(mean.shape)}, {tuple(std.shape)}")
        if not bool((std > 0).all()):
            raise ValueError("std must be > 0 everywhere")
        if residuals.numel() == 0:
            raise ValueError("a length predictor needs at least one calibration residual")
        self.bias = _real("bias", bias)
        if not math.isfinite(self.bias):
            raise ValueError(f"bias must be finite, got {self.bias}")
        self.weight = weight.detach().to("cpu", torch.float64)
        self.mean, self.std = mean.detach().to("cpu", torch.float64), std.detach().to("cpu", torch.float64)
        self.residuals = residuals.detach().to("cpu", torch.float64).sort().values
        self.fingerprint = str(fingerprint)
        self.meta = dict(meta or {})

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
        if not bool((torch.isfinite(y) & (y >= 1)).all()):
            raise ValueError("lengths must be finite and >= 1 (a response of at least one token, its EOS)")
        ridge, calibration_fraction = _real("ridge", ridge), _real("calibration_fraction", calibration_fraction)
        seed = _int("seed", seed)
        if not 0.0 < calibration_fraction < 1.0:
            raise ValueError(f"calibration_fraction must lie in (0, 1), got {calibration_fraction}")
        if not 0.0 <= ridge < math.inf:
            raise ValueError(f"ridge must be finite and >= 0, got {ridge}")
        if not -2**63 <= seed < 2**64:
            raise ValueError(f"seed must lie in [-2**63, 2**64) (torch.Generator's range), got {seed}")
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
        if not bool(torch.isfinite(std).all() and torch.isfinite(gram).all()):
            raise ValueError("the fit overflows float64 (features near its limit): scale the features")
        # Without a ridge, a rank-deficient Gram matrix fails the solve, or (rounding) splits the weight arbitrarily
        # between copies of a column; numerical rank catches both.
        if ridge == 0.0 and int(torch.linalg.matrix_rank(gram, hermitian=True)) < gram.shape[0]:
            raise ValueError("the ridge=0 fit is singular (duplicate or collinear feature columns, or fewer pairs "
                             "than features): use ridge > 0")
        weight = torch.linalg.solve(gram, z.T @ (t - bias))
        residuals = y[cal].log() - (bias + ((x[cal] - mean) / std) @ weight)
        return cls(weight, bias, mean, std, residuals, fingerprint=fingerprint,
                   meta=dict(meta or {}, pairs=n, calibration_pairs=n_cal, ridge=ridge, seed=seed))

    # ------------------------------------------------------------------ prediction
    def predict_log(self, features) -> torch.Tensor:
        """The predicted log length, [N] float64 (+-inf where it overflows). Features so large that the arithmetic
        gives NaN are a ValueError: no length can be read from them."""
        x = _features(features, self.n_features)
        out = self.bias + ((x - self.mean) / self.std) @ self.weight
        nan = torch.isnan(out)
        if bool(nan.any()):
            raise ValueError(f"rows {nan.nonzero().flatten()[:8].tolist()} of features overflow the prediction to "
                             "NaN (values near the float64 limit): scale them as the fit's features were")
        return out

    def margin(self, target_truncation: float = 0.02) -> float:
        """The split-conformal quantile of the calibration residuals for `target_truncation` (log scale); +inf
        when the calibration split is too small to promise that rate."""
        # a one-element tensor reads as its number; anything else goes through _real, which refuses a str ("0.02")
        if isinstance(target_truncation, torch.Tensor) and target_truncation.numel() == 1:
            target_truncation = target_truncation.item()
        a = _real("target_truncation", target_truncation)
        if not 0.0 < a < 1.0:
            raise ValueError(f"target_truncation must lie in (0, 1), got {target_truncation}")
        n = self.residuals.numel()
        k = math.ceil((n + 1) * (1.0 - a))
        return math.inf if k > n else float(self.residuals[k - 1])

    def budget(self, features, target_truncation: float = 0.02, *, multiple: int = 1,
               maximum: Optional[int] = None) -> torch.Tensor:
        """Canvas lengths [N] int64: exp(prediction + margin), rounded up to a multiple of `multiple` (e.g. the
        block length) and capped at `maximum` (which a too-small calibration split's infinite margin gives, and a
        prediction that overflows exp). Without `maximum`, a length above MAX_BUDGET (2**31) is a ValueError naming
        the rows, not a silent cap: such a prediction comes from features far outside the fit's."""
        multiple = _int("multiple", multiple)
        if not 1 <= multiple <= MAX_BUDGET:
            raise ValueError(f"multiple must be a positive int <= MAX_BUDGET ({MAX_BUDGET}), got {multiple!r}")
        if maximum is not None:
            maximum = _int("maximum", maximum)
            if not multiple <= maximum <= MAX_BUDGET:
                raise ValueError(f"maximum must be an int in [multiple ({multiple}), MAX_BUDGET ({MAX_BUDGET})], "
                                 f"got {maximum!r}")
        m = self.margin(target_truncation)
        if math.isinf(m) and maximum is None:
            raise ValueError(f"{self.residuals.numel()} calibration residuals cannot promise a truncation rate of "
                             f"{target_truncation}; pass maximum= (the longest canvas) or calibrate on more pairs")
        raw = torch.exp(self.predict_log(features) + (0.0 if math.isinf(m) else m))
        if math.isinf(m):
            raw = torch.full_like(raw, float(maximum))
        # The cap comes before the int64 cast: the cast of inf (or of anything >= 2**63) is undefined.
        if maximum is not None:
            raw = raw.clamp_max(float(maximum))
        elif bool((raw > MAX_BUDGET).any()):
            rows = (raw > MAX_BUDGET).nonzero().flatten()[:8].tolist()
            raise ValueError(f"rows {rows} of features predict lengths above MAX_BUDGET ({MAX_BUDGET} tokens; "
                             "features far outside the fit's): pass maximum= (the longest canvas)")
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
        predictor fitted for another model is a LengthPredictorFormatError; so is every malformed config or tensor,
        naming the file."""
        cfg_path, st_path = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
        if not (os.path.isfile(cfg_path) and os.path.isfile(st_path)):
            raise LengthPredictorFormatError(f"{path} is not a length-predictor folder (config.json and "
                                             "model.safetensors)")
        try:
            with open(cfg_path) as f:
                cfg = json.load(f)
        except (OSError, ValueError) as e:  # unreadable, or not JSON (JSONDecodeError, UnicodeDecodeError)
            raise LengthPredictorFormatError(f"{cfg_path}: unreadable ({e})") from None
        try:
            from safetensors.torch import load_file

            t = load_file(st_path)
        except Exception as e:  # safetensors' own error class differs between its versions
            raise LengthPredictorFormatError(f"{st_path}: unreadable ({e})") from None
        if not isinstance(cfg, dict):
            raise LengthPredictorFormatError(f"{cfg_path}: holds a JSON {type(cfg).__name__}, not an object")
        if cfg.get("format") != FORMAT or cfg.get("version") != VERSION:
            raise LengthPredictorFormatError(f"{cfg_path}: format {cfg.get('format')!r} version "
                                             f"{cfg.get('version')!r}, expected {FORMAT!r} version {VERSION}")
        for key in ("n_features", "bias"):
            if key not in cfg:
                raise LengthPredictorFormatError(f"{cfg_path}: missing key {key!r}")
        if not isinstance(cfg.get("fingerprint", ""), str) or not isinstance(cfg.get("meta", {}), (dict, type(None))):
            raise LengthPredictorFormatError(f"{cfg_path}: fingerprint must be a string and meta an object, got "
                                             f"{cfg.get('fingerprint')!r} and {type(cfg.get('meta')).__name__}")
        missing = sorted({"weight", "mean", "std", "residuals"} - set(t))
        if missing:
            raise LengthPredictorFormatError(f"{st_path}: tensors missing: {missing}")
        if tuple(t["weight"].shape) != (cfg["n_features"],):
            raise LengthPredictorFormatError(f"{path}: weight has shape {tuple(t['weight'].shape)}, config.json "
                                             f"says n_features={cfg['n_features']!r}")
        if fingerprint is not None and cfg.get("fingerprint") != fingerprint:
            raise LengthPredictorFormatError(f"{path} was fitted for {cfg.get('fingerprint')!r}, not for "
                                             f"{fingerprint!r}: fit one for this model and tokenizer")
        try:
            return cls(t["weight"], cfg["bias"], t["mean"], t["std"], t["residuals"],
                       fingerprint=cfg.get("fingerprint", ""), meta=cfg.get("meta"))
        except (TypeError, ValueError) as e:  # the constructor's checks of each part
            raise LengthPredictorFormatError(f"{path}: {e}") from None

    def __repr__(self) -> str:
        return (f"LengthPredictor(n_features={self.n_features}, calibration={self.residuals.numel()}, "
                f"fingerprint={self.fingerprint!r})")
