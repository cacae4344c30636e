"""The CUDA launcher's shape choices (csrc/cuda/launch_shape.h), through prr_ext._C.launch_shape: plain C++, so they
are checked in every build, GPU or not. The numbers are those docs/cuda.md reasons about (V = 126464, 132 SMs)."""
import pytest

from prr_ext import _C
from prr_ext import constants as K

V = 126464
SMEM = 200_000  # shared memory a CTA may give its slice (an H100 leaves ~227 KB less the kernel's static use)


def shape(B, BL, *, elem=2, policy=K.POLICY_PRR, shaping=K.SHAPING_TEMPERATURE, V=V, smem=SMEM, aligned=True):
    cs, nt, vpc, tiles, held = _C.launch_shape(B, BL, V, elem, policy, shaping, 132, 256, smem, aligned)
    return {"cluster": cs, "threads": nt, "vectors_per_cta": vpc, "tiles": tiles, "smem_rows": held}


@pytest.fixture
def env(monkeypatch):
    for name in ("PRR_CUDA_CS", "PRR_CUDA_NT", "PRR_CUDA_SMEMROW"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_many_rows_take_one_two_warp_cta_per_row(env):
    """(32,256): one CTA of 64 threads per row, 31 register tiles per thread, for every rule by default."""
    for policy in (K.POLICY_LOW_CONFIDENCE, K.POLICY_PRR):
        assert shape(32, 256, policy=policy) == {"cluster": 1, "threads": 64, "vectors_per_cta": 15808, "tiles": 31,
                                                 "smem_rows": False}


def test_rows_held_in_shared_memory_when_asked(env):
    """PRR_CUDA_SMEMROW=1: temperature-shaped rows of several tiles go to 4-CTA clusters of 128 threads whose
    62 KB slices sit in shared memory (4 tiles each); every other case keeps the register shape."""
    env.setenv("PRR_CUDA_SMEMROW", "1")
    held = shape(32, 256)
    assert held == {"cluster": 4, "threads": 128, "vectors_per_cta": 3952, "tiles": 4, "smem_rows": True}
    assert held["vectors_per_cta"] * 16 == 63232
    registers = {"cluster": 1, "threads": 64, "vectors_per_cta": 15808, "tiles": 31, "smem_rows": False}
    assert shape(32, 256, policy=K.POLICY_LOW_CONFIDENCE) == registers        # no second sweep
    assert shape(32, 256, shaping=K.SHAPING_POWER) == registers               # shaping without a second sweep
    assert shape(32, 256, aligned=False) == registers                         # the bulk copies need 16-byte rows
    assert not shape(32, 256, smem=60_000)["smem_rows"]                       # the slice does not fit
    assert shape(32, 256, elem=4)["smem_rows"]                                # fp32: 124 KB slices, 8 tiles
    assert shape(32, 256, elem=4)["tiles"] == 8
    assert not shape(32, 256, elem=4, smem=100_000)["smem_rows"]


def test_rows_held_in_shared_memory_follow_the_overrides(env):
    env.setenv("PRR_CUDA_SMEMROW", "1")
    env.setenv("PRR_CUDA_CS", "2")
    assert shape(32, 256) == {"cluster": 2, "threads": 128, "vectors_per_cta": 7904, "tiles": 8, "smem_rows": True}
    env.setenv("PRR_CUDA_NT", "32")
    env.setenv("PRR_CUDA_CS", "8")
    assert shape(8, 256) == {"cluster": 8, "threads": 32, "vectors_per_cta": 1976, "tiles": 8, "smem_rows": True}
    env.setenv("PRR_CUDA_CS", "1")
    env.setenv("PRR_CUDA_NT", "256")
    assert not shape(8, 256, V=700)["smem_rows"]  # one register tile holds the row: nothing is read twice


def test_smem_rows_off_by_default(env):
    env.setenv("PRR_CUDA_SMEMROW", "0")
    assert not shape(32, 256)["smem_rows"]


def test_launch_shape_rejects_bad_arguments():
    with pytest.raises(ValueError, match="elem_bytes"):
        _C.launch_shape(1, 32, V, 3, K.POLICY_PRR, K.SHAPING_TEMPERATURE, 132, 256, SMEM, True)
    with pytest.raises(ValueError, match="block_length"):
        _C.launch_shape(1, 0, V, 2, K.POLICY_PRR, K.SHAPING_TEMPERATURE, 132, 256, SMEM, True)
