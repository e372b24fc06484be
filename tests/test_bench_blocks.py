"""The block benchmark's phase split and its assembly of a UNet step from timed parts."""

from __future__ import annotations

import math

import pytest

from bench.bench_blocks import assemble, in_phase, outside_parts, phase_of, phase_threshold, unet_parts, whole_steps


def test_two_phases_are_split_between_their_typical_speeds():
    slow, fast = [0.55, 0.6, 0.62, 0.58, 0.65], [1.5, 1.6, 1.45]
    threshold = phase_threshold(slow + fast + [1.0])  # a probe taken during a switch falls on one side
    assert 0.65 < threshold < 1.45
    assert threshold == pytest.approx(math.sqrt(math.exp(sum(map(math.log, slow)) / 5) * 1.52), rel=0.2)


def test_a_host_without_phases_has_no_threshold():
    assert phase_threshold([0.6, 0.62, 0.65, 0.7, 0.8]) is None  # drift, not two phases
    assert phase_threshold([1.0]) is None
    assert phase_threshold([]) is None


def test_samples_are_placed_in_the_phase_both_probes_agree_on():
    assert phase_of(1.5, 1.6, 1.0) == "fast"
    assert phase_of(0.6, 0.62, 1.0) == "slow"
    assert phase_of(0.6, 1.5, 1.0) is None  # switched during the sample
    assert phase_of(0.9, 1.02, 1.0) is None  # within 15 % but on both sides of the split
    assert phase_of(0.6, 0.62, None) == "steady"
    assert phase_of(0.5, 0.62, None) is None  # more than 15 % apart


def test_the_step_is_the_sum_of_each_parts_median_in_each_phase():
    flops = {"a": 1e12, "b": 3e12}
    samples = {
        "a": [(1.0, 1.0, 1.0), (1.2, 1.0, 1.0), (5.0, 1.0, 1.0), (0.5, 2.0, 2.0), (0.6, 2.0, 2.0), (0.7, 2.0, 2.0)],
        "b": [(4.0, 1.0, 1.0), (4.0, 1.0, 1.0), (4.0, 1.0, 1.0), (2.0, 2.0, 2.0), (2.2, 2.0, 2.0), (2.4, 2.0, 2.0)],
    }
    phases, counts = assemble(samples, flops, threshold=1.4, min_samples=3)
    by_name = {p.name: p for p in phases}
    assert by_name["slow"].step_s == pytest.approx(1.2 + 4.0)  # the outlier 5.0 s is not the median
    assert by_name["slow"].limit_s == pytest.approx(1.0 + 3.0)  # FLOPs at 1 TFLOP/s
    assert by_name["fast"].step_s == pytest.approx(0.6 + 2.2)
    assert by_name["fast"].ratio == pytest.approx((0.6 + 2.2) / 2.0)
    assert by_name["fast"].parts["b"] == pytest.approx((2.2, 1.5, 3))
    assert counts == {"fast": {"a": 3, "b": 3}, "slow": {"a": 3, "b": 3}}


def test_a_phase_missing_samples_of_a_part_is_not_assembled():
    samples = {"a": [(1.0, 1.0, 1.0)] * 3 + [(0.5, 2.0, 2.0)] * 3, "b": [(4.0, 1.0, 1.0)] * 3 + [(2.0, 2.0, 2.1)]}
    phases, counts = assemble(samples, {"a": 1e12, "b": 3e12}, threshold=1.4, min_samples=3)
    assert [p.name for p in phases] == ["slow"]
    assert counts["fast"] == {"a": 3, "b": 1}


def test_straddling_samples_count_in_no_phase():
    rows = [(1.0, 1.0, 1.0), (1.0, 1.0, 2.0), (0.5, 2.0, 2.0)]
    assert in_phase(rows, 1.4, "slow") == 1
    assert in_phase(rows, 1.4, "fast") == 1


def test_time_outside_the_parts_is_taken_from_whole_steps_at_its_most():
    samples = {"a": [(1.0, 1.0, 1.0)] * 3 + [(0.5, 2.0, 2.0)] * 3}
    phases, _ = assemble(samples, {"a": 1e12}, threshold=1.4, min_samples=3)
    steps = [(1.2, 1.0, 1.0), (1.3, 1.0, 1.0), (1.1, 1.0, 1.0), (0.55, 2.0, 2.0), (0.5, 2.0, 2.0), (0.7, 2.0, 2.0)]
    assert outside_parts(phases, steps, 1.4) == (pytest.approx(0.2), "slow")  # 1.2 - 1.0 beats 0.55 - 0.5
    assert whole_steps(steps, 1.4, "fast", 1e12) == ([0.55, 0.5, 0.7], pytest.approx([1.1, 1.0, 1.4]))
    assert outside_parts(phases, steps[:2] + steps[3:], 1.4) == (pytest.approx(0.05), "fast")  # 2 slow steps: too few
    assert outside_parts(phases, [], 1.4) is None


def test_parts_cover_every_resnet_transformer_and_resampler_once():
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=8, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), cross_attention_dim=32, norm_num_groups=32,
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        )  # fmt: skip
    parts = unet_parts(unet)
    kinds = {"ResnetBlock2D", "Transformer2DModel", "Downsample2D", "Upsample2D"}
    expected = {id(m) for m in unet.modules() if type(m).__name__ in kinds}
    assert {id(m) for m in parts.values() if type(m).__name__ in kinds} == expected
    assert len(parts) == len(expected) + 5  # time_embedding, conv_in, conv_norm_out, conv_act, conv_out
    assert "mid_block.attentions.0" in parts and "up_blocks.0.upsamplers.0" in parts and "conv_in" in parts


def test_a_few_stray_slow_readings_are_not_a_phase():
    probes = [0.55 + 0.01 * (i % 10) for i in range(200)] + [0.1, 0.15, 0.2]  # as in a run with no fast phase
    assert phase_threshold(probes) is None
    assert phase_threshold(probes + [1.5] * 20) == pytest.approx(math.sqrt(0.595 * 1.5), rel=0.05)
