"""The form <-> parameters mapping of both apps: choices, ranges, light pad fields, RelightParams from form values."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from core.errors import InvalidParameterError
from core.lighting.lights import Light
from core.params import LIGHT_CONTROLS, PARAM_SPECS, BGSource, LightDirection, Mode, RelightParams, field_kinds
from core.schema import Spec, check_value, short_repr

logger = logging.getLogger(__name__)

CUSTOM_LIGHT = BGSource.LIGHT.label  # the choice that means "the light placed on the pad", in both apps
FC_CHOICES = tuple(d.label for d in LightDirection) + (CUSTOM_LIGHT,)
FBC_CHOICES = tuple(s.label for s in BGSource)
CHOICE_NAMES = {Mode.FC: "light", Mode.FBC: "bg_source"}  # API name of each app's light/background choice
_FC_BY_LABEL = {d.label: d for d in LightDirection}
_FBC_BY_LABEL = {s.label: s for s in BGSource}
_NAMED_LABELS = {
    Mode.FC: {d.value: d.label for d in LightDirection if d is not LightDirection.NONE},
    Mode.FBC: {s.value: s.label for s in (BGSource.LEFT, BGSource.RIGHT, BGSource.TOP, BGSource.BOTTOM)},
}
# fbc sources that are a light gradient: moving the pad light replaces them; an uploaded background is kept.
GRADIENT_SOURCES = frozenset({BGSource.LEFT, BGSource.RIGHT, BGSource.TOP, BGSource.BOTTOM, BGSource.LIGHT})
PAD_FIELDS = tuple(LIGHT_CONTROLS)  # form names of the pad light
_PAD_TO_LIGHT = {name: control.field for name, control in LIGHT_CONTROLS.items()}

# The RelightParams fields on the form (those with a label), split into integers and the rest.
FORM_FIELDS = tuple(name for name, spec in PARAM_SPECS.items() if spec.label is not None)
INT_FIELDS = tuple(name for name in FORM_FIELDS if field_kinds()[name] is int)
PLAIN_FIELDS = tuple(name for name in FORM_FIELDS if name not in INT_FIELDS)
# Slider ranges of the form (official demo ranges); also used to fit settings loaded from a PNG.
RANGES: dict[str, tuple[float, float]] = {
    name: spec.slider[:2] for name, spec in PARAM_SPECS.items() if spec.slider is not None
}


# -- form values <-> parameters ------------------------------------------------------------------------------------


def pad_light(values: Mapping[str, Any]) -> Light:
    """The light placed on the pad, from the form's azimuth/elevation/colour/intensity/ambient values."""
    return Light(**{_PAD_TO_LIGHT[name]: values[name] for name in PAD_FIELDS if values.get(name) is not None})


def pad_values(light: Light) -> tuple[Any, ...]:
    """The pad fields (in PAD_FIELDS order) that show `light`: azimuth, elevation, colour, intensity, ambient, ..."""
    return tuple(getattr(light, _PAD_TO_LIGHT[name]) for name in PAD_FIELDS)


def light_fields(mode: Mode, choice: str, pad: Light) -> dict[str, Any]:
    """RelightParams fields for the light/background choice; the pad light is used by 'Custom Light'."""
    if mode is Mode.FC:
        if choice == CUSTOM_LIGHT:
            return {"light": pad}
        direction = _FC_BY_LABEL.get(choice)
        if direction is None:
            raise InvalidParameterError(f"light should be one of {', '.join(FC_CHOICES)} but is {choice!r}")
        return {"light": None if direction is LightDirection.NONE else Light.named(direction.value)}
    source = _FBC_BY_LABEL.get(choice)
    if source is None:
        raise InvalidParameterError(f"bg_source should be one of {', '.join(FBC_CHOICES)} but is {choice!r}")
    return {"bg_source": source, "light": pad if source is BGSource.LIGHT else None}


def named_light(choice: str) -> Light | None:
    """The exact official light of a Left/Right/Top/Bottom choice; None for any other choice."""
    for labels in _NAMED_LABELS.values():
        for direction, label in labels.items():
            if label == choice:
                return Light.named(direction)
    return None


def choice_after_move(mode: Mode, choice: str, light: Light) -> str:
    """The choice once the user has placed `light`: a named one if it is exactly official, else 'Custom Light'."""
    named = light.named_direction
    label = _NAMED_LABELS[mode][named] if named else CUSTOM_LIGHT
    if mode is Mode.FBC and _FBC_BY_LABEL.get(choice) not in GRADIENT_SOURCES:
        return choice  # an uploaded (or flipped, or ambient) background stays the condition
    return label


def _integer(value: Any) -> Any:
    """Whole floats (sliders, JSON) as int; anything else is left for RelightParams to reject by name."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def params_from_values(mode: Mode, values: Mapping[str, Any]) -> RelightParams:
    """Validated RelightParams from the form (or API) values of either app."""
    fields: dict[str, Any] = {name: _integer(values[name]) for name in INT_FIELDS if name in values}
    fields.update({name: values[name] for name in PLAIN_FIELDS if name in values})
    fields.update(light_fields(mode, values[CHOICE_NAMES[mode]], pad_light(values)))
    return RelightParams.for_mode(mode, **fields)


def values_from_params(mode: Mode, params: RelightParams) -> tuple[dict[str, Any], list[str]]:
    """Form values that reproduce `params` in this app, and what had to be changed to fit the form."""
    notes = []
    if params.mode is not mode:
        notes.append(f"these settings come from the {params.mode.value} app; the shared ones were loaded")
    data = params.to_dict()  # enums as their values, LoRAs as 'SOURCE:SCALE' strings
    values: dict[str, Any] = {name: data[name] for name in INT_FIELDS + PLAIN_FIELDS}
    for name, (low, high) in ranges(mode).items():
        if not low <= values[name] <= high:
            fitted = type(values[name])(min(max(values[name], low), high))
            notes.append(f"{name} {values[name]} is outside this form's range [{low:g}, {high:g}]; set to {fitted}")
            values[name] = fitted
    light = params.light
    if mode is Mode.FC:
        named = light.named_direction if light is not None else None
        choice = LightDirection.NONE.label if light is None else _NAMED_LABELS[mode][named] if named else CUSTOM_LIGHT
    else:
        choice = params.bg_source.label if params.mode is Mode.FBC else BGSource.UPLOAD.label
    values[CHOICE_NAMES[mode]] = choice
    if light is not None:
        values.update(zip(PAD_FIELDS, pad_values(light), strict=True))
    values["randomize_seed"] = False  # the point of loading settings is to get the same image again
    return values, notes


def ranges(mode: Mode) -> dict[str, tuple[float, float]]:
    """Slider ranges of the app for `mode` (fields the app does not show are left out)."""
    out = {}
    for name, (low, high) in RANGES.items():
        spec = PARAM_SPECS[name]
        if Mode(mode).value in spec.modes:
            out[name] = (low, spec.fbc_slider_high) if mode is Mode.FBC and spec.fbc_slider_high else (low, high)
    return out


def field_spec(name: str) -> Spec:
    """The Spec of a form field: a RelightParams field or a light-pad control."""
    return LIGHT_CONTROLS[name].spec if name in LIGHT_CONTROLS else PARAM_SPECS[name]


def label(name: str) -> str:
    """The form's label for field `name`."""
    return field_spec(name).label or name


def slider_step(name: str) -> float:
    """The slider step of field `name`."""
    slider = field_spec(name).slider
    assert slider is not None, f"{name} has no slider"
    return slider[2]


# -- strict API values ----------------------------------------------------------------------------------------------

HEX_COLOR = re.compile(r"#[0-9a-fA-F]{6}")


def strict_inputs(mode: Mode, components: Mapping[str, Any]) -> None:
    """Check each API value's type and range before Gradio converts it, with a message naming the field.

    Left alone, Gradio rounds 1.5 to 2 for an integer slider, passes "false" to a checkbox handler (where it is
    true), takes any text as a colour and reports a wrong type as a bare error.
    """
    import gradio as gr

    for name, component in components.items():
        check = _value_check(mode, name, component, gr)
        if check is None:
            continue
        stock = component.preprocess

        def preprocess(payload: Any, stock=stock, check=check) -> Any:
            """The stock preprocessing of a value that passed `check`."""
            try:
                check(payload)
            except InvalidParameterError as exc:
                raise gr.Error(str(exc), title="Please check the inputs") from None
            return stock(payload)

        component.preprocess = preprocess


def _value_check(mode: Mode, name: str, component: Any, gr: Any) -> Callable[[Any], None] | None:
    """A function raising InvalidParameterError for a bad value of `component`, or None to leave it as it is."""
    if isinstance(component, gr.Checkbox):
        return partial(check_value, name, kind=bool, spec=Spec(help=""))
    if isinstance(component, (gr.Slider, gr.Number)):
        integer = name in INT_FIELDS or getattr(component, "precision", None) == 0
        low, high = component.minimum, component.maximum
        return partial(_check_number, name, integer=integer, low=low, high=high)
    if isinstance(component, gr.ColorPicker):
        return partial(_check_color, name)
    if isinstance(component, gr.Textbox):
        return partial(check_value, name, kind=str, spec=PARAM_SPECS[name] if name in PARAM_SPECS else Spec(help=""))
    if isinstance(component, (gr.Dropdown, gr.Radio)):
        return partial(_check_choice, name, tuple(value for _, value in component.choices))
    return None


def _check_number(name: str, value: Any, integer: bool, low: float | None, high: float | None) -> None:
    what = "an integer" if integer else "a number"
    where = f" in [{_number(low)}, {_number(high)}]" if low is not None and high is not None else ""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    whole = number and (isinstance(value, int) or (math.isfinite(value) and float(value).is_integer()))
    in_range = number and value == value and (low is None or value >= low) and (high is None or value <= high)
    if not number or (integer and not whole) or not in_range:
        raise InvalidParameterError(f"{name} should be {what}{where} but is {short_repr(value)}")


def _number(value: float) -> str:
    """A bound as people write it: 4294967295, 1024, 0.1."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _check_color(name: str, value: Any) -> None:
    if not isinstance(value, str) or not HEX_COLOR.fullmatch(value):
        raise InvalidParameterError(f"{name} should be a colour as #rrggbb (e.g. #ffb070) but is {short_repr(value)}")


def _check_choice(name: str, choices: tuple[Any, ...], value: Any) -> None:
    if isinstance(value, (list, dict)) or value not in choices:
        shown = ", ".join(repr(choice) for choice in choices)
        raise InvalidParameterError(f"{name} should be one of {shown} but is {short_repr(value)}")
