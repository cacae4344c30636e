"""prr_ext: fast commit rules for masked-diffusion language-model decoding (LLaDA / Dream style).

    import prr_ext
    state = prr_ext.State(x, mask_id=126336, prompt_length=P, block_length=32, steps=256,
                          policy=prr_ext.Threshold(tau=0.9))
    while not state.done:
        logits = model(state.x).logits          # [B, P+G, V] (or [B, block_length, V] of the active block)
        prr_ext.step(logits, state)             # commits in place into state.x
    state.nfe                                   # forwards consumed per row

See README.md and docs/semantics.md.
"""
import torch  # noqa: F401  (loads libtorch before the extension)

from . import reference  # noqa: F401
from .controller import Controller, ControllerFormatError
from .generate import GenerateResult, generate
from .auto_length import model_fingerprint, query_features
from .hidden_features import HiddenFeatures
from .hub import DecodeResult, Decoder, load
from .length import LengthPredictor
from .ops import has_cuda_kernels, step
from .policies import (KLASS, PRR, R2, EntropyBound, Factor, LocalLeap, LowConfidence, Policy, RandomRemask, SlowFast,
                       Threshold)
from .state import State

__all__ = ["step", "State", "Policy", "LowConfidence", "RandomRemask", "Threshold", "Factor", "EntropyBound", "PRR",
           "LocalLeap", "SlowFast", "KLASS", "R2",
           "Controller", "ControllerFormatError", "reference", "has_cuda_kernels", "generate",
           "GenerateResult", "LengthPredictor", "model_fingerprint", "query_features",
           "load", "Decoder", "DecodeResult", "HiddenFeatures"]
__version__ = "0.1.0"
