"""The paired bootstrap CI behind bench.refine_paired's non-inferiority verdict."""
import numpy as np
import pytest

from bench.refine_paired import paired_bootstrap_ci


def test_identical_runs_give_a_zero_interval():
    assert paired_bootstrap_ci(np.zeros(50), np.full(50, 3.0)) == (0.0, 0.0, 0.0)


def test_a_constant_shift_is_recovered_exactly():
    est, low, high = paired_bootstrap_ci(np.full(40, -0.5), np.full(40, 2.0))  # every item 0.25 worse
    assert est == pytest.approx(-0.25) and low == pytest.approx(-0.25) and high == pytest.approx(-0.25)


def test_interval_matches_the_normal_approximation_for_independent_items():
    rng = np.random.default_rng(1)
    diffs = rng.choice([-1.0, 0.0, 1.0], p=[0.1, 0.8, 0.1], size=400)  # one item per caption
    est, low, high = paired_bootstrap_ci(diffs, np.ones(400), draws=4000)
    half = 1.96 * diffs.std() / np.sqrt(400)
    assert low < est < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.15)


def test_items_of_one_caption_move_together():
    # 20 captions of 10 items each, every caption all-lost or all-gained: the CI must be as wide as for 20
    # independent items, not 200
    diffs = np.array([10.0, -10.0] * 10)
    est, low, high = paired_bootstrap_ci(diffs, np.full(20, 10.0), draws=4000)
    assert est == 0.0
    assert (high - low) / 2 == pytest.approx(1.96 / np.sqrt(20), rel=0.2)


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError):
        paired_bootstrap_ci([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        paired_bootstrap_ci([0.0], [0.0])
