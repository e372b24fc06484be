"""The CPU benchmark's pairing of UNet steps with the matmul probes taken around them."""

from __future__ import annotations

import pytest

from bench.bench_cpu import steady_ratios

FLOPS = 2.08e12


def test_steady_steps_are_held_against_their_own_probes():
    # 1.0 s between two probes of 2.0 and 1.9 TFLOP/s: the limit at their mean (1.95) is 2.08 / 1.95 s.
    steady = steady_ratios([1.0], [2.0], [1.9], FLOPS)
    assert steady == [pytest.approx((1.0 * 1.95 / 2.08, 1.95))]


def test_steps_that_straddle_a_change_of_speed_are_left_out():
    # The host switched from 0.6 to 1.9 TFLOP/s during the second step, and back during the third.
    steady = steady_ratios([4.0, 2.5, 3.0, 2.0], [0.6, 0.6, 1.9, 1.8], [0.62, 1.9, 0.6, 1.9], FLOPS)
    assert [peak for _, peak in steady] == pytest.approx([0.61, 1.85])
    assert [ratio for ratio, _ in steady] == pytest.approx([4.0 * 0.61 / 2.08, 2.0 * 1.85 / 2.08])


def test_tolerance_is_relative_to_the_faster_probe():
    assert steady_ratios([1.0], [1.0], [0.86], FLOPS, tolerance=0.15)
    assert not steady_ratios([1.0], [0.84], [1.0], FLOPS, tolerance=0.15)  # either order
    with pytest.raises(ValueError):
        steady_ratios([1.0, 2.0], [1.0], [1.0], FLOPS)  # every step needs both probes
