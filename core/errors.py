"""Exception types raised by the engine; the UI and CLI edges turn them into readable messages."""

from __future__ import annotations


class ICLightError(Exception):
    """Base class for every error the engine raises on purpose (bad input, missing weights, ...)."""


class InvalidParameterError(ICLightError, ValueError):
    """A generation parameter or input image is out of range or malformed."""


class WeightsNotFoundError(ICLightError, FileNotFoundError):
    """Model weights are missing locally and could not be downloaded."""


class CorruptWeightsError(ICLightError):
    """A weight file exists but cannot be read (truncated, not safetensors, wrong content)."""


class IncompatibleModelError(ICLightError):
    """Weights or a base model have the wrong architecture (fc file used as fbc, SDXL base, ...)."""


class CancelledError(ICLightError):
    """Generation was cancelled by the user between two sampling steps."""


class DeviceMemoryError(ICLightError):
    """The GPU (or CPU) ran out of memory for the requested size; the message says what to change."""
