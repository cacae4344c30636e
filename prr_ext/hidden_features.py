"""Hidden-state features for PRR's controller: a fixed linear map of the model's last hidden state to r features.

    hf = prr_ext.HiddenFeatures.fit(hidden, r=8)       # hidden [N, D]: last hidden states of generation positions
    extra = hf(h)                                     # h [B, L, D] -> [B, L, 8] float32, (h - mean) @ components
    prr_ext.step(logits, state, extra_features=extra)  # a PRR controller with extra_features=8
    hf.save(controller_dir); prr_ext.HiddenFeatures.load(controller_dir)   # None when the folder has none

The released PRR head reads hidden states; prr_ext's controller is a small MLP over 13 base features. A D-wide
hidden state (D = 4096 for LLaDA-8B) is too wide for the MLP's input (and for the op's feature buffer), so it is
reduced to its top-r principal directions, fitted once on the training prompts. The controller's first layer then
learns its own combination of them: a learned rank-r projection composed with this PCA. The map is deterministic
(fp64 SVD of at most `max_rows` evenly spaced centered rows, each direction's sign fixed), so every rank of a
distributed run fits the same one.

File format (beside the controller's config.json / model.safetensors): `hidden_features.safetensors` (`mean` [D],
`components` [D, r], float32) and `hidden_features.json` (format, version, r, dim, rows).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Union

import torch

from .controller import ControllerFormatError, read_json_config

__all__ = ["HiddenFeatures", "WEIGHTS_FILE", "CONFIG_FILE"]

WEIGHTS_FILE = "hidden_features.safetensors"
CONFIG_FILE = "hidden_features.json"
FORMAT = "prr_ext.hidden_features"
VERSION = 1
MAX_ROWS = 20000


class HiddenFeatures:
    """A fixed map h -> (h - mean) @ components of last hidden states h [..., D] to r features.

    Parameters
    ----------
    mean : [D] tensor, the fitted rows' mean.
    components : [D, r] tensor, orthonormal columns (the top-r principal directions).
    meta : optional provenance stored in the json (e.g. how many rows were fitted).
    """

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, meta: Optional[Dict[str, Any]] = None):
        if not isinstance(mean, torch.Tensor) or not isinstance(components, torch.Tensor):
            raise TypeError("mean and components must be tensors")
        if mean.dim() != 1 or components.dim() != 2 or components.shape[0] != mean.shape[0]:
            raise ValueError(f"mean must be [D] and components [D, r], got {tuple(mean.shape)} and "
                             f"{tuple(components.shape)}")
        if components.shape[1] < 1:
            raise ValueError("components must have at least one column (r >= 1)")
        self.mean = mean.detach().float().cpu().contiguous()
        self.components = components.detach().float().cpu().contiguous()
        self.meta = dict(meta or {})
        self._on: Dict[torch.device, tuple] = {}  # device -> (mean, components) copies

    @property
    def r(self) -> int:
        """The number of features (the controller's extra_features)."""
        return int(self.components.shape[1])

    @property
    def dim(self) -> int:
        """D, the hidden size the map reads."""
        return int(self.components.shape[0])

    @classmethod
    def fit(cls, hidden: torch.Tensor, r: int, max_rows: int = MAX_ROWS) -> "HiddenFeatures":
        """The top-r principal directions of `hidden` [N, D] (rows = hidden states of generation positions).

        Deterministic: at most `max_rows` evenly spaced rows are used, centered and decomposed by an fp64 SVD; each
        direction's sign makes its largest-magnitude entry positive (SVD signs are otherwise arbitrary).

        Parameters
        ----------
        hidden : [N, D] floating-point tensor, N >= 2, not all rows equal.
        r : features to keep, 1 <= r <= min(N - 1, D) (N centered rows span at most N - 1 directions), and at most
            the rank of the centered rows: a direction of zero variance is arbitrary, so it is refused.
        max_rows : cap on the rows decomposed (cost and memory), an int >= r + 1.
        """
        if not isinstance(hidden, torch.Tensor) or hidden.dim() != 2 or not hidden.is_floating_point():
            raise ValueError(f"hidden must be a [N, D] floating-point tensor, got "
                             f"{tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__}")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"r must be a positive int, got {r!r}")
        # the rows kept must span r directions about their mean, which takes r + 1 of them (so the subsample below
        # keeps enough whenever hidden has enough)
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < r + 1:
            raise ValueError(f"max_rows must be an int >= r + 1 = {r + 1} (r directions about the rows' mean need "
                             f"r + 1 rows), got {max_rows!r}")
        N, D = hidden.shape
        if N < 2:
            raise ValueError(f"hidden must have at least 2 rows (the directions are those of the rows' spread about "
                             f"their mean); hidden is [{N}, {D}]")
        if r > min(N - 1, D):
            raise ValueError(f"r={r} principal directions need r <= D and r <= N - 1 (N centered rows span at most "
                             f"N - 1 directions); hidden is [{N}, {D}]")
        if N > max_rows:  # evenly spaced, not random: no generator state, the same rows on every rank
            hidden = hidden[torch.linspace(0, N - 1, max_rows).round().long()]
        h = hidden.detach().to("cpu", torch.float64)
        if not bool(torch.isfinite(h).all()):
            raise ValueError("hidden holds non-finite values")
        mean = h.mean(0)
        _, s, vh = torch.linalg.svd(h - mean, full_matrices=False)
        # Centering leaves rounding of about eps * |h| in every entry; a singular value within that noise is a
        # direction of no variance, which the SVD picks arbitrarily.
        tol = max(h.shape) * torch.finfo(torch.float64).eps * float(torch.linalg.vector_norm(h))
        rank = int((s > tol).sum())
        if rank == 0:
            raise ValueError(f"hidden has no variance (its {h.shape[0]} rows decomposed are all equal): it has no "
                             "principal directions; fit on hidden states of varied positions and prompts")
        if rank < r:
            raise ValueError(f"r={r}: the {h.shape[0]} rows decomposed span only {rank} directions about their mean "
                             f"(the others have no variance and would be arbitrary); use r <= {rank} or more varied "
                             "rows")
        comp = vh[:r].T.contiguous()  # [D, r]
        idx = comp.abs().argmax(0)
        sign = torch.sign(comp[idx, torch.arange(r)])
        comp = comp * torch.where(sign == 0, torch.ones_like(sign), sign)
        return cls(mean, comp, {"rows": int(h.shape[0]), "rows_given": int(N)})

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., D] hidden states -> [..., r] float32 features on the hidden states' device."""
        if not isinstance(hidden, torch.Tensor) or hidden.shape[-1] != self.dim:
            raise ValueError(f"hidden states must end in D={self.dim} (the size HiddenFeatures was fitted on), got "
                             f"{tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__}"
                             ": was it fitted for another model?")
        dev = hidden.device
        if dev not in self._on:
            self._on[dev] = (self.mean.to(dev), self.components.to(dev))
        mean, comp = self._on[dev]
        return (hidden.float() - mean) @ comp

    # ------------------------------------------------------------------ files
    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write hidden_features.safetensors and hidden_features.json into the folder `path` (created)."""
        from safetensors.torch import save_file

        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        save_file({"mean": self.mean, "components": self.components}, os.path.join(path, WEIGHTS_FILE))
        with open(os.path.join(path, CONFIG_FILE), "w") as f:
            json.dump({"format": FORMAT, "version": VERSION, "r": self.r, "dim": self.dim, **self.meta}, f, indent=2)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> Optional["HiddenFeatures"]:
        """The map saved in the folder `path`, or None when it holds none (no hidden_features.safetensors).

        Raises ControllerFormatError, naming the file, when a file is unreadable or inconsistent."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = os.fspath(path)
        w_path, c_path = os.path.join(path, WEIGHTS_FILE), os.path.join(path, CONFIG_FILE)
        if not os.path.isfile(w_path):
            return None
        if not os.path.isfile(c_path):
            raise ControllerFormatError(f"{c_path} not found (it belongs with {w_path})")
        cfg = read_json_config(c_path)
        if cfg.get("format") != FORMAT or cfg.get("version") != VERSION:
            raise ControllerFormatError(f"{c_path}: not a {FORMAT} version {VERSION} file")
        try:
            t = load_file(w_path)
        except (SafetensorError, OSError, ValueError) as e:
            raise ControllerFormatError(f"{w_path}: cannot read safetensors ({e})") from None
        try:
            hf = cls(t["mean"], t["components"], {k: v for k, v in cfg.items()
                                                  if k not in ("format", "version", "r", "dim")})
        except (KeyError, ValueError, TypeError) as e:
            raise ControllerFormatError(f"{w_path}: needs tensors mean [D] and components [D, r] ({e!r})") from None
        if (hf.r, hf.dim) != (cfg.get("r"), cfg.get("dim")):
            raise ControllerFormatError(f"{w_path}: components [{hf.dim}, {hf.r}] do not match {c_path} (dim="
                                        f"{cfg.get('dim')}, r={cfg.get('r')})")
        if not (bool(torch.isfinite(hf.mean).all()) and bool(torch.isfinite(hf.components).all())):
            raise ControllerFormatError(f"{w_path}: holds non-finite values")
        return hf

    def __repr__(self) -> str:
        return f"HiddenFeatures(dim={self.dim}, r={self.r})"
