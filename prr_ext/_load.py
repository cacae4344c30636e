"""Loads the compiled extension `prr_ext._C` (which registers torch.ops.prr_ext.step), or says what to do."""
from __future__ import annotations

import os

import torch  # noqa: F401  (loads libtorch before the extension)

try:
    from . import _C
except ImportError as err:  # no built _C next to this file: typically the source tree shadows the installed package
    here = os.path.dirname(os.path.abspath(__file__))
    raise ImportError(
        f"prr_ext's compiled extension (_C) was not found next to {here}. If you installed prr_ext with pip and "
        "run Python from the repository root, the source folder ./prr_ext shadows the installed package: run from "
        "another folder, or use `python -P` (PYTHONSAFEPATH=1). For a build inside the source tree: "
        "`pip install --no-build-isolation -e .`.") from err

__all__ = ["_C"]
