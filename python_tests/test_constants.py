"""prr_ext.constants (the Python side of every integer code and size shared with the op) against the values
compiled into the extension (csrc/include/prr/params.h, exposed by prr_ext._C)."""
from __future__ import annotations

import pytest

import prr_ext
from prr_ext import _load, constants
from prr_ext.controller import BASE_FEATURES


def test_every_compiled_constant_is_mirrored_with_its_value():
    compiled = _load._C.constants()
    assert len(compiled) >= 29
    for name, value in compiled.items():
        assert getattr(constants, name) == value, name


def test_every_python_code_is_compiled():
    """No code on the Python side that the C++ side does not know (names of int constants in the module)."""
    compiled = _load._C.constants()
    python_ints = {n for n, v in vars(constants).items() if n.isupper() and isinstance(v, int)}
    assert python_ints == set(compiled)


@pytest.mark.parametrize("B,block_length", [(0, 1), (1, 32), (3, 7), (64, 1024)])
def test_workspace_words(B, block_length):
    assert constants.workspace_words(B, block_length) == _load._C.workspace_words(B, block_length)


def test_tables_follow_the_codes():
    assert constants.SHAPINGS == {"temperature": constants.SHAPING_TEMPERATURE, "power": constants.SHAPING_POWER,
                                  "weighted": constants.SHAPING_WEIGHTED}
    assert sorted(constants.CONFIDENCE_DTYPES.values()) == [0, 1, 2, 3]
    assert len(BASE_FEATURES) == constants.NUM_BASE_FEATURES
    codes = [prr_ext.LowConfidence.code, prr_ext.RandomRemask.code, prr_ext.Threshold.code, prr_ext.Factor.code,
             prr_ext.EntropyBound.code, prr_ext.PRR.code, prr_ext.LocalLeap.code, prr_ext.SlowFast.code,
             prr_ext.KLASS.code]
    assert codes == [constants.POLICY_LOW_CONFIDENCE, constants.POLICY_RANDOM, constants.POLICY_THRESHOLD,
                     constants.POLICY_FACTOR, constants.POLICY_ENTROPY_BOUND, constants.POLICY_PRR,
                     constants.POLICY_LOCAL_LEAP, constants.POLICY_SLOW_FAST, constants.POLICY_KLASS]
    assert prr_ext.R2(base=prr_ext.KLASS()).code == constants.POLICY_KLASS  # R2 runs its base rule's code
    assert sorted(constants.FACTOR_VARIANTS.values()) == [0, 1]
    assert sorted(constants.CLUSTER_CHOICES.values()) == [0, 1, 2, 3]
    assert sorted(constants.TEMPORAL_EVALS.values()) == [0, 1, 2]
    assert len(prr_ext.Threshold().rule_params()) == constants.NUM_RULE_PARAMS


def test_reload_launch_overrides_exists_in_every_build():
    """Benchmarks and tests call it after changing PRR_CUDA_*; a CPU-only build has it too (a no-op there)."""
    assert _load._C.reload_launch_overrides() is None
