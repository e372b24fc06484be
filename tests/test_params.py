"""RelightParams: official defaults, one-place validation with the bad value named, metadata round trip."""

from __future__ import annotations

import pytest

from core.errors import InvalidParameterError
from core.lighting.lights import Light
from core.params import BGSource, Mode, RelightParams, Sampler


def test_mode_defaults_are_the_official_ones():
    fc = RelightParams.for_mode("fc")
    fbc = RelightParams.for_mode(Mode.FBC)
    assert (fc.width, fc.height, fc.steps, fc.cfg, fc.seed) == (512, 640, 25, 2.0, 12345)
    assert (fc.lowres_denoise, fc.highres_scale, fc.highres_denoise) == (0.9, 1.5, 0.5)
    assert fc.added_prompt == "best quality"
    assert fc.negative_prompt == "lowres, bad anatomy, bad hands, cropped, worst quality"
    assert (fbc.steps, fbc.cfg) == (20, 7.0)
    assert fc.sampler is Sampler.DPMPP_2M_SDE_KARRAS


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("width", 500, "width should be a multiple of 8 in \\[64, 2048\\] but is 500"),
        ("height", 2056, "height should be a multiple of 8"),
        ("height", 56, "but is 56"),
        ("steps", 0, "steps should be in \\[1, 100\\] but is 0"),
        ("steps", 101, "but is 101"),
        ("cfg", 0.5, "cfg should be in \\[1.0, 32.0\\] but is 0.5"),
        ("cfg", 33, "but is 33"),
        ("lowres_denoise", 0.0, "lowres_denoise should be in \\(0.0, 1.0\\] but is 0.0"),
        ("highres_denoise", 1.3, "highres_denoise should be in \\(0.0, 1.0\\] but is 1.3"),
        ("highres_denoise", True, "highres_denoise should be in \\(0.0, 1.0\\] but is True"),
        ("lowres_denoise", float("nan"), "lowres_denoise should be in .* but is nan"),
        ("detail_radius", True, "detail_radius should be in \\[0.5, 64\\] px but is True"),
        ("highres_scale", 3.5, "highres_scale should be in \\[1.0, 3.0\\] but is 3.5"),
        ("num_images", 13, "num_images should be in \\[1, 12\\] but is 13"),
        ("seed", -1, "seed should be in \\[0, 4294967295\\] but is -1"),
        ("seed", 2**32, "but is 4294967296"),
        ("seed", 1.5, "seed should be an integer but is 1.5"),
        ("sampler", "plms", "sampler should be one of .* but is 'plms'"),
        ("preserve_color", 2.0, "preserve_color should be in"),
    ],
)
def test_out_of_range_values_name_the_value(field, value, message):
    with pytest.raises(InvalidParameterError, match=message):
        RelightParams(**{field: value})


def test_custom_light_source_needs_a_light():
    with pytest.raises(InvalidParameterError, match="needs a light"):
        RelightParams.for_mode("fbc", bg_source="light")
    assert RelightParams.for_mode("fbc", bg_source="light", light=Light(azimuth=30)).bg_source is BGSource.LIGHT


def test_round_trip_through_json_dict():
    params = RelightParams.for_mode("fbc", prompt="cat, neon", light=Light(azimuth=45, color="#ff0000"), seed=7)
    assert RelightParams.from_dict(params.to_dict()) == params
    with pytest.raises(InvalidParameterError, match="unknown parameter"):
        RelightParams.from_dict({**params.to_dict(), "stepz": 3})


def test_highres_size_and_positive_prompt():
    params = RelightParams(prompt="a cat", width=512, height=640, highres_scale=1.5)
    assert params.highres_size == (768, 960)
    assert params.positive_prompt == "a cat, best quality"
