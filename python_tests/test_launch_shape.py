"""The CUDA launcher's shape choices (csrc/cuda/launch_shape.h, reasoned about in docs/cuda.md), through
prr_ext._C.launch_shape: plain C++, so they are checked in every build, GPU or not. V = 126464 bf16 logits (15808
16-byte vectors per row) on a 132-SM device with the kernel's 256-thread limit."""
import pytest

from prr_ext import _C
from prr_ext import constants as K

V = 126464
LOWCONF, PRR, TEMP = K.POLICY_LOW_CONFIDENCE, K.POLICY_PRR, K.SHAPING_TEMPERATURE


def shape(B, BL, *, elem=2, policy=LOWCONF, shaping=TEMP, V=V):
    cs, nt, vpc, tiles = _C.launch_shape(B, BL, V, elem, policy, shaping, 132, 256)
    return {"cluster": cs, "threads": nt, "vectors_per_cta": vpc, "tiles": tiles}


@pytest.fixture
def env(monkeypatch):
    for name in ("PRR_CUDA_CS", "PRR_CUDA_NT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("policy", [LOWCONF, PRR])
@pytest.mark.parametrize("B", [8, 32])
def test_many_rows_take_one_two_warp_cta_per_row(env, policy, B):
    """(8,256) and (32,256): at least 6 rows per SM, so one CTA of 2 warps per row, 31 register tiles per thread."""
    assert shape(B, 256, policy=policy) == {"cluster": 1, "threads": 64, "vectors_per_cta": 15808, "tiles": 31}


def test_long_blocks_keep_four_warps_for_the_selection(env):
    """(1,1024): blocks of 513..1024 positions get 4-warp CTAs (the last CTA sorts or radix-selects the block)."""
    assert shape(1, 1024) == {"cluster": 1, "threads": 128, "vectors_per_cta": 15808, "tiles": 16}


def test_few_rows_split_over_clusters(env):
    """(1,32): 32 rows fill the SMs only split over clusters: 8-CTA clusters of 4 warps, except for PRR's temperature
    shaping, which keeps 4 CTAs of 8 warps."""
    assert shape(1, 32) == {"cluster": 8, "threads": 128, "vectors_per_cta": 1976, "tiles": 2}
    assert shape(1, 32, policy=PRR) == {"cluster": 4, "threads": 256, "vectors_per_cta": 3952, "tiles": 2}
    assert shape(1, 32, policy=PRR, shaping=K.SHAPING_POWER)["cluster"] == 8


def test_element_size_sets_the_vectors(env):
    assert shape(32, 256, elem=4)["vectors_per_cta"] == 31616
    assert shape(32, 256, elem=8)["vectors_per_cta"] == 63232
    assert shape(32, 256, V=V + 1)["vectors_per_cta"] == 15809  # a partial last vector


def test_overrides_are_brought_into_range(env):
    env.setenv("PRR_CUDA_CS", "3")   # rounded down to a power of two
    env.setenv("PRR_CUDA_NT", "100")  # rounded down to whole warps
    assert shape(32, 256) == {"cluster": 2, "threads": 96, "vectors_per_cta": 7904, "tiles": 11}
    env.setenv("PRR_CUDA_CS", "64")
    env.setenv("PRR_CUDA_NT", "4096")  # the kernel's limit
    assert shape(32, 256)[("cluster")] == 8 and shape(32, 256)["threads"] == 256


def test_launch_shape_rejects_bad_arguments():
    with pytest.raises(ValueError, match="elem_bytes"):
        _C.launch_shape(1, 32, V, 3, PRR, TEMP, 132, 256)
    with pytest.raises(ValueError, match="block_length"):
        _C.launch_shape(1, 0, V, 2, PRR, TEMP, 132, 256)
