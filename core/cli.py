"""Command line: `python -m core relight ...` and `python -m core suggest ...`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from core.errors import ICLightError, InvalidParameterError
from core.lighting.lights import NAMED_AZIMUTHS, Light
from core.models.loading import Variant
from core.models.manager import add_model_flags, settings_from_flags
from core.params import (
    LIGHT_CONTROLS,
    MODE_DEFAULTS,
    PARAM_SPECS,
    BGSource,
    Matting,
    Mode,
    RelightParams,
    field_kinds,
)
from core.schema import Spec

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
REQUIRED = "required"  # a Spec.default_text that starts so is shown as is, not as "default ..."


@dataclass(frozen=True)
class Flag:
    """One relight flag: what argparse is given, and how --help and the README's parameter table show it."""

    name: str  # argparse dest; the flag is --name with dashes
    help: str  # what it does
    default: str  # the default as shown ('' = none)
    allowed: str  # range or choices as shown ('' = any)
    options: dict[str, Any] = field(default_factory=dict)  # argparse keyword arguments (type, choices, action...)
    literal: bool = True  # the default is a value (shown as code), not a sentence

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


def relight_flags() -> list[Flag]:
    """Every relight flag, built from the parameters' Specs (plus --variant and --no-remove-bg, which are not)."""
    flags = []
    kinds = field_kinds()
    defaults = RelightParams()
    for name, spec in PARAM_SPECS.items():
        if spec.flag is None:
            continue
        kind = kinds[name]
        by_mode = [f"{mode.value} {values[name]}" for mode, values in MODE_DEFAULTS.items() if name in values]
        default = spec.default_text or (", ".join(by_mode) if by_mode else _shown(getattr(defaults, name)))
        flags.append(_flag(spec.flag or name, spec, kind, default, literal=spec.default_text is None))
        if name == "mode":
            variants = [v.value for v in Variant]
            text = "IC-Light weight file; fcon is fc trained with offset noise"
            default = "fc, or fbc with --mode fbc"
            flags.append(Flag("variant", text, default, ", ".join(variants), {"choices": variants}, literal=False))
        elif kind is Light:
            light = Light()
            for form_name, control in LIGHT_CONTROLS.items():
                if control.spec.flag is not None:
                    value = getattr(light, control.field)
                    flags.append(_flag(control.spec.flag or form_name, control.spec, type(value), _shown(value)))
        elif name == "matting":
            flags.append(Flag("no_remove_bg", "use the foreground as given (same as --matting none)", "off", "",
                              {"action": "store_true"}))  # fmt: skip
    return flags


def _flag(name: str, spec: Spec, kind: type, default: str, literal: bool = True) -> Flag:
    """The Flag of a described value of type `kind`."""
    options: dict[str, Any] = {"metavar": spec.metavar} if spec.metavar else {}
    allowed = spec.range_text()
    if kind is Light:
        allowed = "none, " + ", ".join(NAMED_AZIMUTHS) + " or an angle in degrees"
    elif isinstance(kind, type) and issubclass(kind, Enum):
        choices = [e.value for e in kind]
        options["choices"], allowed = choices, ", ".join(choices)
    elif kind is bool:
        options = {"action": "store_true", "default": None}  # None: not given, so --from-png values stay
    elif kind is tuple:
        options["action"] = "append"  # repeatable: --lora a.safetensors:0.6 --lora owner/repo
    elif kind in (int, float):
        options["type"] = kind
        options.setdefault("metavar", "N" if kind is int else "X")
    if kind is str and spec.max_length is not None:
        allowed = f"at most {spec.max_length:,} characters"
    return Flag(name, spec.help, default, allowed, options, literal)


def _shown(value: Any) -> str:
    """A default as --help shows it."""
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None else str(value)


RELIGHT_FLAGS = relight_flags()
# Flags whose value goes straight into RelightParams under this name.
PARAM_FLAGS = {spec.flag or name: name for name, spec in PARAM_SPECS.items() if spec.flag is not None and spec.direct}
# Flags that change the light (--light's azimuth aside), and the Light field each sets.
LIGHT_FLAGS = {c.spec.flag or name: c.field for name, c in LIGHT_CONTROLS.items() if c.spec.flag is not None}


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {printable(message)}\n")


# Subcommands defined next to the function they expose: each module has `register(sub)`, which adds its parser and
# sets `run` (a function of the parsed arguments returning the exit code). Imported when the parser is built, so
# these modules import nothing heavy at the top.
COMMAND_MODULES: tuple[str, ...] = ("core.batch.cli", "core.train.cli", "core.data.cli")


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser (every flag documented in README.md)."""
    import importlib

    parser = _Parser(prog="python -m core", description="IC-Light relighting from the command line.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("relight", help="relight a foreground image; writes PNGs and prints their paths")
    r.add_argument("--fg", type=Path, help="foreground image (PNG, JPEG, WebP); PNG/WebP alpha is used as matte")
    r.add_argument("--out", "--outputs-dir", dest="out", type=Path, help="folder for the results (created)")
    r.add_argument("--engine", choices=("diffusion", "preview"), default="diffusion",
                   help="diffusion: IC-Light; preview: instant classical relight, no weights needed")  # fmt: skip
    r.add_argument("--bg", type=Path, help="background image (fbc with --bg-source upload/flip; preview backdrop)")
    r.add_argument("--light-map", type=Path, help="image used as the fc initial latent instead of a gradient")
    add_relight_flags(r)
    r.add_argument("--from-png", type=Path, help="re-run with the parameters stored in a result PNG")
    add_model_flags(r)
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(run=run_relight)

    s = sub.add_parser("suggest", help="print three lighting suggestions for an image as JSON")
    s.add_argument("--image", type=Path, required=True, help="image to suggest lighting for")
    s.add_argument("--mood", help="optional mood, e.g. dramatic, warm, cinematic, calm, mysterious")
    s.set_defaults(run=run_suggest)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def add_relight_flags(r: argparse.ArgumentParser) -> None:
    """The flags that set RelightParams (shared by `relight` and every command that relights)."""
    for flag in RELIGHT_FLAGS:
        allowed = "" if "choices" in flag.options else flag.allowed  # argparse lists the choices itself
        default = flag.default if flag.default.startswith(REQUIRED) else flag.default and f"default {flag.default}"
        details = "; ".join(part for part in (allowed, default) if part)
        r.add_argument(flag.option, dest=flag.name, help=f"{flag.help} ({details})", **flag.options)


def params_table() -> str:
    """The README's relight-parameter table (Markdown), one row per flag."""
    rows = ["| flag | default | range / choices | meaning |", "| --- | --- | --- | --- |"]
    for flag in RELIGHT_FLAGS:
        default = f"`{flag.default}`" if flag.literal and flag.default else flag.default
        cells = (f"`{flag.option}`", default, flag.allowed, flag.help)
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows) + "\n"


TABLE_START, TABLE_END = "<!-- params:start -->", "<!-- params:end -->"  # where README.md holds params_table()


def write_readme_table(readme: Path = Path(__file__).resolve().parent.parent / "README.md") -> None:
    """Put params_table() between README.md's parameter-table markers (after adding or changing a parameter)."""
    text = readme.read_text(encoding="utf-8")
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    readme.write_text(f"{head}{TABLE_START}\n{params_table()}{TABLE_END}{tail}", encoding="utf-8")


def parse_light(args: argparse.Namespace, base: Light | None) -> tuple[Light | None, bool]:
    """(light, given) from --light and its modifiers; `base` is the light of a --from-png run."""
    modifiers = {field: getattr(args, flag) for flag, field in LIGHT_FLAGS.items() if getattr(args, flag) is not None}
    if args.light is None and not modifiers:
        return base, False
    light = base
    if args.light is not None:
        text = args.light.strip().lower()
        if text == "none":
            if modifiers:
                raise InvalidParameterError("--light none cannot be combined with --elevation/--light-color/...")
            return None, True
        if text in NAMED_AZIMUTHS:
            light = Light.named(text)
        else:
            try:
                light = Light(azimuth=float(text))
            except ValueError:
                raise InvalidParameterError(
                    f"--light should be none, left, right, top, bottom or an angle in degrees but is {args.light!r}"
                ) from None
    light = light or Light()
    return Light(**{**light.to_dict(), **modifiers}), True


def params_from_args(args: argparse.Namespace) -> RelightParams:
    """Build validated RelightParams: --from-png values, then mode defaults, then explicit flags."""
    values: dict[str, Any] = {}
    if args.from_png is not None:
        from core.imaging.outputs import read_params

        values = read_params(args.from_png).to_dict()
        values.pop("extra", None)
    mode = Mode(args.mode or values.get("mode", Mode.FC.value))
    if args.mode and values.get("mode") not in (None, mode.value):
        values = {k: v for k, v in values.items() if k not in MODE_DEFAULTS[mode]}
    if args.fast is not None and values.get("fast", args.fast) != args.fast:  # fast mode's own steps and cfg apply
        values = {k: v for k, v in values.items() if k not in MODE_DEFAULTS[mode]}
    if args.lora is not None:  # the flags replace a --from-png result's LoRAs
        values["loras"] = args.lora
    values["mode"] = mode
    for flag, name in PARAM_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            values[name] = value
    if args.no_remove_bg:
        values["matting"] = Matting.NONE.value
    base_light = Light.from_dict(values["light"]) if isinstance(values.get("light"), dict) else None
    light, given = parse_light(args, base_light)
    values["light"] = light
    if mode is Mode.FBC and args.bg_source is None and args.from_png is None:
        if given and light is not None:
            values["bg_source"] = BGSource.LIGHT.value if light.named_direction is None else light.named_direction
        elif args.bg is None:
            raise InvalidParameterError("fbc needs --bg BACKGROUND.png, or --bg-source left/right/top/bottom/ambient")
    if args.prompt is None and args.from_png is None:
        raise InvalidParameterError("--prompt is required, e.g. --prompt 'beautiful woman, sunset over sea'")
    params = RelightParams.for_mode(mode, **{k: v for k, v in values.items() if k != "mode"})
    if mode is Mode.FBC and params.bg_source in (BGSource.UPLOAD, BGSource.FLIP) and args.bg is None:
        raise InvalidParameterError(
            f"--bg-source {params.bg_source.value} needs --bg BACKGROUND.png, or use --bg-source "
            "left/right/top/bottom/ambient"
        )
    return params


def _progress_bar(quiet: bool):
    """(step callback, close) for a tqdm bar on stderr, created at the first step so errors print alone."""
    if quiet:
        return None, lambda: None
    from tqdm import tqdm

    bars = []

    def callback(info) -> None:
        if not bars:
            bars.append(tqdm(total=info.overall_total, file=sys.stderr, unit="step", desc="relight"))
        bars[0].set_postfix_str(f"{info.stage} {info.step}/{info.stage_total}")
        bars[0].update(1)

    return callback, lambda: bars and bars[0].close()


def _png_variant(path: Path) -> str | None:
    """The IC-Light variant a result PNG was made with (None when it does not say), so --from-png reruns it."""
    import json

    from core.imaging.outputs import MODEL_KEY, read_png_text

    try:
        return json.loads(read_png_text(path).get(MODEL_KEY, "{}")).get("variant")
    except (ValueError, AttributeError, RecursionError):
        return None


def _check_out_dir(out: Path) -> None:
    """Create --out (or check it) before any model loads, so a bad folder costs no generation."""
    if out.exists() and not out.is_dir():
        raise InvalidParameterError(f"--out {out} is a file, not a folder; give a folder for the results")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidParameterError(f"--out {out} cannot be created: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise InvalidParameterError(f"--out {out} is not writable; give a folder you can write to")
    from core.imaging.outputs import remove_stale_temps

    remove_stale_temps(out)  # half-written results of a run that was killed


def run_relight(args: argparse.Namespace) -> int:
    """The `relight` command."""
    from core.models.manager import ModelManager
    from core.service import Relighter

    if args.fg is None:
        raise InvalidParameterError("--fg FOREGROUND.png is required (a --from-png result gives parameters only)")
    if args.out is None:
        raise InvalidParameterError("--out DIR is required (results are written there, never overwritten)")
    for flag in ("fg", "bg", "light_map", "from_png"):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            raise InvalidParameterError(f"--{flag.replace('_', '-')} {path} does not exist or is not a file")
    _check_out_dir(args.out)
    settings = settings_from_flags(args)
    params = params_from_args(args)
    variant = args.variant or (_png_variant(args.from_png) if args.from_png is not None else None)
    fc_variant = Variant(variant) if variant in (Variant.FC.value, Variant.FCON.value) else Variant.FC
    if args.variant == Variant.FBC.value and params.mode is not Mode.FBC:
        raise InvalidParameterError("--variant fbc needs --mode fbc")
    relighter = Relighter(ModelManager(settings), outputs_dir=args.out, fc_variant=fc_variant)
    if args.engine == "preview":
        light = params.light or Light()
        image, matting = relighter.preview(args.fg, light, params, background=args.bg)
        paths = relighter.save([image], params.replace(extra={"engine": "preview"}), stem="preview", with_model=False)
        notices = [matting.notice] if matting.notice else []
    else:
        if args.quiet:
            _silence_library_bars()
        callback, close = _progress_bar(args.quiet)
        try:
            outcome = relighter.relight(
                args.fg, params, background=args.bg, light_map=args.light_map, callback=callback
            )
        finally:
            close()
        paths, notices = outcome.paths, outcome.notices
    for notice in notices:
        print(f"note: {printable(notice)}", file=sys.stderr)
    for path in paths:
        print(printable(str(path)))
    return 0


def run_suggest(args: argparse.Namespace) -> int:
    """The `suggest` command."""
    from core.imaging.inputs import load_image
    from core.lighting.suggest import result_to_json, suggest_lighting

    if not args.image.is_file():
        raise InvalidParameterError(f"--image {args.image} does not exist or is not a file")
    image = load_image(args.image)
    matte = image.alpha if image.has_meaningful_alpha else None  # an opaque alpha says nothing about shape
    result = suggest_lighting(image.rgb, mood=args.mood, matte=matte)
    if result.notice:
        print(f"note: {printable(result.notice)}", file=sys.stderr)
    print(result_to_json(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code and never prints a traceback for user errors."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _quiet_libraries()
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except InvalidParameterError as exc:
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except ICLightError as exc:
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # a full disk or a folder taken away mid-run: say which, without a traceback
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {printable(f'{exc.strerror or exc}{where}')}", file=sys.stderr)
        return EXIT_ERROR


def printable(text: str) -> str:
    """`text` with control characters escaped (\\x1b, \\n), so a file name cannot drive the terminal."""
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text)


def _silence_library_bars() -> None:
    """--quiet: no weight-loading or download bars from the model libraries either."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def _quiet_libraries() -> None:
    """Library chatter (dtype notes, deprecations) is not for CLI users."""
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("diffusers", "transformers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
