"""Difficulty control's choice of levels from a base's measured pass@k."""

import pytest

from rl_probe.difficulty import choose_levels, pooled_pass_at_k


@pytest.mark.parametrize("measured, chosen", [
    # the widest run whose pooled pass@8 is in band, even if one level alone is not
    ({1: 0.63, 2: 0.16, 3: 0.29, 4: 0.08}, [1, 2, 3, 4]),
    ({1: 0.19, 2: 0.20, 3: 0.24, 4: 0.11}, [1, 2, 3]),
    # equally wide runs: the harder one
    ({1: 0.05, 2: 0.30, 3: 0.30, 4: 0.05}, [2, 3, 4]),
    # nothing in band: the single closest level
    ({1: 0.97, 2: 0.90, 3: 0.85}, [3]),
    ({1: 0.05, 2: 0.01}, [1]),
])
def test_choose_levels(measured, chosen):
    assert choose_levels(measured, 0.2, 0.8) == chosen


def test_pooled_pass_at_k_reads_json_keys():
    assert pooled_pass_at_k({"1": 0.2, "2": 0.4, "3": 0.9}, [1, 2]) == pytest.approx(0.3)
