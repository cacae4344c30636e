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
POLICY_LOCAL_LEAP = 6
POLICY_SLOW_FAST = 7
POLICY_KLASS = 8

# Factor's variants, R²'s token-cluster choice and temporal aggregate (entries of the op's `rule_params`).
FACTOR_PAPER = 0
FACTOR_FAST_DLLM = 1
FACTOR_VARIANTS = {"paper": FACTOR_PAPER, "fast-dllm": FACTOR_FAST_DLLM}
CLUSTER_OFF = 0
CLUSTER_CONFIDENCE = 1
CLUSTER_MID = 2
CLUSTER_RANDOM = 3
CLUSTER_CHOICES = {None: CLUSTER_OFF, "confidence": CLUSTER_CONFIDENCE, "mid": CLUSTER_MID, "random": CLUSTER_RANDOM}
TEMPORAL_LAST = 0
TEMPORAL_AVE = 1
TEMPORAL_MAX = 2
TEMPORAL_EVALS = {"last": TEMPORAL_LAST, "ave": TEMPORAL_AVE, "max": TEMPORAL_MAX}

# The op's `rule_params` list, by index: the base rule's hyper-parameters beyond `param` (indices 0-3, their meaning
# depends on the rule), then R²-dLLM's passes (4-11), which run on top of any base rule.
RP_FACTOR_VARIANT = 0      # Factor
RP_RELAXED_TAU = 0         # LocalLeap (param: tau)
RP_RADIUS = 1
RP_EXPLORE_STEPS = 0       # SlowFast (param: fill threshold)
RP_SPAN_THRESHOLD = 1
RP_STABILITY_WINDOW = 2
RP_STABILITY_STD = 3
RP_KL_THRESHOLD = 0        # KLASS (param: confidence threshold)
RP_KL_HISTORY = 1
RP_R2_WINDOW = 4           # 0: off
RP_R2_WINDOW_UNMASKED = 5  # -1: no limit
RP_R2_SPATIAL_THRESHOLD = 6
RP_R2_CLUSTER = 7
RP_R2_CLUSTER_SIZE = 8
RP_R2_TEMPORAL_STEPS = 9   # 0: off
RP_R2_TEMPORAL_THRESHOLD = 10
RP_R2_TEMPORAL_EVAL = 11
NUM_RULE_PARAMS = 12
MAX_STABILITY_WINDOW = 8
MAX_R2_WINDOW = 64
MAX_RULE_INT = 2 ** 31 - 1  # the largest integer rule parameter (they travel as doubles)

# Columns of State.rule_state[b, j, :] (float64, per block position; reset on entering a block).
RULE_STREAK_TOKEN = 0   # R² temporal: top-1 of the running streak (-1: none)
RULE_STREAK_COUNT = 1
RULE_STREAK_SUM = 2     # fp32 sum of the streak's top-1 probabilities
RULE_STREAK_MAX = 3     # fp32 max of them
RULE_KL_COUNT = 4       # KLASS: consecutive steps with KL < kappa (-1: no distribution kept for the position)
RULE_STATE_COLS = 5

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
# SlowFast's sub-cycle (reset on entering a block): span [start, end) in block positions, exploration steps taken,
# whether the span is determined, and the last span estimates (MAX_STABILITY_WINDOW columns from RS_ESTIMATES).
RS_SPAN_START = 4
RS_SPAN_END = 5
RS_EXPLORED = 6
RS_DETERMINED = 7
RS_NUM_ESTIMATES = 8
RS_ESTIMATES = 9
RS_COLS = RS_ESTIMATES + MAX_STABILITY_WINDOW

# PRR controller limits: 13 base features, at most MAX_FEATURES inputs and MAX_HIDDEN units per hidden layer.
NUM_BASE_FEATURES = 13
MAX_HIDDEN = 64
MAX_FEATURES = 64


def workspace_words(batch: int, block_length: int) -> int:
    """Size in int64 words of State.workspace, the CUDA kernel's scratch (layout: csrc/include/prr/params.h)."""
    return 1 + batch * (2 + 8 * block_length)
