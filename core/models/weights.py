"""Weight files and the IC-Light UNet merge, streamed tensor by tensor so memory stays at one UNet."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from core.errors import CorruptWeightsError, IncompatibleModelError, WeightsNotFoundError

CONV_IN = "conv_in.weight"
HEADER_LENGTH_BYTES = 8  # safetensors: little-endian u64 header size, then a JSON header, then raw data
_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class SafetensorsFile(Mapping):
    """A .safetensors file read with plain reads, one tensor at a time (no memory map that inflates RSS)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise WeightsNotFoundError(f"weight file {self.path} does not exist")
        size = self.path.stat().st_size
        try:
            with open(self.path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(HEADER_LENGTH_BYTES))
                if length > size:
                    raise ValueError(f"header length {length} exceeds the file size")
                header = json.loads(f.read(length))
            if not isinstance(header, dict):
                raise ValueError(f"the header is a JSON {type(header).__name__}, not an object")
            header.pop("__metadata__", None)
            self._entries = {
                key: (e["dtype"], tuple(e["shape"]), tuple(e["data_offsets"])) for key, e in header.items()
            }
        except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise self._corrupt(f"unreadable header: {exc}") from exc
        self._data_start = HEADER_LENGTH_BYTES + length
        end = max((offsets[1] for _, _, offsets in self._entries.values()), default=0)
        if self._data_start + end > size:
            raise self._corrupt(f"the header needs {self._data_start + end} bytes but the file has {size}")

    def _corrupt(self, why: str) -> CorruptWeightsError:
        return CorruptWeightsError(
            f"{self.path} ({self.path.stat().st_size} bytes) is not a readable safetensors file ({why}). "
            f"It is probably truncated by an interrupted download or copy: delete it and download it again."
        )

    def shape(self, key: str) -> tuple[int, ...]:
        return self._entries[key][1]

    def __getitem__(self, key: str) -> torch.Tensor:
        dtype, shape, (begin, end) = self._entries[key]
        if dtype not in _DTYPES:
            raise self._corrupt(f"tensor {key!r} has unsupported dtype {dtype}")
        with open(self.path, "rb") as f:
            f.seek(self._data_start + begin)
            data = bytearray(f.read(end - begin))
        if len(data) != end - begin:
            raise self._corrupt(f"tensor {key!r} is cut short")
        if not data:
            return torch.empty(shape, dtype=_DTYPES[dtype])
        return torch.frombuffer(data, dtype=_DTYPES[dtype]).reshape(shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def read_offset(path: Path) -> SafetensorsFile:
    """Open an IC-Light offset file; unreadable files raise a clear CorruptWeightsError."""
    return SafetensorsFile(path)


def tensor_shape(weights: Mapping, key: str) -> tuple[int, ...]:
    """Shape of `key` without reading the tensor when the mapping is a file."""
    return weights.shape(key) if isinstance(weights, SafetensorsFile) else tuple(weights[key].shape)


def offset_in_channels(offset: Mapping, path: Path) -> int:
    """Input channels of conv_in stored in an offset file."""
    shape = tensor_shape(offset, CONV_IN) if CONV_IN in offset else ()
    if len(shape) != 4:
        raise IncompatibleModelError(f"{path} has no 4-D '{CONV_IN}'; it is not an IC-Light SD 1.5 weight file")
    return int(shape[1])


# Either side can be at fault when an offset and a base UNet do not fit.
_FIT_HINT = (
    "IC-Light offsets fit only an SD 1.5 base model: check that --base-model is SD 1.5 and that the offset file is "
    "the unmodified one from the Hub repo lllyasviel/ic-light"
)


def check_offset_matches(base: Mapping, offset: Mapping, in_channels: int, source: Path | str) -> None:
    """Every base key has an offset of the same shape (conv_in widened to `in_channels`), and nothing else."""
    missing = sorted(set(base) - set(offset))
    unexpected = sorted(set(offset) - set(base))
    if missing or unexpected:
        raise IncompatibleModelError(
            f"{source} does not match the base UNet: {len(missing)} key(s) missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}). {_FIT_HINT}"
        )
    for key in base:
        expected = list(tensor_shape(base, key))
        if key == CONV_IN:
            expected[1] = in_channels
        if tensor_shape(offset, key) != tuple(expected):
            raise IncompatibleModelError(
                f"{source}: '{key}' has shape {tensor_shape(offset, key)} but the base UNet needs {tuple(expected)}. "
                f"{_FIT_HINT}"
            )


@torch.no_grad()
def merged_weights(base: Mapping, offset: Mapping, in_channels: int, dtype: torch.dtype) -> Iterator:
    """(key, tensor) of the IC-Light UNet: conv_in widened (first 4 channels copied, new ones zero), + offset.

    Sums are done in fp32 (as the official demos, which merge an fp32 UNet), then cast to `dtype` one tensor at a
    time, so the fp32 copy never exists whole.
    """
    for key in base:
        weight = base[key].float()
        if key == CONV_IN and weight.shape[1] != in_channels:
            widened = weight.new_zeros((weight.shape[0], in_channels, *weight.shape[2:]))
            widened[:, : weight.shape[1]] = weight
            weight = widened
        yield key, (weight + offset[key].float()).to(dtype)


def build_iclight_unet(
    config: Mapping[str, Any], base: Mapping, offset: Mapping, in_channels: int, dtype: torch.dtype, source: str
):
    """A UNet2DConditionModel with `in_channels` inputs holding base + offset, strictly, in `dtype`."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    check_offset_matches(base, offset, in_channels, source)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config({**dict(config), "in_channels": in_channels})
    state = dict(merged_weights(base, offset, in_channels, dtype))
    unet.load_state_dict(state, strict=True, assign=True)
    return unet.eval().requires_grad_(False)
