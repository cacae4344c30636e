"""pytest configuration for the prr_ext test suite.

Randomness: every test that draws inputs takes the `rnd` fixture (helpers.Rand), seeded from a per-session base seed
and the test's node id, so each run draws fresh inputs while any failure can be replayed exactly:

    PRR_TEST_SEED=<base seed printed in the header / in the failing test's captured output> pytest ...

Threads: the pure-PyTorch reference issues thousands of tiny ops, for which intra-op threading is pure overhead (and
pathologically slow on an oversubscribed machine), so the suite runs torch with PRR_TEST_THREADS threads (default 1).
test_step_cpu.py::test_threads_do_not_change_results exercises the op's parallel path with several threads.
"""
from __future__ import annotations

import os
import random
import sys
import zlib

import pytest
import torch

# The suite's own modules (helpers, llada_reference, ...) are imported by plain name. With --import-mode=append
# (scripts/test.sh) pytest would append this directory to sys.path, where an installed module of the same name
# would shadow them; put it first. (prr_ext itself is imported normally: the installed package.)
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path[:1] != [_HERE]:
    sys.path.insert(0, _HERE)

from helpers import Rand  # noqa: E402

_BASE_SEED = int(os.environ.get("PRR_TEST_SEED", random.SystemRandom().randrange(2 ** 31)))

torch.set_num_threads(int(os.environ.get("PRR_TEST_THREADS", "1")))


def pytest_report_header(config):
    return (f"prr_ext tests: PRR_TEST_SEED={_BASE_SEED} (set it to replay this run's random inputs), "
            f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s)")


def pytest_make_parametrize_id(config, val, argname):
    """torch dtypes appear in test ids by name (test_matches_cpu[...-bfloat16-...]), so `-k bfloat16` selects them."""
    if isinstance(val, torch.dtype):
        return str(val).removeprefix("torch.")
    return None


def seed_for_node(nodeid: str) -> int:
    """The seed of one test: a function of the session's base seed and the test's node id."""
    return (zlib.crc32(nodeid.encode()) ^ (_BASE_SEED * 2654435761)) % (2 ** 62)


@pytest.fixture
def rnd(request) -> Rand:
    seed = seed_for_node(request.node.nodeid)
    # printed at setup: pytest shows it under "Captured stdout setup" when the test fails
    print(f"[prr_ext test] PRR_TEST_SEED={_BASE_SEED} -> seed {seed} for {request.node.nodeid}")
    request.node.user_properties.append(("seed", seed))
    return Rand(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when == "call":
        seed = dict(item.user_properties).get("seed")
        if seed is not None:
            report.sections.append(("prr_ext random seed", f"PRR_TEST_SEED={_BASE_SEED} (test seed {seed}); "
                                                            f"rerun: PRR_TEST_SEED={_BASE_SEED} pytest "
                                                            f"'{item.nodeid}'"))
