"""Parameter descriptions kept next to the dataclass field they describe: range, help text, UI label, CLI flag.

`param(default, help=..., ...)` is `dataclasses.field` with a `Spec` in its metadata. The validation, the CLI flags
and their help, the app sliders and the README's parameter table all read the specs, so a new parameter is one field.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import MISSING, dataclass
from typing import Any

from core.errors import InvalidParameterError

SPEC_KEY = "spec"  # where a Spec lives in a dataclass field's metadata
BOTH_MODES = ("fc", "fbc")


@dataclass(frozen=True)
class Spec:
    """How one parameter is checked, offered on the command line and shown in the apps."""

    help: str  # one line for --help, the README table and the API docs
    label: str | None = None  # the apps' label; None = not a form field
    low: float | None = None  # smallest valid number (None = no lower bound)
    high: float | None = None  # largest valid number (None = no upper bound)
    low_open: bool = False  # True: `low` itself is not valid (a denoise strength of 0 would do nothing)
    multiple_of: int | None = None  # e.g. sizes are whole latent cells
    unit: str = ""  # shown after the range in messages and help, e.g. "px"
    max_length: int | None = None  # strings: longest accepted text in characters
    slider: tuple[float, float, float] | None = None  # (low, high, step) of the app slider; None = no slider
    fbc_slider_high: float | None = None  # the fbc app's slider stops lower (the official fbc demo's range)
    modes: tuple[str, ...] = BOTH_MODES  # apps whose form shows the field
    flag: str | None = ""  # CLI flag without dashes: "" = the field name, None = no flag
    metavar: str | None = None  # how --help names the flag's value
    direct: bool = True  # the flag's value goes straight into the field (False: the CLI builds it)
    default_text: str | None = None  # the default as --help and the README show it, when str(default) is not it

    def range_text(self) -> str:
        """'[1, 100]', '(0.0, 1.0]', 'multiple of 8 in [64, 2048]', '[0.5, 64] px' or '' without bounds."""
        if self.low is None or self.high is None:
            return ""
        text = f"{'(' if self.low_open else '['}{self.low}, {self.high}]"
        if self.multiple_of:
            text = f"a multiple of {self.multiple_of} in {text}"
        return f"{text} {self.unit}" if self.unit else text


def param(default: Any = MISSING, *, default_factory: Any = MISSING, compare: bool = True, **spec: Any) -> Any:
    """A dataclass field described by `Spec(**spec)`."""
    return dataclasses.field(
        default=default, default_factory=default_factory, compare=compare, metadata={SPEC_KEY: Spec(**spec)}
    )


def spec_of(cls: type, name: str) -> Spec | None:
    """The Spec of field `name` of dataclass `cls` (None for a field without one)."""
    return {f.name: f for f in dataclasses.fields(cls)}[name].metadata.get(SPEC_KEY)


def specs(cls: type) -> dict[str, Spec]:
    """Every described field of dataclass `cls`, in declaration order."""
    return {f.name: f.metadata[SPEC_KEY] for f in dataclasses.fields(cls) if SPEC_KEY in f.metadata}


def from_known_fields(cls: type, data: Any, what: str) -> Any:
    """`cls(**data)`; a key that is not a field of `cls` is an error, so a typo never passes silently."""
    if not isinstance(data, dict):
        raise InvalidParameterError(f"{what} should be a mapping of field names to values but is {short_repr(data)}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(key) for key in set(data) - names)
    if unknown:
        raise InvalidParameterError(f"unknown {what} field(s) {unknown}; known: {sorted(names)}")
    return cls(**data)


def check_value(name: str, value: Any, kind: type, spec: Spec) -> None:
    """Raise InvalidParameterError naming `name`, the bad value and what is allowed, unless `value` fits."""
    if kind is bool:
        if not isinstance(value, bool):
            raise InvalidParameterError(f"{name} should be true or false but is {short_repr(value)}")
    elif kind is dict:
        if not isinstance(value, dict):
            raise InvalidParameterError(f"{name} should be a mapping but is {short_repr(value)}")
    elif kind is str:
        if not isinstance(value, str):
            raise InvalidParameterError(f"{name} should be a string but is {short_repr(value)}")
        if spec.max_length is not None and len(value) > spec.max_length:
            raise InvalidParameterError(
                f"{name} should be at most {spec.max_length:,} characters but is {len(value):,} characters long"
            )
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidParameterError(f"{name} should be an integer but is {short_repr(value)}")
        if not _in_range(value, spec) or (spec.multiple_of and value % spec.multiple_of):
            raise InvalidParameterError(f"{name} should be {_allowed(spec)} but is {short_repr(value)}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _in_range(value, spec):
            raise InvalidParameterError(f"{name} should be {_allowed(spec)} but is {short_repr(value)}")


def _allowed(spec: Spec) -> str:
    text = spec.range_text()
    return text if spec.multiple_of else f"in {text}"


def _in_range(value: float, spec: Spec) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return False
    if spec.low is not None and (value <= spec.low if spec.low_open else value < spec.low):
        return False
    return spec.high is None or value <= spec.high


# Control characters (C0, DEL, C1) in prompts would reach the tokenizer and the PNG metadata; line breaks and tabs
# become spaces, the rest go.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_BREAKS = re.compile(r"[\t\n\r]")


def clean_text(text: str) -> str:
    """`text` without control characters (line breaks and tabs become spaces)."""
    return _CONTROL.sub("", _BREAKS.sub(" ", text))


MAX_SHOWN = 60  # a bad value longer than this is shown shortened, so one message stays one readable line


def short_repr(value: Any) -> str:
    """repr(value), shortened in the middle when long (a 5,000-digit seed is not a message)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * MAX_SHOWN:
        return f"an integer of about {int(value.bit_length() * math.log10(2)):,} digits"
    text = repr(value)
    if len(text) > MAX_SHOWN:
        text = f"{text[: MAX_SHOWN // 2]}…{text[-MAX_SHOWN // 4 :]} ({len(text):,} characters)"
    return text
