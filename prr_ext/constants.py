"""The integer codes and sizes that Python and the compiled op share, written once on the Python side.

csrc/include/prr/params.h defines the same values for the C++ kernels; python_tests/test_constants.py checks every
name here against the compiled module (`prr_ext._C.constants()`), so the two cannot drift apart silently.
"""
from __future__ import annotations

import torch

# Commit rules (the op's `policy` argument; prr_ext.policies maps each Policy class to one).
POLICY_LOW_CONFIDENCE = 0
POLICY_RANDOM = 1
POLICY_THRESHOLD = 2
POLICY_FACTOR = 3
POLICY_ENTROPY_BOUND = 4
POLICY_PRR = 5

# PRR's confidence shaping (the op's `shaping` argument).
SHAPING_TEMPERATURE = 0
SHAPING_POWER = 1
SHAPING_WEIGHTED = 2
SHAPINGS = {"temperature": SHAPING_TEMPERATURE, "power": SHAPING_POWER, "weighted": SHAPING_WEIGHTED}

# Dtype of the softmax behind the confidence (the op's `confidence_dtype` argument).
CONF_FLOAT32 = 0
CONF_FLOAT64 = 1
CONF_BFLOAT16 = 2
CONF_FLOAT16 = 3
CONFIDENCE_DTYPES = {torch.float32: CONF_FLOAT32, torch.float64: CONF_FLOAT64, torch.bfloat16: CONF_BFLOAT16,
                     torch.float16: CONF_FLOAT16}

# Columns of the per-token statistics the step returns (State.last_stats[b, r, :]).
STAT_CONF = 0          # p(candidate) at T = 1 in the confidence dtype
STAT_P1 = 1            # p(argmax)
STAT_P2 = 2            # p(second-best non-mask token)
STAT_ENTROPY = 3       # -sum p log p (nats)
STAT_SCORE = 4         # PRR stability score s (NaN for other policies)
STAT_TEMPERATURE = 5   # PRR temperature T(s) (NaN for other policies)
STAT_KEY = 6           # the selection key the policy ranked by
NUM_STATS = 7

# Columns of State.row_state[b, :] (int64 counters on the device).
RS_BLOCK = 0     # active block index (num_blocks once the row is done)
RS_STEP = 1      # step within the block
RS_SCHED_N = 2   # masks in the block when it was entered (n of LLaDA's schedule)
RS_NFE = 3       # forwards consumed
RS_COLS = 4

# PRR controller limits: 13 base features, at most MAX_FEATURES inputs and MAX_HIDDEN units per hidden layer.
NUM_BASE_FEATURES = 13
MAX_HIDDEN = 64
MAX_FEATURES = 64


def workspace_words(batch: int, block_length: int) -> int:
    """Size in int64 words of State.workspace, the CUDA kernel's scratch (layout: csrc/include/prr/params.h)."""
    return 1 + batch * (2 + 5 * block_length)
