"""App settings (read from the environment once), command-line flags, the optional ZeroGPU decorator and launch."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from core.lighting.suggest import SuggestConfig
from core.models.manager import ModelSettings, add_model_flags, settings_from_flags

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = PROJECT_ROOT / "db_examples"
QUEUE_SIZE_ENV, CONCURRENCY_ENV, OUTPUTS_DIR_ENV = "ICLIGHT_QUEUE_SIZE", "ICLIGHT_CONCURRENCY", "ICLIGHT_OUTPUTS_DIR"
PORT_ENV = "GRADIO_SERVER_PORT"
MAX_PORT = 65535
EXIT_USAGE = 2  # bad settings, as the CLI
DEFAULT_QUEUE_SIZE = 20  # jobs waiting beyond this are refused with "queue full" instead of piling up
DEFAULT_CONCURRENCY = 1  # sampling jobs running at once per GPU
DEFAULT_OUTPUTS_DIR = PROJECT_ROOT / "outputs"
# Uploads Gradio keeps in its cache are deleted this often, once they are this old (seconds): a public app would
# otherwise keep every photo anyone sent.
UPLOAD_CACHE = (3600, 3600)

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class AppSettings:
    """Everything the apps read from the environment or the command line, read once."""

    model: ModelSettings = field(default_factory=ModelSettings.from_env)  # base model, weights, device, dtype
    outputs_dir: Path | None = DEFAULT_OUTPUTS_DIR  # result PNGs are saved here; None = do not save
    queue_size: int = DEFAULT_QUEUE_SIZE  # max jobs waiting in the queue
    concurrency: int = DEFAULT_CONCURRENCY  # sampling jobs running at once (one per GPU)
    server_name: str | None = None  # None = Gradio's default (GRADIO_SERVER_NAME or 127.0.0.1)
    port: int | None = None  # None = Gradio's default search from 7860
    share: bool = False  # public gradio.live link
    suggest: SuggestConfig = field(default_factory=SuggestConfig.from_env)  # lighting-suggestion server, if any

    def __post_init__(self) -> None:
        for name in ("queue_size", "concurrency"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} should be an integer >= 1 but is {value!r}")

    @classmethod
    def from_env(cls, model: ModelSettings | None = None, **overrides: Any) -> AppSettings:
        """Settings from ICLIGHT_* / GRADIO_SERVER_PORT; `overrides` that are not None win."""
        outputs = os.environ.get(OUTPUTS_DIR_ENV, "").strip()
        port = os.environ.get(PORT_ENV, "").strip()
        values: dict[str, Any] = {
            "model": model or ModelSettings.from_env(),
            "outputs_dir": Path(outputs).expanduser() if outputs else DEFAULT_OUTPUTS_DIR,
            "queue_size": _env_int(QUEUE_SIZE_ENV, DEFAULT_QUEUE_SIZE, low=1),
            "concurrency": _env_int(CONCURRENCY_ENV, DEFAULT_CONCURRENCY, low=1),
            "port": _parse_int(PORT_ENV, port, low=1, high=MAX_PORT) if port else None,
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)


def _parse_int(name: str, text: str, low: int | None = None, high: int | None = None) -> int:
    """`text` as an integer in [low, high], or ValueError naming the variable and the bad text."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} should be an integer but is {text[:40]!r}") from None
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} should be an integer {bounds} but is {value}")
    return value


def _env_int(name: str, default: int, low: int | None = None) -> int:
    text = os.environ.get(name, "").strip()
    return _parse_int(name, text, low=low) if text else default


def build_parser(description: str) -> argparse.ArgumentParser:
    """Flags shared by both apps: server and model settings."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    parser.add_argument("--server-name", help="address to listen on, e.g. 0.0.0.0 (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help=f"port (default ${PORT_ENV} or the first free one from 7860)")
    add_model_flags(parser)
    parser.add_argument(
        "--outputs-dir", type=Path, help=f"where result PNGs go (default ${OUTPUTS_DIR_ENV} or ./outputs)"
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> AppSettings:
    """AppSettings from parsed flags on top of the environment."""
    model = settings_from_flags(args)
    return AppSettings.from_env(
        model=model,
        outputs_dir=args.outputs_dir,
        server_name=args.server_name,
        port=args.port,
        share=True if args.share else None,
    )


def gpu(fn: F) -> F:
    """`spaces.GPU` on Hugging Face ZeroGPU Spaces; unchanged everywhere else."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn)


def allowed_paths(settings: AppSettings) -> list[str]:
    """Folders Gradio may serve files from besides the working and temp folders."""
    paths = [EXAMPLES_DIR]
    if settings.outputs_dir is not None:
        paths.append(Path(settings.outputs_dir))
    return [str(path.resolve()) for path in paths]


def launch_options(settings: AppSettings) -> dict[str, Any]:
    """`demo.launch` arguments: address, port, sharing, served folders and the upload cap."""
    from core.imaging.inputs import ImageLimits

    return {
        "server_name": settings.server_name,
        "server_port": settings.port,
        "share": settings.share,
        "allowed_paths": allowed_paths(settings),
        # Gradio refuses a larger upload before storing it; the image loader's own check comes too late for that.
        "max_file_size": ImageLimits.from_env().max_upload_bytes,
    }


def main(create_demo: Callable[..., Any], description: str, argv: Sequence[str] | None = None) -> None:
    """Parse flags, build the app and serve it until interrupted."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request is noise for app users
    parser = build_parser(description)
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
        options = launch_options(settings)
    except ValueError as exc:  # a bad ICLIGHT_* / GRADIO_SERVER_PORT value or flag: one line, no traceback
        parser.exit(EXIT_USAGE, f"error: {exc}\n")
    if settings.port is not None and not 1 <= settings.port <= MAX_PORT:
        parser.exit(EXIT_USAGE, f"error: --port should be between 1 and {MAX_PORT} but is {settings.port}\n")
    demo = create_demo(settings=settings)
    try:
        demo.launch(**options)
    except OSError as exc:  # the port is taken, or the address is not this machine's
        where = f"{settings.server_name or '127.0.0.1'}:{settings.port or PORT_ENV}"
        parser.exit(EXIT_USAGE, f"error: cannot serve on {where}: {str(exc).splitlines()[0]}\n")
