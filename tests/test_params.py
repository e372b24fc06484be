"""RelightParams: official defaults, one-place validation with the bad value named, metadata round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from core.errors import InvalidParameterError
from core.lighting.lights import Light
from core.params import PARAM_SPECS, BGSource, Mode, RelightParams, Sampler, field_kinds


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


# -- the schema: one Spec per field drives the validation, the CLI, the form and the README ---------------------


def test_every_field_has_a_spec_with_help():
    assert set(PARAM_SPECS) == {f.name for f in dataclasses.fields(RelightParams)}
    assert all(spec.help for spec in PARAM_SPECS.values())


def test_each_range_is_enforced_at_its_bounds():
    kinds = field_kinds()
    for name, spec in PARAM_SPECS.items():
        if spec.low is None:
            continue
        kind = kinds[name]
        step = spec.multiple_of or (1 if kind is int else 0.01)
        params = RelightParams.for_mode("fc", **{name: kind(spec.high)})
        assert getattr(params, name) == spec.high
        with pytest.raises(InvalidParameterError, match=f"{name} should be .* but is"):
            RelightParams(**{name: kind(spec.high + step)})
        with pytest.raises(InvalidParameterError, match=f"{name} should be .* but is"):
            RelightParams(**{name: kind(spec.low - step if not spec.low_open else spec.low)})


@pytest.mark.parametrize(("field", "value"), [("keep_background", "false"), ("restore_details", 1)])
def test_booleans_take_only_booleans(field, value):
    with pytest.raises(InvalidParameterError, match=f"{field} should be true or false but is {value!r}"):
        RelightParams(**{field: value})


def test_unknown_keys_are_named_for_params_and_lights():
    with pytest.raises(InvalidParameterError, match=r"unknown parameter field\(s\) \['stepz'\]"):
        RelightParams.from_dict({"stepz": 3})
    with pytest.raises(InvalidParameterError, match=r"unknown light field\(s\) \['hue'\]"):
        Light.from_dict({"hue": 3})
    with pytest.raises(InvalidParameterError, match="parameter should be a mapping of field names to values but is"):
        RelightParams.from_dict(["steps", 3])


def test_cli_flags_and_help_come_from_the_specs():
    from core.cli import LIGHT_FLAGS, PARAM_FLAGS, RELIGHT_FLAGS, build_parser

    direct = {name for name, spec in PARAM_SPECS.items() if spec.flag is not None and spec.direct}
    assert set(PARAM_FLAGS.values()) == direct
    assert LIGHT_FLAGS == {"elevation": "elevation", "light_color": "color", "light_intensity": "intensity",
                           "ambient": "ambient", "light_softness": "softness"}  # fmt: skip
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["relight"].format_help().split())
    for flag in RELIGHT_FLAGS:
        assert flag.option in help_text
    assert "--width PX low-res pass width in px (a multiple of 8 in [64, 2048]; default 512)" in help_text
    assert "([1, 100]; default fc 25, fbc 20)" in help_text
    assert "(at most 4,000 characters; default best quality)" in help_text


def test_form_sliders_stay_inside_the_valid_ranges():
    from ui.form import INT_FIELDS, PLAIN_FIELDS, ranges

    for mode in Mode:
        for name, (low, high) in ranges(mode).items():
            spec = PARAM_SPECS[name]
            assert spec.low <= low <= high <= spec.high, name
    assert set(INT_FIELDS) == {"seed", "width", "height", "num_images", "steps"}
    assert "lowres_denoise" in ranges(Mode.FC) and "lowres_denoise" not in ranges(Mode.FBC)
    assert ranges(Mode.FBC)["highres_denoise"] == (0.1, 0.9)
    assert {"mode", "light", "bg_source", "extra"}.isdisjoint(INT_FIELDS + PLAIN_FIELDS)


README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_parameter_table_is_the_one_the_schema_renders():
    from core.cli import TABLE_END, TABLE_START, params_table

    text = README.read_text(encoding="utf-8")
    assert TABLE_START in text and TABLE_END in text, "README.md lost its parameter-table markers"
    shown = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()
    stale = "README's parameter table is stale: python -c 'import core.cli; core.cli.write_readme_table()'"
    assert shown == params_table().strip(), stale
